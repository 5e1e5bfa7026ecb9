"""Load, check and split labelled data, the same way for images and text, before any training step.

Sources, in order of precedence: `--dataset_name` (Hub id or local dataset folder), `--train_dir` (one sub-folder per
class), `--train_file` (CSV, JSON, JSON Lines, Parquet), else the recipe's embedded sample. Every row that cannot be
used is either an error that names it or a counted skip reported before training and again at the end: never a
crash after minutes of training, never silent loss.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, List, Sequence, Value, concatenate_datasets, load_dataset

from .choices import Choices, choose_columns
from .errors import InputError, is_the_machines

if TYPE_CHECKING:
    from .args import DataArguments

logger = logging.getLogger(__name__)


class TaskData(Protocol):
    """What loading data asks of a task adapter (`tasks.TaskAdapter` implements it; this module never imports it)."""

    name: str
    embedded_name: str
    column_setting: str

    def with_data(self, data_args: DataArguments) -> TaskData: ...
    def input_columns(self, args: DataArguments) -> list[str]: ...
    def is_input_feature(self, feature) -> bool: ...
    def check_file(self, path: Path) -> str | None: ...
    def dataset_from_files(self, paths: list[str], labels: list[str]) -> Dataset: ...
    def load_embedded(self) -> DatasetDict: ...
    def drop_unusable(self, dataset: Dataset, split: str, report: DataReport) -> Dataset: ...

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(InputError, ValueError):
    """Input data that cannot be trained on; the message names the file, row, column or parameter."""


@dataclass
class DataReport:
    source: str = ""
    origins: dict[str, str] = field(default_factory=dict)  # split -> the file, folder or dataset split it came from
    tables: dict[str, str] = field(default_factory=dict)  # split -> its table file, where relative paths start
    skipped: dict[str, Counter] = field(default_factory=dict)  # split -> reason -> count
    examples: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> reason -> a few items
    notes: list[str] = field(default_factory=list)  # what was kept but deserves a word (e.g. unvalidated classes)

    def origin(self, split: str) -> str:
        """A split's own file, folder or dataset split, not the training set's."""
        return self.origins.get(split, self.source)

    def where(self, split: str) -> str:
        """A split's origin for messages."""
        return f"{self.origin(split)} ({split})"

    def skip(self, split: str, reason: str, item: str) -> None:
        self.skipped.setdefault(split, Counter())[reason] += 1
        shown = self.examples.setdefault(split, {}).setdefault(reason, [])
        if len(shown) < 3:
            shown.append(item)

    @property
    def total_skipped(self) -> int:
        return sum(sum(c.values()) for c in self.skipped.values())

    def summary(self) -> str:
        if not self.total_skipped:
            lines = [f"Data from {self.source}: every row usable."]
        else:
            lines = [f"Data from {self.source}: skipped {self.total_skipped} unusable row(s):"]
        for split, reasons in self.skipped.items():
            for reason, count in reasons.items():
                lines.append(f"  {split}: {count} x {reason} (e.g. {', '.join(self.examples[split][reason])})")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "skipped": {s: dict(c) for s, c in self.skipped.items()},
                "examples": self.examples, "notes": self.notes}


# ---------------------------------------------------------------- sources

METADATA = "hidden or system file (.DS_Store, ._*, __MACOSX)"


def is_metadata(inside: Path) -> bool:
    """What an OS or archiver leaves in a folder (macOS's .DS_Store, ._ copies and __MACOSX): never a class or an
    example, counted apart from the files that fail to read."""
    return any(part.startswith(".") or part == "__MACOSX" for part in inside.parts)


def files_under(root: Path) -> list[Path]:
    """Every file below `root`, sorted, through linked folders too (`rglob` passes over a class folder that is a
    symbolic link), each folder once (a link back up is not a loop); a broken link is listed, to be skipped by
    name."""
    found, seen = [], set()
    for folder, children, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            children[:] = []
            continue
        seen.add(real)
        children.sort()  # a folder reached twice is read where it comes first in name order, the same every run
        found += [Path(folder, name) for name in names]
    return sorted(found)


