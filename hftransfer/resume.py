"""Killed runs: resume from the last checkpoint, stage by stage, and publish output files atomically.

With checkpoints on (`--save_strategy steps|epoch`), each stage's `Trainer` writes `output_dir/stage-NAME/
checkpoint-N`, and a finished stage leaves `stage-NAME/completed.safetensors` (the whole model after it) and
`completed.json` (its record). A re-run of the same command then does what the HF example scripts do: it finds the
last checkpoint and goes on from there, here per stage: finished stages are restored, not retrained, and the
interrupted one resumes from its last complete checkpoint (a checkpoint cut short by the kill is skipped).
`--resume_from_checkpoint PATH` names one; `--restart` ignores them all.

The final folder is written into `output_dir/.saving/` and each file then moved into place with `os.replace`, so a
kill leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model

from .outputs import STAGING

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


def stage_dir(output_dir: str | Path, stage_name: str) -> Path:
    return Path(output_dir) / f"stage-{stage_name}"


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
    partial = folder / "completed.safetensors.partial"
    save_model(model, str(partial))
    os.replace(partial, folder / "completed.safetensors")
    write_json_atomic(folder / "completed.json", record)


def restore_completed(model: torch.nn.Module, folder: Path) -> dict | None:
    """Load a finished stage's model into `model` and return its record, or None when the stage did not finish."""
    record = folder / "completed.json"
    if not record.is_file():
        return None
    missing, unexpected = model.load_state_dict(load_file(folder / "completed.safetensors"), strict=False)
    if unexpected or [k for k in missing if not k.endswith(("position_ids", "num_batches_tracked"))]:
        raise RuntimeError(f"{folder}: the saved stage does not fit this model (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); run with --restart")
    return json.loads(record.read_text())


def write_json_atomic(path: Path, data) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(partial, path)


def staging_dir(output_dir: str | Path) -> Path:
    staging = Path(output_dir) / STAGING
    if staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, output_dir: str | Path) -> None:
    """Move every file from `staging` into `output_dir` (same file system: each move is atomic)."""
    output_dir = Path(output_dir)
    for source in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = output_dir / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    shutil.rmtree(staging)
