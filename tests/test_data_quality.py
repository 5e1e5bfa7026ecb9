"""The data-quality pass on sets with planted problems: flipped labels, copied and re-encoded images, duplicated
texts. Real checkpoints (MobileNetV2, all-MiniLM-L6-v2) where the finding depends on the features; a tiny model where
it does not (exact copies, and what a training run writes)."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import make_image_folder, save_tiny_checkpoint
from PIL import Image

from hftransfer import recipe
from hftransfer.args import parse_args
from hftransfer.demo import results_markdown
from hftransfer.tasks import ImageTask, TextTask
from hftransfer.training import TransferRun

SAMPLES = ImageTask().load_embedded


def write_fashion(root, per_class: int, flip: float, copies: int, seed: int = 0):
    """Train/validation class folders from the embedded Fashion-MNIST sample: `flip` of the training images filed
    under another class; `copies` training images re-encoded as JPEG at 40 px among the validation images; two
    training files copied byte for byte inside training. Returns the planted facts."""
    rng = np.random.default_rng(seed)
    sample = SAMPLES()
    names = [n.replace("/", "-") for n in sample["train"].features["label"].names]
    train = sample["train"].shuffle(seed=seed)
    labels = np.array(train["label"])
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(names))])
    flipped, sources, copied = set(), [], []
    for number, row in enumerate(rows):
        label = int(labels[row])
        if rng.random() < flip:
            label = int(rng.choice([c for c in range(len(names)) if c != label]))
        path = root / "train" / names[label] / f"{number:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        train[int(row)]["image"].save(path)
        if label != labels[row]:
            flipped.add(str(path))
        elif len(sources) < copies:
            sources.append((path, names[int(labels[row])]))
    for index, example in enumerate(sample["validation"].select(range(100))):
        path = root / "validation" / names[example["label"]] / f"v{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        example["image"].save(path)
    for index, (source, name) in enumerate(sources):
        target = root / "validation" / name / f"copy{index:02d}.jpg"
        Image.open(source).convert("RGB").resize((40, 40)).save(target, quality=80)
        copied.append((str(source), str(target)))
    for source in list((root / "train" / names[0]).iterdir())[:2]:
        shutil.copy(source, source.with_name("again-" + source.name))
    return flipped, copied


def test_check_finds_flipped_labels_and_re_encoded_copies_on_real_features(tmp_path, mobilenet_zoo, capsys):
    flipped, copied = write_fashion(tmp_path / "data", per_class=40, flip=0.1, copies=8)
    out = tmp_path / "check"
    found = recipe.check("image", ["--model_name_or_path", "zoo:mobilenet_v2", "--train_dir",
                                   str(tmp_path / "data" / "train"), "--validation_dir",
                                   str(tmp_path / "data" / "validation"), "--output_dir", str(out)])
    assert json.loads((out / "data_quality.json").read_text()) == json.loads(json.dumps(found))
    top = [issue["item"] for issue in found["label_issues"][:len(flipped)]]
    assert sum(item in flipped for item in top) >= 0.6 * len(flipped), (len(flipped), found["summary"])
    scores = [issue["score"] for issue in found["label_issues"]]
    assert scores == sorted(scores, reverse=True)
    leaks = {(pair["a"]["item"], pair["b"]["item"]) for pair in found["duplicates"]
             if (pair["a"]["split"], pair["b"]["split"]) == ("train", "validation")}
    assert set(copied) <= leaks  # every re-encoded copy, matched to its own training image
    assert len(leaks) - len(copied) <= 2  # of 100 other validation images
    within = [pair for pair in found["duplicates"] if pair["b"]["split"] == "train" and pair["similarity"] == 1.0]
    assert {pair["b"]["item"].rsplit("/", 1)[1][:6] for pair in within} == {"again-"}
    report = (out / "data_quality.md").read_text()
    assert "Likely label errors" in report and "copies or near-copies" in report
    assert all((out / line.split("](")[1].split(")")[0]).is_file() for line in report.splitlines() if "![](" in line)


def test_check_finds_duplicated_texts_and_flipped_labels_with_minilm(tmp_path, monkeypatch):
    """And reads no column, nor the texts, row by row: `datasets` hands back a lazy `Column`, which torch.tensor and
    Counter read one row at a time (a check of 200,000 texts spent 90 of its 147 s there), and the pass over the
    texts for empty ones iterated the dataset's rows (3 s a 200,000)."""
    from datasets import Dataset
    from datasets.arrow_dataset import Column

    row_reads = []
    real_rows = Dataset.__iter__
    monkeypatch.setattr(Dataset, "__iter__", lambda self: row_reads.append("rows") or real_rows(self))
    real_iter, real_item = Column.__iter__, Column.__getitem__
    monkeypatch.setattr(Column, "__iter__", lambda self: row_reads.append(self.column_name) or real_iter(self))
    monkeypatch.setattr(Column, "__getitem__", lambda self, key: (isinstance(key, int) and row_reads.append(
        self.column_name)) or real_item(self, key))
    sample = TextTask().load_embedded()
    rng = np.random.default_rng(1)
    train = sample["train"].select(range(600)).to_pandas()
    flip = rng.random(len(train)) < 0.1
    train.loc[flip, "label"] = 1 - train.loc[flip, "label"]
    validation = sample["validation"].select(range(100)).to_pandas()
    exact, near = train["text"][:4].tolist(), [t.upper() + " !" for t in train["text"][4:8]]
    validation = pd.concat([validation, pd.DataFrame({"text": exact + near, "label": 0})], ignore_index=True)
    train.to_csv(tmp_path / "train.csv", index=False)
    validation.to_csv(tmp_path / "validation.csv", index=False)
    found = recipe.check("text", ["--model_name_or_path", "zoo:all-MiniLM-L6-v2", "--train_file",
                                  str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "validation.csv"),
                                  "--output_dir", str(tmp_path / "check")])
    leaked = {pair["b"]["item"] for pair in found["duplicates"] if pair["b"]["split"] == "validation"}
    assert set(exact) | set(near) <= leaked and len(leaked) <= len(exact) + len(near) + 1
    assert found["summary"]["leaked_validation_examples"] == len(leaked)
    texts = set(train["text"][flip])
    top = [issue["item"] for issue in found["label_issues"][:int(flip.sum())]]
    assert sum(item in texts for item in top) >= 2.5 * 0.1 * len(top)  # far above the 10% a random pick finds
    assert row_reads == []


