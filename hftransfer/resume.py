"""Killed runs: resume from the last checkpoint, stage by stage.

With checkpoints on (`--save_strategy steps|epoch`), each stage's `Trainer` writes `output_dir/stage-NAME/
checkpoint-N`, and a finished stage leaves `stage-NAME/completed.safetensors` (the whole model after it) and
`completed.json` (its record). A re-run of the same command then does what the HF example scripts do: it finds the
last checkpoint and goes on from there, here per stage: finished stages are restored, not retrained, and the
interrupted one resumes from its last complete checkpoint (a checkpoint cut short by the kill is skipped).
`--resume_from_checkpoint PATH` names one; `--restart` ignores them all. (The final folder is written atomically
too: `outputs.Staging`.) Only the same command's stages come back: the output folder records the identity of the run
that wrote its stage folders (its settings, data and checkpoint, `run_identity`), and stage folders another command
left there (another checkpoint, other data, another learning rate) are removed with a warning, not restored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model

from .anatomy import ModelError
from .outputs import (COMPLETED_RECORD, COMPLETED_WEIGHTS, RUN_IDENTITY, STAGE_PREFIX, read_json, stage_dir,
                      stage_dirs, write_json_atomic)

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
# Settings that do not change what a stage trains: a re-run that differs only in them is the same command
NOT_IDENTITY = {"output_dir", "resume_from_checkpoint", "restart", "serve_demo", "check_data", "local_rank",
                "disable_tqdm", "report_to", "run_name", "push_to_hub", "cache_dir", "per_device_eval_batch_size",
                "eval_steps", "eval_delay", "eval_accumulation_steps", "torch_empty_cache_steps"}
NOT_IDENTITY_PREFIXES = ("logging_", "log_", "hub_", "save_", "dataloader_")
PATH_SETTINGS = ("model_name_or_path", "train_dir", "validation_dir", "train_file", "validation_file", "dataset_name")


def run_identity(run, splits) -> dict:
    """What makes a run the same command for resuming: its settings (`RunArguments`) but those in `NOT_IDENTITY`,
    local paths made absolute (a `zoo:` name its folder), the rows of its splits and the checkpoint's weight files."""
    from .features import data_fingerprint, weights_fingerprint
    from .zoo import resolve

    settings = {k: v for k, v in run.to_dict().items()
                if k not in NOT_IDENTITY and not k.startswith(NOT_IDENTITY_PREFIXES)}
    for key in PATH_SETTINGS:
        if settings.get(key):
            local = Path(resolve(settings[key]) if key == "model_name_or_path" else settings[key])
            settings[key] = str(local.resolve()) if local.exists() else settings[key]
    data = {name: data_fingerprint(rows) for name, rows in splits.items()}
    record = {"settings": settings, "data": data, "weights": weights_fingerprint(resolve(run.model.model_name_or_path))}
    return json.loads(json.dumps(record, sort_keys=True, default=str))  # as it reads back from the file


def _differences(old: dict, new: dict) -> str:
    """What differs between two identities, for the warning: settings by name, then data and weights."""
    settings_old, settings_new = old.get("settings", {}), new["settings"]
    names = [k for k in sorted(set(settings_old) | set(settings_new)) if settings_old.get(k) != settings_new.get(k)]
    parts = [f"{k} ({settings_old.get(k)!r} -> {settings_new.get(k)!r})" for k in names[:5]]
    parts += [f"the {split} data's rows" for split in sorted(new["data"]) if old.get("data", {}).get(split)
              != new["data"][split]]
    parts += ["the checkpoint's weight files"] if old.get("weights") != new["weights"] else []
    return ", ".join(parts) or "an earlier hftransfer's record"


def _differs_in_common(old: dict, new: dict) -> bool:
    """Other data, weights, or a setting both identities hold with other values: another command. A setting only one
    holds (written by an older hftransfer or transformers) is no sign of one."""
    settings_old, settings_new = old.get("settings", {}), new["settings"]
    return (old.get("data") != new["data"] or old.get("weights") != new["weights"]
            or any(settings_old[key] != settings_new[key] for key in set(settings_old) & set(settings_new)))


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest first, that were written to the end (weights and trainer state) and whose
    weights can still be read."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)
            if (p / "trainer_state.json").is_file() and any((p / w).is_file() for w in WEIGHTS) and _readable(p)]