def _load_folder(folder: str, task: TaskData, split: str, report: DataReport) -> Dataset:
    """One sub-folder per class. Files the task cannot read into a row are counted here, not dropped quietly;
    the rows' content (does the image decode?) is checked later by `drop_unusable`, as for every other source."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{split} folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_metadata(p.relative_to(root)))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<label>/<file>)")
    paths, labels = [], []
    for path in files_under(root):
        inside = path.relative_to(root)
        problem = (METADATA if is_metadata(inside) else "file outside any class folder" if len(inside.parts) == 1
                   else "broken link" if not path.exists() else task.check_file(path))
        if problem:
            report.skip(split, problem, str(path))
        else:
            paths.append(str(path))
            labels.append(inside.parts[0])
    if not paths:
        raise DataError(f"{root}: no readable files in {len(classes)} class folder(s)")
    empty = sorted(set(classes) - set(labels))
    if empty:  # no example, so no class: said, not dropped quietly
        report.notes.append(f"{split} class folder(s) {', '.join(empty)} in {root} hold no readable file: not a class")
        logger.warning(report.notes[-1])
    return task.dataset_from_files(paths, labels)


def load_file(path: str, split: str) -> Dataset:
    """A CSV / TSV / JSON (Lines) / Parquet file as a Dataset; a clear DataError naming the file otherwise (the
    recipes' splits, and `hftransfer predict`'s tables)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{split} file not found: {file}")
    fmt = FILE_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise DataError(f"{file}: unknown format '{file.suffix}' (use {', '.join(sorted(FILE_FORMATS))})")
    tsv = file.suffix.lower() == ".tsv"
    # pandas reads "NA", "None", "null", "nan", "N/A" as missing: a review "None" was an empty text, a class "None"
    # no label. Only an empty cell is missing here.
    options = {"keep_default_na": False, "na_values": [""], **({"delimiter": "\t"} if tsv else {})}
    if fmt == "csv":  # codes written with leading zeros (007, 010) were read as numbers: 007 and 7 one class
        options["converters"] = {name: str for name in _code_columns(file, options.get("delimiter", ","))}
    try:
        dataset = load_dataset(fmt, data_files={split: str(file)}, split=split, **(options if fmt == "csv" else {}))
    except Exception as err:  # the parser's own error (with its line) sits at the root of the chain; add the file
        root = err
        while root.__cause__ or root.__context__:
            root = root.__cause__ or root.__context__
        raise DataError(f"{file}: cannot be read as {fmt}: {_first_bad_line(file) or root}") from err
    if tsv:
        _check_no_merged_rows(dataset, file)
    if file.suffix.lower() == ".json":
        _check_not_by_columns(dataset, file)
    return dataset


def _check_not_by_columns(dataset: Dataset, file: Path) -> None:
    """pandas' `to_json` writes a table column by column by default (`{"text": {"0": ...}, "label": {...}}`): read,
    that is one row of objects, and the run skipped it as "not a text (dict)"."""
    if len(dataset) == 1 and dataset.column_names and all(
            isinstance(value, dict) and value and all(str(key).isdigit() for key in value)
            for value in dataset[0].values()):
        raise DataError(f"{file}: one object of columns ({', '.join(dataset.column_names[:5])}), each an object of "
                        "rows, as pandas' to_json writes a table by default: write one object a row "
                        "(to_json(orient='records'), or lines=True for JSON Lines)")


def _code_columns(file: Path, delimiter: str) -> list[str]:
    """The columns holding a whole number written with a leading zero (a code, read as text); first, a column name
    twice in the header is an error (pandas renamed the second `text.1`, and the run read the first alone)."""
    import csv
    import re

    zero_padded = re.compile(r"[+-]?0\d+")
    csv.field_size_limit(2**31 - 1)  # a long document in a cell (the default stops at 128 KiB)
    with file.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        rows = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(rows, [])
            repeated = sorted({name for name in header if name and header.count(name) > 1})  # blank ones: Excel's
            if repeated:
                raise DataError(f"{file}: the header names column(s) {', '.join(map(repr, repeated))} more than "
                                "once; give each column its own name")
            codes = set()
            for row in rows:
                codes.update(i for i, cell in enumerate(row[:len(header)]) if zero_padded.fullmatch(cell.strip()))
        except csv.Error as err:
            raise DataError(f"{file}: cannot be read as csv: line {rows.line_num}: {err}") from None
    return [header[i] for i in sorted(codes) if header[i]]


