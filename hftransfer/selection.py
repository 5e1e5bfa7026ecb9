"""Which epoch of a stage is kept, and how much each class weighs in the loss.

Every stage that trains is evaluated on the validation set after each epoch (nearly free on cached features: the
head's forward over a stored matrix). `BestEpoch` keeps a copy of what the stage trains at its best evaluation and
puts it back when the stage ends, so the next stage starts from it and `eval_results.json` describes the model that
is saved; it also stops a stage early after `patience` evaluations without improvement. Only the parameters that
train and the floating-point buffers (BatchNorm statistics) are copied, to CPU memory: a head stage's copy is the
head's few thousand numbers.

`ClassLoss` adjusts the training loss for class sizes: balanced weights in scikit-learn's sense, n / (classes x
n_class), or logit adjustment (each class's log frequency added to its logit while training). Which one the
defaults use, and from what imbalance, was measured: README, "Imbalanced classes".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

# beside each checkpoint of a stage: where its selection stood, so a resumed stage selects as if never stopped
SELECTION_RECORD, SELECTION_WEIGHTS = "best_epoch.json", "best_epoch.safetensors"


class BestEpoch(TrainerCallback):
    """After each evaluation: a copy of the trained state when `metric` improved (ties go to the lower loss), a stop
    after `patience` evaluations without improvement (0: never). At the end of training, the best copy goes back."""

    def __init__(self, metric: str, patience: int, keep: bool = True):
        self.metric, self.patience, self.keep = f"eval_{metric.removeprefix('eval_')}", patience, keep
        self.best: tuple[float, float] | None = None  # (metric, -loss): larger is better
        self.best_epoch: float | None = None
        self.last_epoch: float | None = None
        self.stale = 0
        self._copy: dict[str, torch.Tensor] = {}

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics or self.metric not in metrics:
            return
        score = (metrics[self.metric], -metrics.get("eval_loss", 0.0))
        self.last_epoch = round(state.epoch or 0.0, 4)
        if self.best is None or score > self.best:
            self.best, self.best_epoch, self.stale = score, self.last_epoch, 0
            if self.keep:
                self._copy = _trained_state(model)
        else:
            self.stale += 1
            if self.patience and self.stale >= self.patience:
                logger.info("Early stopping at epoch %g: %s has not improved for %d evaluations "
                            "(--early_stopping_patience)", self.last_epoch, self.metric, self.stale)
                control.should_training_stop = True

    def save_to(self, folder: Path) -> None:
        """Into a checkpoint's folder, before the `Trainer` writes the state that marks it complete
        (`TransferTrainer._save_checkpoint`): where the selection stands."""
        folder.mkdir(parents=True, exist_ok=True)
        if self._copy:
            save_file({name: value.contiguous() for name, value in self._copy.items()}, folder / SELECTION_WEIGHTS)
        (folder / SELECTION_RECORD).write_text(json.dumps({"best": self.best, "best_epoch": self.best_epoch,
                                                           "last_epoch": self.last_epoch, "stale": self.stale}))

    def on_train_begin(self, args, state, control, **kwargs):
        """A stage resumed from a checkpoint picks up the selection saved beside it."""
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not state.global_step or not (folder / SELECTION_RECORD).is_file():
            return
        record = json.loads((folder / SELECTION_RECORD).read_text())
        self.best = tuple(record["best"]) if record["best"] else None
        self.best_epoch, self.last_epoch, self.stale = record["best_epoch"], record["last_epoch"], record["stale"]
        weights = folder / SELECTION_WEIGHTS
        self._copy = load_file(weights) if self.keep and weights.is_file() else {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.keep and self._copy and self.best_epoch != self.last_epoch:
            with torch.no_grad():
                for name, value in _named_state(model):
                    if name in self._copy:
                        value.copy_(self._copy[name])
            logger.info("Kept the best epoch, %g of %g: %s %.4f", self.best_epoch, self.last_epoch, self.metric,
                        self.best[0])
        self._copy = {}

    def summary(self) -> dict:
        """What the stage's record says about its selection."""
        if self.best is None:
            return {}
        return {"selection_metric": self.metric, "best_epoch": self.best_epoch, "best_metric": self.best[0],
                "last_evaluated_epoch": self.last_epoch, "kept_best_epoch": self.keep}


def _named_state(model):
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            yield name, buffer


def _trained_state(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().to("cpu", copy=True) for name, value in _named_state(model)}


@dataclass
class ClassLoss:
    """Cross-entropy adjusted for class sizes: `weights` per class ("balanced"), or `offsets` added to the logits
    in training only ("logit_adjusted": the log of each class's frequency, so at prediction the plain logits carry a
    margin that grows as a class gets rarer; Menon et al. 2021, "Long-tail learning via logit adjustment")."""

    weights: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @classmethod
    def for_counts(cls, mode: str, counts: list[int] | None) -> ClassLoss | None:
        """None for "none" and for multi-label runs (counts None): the model's own loss."""
        if counts is None or mode == "none":
            return None
        present = torch.tensor([max(count, 1) for count in counts], dtype=torch.float)
        if mode == "balanced":  # a class absent from training (refused earlier by `data`) weighs 1
            return cls(weights=torch.where(torch.tensor(counts) > 0, present.sum() / (len(counts) * present), 1.0))
        return cls(offsets=torch.log(present / present.sum()))

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.offsets is not None:
            logits = logits + self.offsets.to(logits.device)
        weights = None if self.weights is None else self.weights.to(logits.device)
        return torch.nn.functional.cross_entropy(logits, labels, weight=weights)


def imbalance_ratio(counts: list[int]) -> float:
    """The largest class over the smallest (classes present in training)."""
    present = [count for count in counts if count]
    return max(present) / min(present) if present else 1.0
