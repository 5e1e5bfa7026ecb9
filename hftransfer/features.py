"""Cached features: when the whole base is frozen, run it once over the data and train the head on what it returned.

Generic for any `transformers` classifier: the base module is swapped for `CachedBase`, which hands the model's own
forward the stored base outputs, so the head code, dropout and loss are the model's and the saved model is the plain
full model. Which base outputs the head reads (pooled output, first token, ...) is found by watching one real
forward; the swap is then checked against the real model on real inputs, and training falls back to the ordinary
frozen-base way, with a warning, if the two disagree (e.g. a head that reads `input_ids` itself).

The cache lives in `$HFTRANSFER_CACHE/features/`, keyed by checkpoint, weights, BatchNorm statistics, preprocessing
and data content, and is reused across runs once its first rows are checked against the base (`feature_store`). It
stores un-augmented inputs: stages that use it never augment.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm.auto import tqdm

from .anatomy import base_prefix
from .zoo import cache_root

logger = logging.getLogger(__name__)


class LayoutError(ValueError):
    """The model's forward cannot be split into a base output and a head that reads it."""


@dataclass
class Layout:
    """Where each base output the head reads sits in the packed per-example feature row."""

    output_class: type
    fields: list[str]  # every field of the base output, in order (placeholders keep positions for `outputs[1]`)
    read: dict[str, tuple[int, ...] | None]  # field -> per-example shape, None where the base returned None
    first_token: tuple[str, ...] = ()  # token sequences of which the head reads only the first: stored as that
    per_token: tuple[str, ...] = ()  # token sequences stored whole: their length changes from batch to batch

    def width(self) -> int:
        return sum(_numel(s) for s in self.read.values() if s is not None)

    def pack(self, output) -> torch.Tensor:
        parts = [(output[name][:, :1] if name in self.first_token else output[name]).flatten(1).float()
                 for name, shape in self.read.items() if shape is not None]
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
        return _watch_reads(output, seen) if hasattr(output, "__dataclass_fields__") else output

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    handle = base.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    output = captured.get("output")
    if not hasattr(output, "__dataclass_fields__"):  # timm under TimmWrapper: the base returns the logits
        raise LayoutError(f"{type(base).__name__}, {type(model).__name__}'s base, returns "
                          f"{type(output).__name__} rather than a model output the head reads: its head is inside it")
    fields = list(output.__dataclass_fields__)
    read = {name: (tuple(getattr(output, name).shape[1:]) if isinstance(getattr(output, name), torch.Tensor)
                   else None) for name in fields if name in seen}
    layout = Layout(type(output), fields, read)
    for name in [n for n, shape in read.items() if shape is not None]:
        smaller = Layout(layout.output_class, fields, {k: v for k, v in layout.read.items() if k != name})
        if smaller.width() and agrees(model, inputs, smaller):
            layout = smaller
    return _first_tokens(model, inputs, layout)


def _first_tokens(model: nn.Module, inputs: dict, layout: Layout) -> Layout:
    """Heads that read a token sequence mostly read its first token (DistilBERT's, DeBERTa's ContextPooler; ViT's,
    DeiT's and PVT's classifiers on the CLS token): store that alone, checked to give the model's own logits. For
    text it also makes the rows of batches of different lengths the same width; for a ViT-base it stores 768
    numbers an image instead of 151,296. A text sequence the head reads more of (a decoder's last real token, found from
    `input_ids`) stays whole and is marked `per_token`; an image sequence the head reads more of (Dinov2's classifier
    also averages the patch tokens) stays whole, its length fixed by the image size."""
    tokens = inputs.get("input_ids")
    text = tokens is not None and tokens.dim() == 2
    sequences = [n for n, shape in layout.read.items() if shape and len(shape) >= 2
                 and (shape[0] == tokens.shape[1] if text else len(shape) == 2 and shape[0] > 1)]
    for name in sequences:  # images: (tokens, hidden); a convnet's maps are (channels, height, width)
        read = {**layout.read, name: (1, *layout.read[name][1:])}
        trimmed = replace(layout, read=read, first_token=(*layout.first_token, name))
        if agrees(model, inputs, trimmed):
            layout = trimmed
    return replace(layout, per_token=tuple(n for n in sequences if text and n not in layout.first_token))


# ---------------------------------------------------------------- the persistent cache