def _check_no_merged_rows(dataset: Dataset, file: Path) -> None:
    """A TSV cell holding a tab is rows merged by a stray quote: the parser took a `"` that opens a cell as the start
    of a quoted field and read on, across tabs and lines, to the next one. Silent row loss, so an error."""
    import pyarrow.compute as pc

    table = dataset.data.table
    for name in dataset.column_names:
        column = table.column(name)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            continue
        found = pc.match_substring(column, "\t").to_pylist()
        if any(found):
            row = found.index(True)
            raise DataError(f"{file}: row {row} (from 0) of column '{name}' holds a tab: a quote (\") that opens a "
                            "cell made the parser read on across the following rows and merge them. Double the "
                            "quotes inside quoted cells (\"\"), or remove the stray quote")


def _first_bad_line(file: Path) -> str | None:
    """For text formats: the first line that is not UTF-8, or in JSON Lines not a JSON object, which parsers report
    only by byte offset ("Trailing data at position 25"); a file of nothing, or a table's header alone."""
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json", ".jsonl"):
        return None
    lines = 0
    with file.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {number} is not UTF-8 ({err.reason} at byte {err.start}); save the file as UTF-8"
            lines += bool(text.strip())
            if suffix == ".jsonl" and text.strip():
                try:
                    json.loads(text)
                except ValueError as err:
                    return f"line {number} is not a JSON object ({err.msg} at column {err.colno})"
    if lines == 0:
        return "the file is empty"
    return "no rows, only a header" if lines == 1 and suffix in (".csv", ".tsv") else None


