"""`hftransfer predict MODEL INPUT... --output FILE`: batch predictions over files, folders and tables.

MODEL is an output folder, an exported folder (`hftransfer export`) or a Hub id; `inference.Predictor` loads any of
them. INPUT: for an image model, image files and folders (searched recursively); for a text model, CSV / TSV /
JSON Lines / Parquet files with a text column (`--text_column`, else inferred as the recipes infer it), .txt files
(one text each) and folders of them; for a sentence-pair model, tables with its two columns (the run's, or
`--text_column a,b`); for either task, a `datasets` folder (`save_to_disk`). The output is CSV or JSON
Lines, by its extension: `input`, `label`, `score`, then `label_1`, `score_1` ... `label_K`, `score_K` (`--top_k`).
A multi-label model's `label` is every label scoring above `--threshold` (joined by ";" in CSV).

An input that cannot be read (a corrupt image, an empty text) is skipped, counted and listed, in the summary and in
FILE.skipped.csv: one bad file never stops a run over thousands. Where every input carries a reference label (a class
folder named like a label, a label column; for a multi-label model, a column of label lists), the summary gives the
accuracy against it (multi-label: exact match, every label of an input right, as the run's `eval_accuracy`); where
some give one the model lacks, it says how many and which instead.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .choices import LABEL_COLUMNS
from .data import (DataError, files_under, is_metadata, is_saved_dataset, is_unlabelled, label_texts, list_literals,
                   load_file)
from .errors import InputError
from .outputs import file_in_the_way

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet"}
OUTPUT_FORMATS = (".csv", ".jsonl")


class PredictError(InputError, ValueError):
    """Inputs or an output that predictions cannot be made from or written to."""


@dataclass
class Item:
    """One input: how the output names it, its raw value (a path, an image or a text) and its reference label."""

    name: str
    value: object
    reference: str | list[str] | None = None  # a list for a multi-label table's row
    problem: str | None = None  # why it cannot be read, found while listing
    foreign: str | None = None  # a reference label the table or class folder gives that is none of the model's


@dataclass
class Summary:
    predicted: int = 0
    skipped: list = field(default_factory=list)  # (input, reason)
    correct: int = 0
    referenced: int = 0
    multi_label: bool = False
    foreign: list = field(default_factory=list)  # reference labels that are none of the model's

    def line(self, output: Path) -> str:
        text = f"{self.predicted:,} predictions written to {output}"
        if self.skipped:
            text += f"; {len(self.skipped):,} input(s) skipped (listed in {skipped_file(output)})"
        if self.referenced and self.referenced == self.predicted:
            kind = "exact-match accuracy" if self.multi_label else "accuracy"
            text += f"; {kind} against the reference labels: {self.correct / self.referenced:.4f}"
        elif self.foreign:  # the accuracy was left out without a word
            shown = ", ".join(sorted(set(self.foreign))[:5])
            text += (f"; no accuracy: {len(self.foreign):,} input(s) give a reference label that is none of the "
                     f"model's ({shown})")
        return text


def skipped_file(output: Path) -> Path:
    return output.with_name(output.name + ".skipped.csv")


# ---------------------------------------------------------------- inputs

class RunColumns(NamedTuple):
    """The run's own input and label columns: a table's are read first where it has them."""

    input: str
    label: str


def gather(task, inputs: list[str], labels: list[str], text_column: str | None,
           multi_label: bool = False) -> Iterator[Item]:
    """Every input named, in order (an image model's tables first: `_images_once`); what cannot even be listed (a
    missing path) is an error before any work.
    `text_column`: a column name, or a sentence-pair model's two ("a,b"). A multi-label model's inputs take no
    reference from their folder: a folder names one class, and such an input has a list of them."""
    folder_labels = [] if multi_label else labels
    columns = _text_columns(task, text_column) if task.name == "text" else [text_column] if text_column else None
    usual = RunColumns(task.input_columns(task.data_args)[0], task.data_args.label_column_name)
    if task.name == "image" and text_column and not any(is_saved_dataset(Path(given)) or _is_table(Path(given))
                                                        for given in inputs):
        raise PredictError(f"--text_column {text_column}: image files and folders have no columns (for an image model "
                           "it names the image column of a table or a `datasets` folder)")
    for given in inputs:
        if not Path(given).exists():
            raise PredictError(f"input not found: {given}")
    if task.name == "image":
        yield from _images_once(inputs, labels, folder_labels, columns, usual)
        return
    for given in inputs:
        path = Path(given)
        if path.is_dir() and is_saved_dataset(path):
            yield from _datasets_items(path, task.name, labels, columns, usual)
        elif path.is_dir():
            for file, folder in _files_in_folders(path, folder_labels):
                yield from _skipped_if_unreadable(_text_file_items(file, folder, labels, columns, usual), file)
        else:
            if path.suffix.lower() == ".txt" and task.pairs:
                raise PredictError(f"{path}: {_pairs_need_tables(columns)}")
            yield from _text_file_items(path, NO_FOLDER, labels, columns, usual)


def _images_once(inputs: list[str], labels, folder_labels: list[str], columns: list[str] | None,
                 usual: RunColumns) -> Iterator[Item]:
    """Image inputs, tables first, and an image file once: a file that a table's row names (an imagefolder's
    `metadata.csv` globbed with its images), or that an earlier input listed, is predicted from the first (every
    image was predicted twice). The rows of a table are kept as it lists them, and images held as bytes are never
    taken for one another (a saved dataset's split names its images `0.png`, `1.png`, as the next split does)."""
    seen, repeated = set(), 0
    for given in sorted(inputs, key=lambda given: not _is_table(Path(given))):
        path = Path(given)
        if path.is_dir() and is_saved_dataset(path):
            items = _datasets_items(path, "image", labels, columns, usual)
        elif _is_table(path):  # among other inputs (a glob), one of no images is skipped
            items = _image_table_items(path, labels, columns, usual)
            items = _skipped_if_unreadable(items, path) if len(inputs) > 1 else items
        else:
            items = _image_items(path, folder_labels)
        for item in items:
            file = _image_file(item)
            if file is not None and isinstance(item.value, Path) and file in seen:
                repeated += 1
                continue
            seen.add(file)
            yield item
    if repeated:
        logger.info("%d image file(s) given again (named by a table's rows, or by an earlier input): each predicted "
                    "once", repeated)


def _image_file(item: Item) -> Path | None:
    """The file an image input is read from; None for one held as bytes (or not readable)."""
    value = item.value
    if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
        value = Path(value["path"])
    return value.resolve() if isinstance(value, Path) and not item.problem else None


def _is_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES


def _image_table_items(path: Path, labels, columns: list[str] | None, usual: RunColumns) -> Iterator[Item]:
    """A table of image paths (or their bytes), read as training reads one (`tasks.as_image_column`: relative paths
    from the table's folder): the table a model was trained from was "not an image"."""
    from datasets import Image as ImageFeature

    from .tasks import as_image_column

    try:
        table = load_file(str(path), "predict")
    except DataError as err:
        raise PredictError(str(err)) from None
    named = columns[0] if columns else None
    column = named or next((c for c in (usual.input, "image", "file_name") if c in table.column_names), None)
    if column not in table.column_names:
        raise PredictError(f"{path}: no column '{column or usual.input}' of images (columns: "
                           f"{', '.join(table.column_names)}); name it with --text_column")
    table = as_image_column(table, column, str(path))
    for item in _table_items(table.cast_column(column, ImageFeature(decode=False)), str(path), labels, [column],
                             usual):
        if not (item.value or {}).get("bytes") and not (item.value or {}).get("path"):
            item.problem = "missing image"  # as training skips it (an empty cell was a traceback)
        yield item


def _text_columns(task, named: str | None) -> list[str] | None:
    """The table columns that hold an input's texts: a sentence-pair model's two (the run's unless named), or the
    one named (None: inferred from each table)."""
    from .args import DataArguments

    try:
        columns = task.input_columns(DataArguments(text_column_names=named)) if named else None
    except ValueError as err:
        raise PredictError(f"--text_column: {err}") from None
    if not task.pairs:
        if columns and len(columns) != 1:
            raise PredictError(f"--text_column {named}: the model reads one text an input; name one column")
        return columns
    if columns is None:
        return task.columns
    if len(columns) != 2:
        raise PredictError(f"--text_column {named}: the model reads sentence pairs ({', '.join(task.columns)}); "
                           "name the two columns, a,b")
    if columns == task.columns[::-1]:
        logger.warning("The model was trained on (%s) in that order; --text_column reads (%s)",
                       ", ".join(task.columns), ", ".join(columns))
    return columns


def _pairs_need_tables(columns: list[str]) -> str:
    return f"the model reads sentence pairs: give a table with columns {' and '.join(columns)}"


def _files_under(folder: Path) -> list[Path]:
    return [p for p in files_under(folder) if not is_metadata(p.relative_to(folder))]


class FolderLabel(NamedTuple):
    reference: str | None  # the model's label a file's folder names
    foreign: str | None  # among class folders: the top folder of a file in none of them, or OUTSIDE


NO_FOLDER = FolderLabel(None, None)
OUTSIDE = "outside any class folder"


def _files_in_folders(path: Path, labels: list[str]) -> list[tuple[Path, FolderLabel]]:
    """Every file under `path` (a folder, or one file), with what its folder says of its label."""
    if not path.is_dir():
        return [(path, NO_FOLDER)]
    files = _files_under(path)
    folders = _class_folders(files, path, labels)
    return [(file, folders.get(file.parent, NO_FOLDER)) for file in files]


def _class_folders(files: list[Path], root: Path, labels: list[str]) -> dict[Path, FolderLabel]:
    """What the folder each file sits in says of its label: the nearest folder between them named like one of the
    model's labels (`cat/` for `cat/closeups/1.png`, as training reads its first folder). Where at least half of
    the folders in `root` hold such files, they are class folders, and a file under none of them, or beside them in
    `root`, is counted and said in place of the accuracy (it was left out without a word); else (folders by date, a
    day named like a digit class) they say nothing."""
    named = {folder: _nearest_label(folder, root, labels) for folder in {file.parent for file in files} - {root}}
    top = {folder: folder.relative_to(root).parts[0] for folder in named}
    labelled = {top[folder] for folder, label in named.items() if label is not None}
    if 2 * len(labelled) < max(len(set(top.values())), 1):
        return {folder: FolderLabel(label, None) for folder, label in named.items()}
    found = {folder: FolderLabel(label, None if label else top[folder]) for folder, label in named.items()}
    return {**found, root: FolderLabel(None, OUTSIDE)}


def _nearest_label(folder: Path, root: Path, labels: list[str]) -> str | None:
    for ancestor in (folder, *folder.parents):
        if ancestor == root:
            return None
        label = _label_named(ancestor.name, labels)
        if label is not None:
            return label
    return None


def _label_named(folder: str, labels: list[str]) -> str | None:
    """The model's label a folder's name is: the label itself, or one with a slash, which no folder name can hold,
    written with one other character or none ("T-shirt-top", "T-shirt top" for Fashion-MNIST's "T-shirt/top")."""
    if folder in labels:
        return folder
    slashed = [label for label in labels
               if "/" in label and re.fullmatch(re.escape(label).replace("/", r"[\W_]?"), folder)]
    return slashed[0] if len(slashed) == 1 else None


def _image_items(path: Path, labels: list[str]) -> Iterator[Item]:
    for file, folder in _files_in_folders(path, labels):
        yield Item(str(file), file, folder.reference, foreign=folder.foreign)


def _text_file_items(file: Path, folder: FolderLabel, labels, columns: list[str] | None,
                     usual: RunColumns) -> Iterator[Item]:
    suffix = file.suffix.lower()
    pairs = columns is not None and len(columns) == 2
    if suffix == ".txt" and pairs:  # one text: in a folder a counted skip, as any file of another kind
        yield Item(str(file), None, problem=_pairs_need_tables(columns))
    elif suffix == ".txt":
        text = _read_text_file(file)
        yield Item(str(file), text, folder.reference, None if text is not None else "not UTF-8 text", folder.foreign)
    elif suffix in TABLE_SUFFIXES:
        try:
            table = load_file(str(file), "predict")
        except DataError as err:
            raise PredictError(str(err)) from None
        yield from _table_items(table, str(file), labels, columns, usual)
    else:
        readable = TABLE_SUFFIXES if pairs else {".txt", *TABLE_SUFFIXES}
        yield Item(str(file), None, problem=f"not a text file ({', '.join(sorted(readable))})")


def _skipped_if_unreadable(items: Iterator[Item], file: Path) -> Iterator[Item]:
    """A table met in a folder that holds no inputs this model reads (a metadata file, one not UTF-8) is a counted
    skip, as an unreadable .txt there is (it stopped the whole prediction); named alone, it is an error."""
    try:
        yield from items
    except PredictError as err:
        yield Item(str(file), None, problem=" ".join(str(err).removeprefix(f"{file}: ").split()))


def _read_text_file(file: Path) -> str | None:
    try:
        return file.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        return None


def _datasets_items(folder: Path, task_name: str, labels, columns: list[str] | None,
                    usual: RunColumns) -> Iterator[Item]:
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(folder))
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [(None, loaded)]
    for split, dataset in splits:
        where = f"{folder}:{split}" if split else str(folder)
        if task_name == "image":
            from datasets import Image as ImageFeature

            named = columns[0] if columns else None
            column = _input_column(dataset, lambda f: isinstance(f, ImageFeature), named, where, "images",
                                   usual.input)
            yield from _table_items(dataset.cast_column(column, ImageFeature(decode=False)), where, labels,
                                    [column], usual)
        else:
            yield from _table_items(dataset, where, labels, columns, usual)