def _readable(checkpoint: Path) -> bool:
    """Whether every weights file of a checkpoint opens (its header and its length agree: a file cut short or damaged
    since it was written fails). One that does not is passed over with a warning, not resumed from."""
    for weights in checkpoint.glob("*.safetensors"):
        try:
            with safe_open(weights, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            logger.warning("%s cannot be read (%s): not resumed from", weights, err)
            return False
    return True


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
        weights = load_file(folder / COMPLETED_WEIGHTS)
    except (SafetensorError, OSError) as err:  # cut short or damaged since it was written
        raise ModelError(f"{folder / COMPLETED_WEIGHTS}: the saved stage cannot be read ({err}); "
                         "run with --restart") from None
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ModelError(f"{folder}: the saved stage does not fit this model ({str(err).splitlines()[-1].strip()}); "
                         "run with --restart") from None
    if unexpected or [k for k in missing if not k.endswith(("position_ids", "num_batches_tracked"))]:
        raise ModelError(f"{folder}: the saved stage does not fit this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); run with --restart")
    return read_json(record)


class StageCheckpoints:
    """A run's checkpoints, stage by stage (on with `--save_strategy steps|epoch`, ignored with `--restart`)."""

    def __init__(self, args, restart: bool):
        self.args, self.restart = args, restart
        self.enabled = args.save_strategy != "no" and not restart
        self.past_the_named = False  # at or after the stage of --resume_from_checkpoint: resumed, not restored
        self.restored_seconds = 0.0  # the training time of the stages restored, spent by earlier processes

    @classmethod
    def of(cls, args, run, splits) -> StageCheckpoints:
        """The checkpoints of the run `run` (`RunArguments`) on `splits`, the output folder made ready: every stage
        of an interrupted run cleared with --restart, another command's removed (`keep_only`). The main process
        first: the others then find the folder as it leaves it."""
        checkpoints = cls(args, run.transfer.restart)
        checkpoints.check_given()
        with args.main_process_first(desc="stage checkpoints"):
            checkpoints.clear()
            if args.save_strategy != "no":
                checkpoints.keep_only(run_identity(run, splits))
        return checkpoints

    def folder(self, stage_name: str) -> Path:
        return stage_dir(self.args.output_dir, stage_name)

    def check_given(self) -> None:
        """`--resume_from_checkpoint PATH` must be a complete checkpoint in a stage folder of this output folder, with
        checkpoints on: any other is an error before training, not a run started over in silence."""
        given = self.args.resume_from_checkpoint
        problem = given and self._problem_with(Path(given))
        if problem:
            raise ModelError(f"--resume_from_checkpoint {given}: {problem}")

    def _problem_with(self, given: Path) -> str | None:
        output_dir = self.args.output_dir
        if self.args.save_strategy == "no":
            return "checkpoints are off; resume with the --save_strategy the interrupted run had"
        if self.restart:
            return "--restart starts over"
        if not given.is_dir():
            return "not a folder"
        if given.resolve().parent.parent != Path(output_dir).resolve() or not given.parent.name.startswith(
                STAGE_PREFIX):
            return f"not a stage's checkpoint in {output_dir} (expected {output_dir}/{STAGE_PREFIX}NAME/checkpoint-N)"
        if given.resolve() not in [found.resolve() for found in complete_checkpoints(given.parent)]:
            return "not a complete checkpoint (weights that can be read, and its trainer state)"
        return None

    def trainer_output_dir(self, stage_name: str) -> str:
        """Where a stage's `Trainer` writes checkpoints: its own folder when there are any."""
        return str(self.folder(stage_name)) if self.args.save_strategy != "no" else self.args.output_dir

    def clear(self) -> None:
        """`--restart`: an interrupted run's stages must not come back."""
        if self.restart and self.args.should_save:
            for old in stage_dirs(self.args.output_dir):
                shutil.rmtree(old)

    def keep_only(self, identity: dict) -> None:
        """Stage folders another command wrote (the output folder's `RUN_IDENTITY` is not `identity`) are removed,
        with a warning naming what differs, so that neither their finished models nor their checkpoints come back. A
        checkpoint of theirs named by --resume_from_checkpoint is an error (it was resumed, over the earlier stages
        retrained on this command's data, and logged as this command's); one an unreadable record cannot tell is kept,
        as asked. Then the folder records this command's identity."""
        if not self.args.should_save:
            return
        record = Path(self.args.output_dir) / RUN_IDENTITY
        try:
            previous = read_json(record) or {}
        except ValueError:  # cut short: no command can be told from it
            previous = {}
        folders = stage_dirs(self.args.output_dir)
        if previous != identity and folders:
            given = self.args.resume_from_checkpoint
            if given and _differs_in_common(previous, identity):  # trained on the other command's terms
                raise ModelError(f"--resume_from_checkpoint {given}: written by another command (it differs in "
                                 f"{_differences(previous, identity)}), whose data and settings its model was trained "
                                 "on: run that command to resume it, or leave the flag out to train this one from "
                                 "the start")
            named = Path(given).resolve().parent if given else None
            removed = [folder for folder in folders if folder.resolve() != named]
            logger.warning("%s written by another command (it differs in %s): not resumed from, and removed",
                           ", ".join(str(f) for f in removed), _differences(previous, identity))
            for folder in removed:
                shutil.rmtree(folder, ignore_errors=True)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, identity)

    def finished(self, model: torch.nn.Module, stage_name: str) -> dict | None:
        """The record of a stage an earlier, interrupted run of this command finished, its model loaded; else None.
        From the stage whose checkpoint --resume_from_checkpoint names on, None: that stage resumes from it as asked
        (its finished model, and later stages', were restored instead, or another command's, in silence)."""
        given = self.args.resume_from_checkpoint
        if given and Path(given).resolve().parent == self.folder(stage_name).resolve():
            self.past_the_named = True
        if not self.enabled or self.past_the_named:
            return None
        record = restore_completed(model, self.folder(stage_name))
        if record is not None:
            logger.info("Stage '%s' was finished by an earlier run: restored from %s", stage_name,
                        self.folder(stage_name))
            self.restored_seconds += record["metrics"]["train_runtime"]
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
            found = complete_checkpoints(folder)
            chosen = str(found[0]) if found else None
        if chosen:
            logger.info("Resuming stage '%s' from %s (an earlier run of this command stopped there; --restart "
                        "starts over)", stage_name, chosen)
        return chosen

    def mark_finished(self, model: torch.nn.Module, stage_name: str, record: dict) -> None:
        if self.args.save_strategy != "no" and self.args.should_save:
            mark_completed(model, self.folder(stage_name), record)
