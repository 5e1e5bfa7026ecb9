"""The output folder, one owner: every name in it, the writer that fills it and the reader everyone else uses.

    output_dir/
      model.safetensors, config.json, processor or tokenizer files   (the model: `from_pretrained` loads it)
      all_results.json, train_results.json, eval_results.json        (`Trainer.save_metrics`' convention)
      hftransfer_run.json   settings, automatic choices, stages with their logs, data report, labels
      freeze_plan.json      the last stage's plan (`hftransfer freeze-report --plan` reads it)
      data_quality.json     likely label errors and duplicates found before training (`data_quality`)
      report/report.md, report/per_class.md, report/confusion_matrix.png, report/training_curves.png,
      report/data_quality/  thumbnails of the images the report's data-quality section shows
      examples/             a few validation inputs for the demo
      lora_adapter/         the adapter and its head, when a stage used LoRA
      comparison.json, comparison.md   `hftransfer compare`'s table
      README.md             the model card

An exported folder (`hftransfer export`, `export.py`) has model.onnx in place of the weights, config.json, the
processor or tokenizer, export.json (format, precision, parity and accuracy measured at export), the results,
report/ and examples/ of the folder it came from, and its own card.
      stage-NAME/           checkpoints of each stage and the finished stage's model (killed runs resume from them)
      .saving/              the next files, while they are written (`Staging`)
      .hftransfer_files.json   the files the last run left (`Staging`: a re-run removes what it did not write again)
      .hftransfer_run_identity.json   which command wrote the stage folders (`resume`: another's are not resumed)

Written through `Staging`: every file goes into `.saving/` first and is then moved into place with `os.replace`, so a
kill leaves the old file or the new one, never half of one; then what the previous run left and this one did not (an
earlier LoRA run's adapter, a text model's tokenizer beside an image model's processor) is removed, so that a reused
folder holds one run's files. Files no run wrote there (a user's own, `hftransfer check`'s) are left alone; a
folder no run wrote that holds a name a run writes (`others_files`) is refused before training. Read
through `OutputFolder` (card, report, demo, push, compare, the Space).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

CONFIG = "config.json"  # transformers' name: the model's config, with id2label and hftransfer's entries
ALL_RESULTS = "all_results.json"
RUN_RECORD = "hftransfer_run.json"
PLAN_FILE = "freeze_plan.json"
REPORT_DIR = "report"
REPORT_MD = "report.md"
PER_CLASS_MD = "per_class.md"
DATA_QUALITY = "data_quality.json"
DATA_QUALITY_MD = "data_quality.md"  # `hftransfer check`'s report, beside its data_quality.json
THUMBNAILS_DIR = "data_quality"  # inside REPORT_DIR
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
EXAMPLES_FOLDER = "examples"
EXAMPLES_FILE = "examples.json"  # inside EXAMPLES_FOLDER: the inputs (texts, or image file names) and their labels
ADAPTER_FOLDER = "lora_adapter"
COMPARISON_FILE = "comparison.json"
COMPARISON_MD = "comparison.md"
CARD = "README.md"
ONNX_FILE = "model.onnx"
EXPORT_RECORD = "export.json"
STAGING = ".saving"
MANIFEST = ".hftransfer_files.json"
STAGE_PREFIX = "stage-"
COMPLETED_WEIGHTS = "completed.safetensors"  # inside a stage's folder: the model after the finished stage
COMPLETED_RECORD = "completed.json"  # and its record, written last
RUN_IDENTITY = ".hftransfer_run_identity.json"  # which command wrote the stage folders (`resume.run_identity`)


# What a run writes under names a folder of someone else's may hold: transformers' model, processor and tokenizer
# files, the Trainer's results, the card.
REPLACED_NAMES = {CONFIG, CARD, ALL_RESULTS, "train_results.json", "eval_results.json", "model.safetensors",
                  "model.safetensors.index.json", "generation_config.json", "preprocessor_config.json",
                  "processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                  "training_args.bin", ADAPTER_FOLDER, REPORT_DIR, EXAMPLES_FOLDER}


def file_in_the_way(folder: Path) -> Path | None:
    """The file at `folder`, or at the first of its parents that exists, that stops it being made a folder (an
    output folder named like a data file failed once training had started, with FileExistsError)."""
    return next((path for path in (folder, *folder.parents) if path.exists() and not path.is_dir()), None)


def others_files(folder: Path) -> list[str]:
    """Names in `folder` a run would overwrite, where no hftransfer run wrote it (a model downloaded there, a
    user's project folder): it leaves no list of its files, record or stage folders."""
    if not folder.is_dir() or any((folder / name).exists() for name in (MANIFEST, RUN_RECORD, RUN_IDENTITY)) \
            or stage_dirs(folder):
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in REPLACED_NAMES)


def results_file(split: str) -> str:
    """`train`, `eval` or `all`: the `Trainer.save_metrics` file name."""
    return f"{split}_results.json"


def stage_dir(output_dir: str | Path, stage_name: str) -> Path:
    return Path(output_dir) / f"{STAGE_PREFIX}{stage_name}"