def _table_items(table, where: str, labels, columns: list[str] | None, usual: RunColumns) -> Iterator[Item]:
    """A row an input: the value of its one input column (None: the table's text column, inferred), or a sentence
    pair's two texts as a tuple."""
    from datasets import Value

    if columns and len(columns) == 2:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise PredictError(f"{where}: no column {', '.join(map(repr, missing))} (columns: "
                               f"{', '.join(table.column_names)}); the model reads sentence pairs: name their two "
                               "columns with --text_column a,b")
        values = zip(table[columns[0]], table[columns[1]])
    else:
        column = columns[0] if columns else None
        if column is None or column not in table.column_names:
            column = _input_column(table, lambda f: isinstance(f, Value) and f.dtype in ("string", "large_string"),
                                   column, where, "text", usual.input)
        values = table[column]
    label_column = usual.label if usual.label in table.column_names else next(
        (c for c in table.column_names if c.lower() in LABEL_COLUMNS), None)
    references, foreign = _references(table, label_column, labels) if label_column else (None, None)
    for index, value in enumerate(values):
        yield Item(f"{where}:{index}", value, references[index] if references else None,
                   foreign=foreign[index] if foreign else None)


def _references(table, column: str, labels: list[str]) -> tuple[list, list]:
    """Each row's reference label (a list of them in a column of lists), None where one is not the model's; and
    beside it, that one as written (its labels joined by ";"), else None."""
    from datasets import ClassLabel

    feature, values = table.features[column], table[column]
    inner = getattr(feature, "feature", None)  # a column of lists
    lists = list_literals(values) if inner is None and getattr(feature, "dtype", "").endswith("string") else None
    if lists is not None:  # as pandas writes a list column to CSV, and training reads it
        values, inner = lists, feature
    names = inner if inner is not None else feature

    written = {}  # value -> its label text, as training reads it (True -> "true", 1.0 -> "1", "pos " -> "pos")

    def name(value) -> str | None:  # None for no label (an unlabelled test split's)
        if is_unlabelled(value, names):
            return None
        if isinstance(names, ClassLabel):
            return names.int2str(value)
        if value not in written:
            written[value] = label_texts([value], names)[0].strip()
        return written[value]

    references, foreign = [], []
    for value in values:
        reference = ([name(v) for v in value] if value is not None else None) if inner is not None else name(value)
        given = reference if isinstance(reference, list) else [reference]
        known = reference is not None and set(given) <= set(labels)  # labels holds no None
        references.append(reference if known else None)
        foreign.append(None if known or reference is None else ";".join(map(str, given)))
    return references, foreign


