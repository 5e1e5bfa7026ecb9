"""The text baseline written the way the HF example `run_glue.py` does it by default: every example padded to
128 tokens (`pad_to_max_length=True`, `max_seq_length=128`), batches in random order, the whole model trains.

    python benchmarks/plain_text_trainer.py OUTPUT_DIR [--epochs 3] [--learning_rate 1e-4] [--max_train_samples N]
                                                       [--seed 42]

Same checkpoint (zoo:all-MiniLM-L6-v2), data (the embedded Rotten Tomatoes sample), learning rate, epochs and batch
size as the hftransfer run it is compared with; only the batching differs. Prints the metrics as one JSON line.
"""

import argparse
import json
import time

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from hftransfer import zoo
from plain_common import embedded_sample, with_new_head


def main() -> None:
    start = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_train_samples", type=int)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # the new head's initialisation
    folder = zoo.prepare("all-MiniLM-L6-v2")
    data, names = embedded_sample("rotten_tomatoes", args.max_train_samples)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = with_new_head(AutoModelForSequenceClassification, folder, names)
    data = data.map(lambda batch: tokenizer(batch["text"], padding="max_length", max_length=128, truncation=True),
                    batched=True, remove_columns=["text"])

    def accuracy(prediction):
        return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}

    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128, weight_decay=0.01,
        warmup_steps=0.1, report_to="none", save_strategy="no", logging_strategy="epoch", seed=args.seed,
        disable_tqdm=True, dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
                      compute_metrics=accuracy)
    train = trainer.train()
    metrics = {**train.metrics, **trainer.evaluate()}
    trainer.save_model()
    metrics.update(total_runtime=time.time() - start, train_samples=len(data["train"]), epochs=args.epochs)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
