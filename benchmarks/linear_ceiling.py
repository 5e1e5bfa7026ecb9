"""Does the feature-extraction head read the frozen encoder as well as a tuned linear model does? Side by side:

    python benchmarks/linear_ceiling.py [--only reviews_2000 reviews_c reviews_d] [--seeds 42 43 44]

- hftransfer: `text.py --strategy feature_extraction` at its defaults (the head trained on the cached features of
  the checkpoint's own pooling), one run per seed (`defaults.run`).
- the plain way: all-MiniLM-L6-v2's mean-pooled embeddings computed directly (`AutoModel`, the attention mask's mean,
  as sentence-transformers pools it), then scikit-learn's logistic regression over a grid of its inverse
  regularisation C, on the raw embeddings and standardised; C = 1 is scikit-learn's default, the grid's best is a
  ceiling chosen on the validation set itself (so flattering).

Prints a Markdown table and writes `benchmarks/results/linear_ceiling.json`. Each set takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
CHECKPOINT = "zoo:all-MiniLM-L6-v2"
C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], [row["label"] for row in rows]


def encoder():
    from transformers import AutoModel, AutoTokenizer

    from hftransfer.zoo import resolve

    path = resolve(CHECKPOINT)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.inference_mode()
def mean_pooled(tokenizer, model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    pooled = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        tokens = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled.append((tokens * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(pooled).numpy()


def logistic_grid(train: np.ndarray, train_labels, test: np.ndarray, test_labels) -> dict[str, dict[float, float]]:
    """Validation accuracy per C, on the raw embeddings and on standardised ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    views = {"raw": (train, test), "standardised": (scaler.transform(train), scaler.transform(test))}
    return {name: {c: round(float(LogisticRegression(C=c, max_iter=5000).fit(a, train_labels).score(b, test_labels)),
                            4) for c in C_GRID} for name, (a, b) in views.items()}


def measure(dataset: str, seeds: list[int]) -> dict:
    from defaults import DATASETS, run

    folder = DATASETS[dataset]()
    (train, train_labels), (test, test_labels) = read_csv(folder / "train.csv"), read_csv(folder / "test.csv")
    tokenizer, model = encoder()
    grid = logistic_grid(mean_pooled(tokenizer, model, train), train_labels, mean_pooled(tokenizer, model, test),
                         test_labels)
    best_view, best_c = max(((view, c) for view in grid for c in grid[view]), key=lambda vc: grid[vc[0]][vc[1]])
    heads = [run(dataset, "feature_extraction", seed) for seed in seeds]
    failed = [h["error"] for h in heads if "error" in h]
    if failed:
        raise SystemExit(f"{dataset}: the feature-extraction run failed:\n{failed[0]}")
    return {"dataset": dataset, "head": [h["eval_accuracy"] for h in heads], "seeds": seeds, "logistic": grid,
            "logistic_c1_raw": grid["raw"][1.0], "logistic_best": grid[best_view][best_c],
            "logistic_best_at": f"{best_view}, C {best_c:g}"}


def table(rows: list[dict]) -> str:
    lines = ["| set | hftransfer head (seeds) | mean | logistic regression, C 1 | best over the grid (where) |",
             "| --- | --- | ---: | ---: | --- |"]
    for row in rows:
        heads = " / ".join(f"{a:.4f}" for a in row["head"])
        lines.append(f"| {row['dataset']} | {heads} | {np.mean(row['head']):.4f} | {row['logistic_c1_raw']:.4f} | "
                     f"{row['logistic_best']:.4f} ({row['logistic_best_at']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=["reviews_2000", "reviews_c", "reviews_d"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[42, 43, 44])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "linear_ceiling.json")
    args = parser.parse_args()
    rows = [measure(dataset, args.seeds) for dataset in args.only]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