def _input_column(table, is_input, named: str | None, where: str, kind: str, usual: str | None) -> str:
    """The column named, else the run's own (`usual`: a validation file's 'review' beside an 'id' column called
    'text' was read by its ids), else 'text' / 'image', else the only column of the input's type (as the recipes
    infer)."""
    if named:
        if named not in table.column_names:
            raise PredictError(f"{where}: no column '{named}' (columns: {', '.join(table.column_names)})")
        return named
    for default in (usual, "text", "image"):
        if default in table.column_names and is_input(table.features[default]):
            return default
    candidates = [c for c in table.column_names if c.lower() not in LABEL_COLUMNS and is_input(table.features[c])]
    if len(candidates) == 1:
        return candidates[0]

    def typed(column: str) -> str:
        return f"{column}: {getattr(table.features[column], 'dtype', type(table.features[column]).__name__)}"

    expected = next((c for c in (usual, "text", "image") if c in table.column_names), None)
    if not candidates and expected and kind == "text":  # "name it with --text_column" named the column there
        raise PredictError(f"{where}: column '{expected}' holds no {kind} ({typed(expected)}: numbers, or every "
                           f"cell empty); this model reads texts")
    problem = f"no column holds {kind}" if not candidates else "cannot tell which column holds the inputs"
    raise PredictError(f"{where}: {problem} ({', '.join(map(typed, table.column_names))}); name it with --text_column")


