"""Can anything on top of the frozen encoder lift feature extraction? Levers on the head and on its features,
screened side by side against the head as hftransfer trains it:

    python benchmarks/head_levers.py [--only reviews_2000 mr_long] [--seeds 42 ... 51]

The features are those the feature-extraction head reads for a mean-pooling sentence-transformers checkpoint
(all-MiniLM-L6-v2; `hftransfer.pooling`): LayerNorm of the mean of the last layer's tokens, through the pooler's fixed
tanh(POOLER_SCALE x). The head is a replica of the head-only stage at its defaults, its settings imported from
`hftransfer.choices` and `args` (a linear layer behind dropout 0.1, AdamW at the head's rate times 1 / POOLER_SCALE,
weight decay 0.3, batches of 32, 10% linear warm-up then linear decay, at least 300 steps and 10 epochs, the best
epoch on the validation set, early stopping after 5), so each seed runs in a fraction of a second: the run's own
head (seed 42) scored within 0.3 points of this replica's ten-seed mean on six of the seven sets below, 0.57 under
it on mr_b. Each lever changes one thing:

    pooler trained   the pooler's dense layer trains too (tanh: a one-hidden-layer head, saved as the model's own)
    standardised     each feature scaled to the training set's spread (folded into the pooler's weights)
    centred          the training mean taken out before the LayerNorm (folded into the pooling layer's value bias)
    whitened         PCA-whitened before the LayerNorm (each eigenvalue plus their mean, so small ones stay bounded)
    feature noise    Gaussian noise of half the features' spread on the training batches
    weight average   each epoch's head averaged with those before it (evaluated as the average)
    label smoothing  0.1
    rate / 3         the head's learning rate a third

Prints a Markdown table of each lever's mean over the seeds per set and writes `benchmarks/results/head_levers.json`.
One thread (the head's steps are tiny); the seven sets took 25 minutes here beside two training runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from linear_ceiling import encoder, mean_pooled, read_csv  # noqa: E402

from hftransfer.args import TransferArguments, TransferTrainingArguments  # noqa: E402
from hftransfer.choices import EARLY_STOPPING_PATIENCE, EPOCH_RANGE, HEAD_MIN_STEPS, HEAD_ONLY_WEIGHT_DECAY  # noqa: E402
from hftransfer.pooling import POOLER_SCALE  # noqa: E402

HEAD_RATE = TransferArguments.head_learning_rate / POOLER_SCALE
BATCH, WARMUP = TransferTrainingArguments.per_device_train_batch_size, TransferTrainingArguments.warmup_steps
DROPOUT = 0.1  # all-MiniLM-L6-v2's hidden_dropout_prob, before BERT's classifier
LEVERS = {"default": {}, "pooler trained": {"train_pooler": True}, "standardised": {"features": "standardised"},
          "centred": {"features": "centred"}, "whitened": {"features": "whitened"}, "feature noise": {"noise": 0.5},
          "weight average": {"average": True}, "label smoothing": {"smoothing": 0.1},
          "rate / 3": {"rate": HEAD_RATE / 3}}


def pooled_features(means: torch.Tensor) -> torch.Tensor:
    """What the head reads: the pooling layer's LayerNorm of the mean, through the pooler's tanh."""
    return torch.tanh(POOLER_SCALE * F.layer_norm(means, means.shape[-1:], eps=1e-12))


def transformed(train: torch.Tensor, test: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw means, changed before the LayerNorm (centred, whitened) or after it (standardised)."""
    mean = train.mean(0)
    if kind == "centred":
        return pooled_features(train - mean), pooled_features(test - mean)
    if kind == "whitened":
        values, vectors = torch.linalg.eigh(torch.cov((train - mean).T.double()))
        whiten = (vectors / torch.sqrt(values + values.mean()) @ vectors.T).float()
        return pooled_features((train - mean) @ whiten), pooled_features((test - mean) @ whiten)
    a, b = pooled_features(train), pooled_features(test)
    if kind == "standardised":
        spread = a.std(0)
        return (a - a.mean(0)) / spread * spread.mean(), (b - a.mean(0)) / spread * spread.mean()
    return a, b