def is_saved_dataset(folder: Path) -> bool:
    """A `save_to_disk` folder: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _load_named(name: str, config_name: str | None) -> DatasetDict:
    """A Hub dataset or a local folder of data files; a `save_to_disk` folder through `load_from_disk` (a lone
    Dataset is the training split)."""
    if Path(name).is_file():
        raise DataError(f"--dataset_name {name}: a file; give it as --train_file (or --validation_file)")
    if not is_saved_dataset(Path(name)):
        try:
            return load_dataset(name, config_name)
        except (OSError, ValueError) as err:  # not found, no data files, no network, no such configuration
            if is_the_machines(err):
                raise
            raise DataError(f"--dataset_name {name}: {' '.join(str(err).split())}") from None
    from datasets import load_from_disk

    loaded = load_from_disk(name)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)


# Each training source and the validation it reads: a validation set of another form was ignored in silence (part
# of the training data held out in its place), as was a second training source.
SOURCES = {"dataset_name": (), "train_dir": ("validation_dir",), "train_file": ("validation_file",)}


def _check_sources(args: DataArguments) -> None:
    given = [flag for flag in SOURCES if getattr(args, flag)]
    if len(given) > 1:
        raise DataError(f"--{given[0]} and --{given[1]}: give one training source")
    validation = [flag for flag in ("validation_dir", "validation_file") if getattr(args, flag)]
    if given and validation and validation[0] not in SOURCES[given[0]]:
        fits = f"; with it give --{SOURCES[given[0]][0]}" if SOURCES[given[0]] else " (its own validation split)"
        raise DataError(f"--{validation[0]} is not read with --{given[0]}{fits}")


def load_raw(args: DataArguments, task: TaskData, report: DataReport) -> DatasetDict:
    _check_sources(args)
    if args.dataset_name:
        report.source = args.dataset_name
        loaded = _load_named(args.dataset_name, args.dataset_config_name)
        if "train" not in loaded:
            raise DataError(f"{args.dataset_name}: no 'train' split (splits: {', '.join(loaded) or 'none'})")
        splits = {"train": loaded["train"]}
        for name in ("validation", "valid", "val", "test"):
            if name in loaded:
                splits["validation"] = loaded[name]
                report.origins["validation"] = f"{args.dataset_name}, split '{name}'"
                break
        return DatasetDict(splits)
    if args.train_dir:
        report.source = args.train_dir
        splits = {"train": _load_folder(args.train_dir, task, "train", report)}
        if args.validation_dir:
            splits["validation"] = _load_folder(args.validation_dir, task, "validation", report)
            report.origins["validation"] = args.validation_dir
        return DatasetDict(splits)
    if args.train_file:
        report.source = args.train_file
        report.tables["train"] = args.train_file
        splits = {"train": load_file(args.train_file, "train")}
        if args.validation_file:
            splits["validation"] = load_file(args.validation_file, "validation")
            report.origins["validation"] = report.tables["validation"] = args.validation_file
        return DatasetDict(splits)
    if args.validation_dir or args.validation_file:
        raise DataError("A validation set was given without a training set (--train_dir / --train_file)")
    report.source = f"embedded sample ({task.embedded_name})"
    return task.load_embedded()


# ---------------------------------------------------------------- labels

def _check_columns(splits: DatasetDict, needed: list[str], where: Callable[[str], str]) -> None:
    """The input columns and then the label column: each named once (one column read as two failed inside pyarrow),
    and each in every split."""
    repeated = sorted({c for c in needed if needed.count(c) > 1})
    if repeated:
        raise DataError(f"column {', '.join(map(repr, repeated))} is named twice among the inputs and the label "
                        "(--text_column_names / --image_column_name, --label_column_name): name different columns")
    for split, dataset in splits.items():
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            raise DataError(f"{where(split)}: no column {', '.join(map(repr, missing))}; the columns are "
                            f"{', '.join(dataset.column_names)}. Name yours with --label_column_name / "
                            f"--image_column_name / --text_column_names.")


def column_values(dataset: Dataset, column: str) -> list:
    """A whole column of labels or texts as a list, read at once and as stored (no transform or format applies):
    `datasets` 4+ hands back a lazy `Column`, which `torch.tensor`, `Counter` and loops read one row at a time
    (200,000 labels: 17 s in `torch.tensor`, a few ms this way). Not for images: they would all be read at once."""
    values = dataset.with_format(None)[column]
    return values if isinstance(values, list) else values[:]


def is_multi_label(dataset: Dataset, column: str = "label") -> bool:
    """A label column of lists (`["drama", "comedy"]`): each example may carry several labels."""
    return isinstance(dataset.features[column], (List, Sequence))


def label_rows(dataset: Dataset, column: str = "label") -> list[list]:
    """Each row's labels as a list: its list in multi-label data, a list of one otherwise."""
    values = column_values(dataset, column)
    return values if is_multi_label(dataset, column) else [[value] for value in values]


def encode_labels(splits: DatasetDict, column: str, where: Callable[[str], str]) -> DatasetDict:
    """Cast the label column to one `ClassLabel` shared by all splits; validation labels must occur in training.
    `where(split)` names a split's origin in errors."""
    splits = DatasetDict({split: _tidy_labels(dataset, column, where(split)) for split, dataset in splits.items()})
    _check_label_kind(splits, column, where)
    _check_labelled(splits, column, where)
    _warn_case_variants(splits["train"], column)
    if is_multi_label(splits["train"], column):
        return _encode_multi_labels(splits, column, where)
    train = splits["train"]
    feature = train.features[column]
    names = feature.names if isinstance(feature, ClassLabel) else label_texts(sorted(train.unique(column)), feature)
    if len(names) < 2:
        raise DataError(f"{where('train')}: column '{column}' has a single class ({names[0]!r}); a classifier "
                        "needs two")
    encoded = {}
    for split, dataset in splits.items():
        current = dataset.features[column]
        if isinstance(current, ClassLabel):
            if split != "train" and current.names != names:
                dataset = dataset.map(_rename_labels(current.names, names), input_columns=column, batched=True)
                dataset = dataset.cast_column(column, ClassLabel(names=names))
        else:
            values = set(label_texts(dataset.unique(column), current))
            unseen = sorted(values - set(names))
            if unseen:
                raise DataError(f"{where(split)}: label(s) {', '.join(map(repr, unseen[:10]))} do not occur in "
                                f"training (classes: {', '.join(names[:20])})")
            dataset = dataset.cast_column(column, Value("string"))
            dataset = dataset.cast_column(column, ClassLabel(names=names))
        encoded[split] = dataset
    counts = Counter(column_values(encoded["train"], column))
    rare = [names[i] for i in range(len(names)) if counts.get(i, 0) < 1]  # a ClassLabel given with unused names
    if rare:
        raise DataError(f"{where('train')}: class(es) {', '.join(rare)} have no training example")
    return DatasetDict(encoded)