# ---------------------------------------------------------------- predicting

def _read_batches(predictor, items: Iterator[Item], batch_size: int, summary: Summary):
    """Batches of (items, model inputs), read and preprocessed in a thread ahead of the model: decoding the next
    batch overlaps the forward pass of this one."""
    import queue

    ready: queue.Queue = queue.Queue(maxsize=2)

    def work():
        try:
            batch = []
            for item in items:
                try:
                    if item.problem:
                        raise ValueError(item.problem)
                    item.value = predictor.task.read_input(item.value)
                except ValueError as err:
                    summary.skipped.append((item.name, str(err)))
                    continue
                batch.append(item)
                if len(batch) == batch_size:
                    ready.put((batch, predictor.inputs([i.value for i in batch], fast=True)))
                    batch = []
            if batch:
                ready.put((batch, predictor.inputs([i.value for i in batch], fast=True)))
            ready.put(None)
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            ready.put(err)

    threading.Thread(target=work, daemon=True).start()
    while (got := ready.get()) is not None:
        if isinstance(got, BaseException):
            raise got
        yield got


def rows_for(predictor, items: list[Item], scores: np.ndarray, top_k: int, threshold: float) -> list[dict]:
    labels = predictor.labels
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :top_k]
    rows = []
    for item, row, top in zip(items, scores, order):
        if predictor.multi_label:
            chosen = [i for i in np.argsort(-row, kind="stable") if row[i] > threshold]
            out = {"input": item.name, "label": [labels[i] for i in chosen],
                   "score": [round(float(row[i]), 6) for i in chosen]}
        else:
            out = {"input": item.name, "label": labels[top[0]], "score": round(float(row[top[0]]), 6)}
        for rank, i in enumerate(top, 1):
            out[f"label_{rank}"], out[f"score_{rank}"] = labels[i], round(float(row[i]), 6)
        rows.append(out)
    return rows


