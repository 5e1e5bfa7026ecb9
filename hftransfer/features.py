"""Cached features: when the whole base is frozen, run it once over the data and train the head on what it returned.

Generic for any `transformers` classifier: the base module is swapped for `CachedBase`, which hands the model's own
forward the stored base outputs, so the head code, dropout and loss are the model's and the saved model is the plain
full model. Which base outputs the head reads (pooled output, first token, ...) is found by watching one real
forward; the swap is then checked against the real model on real inputs, and training falls back to the ordinary
frozen-base way, with a warning, if the two disagree (e.g. a head that reads `input_ids` itself).

The cache lives in `$HFTRANSFER_CACHE/features/`, keyed by checkpoint, weights, preprocessing and data content, and
is reused across runs. It stores un-augmented inputs: stages that use it never augment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .freezing import base_prefix
from .zoo import cache_root

logger = logging.getLogger(__name__)


@dataclass
class Layout:
    """Where each base output the head reads sits in the packed per-example feature row."""

    output_class: type
    fields: list[str]  # every field of the base output, in order (placeholders keep positions for `outputs[1]`)
    read: dict[str, tuple[int, ...] | None]  # field -> per-example shape, None where the base returned None

    def width(self) -> int:
        return sum(_numel(s) for s in self.read.values() if s is not None)

    def pack(self, output) -> torch.Tensor:
        parts = [output[name].flatten(1).float() for name, shape in self.read.items() if shape is not None]
        return torch.cat(parts, dim=1)

    def unpack(self, packed: torch.Tensor):
        values, start = {}, 0
        for name in self.fields:
            shape = self.read.get(name, ())
            if name not in self.read:
                values[name] = packed.new_zeros(len(packed), 0)  # unread: keeps tuple positions, costs nothing
            elif shape is None:
                values[name] = None
            else:
                end = start + _numel(shape)
                values[name] = packed[:, start:end].reshape(len(packed), *shape)
                start = end
        return self.output_class(**values)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class CachedBase(nn.Module):
    """Stands in for the frozen base: its first input is the packed features of the batch."""

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout

    def forward(self, *args, **kwargs):
        packed = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        return self.layout.unpack(packed)


def _watch_reads(output, seen: set):
    """A copy of `output` (a ModelOutput) that records which fields are read, by name or by position."""
    cls = type(output)

    class Watched(cls):
        def __getitem__(self, key):
            if isinstance(key, str):
                seen.add(key)
                return super().__getitem__(key)
            names = list(self.keys())
            picked = names[key] if isinstance(key, slice) else [names[key]]
            seen.update(picked)
            return super().__getitem__(key)

        def __getattribute__(self, name):
            if name in fields:
                seen.add(name)
            return super().__getattribute__(name)

    fields = [f for f in output.__dataclass_fields__]
    Watched.__name__ = cls.__name__
    return Watched(**{k: v for k, v in output.items()})


def discover_layout(model: nn.Module, batch: dict) -> Layout:
    """Run `model` on `batch`, record which base outputs its forward reads, then keep only those the logits need.

    Wrappers may touch every field (to build tuples, say); a field whose placeholder leaves the logits unchanged is
    not stored, so MobileNetV2 caches its 1,280 pooled values, not its 1,280 x 4 x 4 feature map.
    """
    base = getattr(model, base_prefix(model))
    seen: set[str] = set()
    captured = {}

    def hook(module, args, output):
        captured["output"] = output
        return _watch_reads(output, seen)

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    handle = base.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    output = captured["output"]
    fields = list(output.__dataclass_fields__)
    read = {name: (tuple(getattr(output, name).shape[1:]) if isinstance(getattr(output, name), torch.Tensor)
                   else None) for name in fields if name in seen}
    layout = Layout(type(output), fields, read)
    for name in [n for n, shape in read.items() if shape is not None]:
        smaller = Layout(layout.output_class, fields, {k: v for k, v in layout.read.items() if k != name})
        if smaller.width() and agrees(model, inputs, smaller):
            layout = smaller
    return layout


# ---------------------------------------------------------------- the persistent cache

def _weights_fingerprint(model_path: str) -> str:
    path = Path(model_path)
    if path.is_dir():
        return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(path.glob("*.safetensors")))
    return ""


def data_fingerprint(dataset) -> str:
    """A hash of the rows' content (image bytes or paths with their size and time, texts, labels)."""
    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=1000):
        for column in batch.column_names:
            digest.update(column.encode())
            for value in batch.column(column).to_pylist():
                if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
                    stat = os.stat(value["path"])
                    value = f"{value['path']}:{stat.st_size}:{stat.st_mtime_ns}"
                digest.update(repr(value).encode())
    return digest.hexdigest()