def _json_labels_as_text(dataset: Dataset, column: str, where: str) -> Dataset:
    """A JSON column of labels of several kinds (`1` in most rows, `"1"` in one) is what `datasets` stores as JSON
    text (its `Json` feature: the error said the column "holds Json(decode=True)"); labels of one value each are
    read as that text, as a CSV's are. Objects and lists are left to the label checks."""
    if type(dataset.features[column]).__name__ != "Json":
        return dataset
    stored = dataset.with_format("arrow")[:][column].to_pylist()  # the stored text, in the dataset's row order
    if any(value is not None and value.lstrip().startswith(("{", "[")) for value in stored):
        return dataset
    logger.info("%s: the labels of column '%s' are of several kinds (numbers and text): read as text", where, column)
    features = dataset.features.copy()
    features[column] = Value("string")
    texts = [None if value is None else _json_text(value) for value in stored]
    return dataset.map(lambda _, rows: {column: [texts[i] for i in rows]}, with_indices=True, batched=True,
                       features=features)


def _json_text(stored: str) -> str:
    """A label's stored JSON as its text: "spam" without its quotes, true as Arrow writes it, 1 as 1."""
    try:
        value = json.loads(stored)
    except ValueError:
        return stored
    return value if isinstance(value, str) else json.dumps(value)


def _tidy_labels(dataset: Dataset, column: str, where: str) -> Dataset:
    """Label text as a person means it: without surrounding spaces ("pos " was a class beside "pos"; a blank label
    is no label), and a column of list literals (how pandas writes a list column to CSV: ["drama", "comedy"]) as the
    lists of a multi-label column (it was a single-label class a distinct list). A null or blank label inside a
    list is an error naming its row."""
    dataset = _json_labels_as_text(dataset, column, where)
    feature = dataset.features[column]
    inner = feature.feature if isinstance(feature, (List, Sequence)) else feature
    if not isinstance(inner, Value) or inner.dtype not in ("string", "large_string"):
        return dataset
    values = column_values(dataset, column)
    lists = list_literals(values) if inner is feature else values
    if lists is not None:
        for row, labels in enumerate(lists):
            if labels is not None and any(label is None or not str(label).strip() for label in labels):
                raise DataError(f"{where}: row {row} (from 0) of column '{column}' holds an empty or null label in "
                                f"its list {labels!r}; remove it (a row with none of the labels is [])")
        tidy = [None if labels is None else [str(label).strip() for label in labels] for labels in lists]
        features = dataset.features.copy()
        features[column] = List(Value("string"))
    else:
        tidy = [_label_text(value) for value in values]
        features = None
    if tidy == values:
        return dataset
    if features is None:
        logger.info("%s: %d label(s) read without surrounding spaces, or as missing", where,
                    sum(a != b for a, b in zip(tidy, values)))
    return dataset.map(lambda _, rows: {column: [tidy[i] for i in rows]}, with_indices=True, batched=True,
                       features=features)


# How R and spreadsheets write a missing value, read in a label column as one (an error naming the rows, as an empty
# cell is), not as a class; elsewhere they are text ("NA" is a review). "None" stays a class name: intent sets have one.
MISSING_LABELS = {"NA", "N/A", "n/a", "#N/A", "NaN", "nan", "null", "NULL", "<NA>"}


def _label_text(value):
    if not isinstance(value, str):
        return value
    text = value.strip()
    return text if text and text not in MISSING_LABELS else None


