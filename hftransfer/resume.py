"""Killed runs: resume from the last checkpoint, stage by stage.

With checkpoints on (`--save_strategy steps|epoch`), each stage's `Trainer` writes `output_dir/stage-NAME/
checkpoint-N`, and a finished stage leaves `stage-NAME/completed.safetensors` (the whole model after it) and
`completed.json` (its record). A re-run of the same command then does what the HF example scripts do: it finds the
last checkpoint and goes on from there, here per stage: finished stages are restored, not retrained, and the
interrupted one resumes from its last complete checkpoint (a checkpoint cut short by the kill is skipped).
`--resume_from_checkpoint PATH` names one; `--restart` ignores them all. (The final folder is written atomically
too: `outputs.Staging`.) Only the same command's stages come back: each stage folder records the identity of the run
that wrote it (its settings, data and checkpoint, `run_identity`), and a folder another command left in the output
folder (another checkpoint, other data, another learning rate) is removed with a warning, not restored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model

from .anatomy import ModelError
from .outputs import COMPLETED_RECORD, COMPLETED_WEIGHTS, STAGE_IDENTITY, stage_dir, stage_dirs, write_json_atomic

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
# Settings that do not change what a stage trains: a re-run that differs only in them is the same command
NOT_IDENTITY = {"output_dir", "resume_from_checkpoint", "restart", "serve_demo", "check_data", "local_rank",
                "disable_tqdm", "report_to", "run_name", "push_to_hub"}
NOT_IDENTITY_PREFIXES = ("logging_", "log_", "hub_", "save_")


def run_identity(settings: dict, data: dict[str, str], weights: str) -> str:
    """A run's identity for resuming: its settings (`RunArguments.to_dict()`) but those in `NOT_IDENTITY`, the
    fingerprints of its splits' rows and of the checkpoint's weights."""
    kept = {k: v for k, v in settings.items() if k not in NOT_IDENTITY and not k.startswith(NOT_IDENTITY_PREFIXES)}
    record = {"settings": kept, "data": data, "weights": weights}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest first, that were written to the end (weights and trainer state)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)
            if (p / "trainer_state.json").is_file() and any((p / w).is_file() for w in WEIGHTS)]


def mark_completed(model: torch.nn.Module, folder: Path, record: dict) -> None:
    """The model after a finished stage, and the stage's record; written atomically, the record last."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{COMPLETED_WEIGHTS}.partial"
    save_model(model, str(partial))
    os.replace(partial, folder / COMPLETED_WEIGHTS)
    write_json_atomic(folder / COMPLETED_RECORD, record)


def restore_completed(model: torch.nn.Module, folder: Path) -> dict | None:
    """Load a finished stage's model into `model` and return its record, or None when the stage did not finish."""
    record = folder / COMPLETED_RECORD
    if not record.is_file():
        return None
    try:
        missing, unexpected = model.load_state_dict(load_file(folder / COMPLETED_WEIGHTS), strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ModelError(f"{folder}: the saved stage does not fit this model ({str(err).splitlines()[-1].strip()}); "
                         "run with --restart") from None
    if unexpected or [k for k in missing if not k.endswith(("position_ids", "num_batches_tracked"))]:
        raise ModelError(f"{folder}: the saved stage does not fit this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); run with --restart")
    return json.loads(record.read_text())


class StageCheckpoints:
    """A run's checkpoints, stage by stage (on with `--save_strategy steps|epoch`, ignored with `--restart`)."""

    def __init__(self, args, restart: bool):
        self.args, self.restart = args, restart
        self.enabled = args.save_strategy != "no" and not restart
        self.identity = None  # `bind`

    def folder(self, stage_name: str) -> Path:
        return stage_dir(self.args.output_dir, stage_name)

    def trainer_output_dir(self, stage_name: str) -> str:
        """Where a stage's `Trainer` writes checkpoints: its own folder when there are any."""
        return str(self.folder(stage_name)) if self.args.save_strategy != "no" else self.args.output_dir

    def clear(self) -> None:
        """`--restart`: an interrupted run's stages must not come back."""
        if self.restart and self.args.should_save:
            for old in stage_dirs(self.args.output_dir):
                shutil.rmtree(old)

    def bind(self, identity: str) -> None:
        """This run's `run_identity`. A stage folder another command wrote is removed (by the main process), so that
        neither its finished model nor its checkpoints come back; a checkpoint named by --resume_from_checkpoint is
        kept, as asked."""
        self.identity = identity
        if not self.enabled:
            return
        named = Path(self.args.resume_from_checkpoint).resolve().parent if self.args.resume_from_checkpoint else None
        for folder in stage_dirs(self.args.output_dir):
            if self._written_by_this_command(folder) or folder.resolve() == named:
                continue
            logger.warning("%s was written by another command (another checkpoint, other data or other settings): "
                           "not resumed from, and removed", folder)
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)

    def _written_by_this_command(self, folder: Path) -> bool:
        try:
            return json.loads((folder / STAGE_IDENTITY).read_text())["identity"] == self.identity
        except (OSError, ValueError, KeyError, TypeError):  # none (written before identities, or removed just now)
            return False

    def begin(self, stage_name: str) -> None:
        """A stage starts training: its folder says which command's run it belongs to."""
        if self.args.save_strategy != "no" and self.args.should_save:
            self.folder(stage_name).mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder(stage_name) / STAGE_IDENTITY, {"identity": self.identity})

    def finished(self, model: torch.nn.Module, stage_name: str) -> dict | None:
        """The record of a stage an earlier, interrupted run of this command finished, its model loaded; else None."""
        if not self.enabled or not self._written_by_this_command(self.folder(stage_name)):
            return None
        record = restore_completed(model, self.folder(stage_name))
        if record is not None:
            logger.info("Stage '%s' was finished by an earlier run: restored from %s", stage_name,
                        self.folder(stage_name))
        return record

    def resume_from(self, stage_name: str) -> str | None:
        """`--resume_from_checkpoint PATH` when it is this stage's, else this stage's last complete checkpoint."""
        if not self.enabled:
            return None
        folder = self.folder(stage_name)
        given = self.args.resume_from_checkpoint
        if given and Path(given).is_dir():
            chosen = given if Path(given).resolve().parent == folder.resolve() else None
        else:
            found = complete_checkpoints(folder) if self._written_by_this_command(folder) else []
            chosen = str(found[0]) if found else None
        if chosen:
            logger.info("Resuming stage '%s' from %s (an earlier run of this command stopped there; --restart "
                        "starts over)", stage_name, chosen)
        return chosen

    def mark_finished(self, model: torch.nn.Module, stage_name: str, record: dict) -> None:
        if self.args.save_strategy != "no" and self.args.should_save:
            mark_completed(model, self.folder(stage_name), record)