def cache_key(model_path: str, revision: str, processor, dataset_fingerprint: str, layout: Layout) -> str:
    processor_state = processor.to_dict() if hasattr(processor, "to_dict") else repr(processor)
    record = {"model": model_path, "revision": revision, "weights": _weights_fingerprint(model_path),
              "processor": processor_state, "data": dataset_fingerprint, "read": sorted(layout.read)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def extract(model: nn.Module, loader, layout: Layout, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model once over `loader`; return packed features and labels."""
    captured, features, labels = {}, [], []
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False):
            labels.append(batch.pop("labels"))
            _run_base_only(model, {k: v.to(model.device) for k, v in batch.items()}, captured)
            features.append(layout.pack(captured["output"]).cpu())
    return torch.cat(features), torch.cat(labels)


class _StopAfterBase(Exception):
    pass


def _run_base_only(model, inputs, captured) -> None:
    """Call the model as usual but stop right after its base: the head is not needed to extract features."""
    base = getattr(model, base_prefix(model))

    def stop(module, args, output):
        captured["output"] = output
        raise _StopAfterBase

    handle = base.register_forward_hook(stop)
    try:
        model(**inputs)
    except _StopAfterBase:
        pass
    finally:
        handle.remove()


def load_or_extract(model, loader, layout: Layout, key: str, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = cache_root() / "features" / f"{key}.safetensors"
    if path.is_file():
        stored = load_file(path)
        logger.info("%s: reusing cached features %s", desc, path)
        return stored["features"], stored["labels"]
    features, labels = extract(model, loader, layout, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(partial))
    os.replace(partial, path)  # atomic: a killed run leaves no half-written cache entry
    return features, labels


class FeatureDataset(torch.utils.data.Dataset):
    """Rows of packed features under the model's main input name, so `model(**batch)` reaches `CachedBase`."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, input_name: str):
        self.features, self.labels, self.input_name = features, labels, input_name

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {self.input_name: self.features[index], "labels": self.labels[index]}


class swapped_base:
    """Context manager: the model's base replaced by a `CachedBase` for the duration."""

    def __init__(self, model: nn.Module, layout: Layout):
        self.model, self.layout, self.prefix = model, layout, base_prefix(model)

    def __enter__(self):
        self.base = getattr(self.model, self.prefix)
        setattr(self.model, self.prefix, CachedBase(self.layout))
        return self.model

    def __exit__(self, *exc):
        setattr(self.model, self.prefix, self.base)


def agrees(model: nn.Module, inputs: dict, layout: Layout) -> bool:
    """Whether the cached path gives the real model's logits on `inputs`."""
    model.eval()
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        real = model(**inputs).logits
        captured = {}
        _run_base_only(model, inputs, captured)
        packed = layout.pack(captured["output"])
        try:
            with swapped_base(model, layout):
                cached = model(**{model.main_input_name: packed}).logits
        except Exception:  # the head needs something the layout left out
            return False
    return cached.shape == real.shape and torch.allclose(real, cached, atol=1e-4, rtol=1e-4)
