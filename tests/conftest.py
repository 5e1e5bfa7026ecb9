"""Shared fixtures: tiny random-init checkpoints of several families, and small image folders made on the fly.

Logic is tested on tiny models; a few tests run the real zoo checkpoint end to end. The zoo and the feature cache
are built in a per-session folder, so the suite leaves nothing behind and depends on no earlier run.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hftransfer.fastpath import imports_without_gc

with imports_without_gc():  # as the recipes do: accelerate's gc.collect() after each stage then skips the libraries
    import datasets
    import peft  # noqa: F401
    import transformers  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "long: a real run of most of a minute or more, started first (below)")
    _one_thread_a_worker()


def pytest_collection_finish(session):
    """What collecting the test modules built is frozen too, as the recipes freeze what their imports built: each
    training stage starts and ends in accelerate's gc.collect(), which otherwise walks all of it every time (18 tests
    of test_architectures and test_features: 80 full collections, 4.1 s before, 2.5 s after)."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items):
    """The long runs first, the rest in their order: started near the end, the longest (two minutes) kept one worker
    busy long after the other had finished (the suite took 664 s on this project's machine, 608 s with them first)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def _one_thread_a_worker():
    """Under `pytest -n 2` (`make test`: two workers on two cores) each worker trains on one thread, and so do the
    recipes it starts (they keep a thread count set in the launching shell): two workers of two threads each slow
    each other down, and a run resumed in the test process must compute as the one it resumes did."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    os.environ["HFTRANSFER_CACHE"] = str(tmp_path_factory.mktemp("hftransfer-cache"))
    # The tables `datasets` builds from the tests' files: in the session's folder, not the user's cache (466 MB
    # there after a few dozen runs). This process read the variable when it imported datasets; recipes it launches
    # read it from the environment.
    datasets_cache = tmp_path_factory.mktemp("datasets-cache")
    os.environ["HF_DATASETS_CACHE"] = str(datasets_cache)
    datasets.config.HF_DATASETS_CACHE = datasets_cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    yield


def tiny_image_model(family: str, num_labels: int = 3, image_size: int = 32):
    """A random-init classifier of `family` small enough to train in a second."""
    import transformers as tf

    labels = {i: f"old_{i}" for i in range(num_labels)}
    if family == "vit":
        config = tf.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                              image_size=image_size, patch_size=8, id2label=labels)
        return tf.ViTForImageClassification(config)
    if family == "mobilenet_v2":
        config = tf.MobileNetV2Config(depth_multiplier=0.35, image_size=image_size, tf_padding=False, id2label=labels)
        return tf.MobileNetV2ForImageClassification(config)
    if family == "resnet":
        config = tf.ResNetConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], embedding_size=8, id2label=labels)
        return tf.ResNetForImageClassification(config)
    if family == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], id2label=labels)
        return tf.ConvNextForImageClassification(config)
    raise ValueError(family)


IMAGE_FAMILIES = ["vit", "mobilenet_v2", "resnet", "convnext"]


def save_tiny_checkpoint(folder: Path, family: str, num_labels: int = 3, image_size: int = 32,
                         processor=None) -> Path:
    from transformers import ViTImageProcessorPil

    model = tiny_image_model(family, num_labels, image_size)
    model.save_pretrained(folder)
    (processor or ViTImageProcessorPil(size={"height": image_size, "width": image_size})).save_pretrained(folder)
    return folder


def shape_image(label: int, rng, size: int = 32) -> np.ndarray:
    """Class 0: bright square, 1: horizontal stripes, 2: vertical stripes, 3+: checkerboards; with noise."""
    image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    if label == 0:
        mask = (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)
    elif label == 1:
        mask = (yy // 4) % 2 == 0
    elif label == 2:
        mask = (xx // 4) % 2 == 0
    else:
        mask = ((yy // (label + 1)) + (xx // (label + 1))) % 2 == 0
    image[mask] = 255 - image[mask]
    return image


def make_image_folder(root: Path, per_class: int = 8, classes=("square", "hstripes", "vstripes"), seed: int = 0,
                      size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shape_image(label, rng, size)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folders(tmp_path):
    return (make_image_folder(tmp_path / "train", 12, seed=0), make_image_folder(tmp_path / "validation", 4, seed=1))


@pytest.fixture(scope="session")
def mobilenet_zoo():
    from hftransfer import zoo

    return zoo.prepare("mobilenet_v2")


def tiny_text_model(family: str, num_labels: int = 2):
    import transformers as tf

    if family == "bert":
        config = tf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=128, num_labels=num_labels)
        return tf.BertForSequenceClassification(config)
    if family == "distilbert":
        config = tf.DistilBertConfig(vocab_size=30522, dim=32, n_layers=3, n_heads=2, hidden_dim=37,
                                     max_position_embeddings=128, num_labels=num_labels)
        return tf.DistilBertForSequenceClassification(config)
    if family == "deberta-v2":  # its ContextPooler reads the first token of the hidden states itself
        config = tf.DebertaV2Config(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=37, max_position_embeddings=128, pooler_hidden_size=32,
                                    num_labels=num_labels)
        return tf.DebertaV2ForSequenceClassification(config)
    raise ValueError(family)


def save_tiny_text_checkpoint(folder: Path, family: str) -> Path:
    """A tiny random model with the real MiniLM (BERT uncased) tokenizer."""
    from hftransfer import zoo
    from transformers import AutoTokenizer

    tiny_text_model(family).save_pretrained(folder)
    AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2")).save_pretrained(folder)
    return folder


POSITIVE = ["a wonderful, moving film", "brilliant acting and a great story", "I loved every minute",
            "funny, warm and beautifully shot", "a delight from start to finish", "superb and touching"]
NEGATIVE = ["a dull, boring mess", "terrible acting and a weak plot", "I hated every minute",
            "tedious, flat and badly shot", "a waste of two hours", "awful and lifeless"]


def pair_rows() -> list[dict]:
    """Sentence pairs (`premise`, `hypothesis`): does the hypothesis say the review's sentiment ("yes" / "no")."""
    return [{"premise": p, "hypothesis": h, "label": "yes" if (p in POSITIVE) == (h == "it was good") else "no"}
            for p in POSITIVE + NEGATIVE for h in ("it was good", "it was bad")]


def train_pair_model(root: Path) -> tuple[Path, Path]:
    """A tiny BERT trained on `pair_rows` (twice over) with `--text_column_names premise,hypothesis`, validated on
    them once: (its output folder, the validation file)."""
    import json

    from hftransfer.args import parse_args
    from hftransfer.tasks import TextTask
    from hftransfer.training import TransferRun

    data, held_out = root / "pairs.jsonl", root / "held_out.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in pair_rows() * 2))
    held_out.write_text("\n".join(json.dumps(r) for r in pair_rows()))
    run = parse_args(["--model_name_or_path", str(save_tiny_text_checkpoint(root / "ckpt", "bert")), "--train_file",
                      str(data), "--validation_file", str(held_out), "--text_column_names", "premise,hypothesis",
                      "--output_dir", str(root / "out"), "--num_train_epochs", "2", "--head_epochs", "1",
                      "--disable_tqdm", "true", "--check_data", "false"])
    TransferRun(run, TextTask(run.data)).execute()
    return root / "out", held_out


def write_reviews_csv(path: Path, repeat: int = 4, extra_rows: list[str] = ()) -> Path:
    lines = ["text,label"]
    for _ in range(repeat):
        lines += [f'"{t}",good' for t in POSITIVE] + [f'"{t}",bad' for t in NEGATIVE]
    lines += list(extra_rows)
    path.write_text("\n".join(lines) + "\n")
    return path
