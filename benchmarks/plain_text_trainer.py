"""The text baseline written the way the HF example `run_glue.py` does it by default: every example padded to
128 tokens (`pad_to_max_length=True`, `max_seq_length=128`), batches in random order, the whole model trains.

    python benchmarks/plain_text_trainer.py OUTPUT_DIR [--epochs 3] [--learning_rate 1e-4] [--max_train_samples N]

Same checkpoint (zoo:all-MiniLM-L6-v2), data (the embedded Rotten Tomatoes sample), learning rate, epochs and batch
size as the hftransfer run it is compared with; only the batching differs. Prints the metrics as one JSON line.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from hftransfer import zoo


def main() -> None:
    start = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_train_samples", type=int)
    args = parser.parse_args()
    folder = zoo.prepare("all-MiniLM-L6-v2")
    samples = Path(__file__).resolve().parent.parent / "hftransfer" / "samples" / "rotten_tomatoes"
    data = load_dataset("parquet", data_files={s: str(samples / f"{s}.parquet") for s in ("train", "validation")})
    if args.max_train_samples:
        data["train"] = data["train"].shuffle(seed=42).select(range(args.max_train_samples))
    names = data["train"].features["label"].names
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    data = data.map(lambda batch: tokenizer(batch["text"], padding="max_length", max_length=128, truncation=True),
                    batched=True, remove_columns=["text"])

    def accuracy(prediction):
        return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}

    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128, weight_decay=0.01,
        warmup_steps=0.1, report_to="none", save_strategy="no", logging_strategy="epoch", seed=42,
        disable_tqdm=True, dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
                      compute_metrics=accuracy)
    train = trainer.train()
    metrics = {**train.metrics, **trainer.evaluate()}
    trainer.save_model()
    metrics.update(total_runtime=time.time() - start, train_samples=len(data["train"]), epochs=args.epochs)
    print(json.dumps(metrics))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