def stage_dirs(output_dir: str | Path) -> list[Path]:
    return sorted(Path(output_dir).glob(f"{STAGE_PREFIX}*"))


# ---------------------------------------------------------------- writing

def write_json(path: Path, data, indent: int = 2, sort_keys: bool = False) -> Path:
    path.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys, default=str) + "\n")
    return path


def write_json_atomic(path: Path, data) -> None:
    partial = path.with_name(path.name + ".partial")
    write_json(partial, data)
    os.replace(partial, path)


class Staging:
    """The next version of an output folder, written beside it and moved in file by file (`move_into_place`)."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.folder = self.output_dir / STAGING

    def create(self) -> Path:
        if self.folder.exists():
            shutil.rmtree(self.folder)  # left by a run killed while saving
        self.folder.mkdir(parents=True)
        return self.folder

    def write_results(self, split: str, metrics: dict) -> None:
        write_json(self.folder / results_file(split), metrics, indent=4, sort_keys=True)

    def move_into_place(self, written_in_place: tuple[str, ...] = (), owned: tuple[str, ...] = ()) -> None:
        """Move every staged file into the output folder (same file system: each move is atomic), then remove the
        files the previous run listed (`MANIFEST`) that this one did not write. `written_in_place`: folders this run
        wrote straight into the output folder (the LoRA adapter), kept and listed; `owned`: such folders, removed
        whole where this run did not write them (a killed run's adapter is in no list)."""
        written = []
        for source in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            written.append(source.relative_to(self.folder).as_posix())
            target = self.output_dir / written[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        for name in written_in_place:
            written += self._files_in(name)
        try:
            listed = set(read_json(self.output_dir / MANIFEST) or [])
        except ValueError:  # cut short: nothing can be told from it
            listed = set()
        for name in set(owned) - set(written_in_place):
            listed.update(self._files_in(name))
        self._remove_stale(listed - set(written))
        write_json_atomic(self.output_dir / MANIFEST, sorted(written))
        shutil.rmtree(self.folder)

    def _files_in(self, name: str) -> list[str]:
        """The files under the output folder's `name`, as the list names them."""
        return [p.relative_to(self.output_dir).as_posix() for p in (self.output_dir / name).rglob("*") if p.is_file()]

    def _remove_stale(self, names: set[str]) -> None:
        root = self.output_dir.resolve()
        for name in sorted(names):
            stale = (self.output_dir / name).resolve()
            if not stale.is_relative_to(root) or not stale.is_file():
                continue
            stale.unlink()
            for parent in stale.parents:  # folders it leaves empty (an old lora_adapter/)
                if parent == root or any(parent.iterdir()):
                    break
                parent.rmdir()


# ---------------------------------------------------------------- reading

class OutputFolderError(InputError, ValueError):
    """An output folder that is not hftransfer's, or a record in it that is not what hftransfer wrote."""


def read_json(path: Path):
    """A record of an output folder; None where there is none. One that is not JSON (cut short by a full disk, a
    killed copy, an edit) is an error that names it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise OutputFolderError(f"{path}: not a JSON record hftransfer can read ({err}); it was cut short or "
                                "edited: restore it, or train again into this folder") from None


def _is_run_record(record) -> bool:
    settings, stages = (record.get("settings"), record.get("stages", [])) if isinstance(record, dict) else (None, None)
    return (isinstance(settings, dict) and isinstance(settings.get("strategy"), str) and isinstance(stages, list)
            and all(isinstance(stage, dict) for stage in stages))


@dataclass(frozen=True)
class OutputFolder:
    """What a finished run left in `path`; a missing file reads as None."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> dict | None:
        return read_json(self.path / CONFIG)

    @property
    def run(self) -> dict | None:
        record = read_json(self.path / RUN_RECORD)
        if record is not None and not _is_run_record(record):  # `{}` was a KeyError in the card, the demo
            raise OutputFolderError(f"{self.path / RUN_RECORD}: JSON, but not the run record hftransfer writes (its "
                                    "settings and stages); restore it, or train again into this folder")
        return record

    @property
    def results(self) -> dict:
        return read_json(self.path / ALL_RESULTS) or {}

    @property
    def plan(self) -> dict | None:
        return read_json(self.path / PLAN_FILE)

    @property
    def comparison(self) -> list[dict] | None:
        return read_json(self.path / COMPARISON_FILE)

    @property
    def data_quality(self) -> dict | None:
        return read_json(self.path / DATA_QUALITY)

    @property
    def export(self) -> dict | None:
        return read_json(self.path / EXPORT_RECORD)

    @property
    def card(self) -> Path:
        return self.path / CARD

    @property
    def examples(self) -> Path:
        return self.path / EXAMPLES_FOLDER

    def report_file(self, name: str) -> Path | None:
        """A file of the report folder (REPORT_MD, CONFUSION_PNG, ...), None when the run did not write it."""
        path = self.path / REPORT_DIR / name
        return path if path.is_file() else None