def list_literals(values: list) -> list | None:
    """Every non-null value of a string column read as a list literal (JSON's, or Python's as pandas writes it), or
    None where any is not one."""
    import ast

    if not any(values) or not all(v is None or v.strip()[:1] == "[" and v.strip()[-1:] == "]" for v in values):
        return None
    lists = []
    for value in values:
        try:
            parsed = None if value is None else json.loads(value)
        except ValueError:
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                return None
        if parsed is not None and (not isinstance(parsed, list) or
                                   not all(isinstance(v, (str, type(None))) for v in parsed)):
            return None
        lists.append(parsed)
    return lists


def _warn_case_variants(train: Dataset, column: str) -> None:
    """Labels that differ only in case are two classes, as given; likely a typo, so said."""
    rows = label_rows(train, column)
    by_fold = {}
    for name in {str(v) for row in rows for v in (row or [])}:
        by_fold.setdefault(name.casefold(), []).append(name)
    variants = [sorted(names) for names in by_fold.values() if len(names) > 1]
    if variants:
        logger.warning("Labels that differ only in case are separate classes: %s",
                       "; ".join(" / ".join(map(repr, names)) for names in sorted(variants)))


def is_unlabelled(value, feature) -> bool:
    """A label value that says "no label": a null, or a ClassLabel's -1 (as unlabelled test splits have)."""
    return value is None or (isinstance(feature, ClassLabel) and value < 0)


def _check_label_kind(splits: DatasetDict, column: str, where: Callable[[str], str]) -> None:
    """A label is one value a row (single-label) or a list of values (multi-label), of the same kind in every split:
    an object, a list of lists, or lists in one file and values in the other failed inside pyarrow."""
    def kind(feature) -> str | None:
        inner = feature.feature if isinstance(feature, (List, Sequence)) else feature
        if not isinstance(inner, (Value, ClassLabel)):
            return None
        return "a list of labels" if inner is not feature else "one label"

    kinds = {split: kind(dataset.features[column]) for split, dataset in splits.items()}
    for split, found in kinds.items():
        if found is None:
            raise DataError(f"{where(split)}: column '{column}' holds {splits[split].features[column]}; a label is "
                            "one value a row, or a list of values for multi-label data")
    if len(set(kinds.values())) > 1:
        raise DataError(f"column '{column}': each row holds " + " but ".join(
            f"{found} in {where(split)}" for split, found in kinds.items()) + "; every split must be labelled alike")


def _check_labelled(splits: DatasetDict, column: str, where: Callable[[str], str]) -> None:
    """Every row has a label: no empty one, no ClassLabel -1 (the "no label" of unlabelled test splits), and in
    multi-label data no null list (`[]` is an example with none of the labels)."""
    for split, dataset in splits.items():
        feature, values = dataset.features[column], column_values(dataset, column)
        missing = [i for i, v in enumerate(values) if is_unlabelled(v, feature)]
        if not missing:
            continue
        if is_multi_label(dataset, column):
            kind, fix = "no label list (null)", "write [] for an example that has none of the labels"
        else:
            is_class = isinstance(feature, ClassLabel)
            kind = ("no label (-1, as unlabelled test splits have)" if is_class
                    else "an empty label (blank, or a missing value's mark: NA, N/A, nan, null)")
            fix = "remove or fill them" + (", or give a labelled validation split" if split != "train" else "")
        raise DataError(f"{where(split)}: {len(missing)} of {len(values)} rows have {kind}, e.g. row(s) "
                        f"{', '.join(map(str, missing[:5]))} (from 0) of column '{column}'; {fix}")


def label_texts(values: list, feature) -> list[str]:
    """Labels as the cast to strings in `encode_labels` writes them (Arrow's: True -> "true", 10.0 -> "10"), so that
    every name is found again in the cast column, and `predict` finds a table's labels among the model's; Python's
    str() gives "True" and "10.0"."""
    if not isinstance(feature, Value):
        return [str(v) for v in values]
    return [str(v) for v in pa.array(values, type=feature.pa_type).cast(pa.string()).to_pylist()]