class Writer:
    """CSV or JSON Lines, by the output's extension; multi-label lists joined by ';' in CSV."""

    def __init__(self, output: Path, inputs: list[str]):
        if output.suffix.lower() not in OUTPUT_FORMATS:
            raise PredictError(f"--output {output}: write .csv or .jsonl")
        if output.is_dir():
            raise PredictError(f"--output {output}: a folder; name a file in it")
        blocking = file_in_the_way(output.parent)
        if blocking:
            raise PredictError(f"--output {output}: {blocking} is a file, not a folder")
        if any(output.resolve() == Path(given).resolve() for given in inputs):
            raise PredictError(f"--output {output}: it is an input, which the predictions would overwrite")
        folder = next((given for given in inputs if Path(given).is_dir()
                       and output.resolve().is_relative_to(Path(given).resolve())), None)
        if folder:  # a file of the folder would be overwritten, a new one read as an input the next time
            raise PredictError(f"--output {output}: inside the input folder {folder}, whose files are inputs; write "
                               "the predictions outside it")
        self.output, self.csv = output, output.suffix.lower() == ".csv"
        self.handle = self.writer = None

    def open(self) -> None:
        """Called once the inputs are listed: an input error leaves no empty output behind."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.output.open("w", newline="", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self.csv:
                flat = {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
                if self.writer is None:
                    self.writer = csv.DictWriter(self.handle, fieldnames=list(flat))
                    self.writer.writeheader()
                self.writer.writerow(flat)
            else:
                self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.handle.close()


def predict(model: str, inputs: list[str], output: str | Path, top_k: int = 5, batch_size: int = 64,
            threshold: float | None = None, text_column: str | None = None, engine: str | None = None,
            progress: bool = True) -> Summary:
    """Predict every input and write the rows to `output`; returns what was predicted and skipped. `threshold`
    (multi-label models only): a label is chosen above it, 0.5 unless given."""
    from tqdm.auto import tqdm

    from .inference import Predictor
    from .tasks import text_length

    output = Path(output)
    writer = Writer(output, inputs)  # a wrong output fails before the model loads
    predictor = Predictor(model, engine=engine)
    if threshold is not None and not predictor.multi_label:  # it was ignored without a word
        raise PredictError(f"--threshold {threshold}: for multi-label models; {model} gives each input one label, its "
                           "top score")
    threshold = 0.5 if threshold is None else threshold
    items = list(gather(predictor.task, inputs, predictor.labels, text_column, predictor.multi_label))
    if not items:
        raise PredictError(f"no inputs found in {', '.join(inputs)}")
    writer.open()
    top_k = max(1, min(top_k, len(predictor.labels)))
    summary = Summary(multi_label=predictor.multi_label)
    logger.info("Predicting %d input(s) with %s (%s)", len(items), predictor.folder, predictor.engine.name)
    # Texts go through the model shortest first, so a batch pads little; their rows are written in input order
    # at the end. Images stream: they are one size after preprocessing.
    by_length = predictor.task.name == "text"
    order = sorted(range(len(items)), key=lambda i: text_length(items[i].value)) if by_length else range(len(items))
    held: dict[int, dict] = {}
    positions = {id(items[i]): i for i in order}
    with tqdm(total=len(items), unit="input", disable=not progress, file=sys.stderr) as bar:
        try:
            for batch, model_inputs in _read_batches(predictor, (items[i] for i in order), batch_size, summary):
                scores = predictor.scores(model_inputs)
                rows = rows_for(predictor, batch, scores, top_k, threshold)
                if by_length:
                    held.update((positions[id(item)], row) for item, row in zip(batch, rows))
                else:
                    writer.write(rows)
                _count(summary, batch, rows)
                bar.update(summary.predicted + len(summary.skipped) - bar.n)
            writer.write([held[i] for i in sorted(held)])
        finally:
            writer.close()
    skipped_file(output).unlink(missing_ok=True)  # an earlier call's list would read as this one's
    if summary.skipped:
        with skipped_file(output).open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([("input", "reason"), *summary.skipped])
        for name, reason in summary.skipped[:10]:
            logger.warning("Skipped %s: %s", name, reason)
    if not summary.predicted:  # a text model given images, say: an empty file is no result
        output.unlink(missing_ok=True)
        raise PredictError(f"none of the {len(summary.skipped):,} input(s) could be read by this {predictor.task.name} "
                           f"model (reasons in {skipped_file(output)})")
    return summary


def _count(summary: Summary, batch: list[Item], rows: list[dict]) -> None:
    """Predictions made, and those checked against a reference of the model's kind (a label list for multi-label)."""
    summary.predicted += len(batch)
    for item, row in zip(batch, rows):
        if item.foreign is not None:
            summary.foreign.append(item.foreign)
        if isinstance(item.reference, list if summary.multi_label else str):
            summary.referenced += 1
            predicted = set(row["label"]) if summary.multi_label else row["label"]
            summary.correct += predicted == (set(item.reference) if summary.multi_label else item.reference)
