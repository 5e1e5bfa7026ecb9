"""A run's feature cache: whether a stage can train on it, and each split's features, extracted where training runs.

The mechanics (layout discovery, the swap, extraction, the files) are `features`; this is the run's use of them.
Features are extracted in the run's precision on the training device, each process its share, and every process
ends with the whole matrix (one disk write, by the main process). Kept on the training device, a head stage's batches
are one indexing of the matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object

from . import anatomy, features, hardware
from .anatomy import POOLING_KEY
from .zoo import resolve

logger = logging.getLogger(__name__)
CHECKED_ROWS = 4  # stored rows checked against the base before reuse
# Rows extracted in another batch (other padding, a folded BatchNorm, bf16 autocast) differ by under 1% (0.9% for
# MiniLM in bf16 on a CPU, README); a base that changed differs by tens of percent.
STALE_ERROR = 0.05


@dataclass
class Source:
    """Where the inputs come from, for the cache key: checkpoint, revision, processor, and the raw splits."""

    model_name_or_path: str
    revision: str
    processor: object
    splits: dict  # split -> raw `Dataset`, hashed by content


class FeatureStore:
    """The cache of one run. `inputs` are the preprocessed, un-augmented splits; `lengths` their lengths (text)."""

    def __init__(self, args, source: Source, inputs: dict, lengths: dict, collator):
        self.args, self.source, self.inputs, self.lengths, self.collator = args, source, inputs, lengths, collator
        self._layout_found = False
        self._layout = None
        self.unavailable: str | None = None  # why there is no layout, once `layout` has looked
        self._features: dict[str, features.FeatureDataset] = {}

    def serves(self, model, stage_name: str, cache_features: bool, choices) -> bool:
        """Whether `model` as now frozen trains on cached features in stage `stage_name`: the whole base frozen, and
        a layout that reproduces the model's own logits. Decided once per stage, recorded in `choices`."""
        if not cache_features:
            return False  # --cache_features false: the user's
        head = {n for g in anatomy.param_groups(model) if g.name == "head" for n in g.params}
        if any(p.requires_grad for n, p in model.named_parameters() if n not in head):
            return False  # a stage that trains the base: nothing to cache
        found = self.layout(model) is not None
        if not found:
            logger.warning("%s: training on the frozen base without a cache", self.unavailable)
        choices.add(f"cached_features ({stage_name})", found, "the frozen base's stored output reproduces the "
                    "model's logits" if found else "the frozen base cannot be stood in for (see the warning above)")
        return found

    def layout(self, model):
        """How the head reads the base (found once), or None where the cache cannot stand in for the base; then
        `unavailable` says why (the stage that would have used the cache warns, the data check names it)."""
        if not self._layout_found:
            self._layout, self.unavailable = self._discover(model)
            self._layout_found = True
        return self._layout

    def _discover(self, model):
        name = type(model).__name__
        if hardware.fsdp_enabled(self.args):
            return None, "FSDP: no feature cache (the base it would stand in for is what FSDP wraps and shards)"
        held_out = self.inputs["validation"]
        rows = [held_out[i] for i in range(min(4, len(held_out)))]
        batch = {k: v.to(self.args.device) for k, v in self.collator(rows).items()}
        try:
            layout = features.discover_layout(model, {k: v for k, v in batch.items() if k != "labels"})
        except (features.LayoutError, RuntimeError, TypeError, ValueError, AttributeError) as err:
            # a structure the cache cannot split is never a crash: the frozen base serves, only slower
            return None, f"No feature cache for {name} ({type(err).__name__}: {err})"
        if not features.agrees(model, batch, layout):
            return None, f"Cached features do not reproduce {name}'s own outputs"
        if layout.per_token:
            return None, (f"{name}'s head reads whole token sequences ({', '.join(layout.per_token)}), whose length "
                          "changes from batch to batch")
        return layout, None

    def features(self, model, split: str) -> features.FeatureDataset:
        """The split's features, from the disk cache when every process finds them there and its first rows are what
        the base computes now, else extracted."""
        # keyed by the BatchNorm statistics too: the data-quality pass reads the pretrained base's features, and
        # --calibrate_bn changes them before the head stage
        memo = (split, features.statistics_fingerprint(model))
        if memo not in self._features:
            layout = self.layout(model)
            precision = features.Precision.of(self.args)
            path = features.cache_path(self._on_main_process(lambda: self._key(model, split, layout, precision)))
            found = [path.is_file()]
            stored = None
            if all(gather_object(found) if self.args.world_size > 1 else found):
                stored = features.load(path)
            if stored is not None and self._on_main_process(
                    lambda: self._still_holds(model, split, stored[0], layout, precision)):
                logger.info("Features (%s): reusing cached features %s", split, path)
                matrix, labels = stored
            else:
                matrix, labels = self._extract(model, split, layout, precision)
                if self.args.should_save:
                    features.store(path, matrix, labels)
            device = self.args.device
            self._features[memo] = features.FeatureDataset(matrix.to(device), labels.to(device),
                                                           model.main_input_name)
        return self._features[memo]

    def _still_holds(self, model, split: str, matrix: torch.Tensor, layout, precision) -> bool:
        """Whether stored features are what the base computes now, on the first rows: the key cannot see all that
        changes the base (weights the checkpoint lacked, initialised by each run's seed; a Hub revision that moved)."""
        rows = self.row_order(split)[:CHECKED_ROWS]
        batch = self.collator([self.inputs[split][i] for i in rows])
        model.eval()
        with torch.inference_mode(), precision.autocast():
            now = features.base_features(model, {k: v.to(self.args.device) for k, v in batch.items()
                                                 if k != "labels"}, layout).cpu()
        stored = matrix[:len(rows)]
        if now.shape != stored.shape:
            difference = f"{stored.shape[1]} numbers an example stored, {now.shape[1]} computed"
        else:
            error = ((now - stored).norm(dim=1) / stored.norm(dim=1).clamp_min(1e-6)).max().item()
            if error <= STALE_ERROR:
                return True
            difference = f"relative error {error:.2g} on its first rows"
        logger.warning("The cached features of %s differ from what the base computes now (%s): extracting them "
                       "again", split, difference)
        return False

    def row_order(self, split: str) -> list[int]:
        """The dataset row of each feature row: extraction runs shortest inputs first where lengths vary."""
        lengths = self.lengths[split]
        return list(range(len(self.inputs[split]))) if lengths is None else np.argsort(lengths, kind="stable").tolist()

    def _key(self, model, split: str, layout, precision) -> str:
        source = self.source
        return features.cache_key(resolve(source.model_name_or_path), source.revision, source.processor,
                                  features.data_fingerprint(source.splits[split]), layout,
                                  features.statistics_fingerprint(model), getattr(model.config, POOLING_KEY, None),
                                  precision.describe())

    def _on_main_process(self, compute):
        """`compute()` on the main process only (hashing all the data once, not once per process), shared."""
        if self.args.world_size == 1:
            return compute()
        value = [compute() if self.args.process_index == 0 else None]
        broadcast_object_list(value, from_process=0)
        return value[0]

    def _extract(self, model, split: str, layout, precision):
        dataset, args = self.inputs[split], self.args
        # shortest inputs first where lengths vary: features and labels stay paired, their order is free
        rows = features.share(self.row_order(split), args.process_index, args.world_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.per_device_eval_batch_size, sampler=rows,
                                             collate_fn=self.collator, num_workers=args.dataloader_num_workers,
                                             pin_memory=args.dataloader_pin_memory and precision.device.type
                                             == "cuda", persistent_workers=False)
        with precision.autocast():
            matrix, labels = features.extract(model, loader, layout, f"Features ({split})")
        return features.gather_shares(matrix, labels, args.world_size)

    @staticmethod
    def trainer_settings(args) -> dict:
        """Trainer settings over cached features: whole batches indexed from the matrix where it sits (no workers
        to fork every epoch, nothing to pin: it may already be on the device)."""
        return {"args": replace(args, dataloader_num_workers=0, dataloader_pin_memory=False),
                "data_collator": features.collate_batch}
