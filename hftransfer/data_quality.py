"""A run's data-quality pass: likely label errors, and duplicates within training and across training and validation.

Run once, before the first stage, on the frozen base's features: the pass the feature cache makes anyway (the head
stage then trains on the same matrix). The algorithms are `quality`'s; this module gathers their inputs from the run
(each split's rows in dataset order, contents, names) and turns their findings into `data_quality.json`:

    {"label_issues": [{"split": "train", "item": ITEM, "given": LABEL, "suggested": LABEL, "score": FLOAT}, ...],
     "duplicates": [{"a": {"split": S, "item": ITEM}, "b": {"split": S, "item": ITEM}, "similarity": FLOAT}, ...],
     "summary": {...}}

ITEM is the file path for files found on disk, the text for texts, else the row index (the task adapter's `item`);
each entry also carries its `row` in the split as loaded.
Copies are found by content: exact copies by their bytes or normalised text (similarity 1.0), near copies by
fingerprints (`quality`: small blurred thumbnails, character 4-grams), whatever the model. Label issues need the
base's features, so where its output cannot be cached (FSDP, a head that reads whole token sequences) they are
skipped and the summary says why. Nothing is dropped or relabelled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import quality
from .data import column_values
from .outputs import DATA_QUALITY, DATA_QUALITY_MD, THUMBNAILS_DIR, write_json
from .report import QUALITY_ROWS_SHOWN, data_quality_section

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")
# Near copies within training compare every pair: past this many rows (minutes of matrix products on a CPU) only
# exact copies are looked for there; training against validation is always compared.
WITHIN_TRAINING_LIMIT = 20_000


def before_training(run) -> dict | None:
    """The pass a training run makes after `setup` (--check_data), announced; None when not asked."""
    if not run.run.transfer.check_data:
        return None
    found = check(run)
    if run.args.should_log:
        announce(found)
    return found


def check(run) -> dict:
    """The pass over `run` (a `TransferRun` after `setup`). Every process takes part (feature extraction is shared);
    the result is the same on each."""
    raw = {split: run.task.raw_inputs(run.splits[split]) for split in SPLITS}
    items = {split: [run.task.item(value, index) for index, value in enumerate(raw[split])] for split in SPLITS}
    pairs, skipped = _duplicate_pairs(raw)
    issues = []
    if run.multi_label:
        skipped.append("label issues: multi-label data (confident learning here ranks single labels)")
    elif run.store.layout(run.model) is None:
        skipped.append(f"label issues: the base's output cannot be cached for this model ({run.store.unavailable})")
    else:
        labels = torch.tensor(column_values(run.splits["train"], "label"))
        issues = quality.label_issues(_training_features(run), labels, len(run.labels), seed=run.args.seed)
    return {"label_issues": [_issue(found, items["train"], run.labels) for found in issues],
            "duplicates": [_pair(pair, items) for pair in sorted(pairs, key=lambda p: -p[4])],
            "summary": _summary(pairs, issues, len(items["validation"]), skipped)}


def _duplicate_pairs(raw: dict) -> tuple[list[tuple], list[str]]:
    """(split a, row a, split b, row b, similarity) for copies across training and validation and within training,
    and what was skipped."""
    train, validation = quality.Signatures.of(raw["train"]), quality.Signatures.of(raw["validation"])
    near_within = len(raw["train"]) <= WITHIN_TRAINING_LIMIT
    pairs = [("train", j, "validation", i, s) for i, j, s in quality.duplicates(validation, train)]
    pairs += [("train", i, "train", j, s) for i, j, s in quality.duplicates(train, near=near_within)]
    skipped = [] if near_within else [f"near copies within training: over {WITHIN_TRAINING_LIMIT:,} rows "
                                      "(exact copies checked)"]
    return pairs, skipped


def _training_features(run) -> torch.Tensor:
    """The training split's cached feature rows, back in dataset order (extraction runs shortest first)."""
    matrix = run.store.features(run.model, "train").features.float().cpu()
    in_order = torch.empty_like(matrix)
    in_order[torch.tensor(run.store.row_order("train"))] = matrix
    return in_order


def _issue(found: dict, items: list, labels: list[str]) -> dict:
    return {"split": "train", "item": items[found["row"]], "given": labels[found["given"]],
            "suggested": labels[found["suggested"]], "score": round(float(found["score"]), 4), "row": found["row"]}


def _pair(pair: tuple, items: dict) -> dict:
    split_a, a, split_b, b, similarity = pair
    return {"a": {"split": split_a, "item": items[split_a][a], "row": a},
            "b": {"split": split_b, "item": items[split_b][b], "row": b}, "similarity": round(float(similarity), 4)}


def _summary(pairs: list[tuple], issues: list, validation_size: int, skipped: list[str]) -> dict:
    leaked = {b for a_split, _, b_split, b, _ in pairs if a_split != b_split}
    return {"label_issues": len(issues), "leaked_validation_examples": len(leaked),
            "leaked_fraction": round(len(leaked) / max(1, validation_size), 4),
            "train_duplicate_pairs": sum(1 for pair in pairs if pair[0] == pair[2]), "skipped": skipped}


def announce(found: dict) -> None:
    """Log the findings; a leak is loud: validation scores then measure memory, not generalisation."""
    summary = found["summary"]
    logger.info("Data quality: %d likely label errors, %d duplicate pairs within training (data_quality.json)",
                summary["label_issues"], summary["train_duplicate_pairs"])
    if summary["leaked_validation_examples"]:
        logger.warning("!! %d validation examples (%.1f%%) are copies or near-copies of training examples: validation "
                       "scores overstate how the model does on new data. They are listed in data_quality.json "
                       "(nothing was removed)", summary["leaked_validation_examples"],
                       100 * summary["leaked_fraction"])
    for reason in summary["skipped"]:
        logger.info("Data quality: skipped %s", reason)


def write(run, found: dict, folder) -> Path:
    """`hftransfer check`'s output: data_quality.json, and data_quality.md with thumbnails, in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / DATA_QUALITY, found)
    section = data_quality_section(found, thumbnails(run, found, folder), heading="#")
    (folder / DATA_QUALITY_MD).write_text(section)
    return folder / DATA_QUALITY


def thumbnails(run, found: dict, report_dir: Path) -> dict:
    """Small pictures of the inputs the data-quality section shows (images only): (split, row) -> relative path."""
    entries = found["label_issues"][:QUALITY_ROWS_SHOWN]
    for pair in found["duplicates"][:QUALITY_ROWS_SHOWN]:
        entries += [pair["a"], pair["b"]]
    pictures = {}
    for entry in entries:
        key = (entry["split"], entry["row"])
        if key in pictures:
            continue
        name = f"{THUMBNAILS_DIR}/{entry['split']}-{entry['row']}.png"
        (report_dir / THUMBNAILS_DIR).mkdir(parents=True, exist_ok=True)
        raw = run.task.raw_inputs(run.splits[entry["split"]].select([entry["row"]]))[0]
        if not run.task.thumbnail(raw, report_dir / name):
            return {}
        pictures[key] = name
    return pictures
