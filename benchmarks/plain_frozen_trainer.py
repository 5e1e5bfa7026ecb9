"""The baseline for cached features: frozen-base training the way a plain `Trainer` script does it.

The base runs forward on every batch of every epoch; `requires_grad` is switched off by hand; images go through the
image processor lazily (`set_transform`), as in the HF example script. Same checkpoint, data, input size, epochs,
batch size and head learning rate as hftransfer's feature extraction, for `benchmarks/cached_features.py`.

    python benchmarks/plain_frozen_trainer.py OUTPUT_DIR [--epochs 10] [--image_size 112]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

from hftransfer import zoo


def main() -> None:
    start = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    args = parser.parse_args()
    folder = zoo.prepare("mobilenet_v2")
    samples = Path(__file__).resolve().parent.parent / "hftransfer" / "samples" / "fashion_mnist"
    data = load_dataset("parquet", data_files={s: str(samples / f"{s}.parquet") for s in ("train", "validation")})
    names = data["train"].features["label"].names
    model = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("classifier")
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    size = {"height": args.image_size, "width": args.image_size}
    processor.size, processor.crop_size, processor.do_center_crop = size, size, False

    def transform(batch):
        images = [image.convert("RGB") for image in batch["image"]]
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"], "labels": batch["label"]}

    def accuracy(prediction):
        return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}

    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=32, per_device_eval_batch_size=128, weight_decay=0.01, warmup_steps=0.1,
        remove_unused_columns=False, report_to="none", save_strategy="no", logging_strategy="epoch", seed=42,
        disable_tqdm=True, dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"].with_transform(transform),
                      eval_dataset=data["validation"].with_transform(transform), compute_metrics=accuracy)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    metrics["total_runtime"] = time.time() - start
    print(json.dumps(metrics))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
