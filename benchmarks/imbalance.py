"""Class imbalance and best-epoch selection, measured on long-tailed Fashion-MNIST: the numbers behind the defaults.

    python benchmarks/imbalance.py [--seeds 1 2] [--configs NAME ...] [--validation_per_class 200] [--smallest 10]
                                   [--out benchmarks/results/imbalance.json]

Training sets: 600 images for the largest class down to 10 for the smallest (`--smallest`; sizes fall geometrically,
about 1,600 images in all at 10), the classes' order shuffled by the seed, drawn from Fashion-MNIST's training
images; validation: a balanced draw
from its test images (all 10,000 with `--validation_per_class 1000`). Each configuration runs the image recipe at
the defaults (MobileNetV2, staged) in its own process, one at a time, with only the named flags changed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from fashion_folders import write
from make_samples import FASHION_DIR, balanced, read_idx

DATA = Path("/tmp/hftransfer-bench/imbalance")
CONFIGS = {
    "before (no weights, last epoch)": ["--class_weights", "none", "--keep_best_epoch", "false",
                                        "--early_stopping_patience", "0"],
    "balanced weights, last epoch": ["--class_weights", "balanced", "--keep_best_epoch", "false",
                                     "--early_stopping_patience", "0"],
    "no weights, best epoch": ["--class_weights", "none"],
    "balanced weights, best epoch": ["--class_weights", "balanced"],
    "logit adjusted, last epoch": ["--class_weights", "logit_adjusted", "--keep_best_epoch", "false",
                                   "--early_stopping_patience", "0"],
    "logit adjusted, best epoch": ["--class_weights", "logit_adjusted"],
    "defaults": [],
}


def long_tail_counts(largest: int = 600, smallest: int = 10, classes: int = 10) -> list[int]:
    return [round(largest * (smallest / largest) ** (i / (classes - 1))) for i in range(classes)]


def make_set(seed: int, validation_per_class: int, smallest: int = 10) -> Path:
    """Training classes from 600 images down to `smallest`; the default 10 is the long tail (ratio 60)."""
    out = DATA / (f"seed{seed}-val{validation_per_class}" + (f"-smallest{smallest}" if smallest != 10 else ""))
    if out.exists():
        return out
    rng = np.random.default_rng(seed)
    images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    order = rng.permutation(10)  # which class is largest
    chosen = []
    for rank, count in enumerate(long_tail_counts(smallest=smallest)):
        chosen.extend(rng.choice(np.flatnonzero(labels == order[rank]), count, replace=False))
    write(out / "train", images, labels, chosen)
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    write(out / "validation", images, labels, balanced(labels, validation_per_class, rng))
    return out


def run(folder: Path, config: str, seed: int) -> dict:
    out = DATA / "runs" / f"{folder.name}-{re.sub(r'[^a-z0-9]+', '-', config)}"
    command = [sys.executable, str(ROOT / "recipes" / "image.py"), "--model_name_or_path", "zoo:mobilenet_v2",
               "--train_dir", str(folder / "train"), "--validation_dir", str(folder / "validation"),
               "--output_dir", str(out), "--disable_tqdm", "true", "--seed", str(seed), "--check_data", "false",
               "--restart", "true", *CONFIGS[config]]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"config": config, "seed": seed, "error": done.stderr[-2000:]}
    results = json.loads((out / "all_results.json").read_text())
    record = json.loads((out / "hftransfer_run.json").read_text())
    recalls = recalls_by_size(out, folder / "train")
    return {"config": config, "seed": seed, "eval_f1_macro": round(results["eval_f1_macro"], 4),
            "eval_accuracy": round(results["eval_accuracy"], 4), "rarest_three_recall": recalls[-3:],
            "largest_two_recall": recalls[:2], "wall_s": round(time.time() - start, 1),
            "stages": [{k: s["metrics"].get(k) for k in ("stage", "best_epoch", "last_evaluated_epoch", "epoch")}
                       for s in record["stages"]]}


def recalls_by_size(out: Path, train: Path) -> list[float]:
    """Per-class recall from the run's report (report/per_class.md), largest training class first."""
    sizes = {p.name: len(list(p.iterdir())) for p in train.iterdir()}
    rows = [line.strip("|").split("|") for line in (out / "report" / "per_class.md").read_text().splitlines()
            if line.startswith("|")][2:]
    recall = {cells[0].strip(): float(cells[2]) for cells in rows}
    return [recall[name] for name in sorted(recall, key=lambda name: -sizes.get(name.replace("/", "-"), 0))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="*", type=int, default=[1])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--validation_per_class", type=int, default=200)
    parser.add_argument("--smallest", type=int, default=10, help="the smallest class (the largest has 600)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imbalance.json")
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for seed in args.seeds:
        folder = make_set(seed, args.validation_per_class, args.smallest)
        for config in args.configs:
            row = {**run(folder, config, seed), "validation": 10 * args.validation_per_class,
                   "largest_over_smallest": 600 / args.smallest}
            key = lambda r: (r["config"], r["seed"], r.get("validation"), r.get("largest_over_smallest", 60.0))  # noqa: E731
            rows = [r for r in rows if key(r) != key(row)] + [row]
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