def weights_fingerprint(model_path: str) -> str:
    """The weight files' names, sizes and times; one folder down where the top has none (a sentence-transformers
    1.x checkpoint keeps its encoder in `0_Transformer/`)."""
    path = Path(model_path)
    if not path.is_dir():
        return ""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*/*.safetensors"))
    return ";".join(f"{f.relative_to(path)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def data_fingerprint(dataset) -> str:
    """A hash of the rows' content (image bytes or paths with their size and time, texts, labels)."""
    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=1000):
        for column in batch.column_names:
            digest.update(column.encode())
            for value in batch.column(column).to_pylist():
                if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
                    stat = os.stat(value["path"])
                    value = f"{os.path.abspath(value['path'])}:{stat.st_size}:{stat.st_mtime_ns}"
                digest.update(repr(value).encode())
    return digest.hexdigest()


def statistics_fingerprint(model: nn.Module) -> str:
    """A hash of the model's BatchNorm running statistics, which staged training re-estimates on the data."""
    digest = hashlib.sha256()
    for name, buffer in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            digest.update(name.encode())
            digest.update(buffer.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def cache_key(model_path: str, revision: str, processor, dataset_fingerprint: str, layout: Layout,
              statistics: str, pooling: dict | None, numerics: dict) -> str:
    """`numerics`: what changes the features' rounding (`Precision.describe()`): device, autocast dtype, TF32."""
    record = {"model": model_path, "revision": revision, "weights": weights_fingerprint(model_path),
              "processor": _processor_state(processor), "data": dataset_fingerprint, "read": sorted(layout.read),
              "first_token": sorted(layout.first_token),
              "statistics": statistics, "pooling": pooling, "numerics": numerics}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _processor_state(processor):
    """An image processor's settings; a tokenizer's, with its post-processor, which frames a text or a pair with
    special tokens (a pair's separator may be set by the run) and which the tokenizer's repr leaves out."""
    if hasattr(processor, "to_dict"):
        return processor.to_dict()
    backend = getattr(processor, "backend_tokenizer", None)
    return [repr(processor), str(backend.post_processor) if backend is not None else None]


@dataclass(frozen=True)
class Precision:
    """The arithmetic features are extracted in: the training run's own (its autocast dtype on its device), for
    the training and the validation split alike. After a stage, Accelerate leaves the model's forward wrapped in
    its autocast, so a split extracted later would otherwise be computed differently from one extracted before."""

    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: full precision
    tf32: bool = False

    @classmethod
    def of(cls, args) -> Precision:
        """From the precision the trainer will use: its flags, else `accelerate launch`'s (`mixed_precision`)."""
        chosen = getattr(args, "mixed_precision", None) or ("bf16" if args.bf16 else "fp16" if args.fp16 else "no")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(chosen)
        return cls(args.device, dtype, bool(args.tf32))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def describe(self) -> dict:
        return {"device": self.device.type, "autocast": str(self.dtype or "float32"), "tf32": self.tf32}


def extract(model: nn.Module, loader, layout: Layout, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model once over `loader`; return packed features and labels. After the first batch the base's
    BatchNorm layers are folded into their convolutions where that gives the same features (see `folded_base`).
    Each batch is copied into matrices made once for all rows: kept batch by batch, their small blocks sat between
    the batches' freed pixels and activations, which the allocator then never gave back (60,000 Fashion-MNIST
    images at 112 px: 10.8 GB resident for 307 MB of features)."""
    model.eval()
    batches = iter(tqdm(loader, desc=desc, leave=False))
    first = next(batches, None)
    if first is None:
        return torch.zeros(0, layout.width()), torch.zeros(0, dtype=torch.long)
    total = len(loader.sampler)
    first_labels = first.pop("labels")
    labels = torch.empty((total, *first_labels.shape[1:]), dtype=first_labels.dtype)
    inputs = {k: v.to(model.device) for k, v in first.items()}
    with torch.inference_mode():
        first_features = base_features(model, inputs, layout).cpu()
    matrix = torch.empty(total, first_features.shape[1], dtype=first_features.dtype)
    matrix[:len(first_features)], labels[:len(first_labels)] = first_features, first_labels
    done = len(first_features)
    probe = {k: v[:8] for k, v in inputs.items()}  # a few examples find and check the folds
    faster = folded_base(model, probe, layout, first_features[:8])
    del first, inputs, first_features
    with torch.inference_mode(), swapped_base(model, faster) if faster is not None else nullcontext():
        for batch in batches:
            batch_labels = batch.pop("labels")
            rows = base_features(model, {k: v.to(model.device) for k, v in batch.items()}, layout)
            matrix[done:done + len(rows)], labels[done:done + len(rows)] = rows, batch_labels
            done += len(rows)
    return matrix[:done], labels[:done]


def base_features(model, inputs, layout: Layout) -> torch.Tensor:
    captured = {}
    _run_base_only(model, inputs, captured)
    return layout.pack(captured["output"])


def folded_base(model: nn.Module, inputs: dict, layout: Layout, expected: torch.Tensor) -> nn.Module | None:
    """A copy of the frozen base with every BatchNorm that reads a convolution's output folded into that
    convolution's weights: one pass over each activation instead of two, 1.3x faster on MobileNetV2 on a CPU.

    Pairs are found by watching one real forward (a BatchNorm whose input is the very tensor a convolution
    returned), then the copy must give `expected` on the same inputs (within float rounding), or it is not used.
    Returns None where nothing folds or the copy disagrees.
    """
    base = getattr(model, base_prefix(model))
    pairs = _conv_bn_pairs(model, inputs, base)
    if not pairs:
        return None
    folded = copy.deepcopy(base)
    for conv_name, norm_name in pairs:
        conv = folded.get_submodule(conv_name)
        fused = fuse_conv_bn_eval(conv, folded.get_submodule(norm_name))
        if conv.weight.is_contiguous(memory_format=torch.channels_last):
            fused = fused.to(memory_format=torch.channels_last)
        folded.set_submodule(conv_name, fused)
        folded.set_submodule(norm_name, nn.Identity())
    with torch.inference_mode(), swapped_base(model, folded):
        agree = torch.allclose(base_features(model, inputs, layout).cpu(), expected, atol=1e-4, rtol=1e-4)
    if not agree:
        logger.info("Folding BatchNorm into convolutions changes %s's features: extracting without it",
                    type(base).__name__)
        return None
    logger.info("Feature extraction: %d BatchNorm layers folded into their convolutions", len(pairs))
    return folded


def _conv_bn_pairs(model: nn.Module, inputs: dict, base: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm's input is the convolution's output, each module
    called once in a forward (a module used twice cannot be folded for one of its uses only)."""
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    names = {module: name for name, module in base.named_modules()}
    calls, outputs, pairs, handles = Counter(), {}, [], []

    def after_conv(module, args, output):
        calls[module] += 1
        outputs[id(output)] = (module, output)  # the tensor is kept so that its id is not reused

    def before_norm(module, args):
        calls[module] += 1
        producer = outputs.get(id(args[0]))
        if producer is not None and producer[1] is args[0]:
            pairs.append((producer[0], module))

    for module in names:
        if isinstance(module, conv_types):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.inference_mode():
            _run_base_only(model, inputs, {})
    finally:
        for handle in handles:
            handle.remove()
    return [(names[conv], names[norm]) for conv, norm in pairs if calls[conv] == 1 and calls[norm] == 1]


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


def cache_path(key: str) -> Path:
    return cache_root() / "features" / f"{key}.safetensors"


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    stored = load_file(path)
    return stored["features"], stored["labels"]


def store(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": features.cpu().contiguous(), "labels": labels.cpu().contiguous()}, str(partial))
    os.replace(partial, path)  # atomic: a killed run leaves no half-written cache entry


def share(order: list[int], rank: int, world: int) -> list[int]:
    """This process's rows: every world-th of `order`, so that lengths (shortest first) stay balanced."""
    return order[rank::world]


def gather_shares(features: torch.Tensor, labels: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's share, back in the order `share` took them from: each process ends with the whole cache,
    each row extracted once."""
    if world == 1:
        return features, labels
    from accelerate.utils import gather_object

    parts = gather_object([(features.cpu(), labels.cpu())])
    total = sum(len(p[1]) for p in parts)
    logger.info("Features: %d rows, extracted by %d processes (%s rows)", total, world,
                " + ".join(str(len(p[1])) for p in parts))
    whole = torch.empty(total, features.shape[1], dtype=features.dtype)
    whole_labels = torch.empty(total, *labels.shape[1:], dtype=labels.dtype)
    for rank, (part, part_labels) in enumerate(parts):
        whole[rank::world], whole_labels[rank::world] = part, part_labels
    return whole, whole_labels


class FeatureDataset(torch.utils.data.Dataset):
    """Rows of packed features under the model's main input name, so `model(**batch)` reaches `CachedBase`.
    A batch is one indexing of the whole matrix (`__getitems__`, read by PyTorch's loader with `collate_batch`),
    not a row-by-row collate: the head stage runs 10 to 100 epochs of tiny steps, and the matrix may sit on the
    device it trains on."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, input_name: str):
        self.features, self.labels, self.input_name = features, labels, input_name

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {self.input_name: self.features[index], "labels": self.labels[index]}

    def __getitems__(self, indices: list[int]) -> dict:
        rows = torch.as_tensor(indices, device=self.features.device)
        return {self.input_name: self.features[rows], "labels": self.labels[rows]}


def collate_batch(batch: dict) -> dict:
    """The loader's collate for `FeatureDataset`: its batches come whole."""
    return batch


class swapped_base:
    """Context manager: the model's base replaced by `replacement` (a `CachedBase`, a folded copy) for the
    duration."""

    def __init__(self, model: nn.Module, replacement: nn.Module):
        self.model, self.replacement, self.prefix = model, replacement, base_prefix(model)

    def __enter__(self):
        self.base = getattr(self.model, self.prefix)
        setattr(self.model, self.prefix, self.replacement)
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
            with swapped_base(model, CachedBase(layout)):
                cached = model(**{model.main_input_name: packed}).logits
        except Exception:  # the head needs something the layout left out
            return False
    return cached.shape == real.shape and torch.allclose(real, cached, atol=1e-4, rtol=1e-4)
