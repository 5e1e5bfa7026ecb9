from pathlib import Path

import pytest
from conftest import make_image_folder
from datasets import ClassLabel, Dataset, DatasetDict

from hftransfer.args import DataArguments
from hftransfer.data import METADATA, DataError, column_values, encode_labels, label_names, prepare_splits
from hftransfer.tasks import ImageTask, TextTask


def prepare(**kwargs):
    args = DataArguments(**kwargs)
    return prepare_splits(args, ImageTask(args), seed=0)[:2]


def test_corrupt_and_non_image_files_are_counted_and_reported(image_folders):
    train, validation = image_folders
    good = (train / "square" / "0.png").read_bytes()
    (train / "square" / "truncated.png").write_bytes(good[: len(good) // 2])
    (train / "hstripes" / "notes.txt").write_text("not an image")
    (train / "vstripes" / "fake.jpg").write_bytes(b"\x00" * 10)
    (validation / "square" / "readme.txt").write_text("not an image either")
    splits, report = prepare(train_dir=str(train), validation_dir=str(validation))
    assert len(splits["train"]) == 36 and len(splits["validation"]) == 12
    assert report.total_skipped == 4
    reasons = report.skipped["train"]
    assert reasons["not an image"] == 2 and sum(v for k, v in reasons.items() if k.startswith("corrupt")) == 1
    summary = report.summary().splitlines()
    train_line = next(line for line in summary if line.startswith("  train: 2 x not an image"))
    assert "notes.txt" in train_line and "readme.txt" not in train_line  # each split's line shows its own files
    assert any(line.startswith("  validation: 1 x not an image") and "readme.txt" in line for line in summary)
    assert any("truncated.png" in line for line in summary)


def test_what_macos_and_jupyter_leave_in_a_folder_is_no_class_and_no_example_and_is_counted(image_folders):
    """A folder zipped on a Mac (.DS_Store, ._ copies, __MACOSX) or edited in Jupyter (.ipynb_checkpoints, whose
    copies of real images would be duplicate examples): none of it is a class or an example; each is counted."""
    train, validation = image_folders
    (train / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train / "square" / "._0.png").write_bytes(b"\0\5\26\7")
    (train / "__MACOSX" / "square").mkdir(parents=True)
    (train / "__MACOSX" / "square" / "._0.png").write_bytes(b"\0\5\26\7")
    checkpoints = train / "square" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / "0-checkpoint.png").write_bytes((train / "square" / "0.png").read_bytes())
    splits, report = prepare(train_dir=str(train), validation_dir=str(validation))
    assert splits["train"].features["label"].names == ["hstripes", "square", "vstripes"]
    assert len(splits["train"]) == 36 and report.skipped["train"] == {METADATA: 4}


def test_labels_come_from_folder_names(image_folders):
    splits, _ = prepare(train_dir=str(image_folders[0]), validation_dir=str(image_folders[1]))
    assert splits["train"].features["label"].names == ["hstripes", "square", "vstripes"]
    assert splits["validation"].features["label"].names == ["hstripes", "square", "vstripes"]


def test_validation_class_missing_from_training_is_caught_up_front(tmp_path):
    train = make_image_folder(tmp_path / "train", 4, classes=("a", "b"))
    validation = make_image_folder(tmp_path / "validation", 2, classes=("a", "b", "c"))
    with pytest.raises(DataError, match="'c'"):
        prepare(train_dir=str(train), validation_dir=str(validation))


def test_missing_label_column_names_the_columns(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "rows.parquet"
    Dataset.from_dict({"image": [str(tmp_path / "a.png")] * 4, "kind": ["x", "y"] * 2}).to_parquet(path)
    with pytest.raises(DataError) as err:
        prepare(train_file=str(path))
    assert "'label'" in str(err.value) and "kind" in str(err.value) and "--label_column_name" in str(err.value)


def test_train_val_split_is_stratified_when_no_validation_is_given(image_folders):
    splits, _ = prepare(train_dir=str(image_folders[0]), train_val_split=0.25)
    assert len(splits["validation"]) == 9 and len(splits["train"]) == 27
    assert sorted(set(splits["validation"]["label"])) == [0, 1, 2]


def test_a_small_set_holds_out_as_many_examples_as_it_has_classes(tmp_path):
    """12 images of 3 classes at the default fraction (0.15: 2 examples) made the stratified split refuse."""
    train = make_image_folder(tmp_path / "train", 4)
    splits, _ = prepare(train_dir=str(train))
    assert len(splits["validation"]) == 3 and len(splits["train"]) == 9
    assert sorted(splits["validation"]["label"]) == [0, 1, 2] and sorted(set(splits["train"]["label"])) == [0, 1, 2]


def test_nothing_left_to_validate_on_is_an_error_that_says_why(tmp_path):
    """One image a class (each stays in training), or a validation folder of unreadable files: an error before
    training, not an IndexError at the first evaluation."""
    single = make_image_folder(tmp_path / "single", 1)
    with pytest.raises(DataError, match="every class has a single example"):
        prepare(train_dir=str(single))
    train, broken = make_image_folder(tmp_path / "train", 4), make_image_folder(tmp_path / "broken", 1)
    for image in broken.rglob("*.png"):
        image.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"\(validation\): no usable examples, 3 skipped"):
        prepare(train_dir=str(train), validation_dir=str(broken))


def named(split):
    return f"data ({split})"


def test_string_labels_become_one_class_label_for_all_splits():
    splits = DatasetDict(train=Dataset.from_dict({"label": ["cat", "dog", "cat"]}),
                         validation=Dataset.from_dict({"label": ["dog"]}))
    encoded = encode_labels(splits, "label", named)
    assert isinstance(encoded["validation"].features["label"], ClassLabel)
    assert encoded["train"].features["label"].names == ["cat", "dog"] and encoded["validation"]["label"] == [1]
    with pytest.raises(DataError, match="single class"):
        encode_labels(DatasetDict(train=Dataset.from_dict({"label": ["cat", "cat"]})), "label", named)


@pytest.mark.parametrize("train, validation, names", [
    ([True, False, True], [False], ["false", "true"]),  # JSON booleans
    ([1.0, 2.0, 10.0, 2.5], [10.0, 2.5], ["1", "2", "2.5", "10"]),  # a CSV's numbers read as floats
    ([1, -1, 0], [-1], ["-1", "0", "1"])])
def test_boolean_and_number_labels_keep_each_row_in_its_class(train, validation, names):
    """Labels that are not strings are named as the cast to strings writes them, in their own order: each row keeps
    its class (Python's str() named them "True" and "10.0", which the cast never wrote: an error, or a wrong one)."""
    splits = DatasetDict(train=Dataset.from_dict({"label": train}), validation=Dataset.from_dict({"label": validation}))
    encoded = encode_labels(splits, "label", named)
    assert encoded["train"].features["label"].names == names
    for split, raw in (("train", train), ("validation", validation)):
        read = [names[i] for i in encoded[split]["label"]]
        assert [float(n) if n[-1].isdigit() else n == "true" for n in read] == [float(v) for v in raw]


def test_missing_folder_and_unknown_format_are_named(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        prepare(train_dir=str(tmp_path / "nowhere"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="xlsx"):
        prepare(train_file=str(tmp_path / "data.xlsx"))


def test_embedded_sample_loads_balanced():
    splits, report = prepare()
    assert len(splits["train"]) == 2000 and len(splits["validation"]) == 500
    assert splits["train"].features["label"].names[0] == "T-shirt/top"
    assert report.total_skipped == 0 and "embedded" in report.source


def test_rows_without_a_label_are_an_error_naming_their_split_and_rows():
    """ClassLabel's -1 is "no label" (GLUE-style test splits): an error before training, not a crash in evaluation."""
    names = ClassLabel(names=["neg", "pos"])
    labelled = Dataset.from_dict({"label": [0, 1, 0]}).cast_column("label", names)
    unlabelled = Dataset.from_dict({"label": [-1, -1]}).cast_column("label", names)
    with pytest.raises(DataError, match=r"data \(validation\): 2 of 2 rows have no label \(-1.*row\(s\) 0, 1.*"
                                        r"labelled validation split"):
        encode_labels(DatasetDict(train=labelled, validation=unlabelled), "label", named)
    with pytest.raises(DataError, match=r"data \(validation\): 1 of 2 rows have an empty label .*, e.g. row\(s\) 1"):
        encode_labels(DatasetDict(train=Dataset.from_dict({"label": ["a", "b"]}),
                                  validation=Dataset.from_dict({"label": ["a", None]})), "label", named)


def test_multi_label_class_labels_keep_their_names():
    from datasets import List

    feature = List(ClassLabel(names=["action", "comedy", "drama"]))
    train = Dataset.from_dict({"label": [[0, 2], [1], [2]]}).cast_column("label", feature)
    validation = Dataset.from_dict({"label": [[1, 2]]}).cast_column("label", feature)
    encoded = encode_labels(DatasetDict(train=train, validation=validation), "label", named)
    assert encoded["train"].features["label"].feature.names == ["action", "comedy", "drama"]
    assert encoded["train"]["label"] == [[0, 2], [1], [2]] and encoded["validation"]["label"] == [[1, 2]]
    tags = Dataset.from_dict({"label": [["a", "b"], [], None, ["b"]]})  # [] is no label; null is a missing list
    with pytest.raises(DataError, match=r"data \(train\): 1 of 4 rows have no label list \(null\), e.g. row\(s\) 2"):
        encode_labels(DatasetDict(train=tags), "label", named)
    kept = encode_labels(DatasetDict(train=tags.select([0, 1, 3])), "label", named)
    assert kept["train"]["label"] == [[0, 1], [], [1]]


def test_a_validation_files_error_names_that_file(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    (tmp_path / "val.csv").write_text("text,label\nok film,neutral\n")
    with pytest.raises(DataError, match=r"val.csv \(validation\): label\(s\) 'neutral' do not occur"):
        prepare_splits(DataArguments(train_file=str(tmp_path / "train.csv"),
                                     validation_file=str(tmp_path / "val.csv")), TextTask(DataArguments()), seed=0)


def test_a_stray_quote_that_merges_tsv_rows_is_an_error_not_a_loss(tmp_path):
    from hftransfer.data import load_file

    rows = ['"Best film\tpositive', "superb acting\tpositive", 'charming and funny"\tpositive', "dull\tnegative"]
    (tmp_path / "merged.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"merged.tsv: row 0 \(from 0\) of column 'text' holds a tab"):
        load_file(str(tmp_path / "merged.tsv"), "train")
    quoted = 'text\tlabel\n"a ""quoted"" word"\tpositive\ndull\tnegative\n'  # quotes as a TSV writer doubles them
    (tmp_path / "quoted.tsv").write_text(quoted)
    assert load_file(str(tmp_path / "quoted.tsv"), "train")["text"] == ['a "quoted" word', "dull"]


@pytest.mark.parametrize("saved", ["dataset", "dataset_dict"])
def test_a_save_to_disk_folder_is_read_as_dataset_name(tmp_path, saved):
    """A lone Dataset is the training split (a validation share is held out of it); a DatasetDict keeps its splits."""
    texts = [f"film number {i} was {'good' if i % 2 else 'bad'}" for i in range(20)]
    train = Dataset.from_dict({"text": texts, "label": ["pos" if i % 2 else "neg" for i in range(20)]})
    (train if saved == "dataset" else DatasetDict(train=train, test=train.select(range(6)))).save_to_disk(
        str(tmp_path / "saved"))
    splits, _, _ = prepare_splits(DataArguments(dataset_name=str(tmp_path / "saved")), TextTask(DataArguments()),
                                  seed=0)
    assert len(splits["train"]) + len(splits["validation"]) == (20 if saved == "dataset" else 26)
    DatasetDict(test=train).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(DataError, match=r"no_train: no 'train' split \(splits: test\)"):
        prepare_splits(DataArguments(dataset_name=str(tmp_path / "no_train")), TextTask(DataArguments()), seed=0)


@pytest.mark.parametrize("train, validation, says", [
    ([{"a": "good"}, {"a": "bad"}], None,
     r"data \(train\): column 'label' holds \{'a': Value\('string'\)\}; a label is one value a row"),
    ([[["good"]], [["bad"]]], None, r"data \(train\): column 'label' holds List\(List"),
    ([["good"], ["bad", "good"]], ["good", "bad"], r"column 'label': each row holds a list of labels in data \(train\) "
                                                   r"but one label in data \(validation\); every split must be "),
    (["good", "bad"], [["good"]], r"each row holds one label in data \(train\) but a list of labels in data \(valid"),
])
def test_labels_of_another_shape_or_of_two_shapes_are_an_error_naming_the_split(train, validation, says):
    """An object, a list of lists, or lists in one file and values in the other crashed inside pyarrow."""
    splits = {"train": Dataset.from_dict({"label": train})}
    if validation is not None:
        splits["validation"] = Dataset.from_dict({"label": validation})
    with pytest.raises(DataError, match=says):
        encode_labels(DatasetDict(splits), "label", named)


def test_a_dataset_name_that_cannot_be_loaded_is_an_error_naming_it(tmp_path):
    """A file, an empty folder and a configuration the folder lacks were tracebacks of `datasets`."""
    (tmp_path / "data.csv").write_text("text,label\na,b\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "csvs").mkdir()
    (tmp_path / "csvs" / "train.csv").write_text("text,label\na,b\nc,d\n")
    for name, config, says in [(tmp_path / "data.csv", None, "a file; give it as --train_file"),
                               (tmp_path / "empty", None, "--dataset_name .*empty: "),
                               (tmp_path / "csvs", "nope", "--dataset_name .*csvs: .*nope")]:
        with pytest.raises(DataError, match=says):
            prepare_splits(DataArguments(dataset_name=str(name), dataset_config_name=config), TextTask(None), seed=0)


@pytest.mark.parametrize("flags, says", [
    ({"text_column_names": "text,text"}, "column 'text' is named twice among the inputs and the label"),
    ({"label_column_name": "text"}, "column 'text' is named twice among the inputs and the label"),
    ({"text_column_names": "a,b,c"}, "--text_column_names takes one column, or two for sentence pairs, not 'a,b,c'"),
    ({"text_column_names": ",text"}, "--text_column_names takes one column, or two .*, not ',text'"),  # one, silently
])
def test_columns_named_twice_or_too_many_are_an_error_before_loading_rows(tmp_path, flags, says):
    """One column read as two was a pyarrow KeyError ('Field "text" exists 2 times'); three text columns a
    ValueError with its traceback."""
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood film,pos\nbad film,neg\n")
    args = DataArguments(train_file=str(data), **flags)
    with pytest.raises(DataError, match=says):
        prepare_splits(args, TextTask(args), seed=0, given=frozenset(flags))


def test_a_multi_label_hold_out_keeps_a_label_seen_once_in_training_and_a_single_row_is_said(tmp_path):
    """A label carried by one example could land wholly in the held-out part (the model never saw it; its F1 was 0,
    with no note), and a single-row file was a scikit-learn ValueError."""
    import json

    rows = [{"text": f"text {i}", "label": ["x"] if i % 2 else ["x", "z"]} for i in range(12)]
    rows.append({"text": "the only y", "label": ["y", "x"]})
    data = tmp_path / "tags.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    for seed in range(5):
        args = DataArguments(train_file=str(data))
        splits, report = prepare_splits(args, TextTask(args), seed=seed)[:2]
        assert "the only y" in splits["train"]["text"] and "the only y" not in splits["validation"]["text"]
        assert len(splits["train"]) + len(splits["validation"]) == 13 and len(splits["validation"]) >= 1
    assert "label(s) y have a single example: kept in training, not validated" in report.notes
    data.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"text": "b", "label": ["q"]}))
    with pytest.raises(DataError, match="nothing to validate on"):
        prepare_splits(DataArguments(train_file=str(data)), TextTask(DataArguments(train_file=str(data))), seed=0)


def test_an_empty_class_folder_is_said_and_a_number_where_a_text_should_be_is_not_called_empty(tmp_path):
    """An empty class folder vanished without a word; a column of numbers was skipped as "empty text"."""
    train = make_image_folder(tmp_path / "train", 4, classes=("a", "b"))
    (train / "zzz").mkdir()
    splits, report = prepare(train_dir=str(train))
    assert splits["train"].features["label"].names == ["a", "b"]
    assert f"train class folder(s) zzz in {train} hold no readable file: not a class" in report.notes
    data = tmp_path / "mixed.csv"
    data.write_text("text,label\n12,pos\n7,pos\n3,neg\n")
    args = DataArguments(train_file=str(data), validation_file=str(data))
    with pytest.raises(DataError, match=r"no usable examples, 3 skipped:[\s\S]*not a text in 'text' \(int\)") as err:
        prepare_splits(args, TextTask(args), seed=0)
    assert "empty text" not in str(err.value)


def test_a_validation_set_of_another_form_or_a_second_training_source_is_an_error(tmp_path):
    """--train_file with --validation_dir read no validation images and held out training rows in their place (the run
    record still named the folder); --train_dir with --train_file ignored the file."""
    folder = make_image_folder(tmp_path / "images", 2, classes=("a", "b"))
    table = tmp_path / "images.csv"
    table.write_text("image,label\n")
    for flags, says in [({"train_file": table, "validation_dir": folder}, "--validation_dir is not read with "
                         "--train_file; with it give --validation_file"),
                        ({"train_dir": folder, "validation_file": table}, "--validation_file is not read with "
                         "--train_dir; with it give --validation_dir"),
                        ({"dataset_name": folder, "validation_dir": folder}, "--validation_dir is not read with "
                         r"--dataset_name \(its own validation split\)"),
                        ({"train_dir": folder, "train_file": table}, "--train_dir and --train_file: give one")]:
        with pytest.raises(DataError, match=says):
            prepare(**{key: str(value) for key, value in flags.items()})


def test_max_eval_samples_draws_its_rows_at_random_not_the_first_class(tmp_path):
    """Folders are read class by class: the first 3 validation rows were all one class (accuracy 1.0 or 0)."""
    train = make_image_folder(tmp_path / "train", 4, classes=("a", "b", "c"))
    validation = make_image_folder(tmp_path / "validation", 4, classes=("a", "b", "c"), seed=1)
    splits, _ = prepare(train_dir=str(train), validation_dir=str(validation), max_eval_samples=4)
    assert len(splits["validation"]) == 4 and len(set(splits["validation"]["label"])) > 1  # the first 4: all 'a'


def _image_table(folder, root, name):
    """A CSV of (path relative to `root`, label) for every image under `folder`."""
    rows = [f"{f.relative_to(root).as_posix()},{f.parent.name}\n" for f in sorted(folder.rglob("*.png"))]
    (root / name).write_text("image,label\n" + "".join(rows))
    return root / name


def test_relative_image_paths_in_a_table_are_read_from_its_folder(tmp_path, monkeypatch):
    """They were opened from the working directory: every row of a table beside its images was skipped as a
    'corrupt image (FileNotFoundError)' when the run started anywhere else."""
    data = tmp_path / "data"
    table = _image_table(make_image_folder(data / "images", 3, classes=("a", "b")), data, "train.csv")
    with table.open("a") as handle:
        handle.write("images/a/missing.png,a\n")
    monkeypatch.chdir(tmp_path)  # beside the data folder: "images/a/0.png" is not a file from here
    splits, report = prepare(train_file=str(table.relative_to(tmp_path)), train_val_split=0.3)
    assert len(splits["train"]) + len(splits["validation"]) == 6
    assert splits["train"][0]["image"].size == (32, 32)  # decoded, as from a folder
    assert report.skipped["train"] == {"file not found": 1}
    assert report.examples["train"]["file not found"] == [str(Path("data") / "images/a/missing.png")]


def test_a_path_relative_to_the_working_directory_still_reads(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", 2, classes=("a", "b"))
    (tmp_path / "tables").mkdir()
    table = _image_table(folder, tmp_path, "tables/train.csv")  # paths from tmp_path, the table one folder down
    monkeypatch.chdir(tmp_path)
    splits, report = prepare(train_file=str(table), train_val_split=0.5)
    assert report.total_skipped == 0 and len(splits["train"]) + len(splits["validation"]) == 4


def test_image_bytes_in_a_parquet_column_become_images(tmp_path):
    """A pandas-written Parquet of encoded image bytes kept its binary column: training handed the bytes to PIL as
    a file name."""
    import pandas as pd

    folder = make_image_folder(tmp_path / "images", 3, classes=("a", "b"))
    files = sorted(folder.rglob("*.png"))
    pd.DataFrame({"image": [f.read_bytes() for f in files], "label": [f.parent.name for f in files]}).to_parquet(
        tmp_path / "train.parquet")
    splits, report = prepare(train_file=str(tmp_path / "train.parquet"), train_val_split=0.3)
    assert splits["train"][0]["image"].size == (32, 32) and report.total_skipped == 0


def test_image_structs_written_without_datasets_metadata_become_images(tmp_path):
    """A {bytes, path} column as pandas, pyarrow or polars write it loads as a dict feature, not an Image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = make_image_folder(tmp_path / "images", 2, classes=("a", "b"))
    files = sorted(folder.rglob("*.png"))
    pq.write_table(pa.table({"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
                             "label": [f.parent.name for f in files]}), tmp_path / "t.parquet")
    splits, report = prepare(train_file=str(tmp_path / "t.parquet"), train_val_split=0.5)
    assert splits["train"][0]["image"].size == (32, 32) and report.total_skipped == 0


def test_an_image_column_of_numbers_is_an_error_naming_it(tmp_path):
    (tmp_path / "t.csv").write_text("image,label\n1,a\n2,b\n")
    with pytest.raises(DataError, match=r"t.csv: column 'image' holds Value\('int64'\), not images"):
        prepare(train_file=str(tmp_path / "t.csv"), train_val_split=0.5)


def test_a_validation_table_with_no_usable_row_is_named_not_the_training_one(tmp_path):
    train = _image_table(make_image_folder(tmp_path / "images", 2, classes=("a", "b")), tmp_path, "train.csv")
    (tmp_path / "validation.csv").write_text("image,label\nnowhere/0.png,a\n")
    with pytest.raises(DataError, match=r"validation.csv \(validation\): no usable examples, 1 skipped"):
        prepare(train_file=str(train), validation_file=str(tmp_path / "validation.csv"))


def test_a_training_draw_that_misses_a_class_is_said(tmp_path):
    """--max_train_samples drew 2 rows of 3 classes: one class kept an output it never learned, in silence."""
    train = make_image_folder(tmp_path / "train", 4, classes=("a", "b", "c"))
    validation = make_image_folder(tmp_path / "validation", 2, classes=("a", "b", "c"), seed=1)
    splits, report = prepare(train_dir=str(train), validation_dir=str(validation), max_train_samples=2)
    missing = [name for i, name in enumerate(("a", "b", "c")) if i not in splits["train"]["label"]]
    assert len(missing) == 1
    assert report.notes == [f"--max_train_samples 2 drew no training example of 1 of 3 classes ({missing[0]}): the "
                            "model cannot learn them"]
    assert prepare(train_dir=str(train), validation_dir=str(validation), max_train_samples=12)[1].notes == []


def test_a_linked_class_folder_is_read_and_a_broken_link_counted(tmp_path):
    """`rglob` passed over a class folder that is a symbolic link: the class vanished, its folder reported as
    holding "no readable file", and "every row usable"; a broken link vanished without a count."""
    elsewhere = make_image_folder(tmp_path / "elsewhere", 3, classes=("c",))
    train = make_image_folder(tmp_path / "train", 3, classes=("a", "b"))
    (train / "c").symlink_to(elsewhere / "c", target_is_directory=True)
    (train / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (train / "b" / "up").symlink_to(train, target_is_directory=True)  # a loop: each folder read once
    splits, report = prepare(train_dir=str(train), train_val_split=0.34)
    assert label_names(splits) == ["a", "b", "c"]
    assert len(splits["train"]) + len(splits["validation"]) == 9
    assert report.skipped["train"] == {"broken link": 1} and report.notes == []


def test_labels_of_mixed_kinds_in_json_lines_are_read_as_text(tmp_path):
    """`datasets` reads a JSON column of 1s and one "1" as JSON text (its Json feature): the run stopped, saying the
    column "holds Json(decode=True)" and that a label is one value a row, which every row was."""
    import json

    rows = [{"text": f"text number {i}", "label": i % 2} for i in range(40)]
    rows[3]["label"] = "1"
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(map(json.dumps, rows)))
    splits, _, _ = prepare_splits(DataArguments(train_file=str(path)), TextTask(DataArguments()), seed=0)
    assert splits["train"].features["label"].names == ["0", "1"]  # "1" and 1 one class, as in a CSV
    assert len(splits["train"]) + len(splits["validation"]) == 40
    for row, label in zip(rows, ["spam", "ham", 0] * 14):  # text beside numbers: no quotes kept in a class name
        row["label"] = label
    path.write_text("\n".join(map(json.dumps, rows)))
    splits, _, _ = prepare_splits(DataArguments(train_file=str(path)), TextTask(DataArguments()), seed=0)
    assert splits["train"].features["label"].names == ["0", "ham", "spam"]
    rows[5]["label"] = {"a": 1}  # an object among them is still refused
    path.write_text("\n".join(map(json.dumps, rows)))
    with pytest.raises(DataError, match="column 'label' holds Json"):
        prepare_splits(DataArguments(train_file=str(path)), TextTask(DataArguments()), seed=0)


def test_a_json_file_laid_out_by_columns_is_an_error_saying_how_to_write_it(tmp_path):
    """pandas' default `to_json` layout was read as one row of objects, skipped as "not a text in 'text' (dict)"."""
    import json

    path = tmp_path / "by_columns.json"
    path.write_text(json.dumps({"text": {str(i): f"review {i}" for i in range(6)},
                                "label": {str(i): "good" if i % 2 else "bad" for i in range(6)}}))
    with pytest.raises(DataError, match=r"by_columns.json: one object of columns \(text, label\), each an object of "
                                        r"rows, .* \(to_json\(orient='records'\), or lines=True"):
        prepare_splits(DataArguments(train_file=str(path)), TextTask(DataArguments()), seed=0)
    path.write_text(json.dumps([{"text": f"review {i}", "label": "good" if i % 2 else "bad"} for i in range(6)]))
    splits, _, _ = prepare_splits(DataArguments(train_file=str(path)), TextTask(DataArguments()), seed=0)
    assert len(splits["train"]) + len(splits["validation"]) == 6  # by records: read


def test_a_whole_column_is_read_as_stored_and_at_once():
    """datasets' lazy `Column` was read row by row (`torch.tensor` of 200,000 labels: 17 s); read whole, a
    transformed dataset's column would run its transform over every row, and a torch-formatted one gave a tensor."""
    from datasets import Dataset

    plain = Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 1]})
    calls = []
    shown = plain.with_transform(lambda batch: calls.append(len(batch["text"])) or {"pixel_values": batch["label"]})
    assert column_values(shown, "label") == [2, 0, 1] and calls == []
    values = column_values(plain.with_format("torch"), "label")
    assert values == [2, 0, 1] and type(values) is list