def train_head(train, train_labels, test, test_labels, seed: int, train_pooler: bool = False, noise: float = 0.0,
               average: bool = False, smoothing: float = 0.0, rate: float = HEAD_RATE) -> float:
    """The head-only stage's best validation accuracy (see the module's docstring)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    count, width = train.shape
    head = torch.nn.Linear(width, int(train_labels.max()) + 1)
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.zeros_(head.bias)
    groups = [{"params": [head.weight], "weight_decay": HEAD_ONLY_WEIGHT_DECAY}, {"params": [head.bias],
                                                                                 "weight_decay": 0.0}]
    pooler = None
    if train_pooler:  # the pooler reads the LayerNorm'd mean (tanh undone), starting at its fixed POOLER_SCALE x
        train, test = torch.atanh(train) / POOLER_SCALE, torch.atanh(test) / POOLER_SCALE
        pooler = torch.nn.Linear(width, width)
        with torch.no_grad():
            pooler.weight.copy_(POOLER_SCALE * torch.eye(width))
            pooler.bias.zero_()
        groups += [{"params": [pooler.weight], "weight_decay": HEAD_ONLY_WEIGHT_DECAY, "lr": rate * POOLER_SCALE},
                   {"params": [pooler.bias], "weight_decay": 0.0, "lr": rate * POOLER_SCALE}]
    optimizer = torch.optim.AdamW(groups, lr=rate)
    per_epoch = math.ceil(count / BATCH)
    epochs = min(EPOCH_RANGE["head"][1], max(EPOCH_RANGE["head"][0], math.ceil(HEAD_MIN_STEPS / per_epoch)))
    total, warmup = epochs * per_epoch, math.ceil(WARMUP * epochs * per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)))

    def logits(features, training: bool):
        hidden = torch.tanh(pooler(features)) if pooler is not None else features
        if training:
            if noise:
                hidden = hidden + noise * hidden.std() * torch.randn(hidden.shape, generator=generator)
            hidden = F.dropout(hidden, DROPOUT)
        return head(hidden)

    best, since, averaged = 0.0, 0, None
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, BATCH):
            rows = order[start:start + BATCH]
            loss = F.cross_entropy(logits(train[rows], True), train_labels[rows], label_smoothing=smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            if average:
                current = [head.weight.clone(), head.bias.clone()]
                averaged = current if averaged is None else [(a * epoch + c) / (epoch + 1)
                                                              for a, c in zip(averaged, current)]
                predicted = test @ averaged[0].T + averaged[1]
            else:
                predicted = logits(test, False)
            accuracy = (predicted.argmax(1) == test_labels).float().mean().item()
        best, since = (accuracy, 0) if accuracy > best else (best, since + 1)
        if since >= EARLY_STOPPING_PATIENCE:
            break
    return best


def measure(dataset: str, seeds: list[int], tokenizer, model) -> dict:
    from defaults import DATASETS

    folder = DATASETS[dataset]()
    (train, train_labels), (test, test_labels) = read_csv(folder / "train.csv"), read_csv(folder / "test.csv")
    names = sorted(set(train_labels))
    labels = [torch.tensor([names.index(label) for label in split]) for split in (train_labels, test_labels)]
    means = [torch.from_numpy(mean_pooled(tokenizer, model, texts)) for texts in (train, test)]
    row = {"dataset": dataset, "seeds": seeds}
    for lever, settings in LEVERS.items():
        settings = dict(settings)
        a, b = transformed(*means, settings.pop("features", "default"))
        accuracies = [train_head(a, labels[0], b, labels[1], seed, **settings) for seed in seeds]
        row[lever] = round(float(np.mean(accuracies)), 4)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| lever | " + " | ".join(row["dataset"] for row in rows) + " | mean |",
             "| --- |" + " ---: |" * (len(rows) + 1)]
    for lever in LEVERS:
        values = [row[lever] for row in rows]
        lines.append(f"| {lever} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=["reviews_2000", "reviews_b", "reviews_c", "reviews_d", "mr_a",
                                                      "mr_b", "mr_long"])
    parser.add_argument("--seeds", nargs="*", type=int, default=list(range(42, 52)))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "head_levers.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the head's steps are tiny: one thread is faster
    tokenizer, model = encoder()
    rows = [measure(dataset, args.seeds, tokenizer, model) for dataset in args.only]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