def _encode_multi_labels(splits: DatasetDict, column: str, where: Callable[[str], str]) -> DatasetDict:
    inner = splits["train"].features[column].feature
    splits = DatasetDict({split: _labels_as_names(dataset, column) for split, dataset in splits.items()})
    names = (list(inner.names) if isinstance(inner, ClassLabel)  # a List(ClassLabel) keeps its names and order
             else sorted({str(v) for row in column_values(splits["train"], column) for v in (row or [])}))
    if len(names) < 2:
        raise DataError(f"{where('train')}: column '{column}' holds fewer than two distinct labels")
    encoded = {}
    for split, dataset in splits.items():
        unseen = sorted({str(v) for row in column_values(dataset, column) for v in (row or [])} - set(names))
        if unseen:
            raise DataError(f"{where(split)}: label(s) {', '.join(map(repr, unseen[:10]))} do not occur in "
                            f"training (labels: {', '.join(names[:20])})")
        dataset = dataset.cast_column(column, List(Value("string")))
        encoded[split] = dataset.cast_column(column, List(ClassLabel(names=names)))
    return DatasetDict(encoded)


def _labels_as_names(dataset: Dataset, column: str) -> Dataset:
    """A List(ClassLabel) column as lists of its names (the cast to strings would write the ids)."""
    inner = dataset.features[column].feature
    if not isinstance(inner, ClassLabel):
        return dataset
    features = dataset.features.copy()
    features[column] = List(Value("string"))
    return dataset.map(lambda rows: {column: [[inner.int2str(v) for v in row or []] for row in rows]},
                       input_columns=column, batched=True, features=features)


def _rename_labels(old: list[str], new: list[str]):
    index = {name: i for i, name in enumerate(new)}

    def convert(batch):
        unseen = sorted({old[i] for i in batch} - set(index))
        if unseen:
            raise DataError(f"validation label(s) {', '.join(unseen)} do not occur in training")
        return {"label": [index[old[i]] for i in batch]}

    return convert


# ---------------------------------------------------------------- the whole preparation

def _check_rows_left(splits: DatasetDict, report: DataReport) -> None:
    """A split whose every row was unusable (all texts empty, no file an image) is an error that says why, before
    labels are read from nothing (an IndexError before)."""
    for split, dataset in splits.items():
        if len(dataset) == 0:
            raise DataError(_empty_split_message(split, report.origin(split), report, held_out=False))


def prepare_splits(args: DataArguments, task: TaskData, seed: int, given: frozenset = frozenset(),
                   choices: Choices | None = None) -> tuple[DatasetDict, DataReport, DataArguments]:
    """Load, check, label-encode, split and truncate: everything that can fail does so here, before training.
    Returns the splits, what was skipped, and the data arguments with the columns read (`choices.choose_columns`)."""
    report = DataReport()
    splits = load_raw(args, task, report)
    train = splits["train"]
    args = choose_columns(train.column_names, train.features, args, task, given, choices or Choices())
    task = task.with_data(args)
    columns = task.input_columns(args)
    _check_columns(splits, [*columns, args.label_column_name], report.where)
    keep = [*columns, args.label_column_name]
    splits = DatasetDict({s: d.select_columns(keep) for s, d in splits.items()})
    if args.label_column_name != "label":
        if "label" in columns:  # the labels are kept under that name: a traceback inside datasets' rename
            raise DataError(f"{report.where('train')}: column 'label' is an input (--{task.column_setting}) while the "
                            f"labels come from '{args.label_column_name}'; rename the input column in the data")
        splits = splits.rename_column(args.label_column_name, "label")
    splits = DatasetDict({s: task.drop_unusable(d, s, report) for s, d in splits.items()})
    _check_rows_left(splits, report)
    splits = encode_labels(splits, "label", report.where)
    held_out = "validation" not in splits
    if held_out:
        if not 0 < args.train_val_split < 1:
            raise DataError(f"--train_val_split must be in (0, 1) when no validation set is given, not "
                            f"{args.train_val_split}")
        splits = _hold_out(splits["train"], args.train_val_split, seed, report)
    if args.max_train_samples:
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(min(args.max_train_samples,
                                                                            len(splits["train"]))))
        _note_classes_left_out(splits["train"], f"--max_train_samples {args.max_train_samples}", report)
    if args.max_eval_samples:  # drawn at random, as the training rows: files come sorted by class
        splits["validation"] = splits["validation"].shuffle(seed=seed).select(range(min(args.max_eval_samples,
                                                                                        len(splits["validation"]))))
    for split in ("train", "validation"):
        if len(splits[split]) == 0:
            raise DataError(_empty_split_message(split, report.origin(split), report, held_out))
    logger.info(report.summary())
    return splits, report, args


