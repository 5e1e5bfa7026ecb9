"""Build the embedded samples shipped in `hftransfer/samples/` (run once; the outputs are committed).

fashion_mnist: a class-balanced sample of Fashion-MNIST (Zalando Research, MIT licence) from Debian's
`dataset-fashion-mnist` package: 200 images per class from its training set and 50 per class from its test set.

    apt-get install dataset-fashion-mnist && python scripts/make_samples.py fashion_mnist
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

OUT = Path(__file__).resolve().parent.parent / "hftransfer" / "samples"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def balanced(labels: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                   for c in np.unique(labels)]))


def png(array: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def fashion_mnist() -> None:
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_CLASSES)})
    for split, prefix, per_class in (("train", "train", 200), ("validation", "t10k", 50)):
        images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        chosen = balanced(labels, per_class, rng)
        rows = {"image": [{"bytes": png(images[i]), "path": None} for i in chosen],
                "label": [int(labels[i]) for i in chosen]}
        folder = OUT / "fashion_mnist"
        folder.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")
        print(f"fashion_mnist/{split}: {len(chosen)} images")


if __name__ == "__main__":
    for name in sys.argv[1:] or ["fashion_mnist"]:
        globals()[name]()
