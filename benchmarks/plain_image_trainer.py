"""Image baselines written the way a plain `Trainer` script does it (the HF example `run_image_classification.py`).

    python benchmarks/plain_image_trainer.py OUTPUT_DIR --mode frozen    [--epochs 10] [--image_size 112]
    python benchmarks/plain_image_trainer.py OUTPUT_DIR --mode finetune  (the example's defaults: 224 px, random
                                                                          resized crop + flip, lr 5e-5, 3 epochs,
                                                                          batch 8, the whole model trains)

frozen: `requires_grad` switched off by hand for the base, which then runs forward on every batch of every epoch;
`--bn_eval` adds the fix a careful user writes (BatchNorm kept in eval mode by a callback), so that accuracy can be
compared with hftransfer's at equal correctness. Images go through the image processor lazily (`set_transform`).
Prints the metrics as one JSON line. Data: the embedded Fashion-MNIST sample (or --max_train_samples of it).
"""

import argparse
import json
import random
import time

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

from hftransfer import zoo
from plain_common import embedded_sample, with_new_head


def keep_batchnorm_in_eval(model) -> None:
    """The fix a careful user adds: `Trainer` calls `model.train()` every step, so BN is put back in eval mode just
    before each of its forwards (frozen BN in train mode replaces its ImageNet statistics: momentum 0.997 in HF)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(lambda bn, inputs: setattr(bn, "training", False))


def random_resized_crop_and_flip(image, size: int):
    """torchvision's RandomResizedCrop(size) + RandomHorizontalFlip in PIL (torchvision cannot load here)."""
    width, height = image.size
    for _ in range(10):
        area = width * height * random.uniform(0.08, 1.0)
        ratio = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            left, top = random.randint(0, width - w), random.randint(0, height - h)
            image = image.crop((left, top, left + w, top + h))
            break
    image = image.resize((size, size))
    return image.transpose(0) if random.random() < 0.5 else image


def main() -> None:
    start = time.time()
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--mode", choices=["frozen", "finetune"], default="frozen")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--bn_eval", action="store_true")
    parser.add_argument("--max_train_samples", type=int)
    args = parser.parse_args()
    finetune = args.mode == "finetune"
    epochs = args.epochs or (3 if finetune else 10)
    size = args.image_size or (224 if finetune else 112)
    learning_rate = args.learning_rate or (5e-5 if finetune else 3e-3)
    batch_size = args.batch_size or (8 if finetune else 32)

    folder = zoo.prepare("mobilenet_v2")
    data, names = embedded_sample("fashion_mnist", args.max_train_samples)
    model = with_new_head(AutoModelForImageClassification, folder, names, ignore_mismatched_sizes=True)
    if not finetune:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("classifier")
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    square = {"height": size, "width": size}
    processor.size, processor.crop_size, processor.do_center_crop = square, square, False

    def transform(augment):
        def apply(batch):
            images = [image.convert("RGB") for image in batch["image"]]
            if augment:
                images = [random_resized_crop_and_flip(image, size) for image in images]
            return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"], "labels": batch["label"]}
        return apply

    def accuracy(prediction):
        return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}

    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=128, remove_unused_columns=False,
        report_to="none", save_strategy="no", logging_strategy="epoch", seed=42, disable_tqdm=True,
        dataloader_pin_memory=False,
        # frozen: the head settings hftransfer's feature extraction uses; finetune: the Trainer's own defaults
        **({} if finetune else {"weight_decay": 0.01, "warmup_steps": 0.1}))
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"].with_transform(transform(finetune)),
                      eval_dataset=data["validation"].with_transform(transform(False)), compute_metrics=accuracy)
    if args.bn_eval:
        keep_batchnorm_in_eval(model)
    train = trainer.train()
    metrics = {**train.metrics, **trainer.evaluate()}
    trainer.save_model()
    metrics.update(total_runtime=time.time() - start, train_samples=len(data["train"]), epochs=epochs)
    print(json.dumps(metrics))


if __name__ == "__main__":
    torch.manual_seed(0)
    random.seed(0)
    main()