def _empty_split_message(split: str, where: str, report: DataReport, held_out: bool) -> str:
    skipped = sum(report.skipped.get(split, {}).values())
    if skipped:
        return f"{where} ({split}): no usable examples, {skipped} skipped:\n{report.summary()}"
    if split == "validation" and held_out:
        return (f"{where}: nothing to validate on: every class has a single example, which stays in training. "
                "Give a validation set (--validation_dir / --validation_file) or at least two examples of some class")
    return f"{where} ({split}): no examples"


def _held_out_count(rest: Dataset, fraction: float) -> int:
    """How many examples the stratified split holds out: the fraction, but no fewer on either side than there are
    classes, which the stratified split requires (every class here has two examples or more)."""
    classes, asked = len(set(column_values(rest, "label"))), math.ceil(fraction * len(rest))
    count = min(max(asked, classes), len(rest) - classes)
    if count != asked:
        logger.info("Validation split: %d of %d examples (--train_val_split %g): a stratified split of %d classes "
                    "needs as many on either side", count, len(rest), fraction, classes)
    return count


def _hold_out(train: Dataset, fraction: float, seed: int, report: DataReport) -> DatasetDict:
    """A validation split, stratified by class for single-label data. An example of a class no other example has
    (multi-label: one carrying such a label) stays in training (held out, it would be a validation class the model
    never saw); that is said in the data report."""
    multi = is_multi_label(train)
    labels = [set(row) for row in label_rows(train)]
    single = {label for label, count in Counter(v for row in labels for v in row).items() if count < 2}
    rest = train.select([i for i, row in enumerate(labels) if not row & single]) if single else train
    if not multi:
        parts = rest.train_test_split(test_size=_held_out_count(rest, fraction), seed=seed, stratify_by_column="label")
    elif len(rest) < 2:  # nothing to split: the empty validation split is said after
        parts = {"train": rest, "test": rest.select([])}
    else:
        parts = rest.train_test_split(test_size=min(max(1, math.ceil(fraction * len(rest))), len(rest) - 1), seed=seed)
    if single:
        names = [label_feature(train).int2str(label) for label in sorted(single)]
        what = "label(s)" if multi else "class(es)"
        report.notes.append(f"{what} {', '.join(names)} have a single example: kept in training, not validated")
        logger.warning(report.notes[-1])
        kept = train.select([i for i, row in enumerate(labels) if row & single])
        parts["train"] = concatenate_datasets([parts["train"], kept])
    return DatasetDict(train=parts["train"], validation=parts["test"])


def _note_classes_left_out(train: Dataset, draw: str, report: DataReport) -> None:
    """A draw of the training rows can miss a class the data has: the model keeps an output it never learns."""
    names = label_feature(train).names
    drawn = {label for row in label_rows(train) for label in row}
    missing = [name for i, name in enumerate(names) if i not in drawn]
    if missing:
        report.notes.append(f"{draw} drew no training example of {len(missing)} of {len(names)} classes "
                            f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}): the model cannot "
                            "learn them")
        logger.warning(report.notes[-1])


def class_counts(dataset: Dataset, num_labels: int) -> list[int]:
    """Examples per class id of a single-label split, absent classes included."""
    counts = Counter(column_values(dataset, "label"))
    return [counts.get(label, 0) for label in range(num_labels)]


def label_feature(dataset: Dataset) -> ClassLabel:
    """The `ClassLabel` of an encoded split's labels (multi-label: of each list's items)."""
    feature = dataset.features["label"]
    return feature.feature if isinstance(feature, (List, Sequence)) else feature


def label_names(splits: DatasetDict) -> list[str]:
    return label_feature(splits["train"]).names