def test_a_training_run_reports_leaks_everywhere_and_changes_nothing(tmp_path, caplog):
    train = make_image_folder(tmp_path / "train", 12, seed=0)
    validation = make_image_folder(tmp_path / "validation", 4, seed=1)
    source = next((train / "square").iterdir())
    shutil.copy(source, validation / "square" / "copied.png")
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(train), "--validation_dir",
                      str(validation), "--output_dir", str(out), "--strategy", "feature_extraction", "--head_epochs",
                      "2", "--disable_tqdm", "true"])
    with caplog.at_level(logging.WARNING, logger="hftransfer"):
        metrics = TransferRun(run, ImageTask(run.data)).execute()
    assert "copies or near-copies of training examples" in caplog.text
    found = json.loads((out / "data_quality.json").read_text())
    pair = next(p for p in found["duplicates"] if p["b"]["split"] == "validation")
    assert (pair["a"]["item"], pair["similarity"]) == (str(source), 1.0)
    assert metrics["eval_samples"] == 13 and metrics["train_samples"] == 36  # nothing dropped
    for text in ((out / "report" / "report.md").read_text(), (out / "README.md").read_text(),
                 results_markdown(out)):
        assert "Data quality" in text and "1 validation examples" in text


def test_check_into_a_trained_models_folder_is_refused_before_any_pass(tmp_path):
    """It replaced the run's data_quality.json, which that folder's card and report read, with another data's."""
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "hftransfer_run.json").write_text("{}")
    (trained / "data_quality.json").write_text('{"the run": "own"}')
    with pytest.raises(SystemExit, match="a trained model's folder, whose data_quality.json is its run's"):
        recipe.check("text", ["--model_name_or_path", "zoo:all-MiniLM-L6-v2", "--output_dir", str(trained)])
    assert (trained / "data_quality.json").read_text() == '{"the run": "own"}'
    project = tmp_path / "project"  # a folder with a README.md of its own: the check writes none of a model's names
    project.mkdir()
    (project / "README.md").write_text("mine")
    assert parse_args(["--output_dir", str(project)], trains=False).training.output_dir == str(project)
    with pytest.raises(SystemExit, match="it holds README.md, which no hftransfer run wrote"):
        parse_args(["--output_dir", str(project)])
