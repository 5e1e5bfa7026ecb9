"""Write Fashion-MNIST as class folders of PNGs, the layout users bring (`--train_dir` / `--validation_dir`).

    python scripts/fashion_folders.py OUT_DIR [--train_per_class 300] [--validation all|N]

Used to measure the recipe the way the acceptance runs do: 3,000 training images, the full 10,000-image test set.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_samples import FASHION_CLASSES, FASHION_DIR, balanced, read_idx  # noqa: E402


def write(folder: Path, images, labels, indices) -> None:
    for i in indices:
        target = folder / FASHION_CLASSES[labels[i]].replace("/", "-")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--train_per_class", type=int, default=300)
    parser.add_argument("--validation", default="all", help="'all' or images per class")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    images, labels = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz"), read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    write(args.out / "train", images, labels, balanced(labels, args.train_per_class, rng))
    images, labels = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    chosen = range(len(labels)) if args.validation == "all" else balanced(labels, int(args.validation), rng)
    write(args.out / "validation", images, labels, chosen)


if __name__ == "__main__":
    main()
