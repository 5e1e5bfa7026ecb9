"""The run report: files, valid images, links that resolve, numbers that match scikit-learn, stages on one axis."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from hftransfer.report import confusion_figure, markdown_table, stage_curves, write_report

LABELS = ["cat", "dog", "owl", "yak"]


def stage_log(epochs: int, steps_per_epoch: int = 4, start_loss: float = 1.4, accuracy: float = 0.5) -> list[dict]:
    """A Trainer `log_history`: a loss every half epoch, an evaluation every epoch, then the summary entry."""
    log, step = [], 0
    for epoch in range(1, epochs + 1):
        for half in (0.5, 1.0):
            step += steps_per_epoch // 2
            log.append({"loss": start_loss / (epoch - 1 + half + 1), "grad_norm": 1.0, "learning_rate": 1e-3,
                        "epoch": epoch - 1 + half, "step": step})
        log.append({"eval_loss": start_loss / (epoch + 1), "eval_accuracy": accuracy + 0.1 * epoch,
                    "eval_runtime": 0.3, "epoch": float(epoch), "step": step})
    log.append({"train_runtime": 12.5, "train_samples_per_second": 80.0, "train_loss": 0.7,
                "epoch": float(epochs), "step": step})
    return log


@pytest.fixture
def history():
    return [{"stage": "head", "learning_rate": 3e-3, "epochs": 3,
             "metrics": {"train_loss": 0.9, "trainable_parameters": 5124}, "log": stage_log(3)},
            {"stage": "fine_tune", "learning_rate": 1e-4, "weight_decay": 0.01, "epochs": 2,
             "metrics": {"train_loss": 0.4, "trainable_parameters": 1_204_228, "best_epoch": 1.0,
                         "kept_best_epoch": True},
             "log": stage_log(2, start_loss=0.6, accuracy=0.75)}]


@pytest.fixture
def run(tmp_path, history):
    rng = np.random.default_rng(0)
    references = rng.integers(0, 4, 60).tolist()
    predictions = [r if rng.random() < 0.7 else int(rng.integers(0, 4)) for r in references]
    plan = {"strategy": "fine_tune", "freeze": ["*.embeddings.*"], "unfreeze": [], "unfreeze_last_n": 2,
            "layer_lr_decay": None, "lr_multipliers": [], "trainable": ["a.weight", "a.bias", "b.weight"]}
    comparison = [{"strategy": "feature_extraction", "eval_accuracy": 0.81234, "trainable_parameters": 5124},
                  {"strategy": "staged", "eval_accuracy": 0.9, "trainable_parameters": 1204228}]
    path = write_report(tmp_path, labels=LABELS, predictions=predictions, references=references, history=history,
                        metrics={"eval_accuracy": 0.85, "eval_loss": 0.412345, "eval_samples": 60}, plan=plan,
                        comparison=comparison)
    return path, predictions, references


def test_stage_boundaries_and_continuous_epochs(history):
    points, boundaries = stage_curves(history)
    assert boundaries == [(0.0, "head"), (3.0, "fine_tune")]  # stage 2 begins where stage 1's 3 epochs end
    fine_tune = [p for p in points if p["stage"] == "fine_tune"]
    # stage 2's own epoch 0.5 and 1.0 sit at 3.5 and 4.0 on the shared axis
    assert [p["epoch"] for p in fine_tune if "loss" in p][:2] == [3.5, 4.0]
    assert [p["stage_epoch"] for p in fine_tune if "loss" in p][:2] == [0.5, 1.0]
    assert [p["epoch"] for p in points if "eval_accuracy" in p] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not any("train_runtime" in p for p in points)  # the summary entry is no curve point
    epochs = [p["epoch"] for p in points]
    assert epochs == sorted(epochs)


def test_stage_boundary_follows_early_stopping_and_missing_logs():
    history = [{"stage": "a", "epochs": 10, "log": stage_log(4)},  # stopped early after 4 of 10 epochs
               {"stage": "b", "epochs": 2, "log": []},  # nothing logged: its planned 2 epochs
               {"stage": "c", "epochs": 1, "log": stage_log(1)}]
    points, boundaries = stage_curves(history)
    assert boundaries == [(0.0, "a"), (4.0, "b"), (6.0, "c")]
    assert max(p["epoch"] for p in points) == 7.0
    assert stage_curves([]) == ([], [])


def test_report_files_exist_and_images_are_valid(run):
    path, _, _ = run
    folder = path.parent
    assert path.name == "report.md" and folder.name == "report"
    for name in ("confusion_matrix.png", "training_curves.png", "per_class.md"):
        assert (folder / name).is_file()
    for name in ("confusion_matrix.png", "training_curves.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            assert 300 <= image.width <= 3000 and 300 <= image.height <= 3000
            image.verify()


def test_report_links_resolve(run):
    path, _, _ = run
    text = path.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert {"confusion_matrix.png", "training_curves.png", "per_class.md"} <= set(links)
    for link in links:
        assert not link.startswith("/")  # relative, so the folder can move
        assert (path.parent / link).is_file()


def test_report_sections(run):
    text = run[0].read_text()
    for heading in ("## Metrics", "## Confusion matrix", "## Training curves", "## Per-class scores",
                    "## Freeze plan", "## Comparison"):
        assert heading in text
    assert "| eval_loss | 0.4123 |" in text
    assert "| trainable parameter tensors | 3 |" in text
    assert "`*.embeddings.*`" in text and "| unfreeze_last_n | 2 |" in text
    assert "| staged | 0.9 | 1,204,228 |" in text and "| feature_extraction | 0.8123 | 5,124 |" in text
    # the stages table: starts at epoch 3, its epoch 1 kept
    assert "| fine_tune | 0.0001 | 0.01 | 2 | 3 | 0.4 | 1 | 1,204,228 |" in text


def test_per_class_table_matches_sklearn(run):
    path, predictions, references = run
    lines = [line for line in (path.parent / "per_class.md").read_text().splitlines() if line.startswith("| ")]
    header, rows = [cell.strip() for cell in lines[0].strip("|").split("|")], lines[2:]  # [1] is the rule
    assert header == ["label", "precision", "recall", "f1", "support"]
    precision, recall, f1, support = precision_recall_fscore_support(references, predictions, labels=[0, 1, 2, 3],
                                                                     zero_division=0)
    assert len(rows) == 4
    for i, row in enumerate(rows):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == LABELS[i]
        assert [float(c) for c in cells[1:4]] == pytest.approx([precision[i], recall[i], f1[i]], abs=5e-4)
        assert int(cells[4]) == support[i]


def test_report_without_plan_history_or_comparison(tmp_path):
    path = write_report(tmp_path, labels=["a", "b"], predictions=[0, 1, 1], references=[0, 1, 0], history=[],
                        metrics={"eval_accuracy": 2 / 3}, plan=None)
    text = path.read_text()
    assert "## Freeze plan" not in text and "## Comparison" not in text and "### Stages" not in text
    with Image.open(path.parent / "training_curves.png") as image:
        image.verify()


def test_many_classes_drop_tick_labels_few_keep_them():
    many = [f"class_{i}" for i in range(40)]
    ax = confusion_figure(np.eye(40, dtype=int).tolist(), many).axes[0]
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    ax = confusion_figure(np.eye(4, dtype=int).tolist(), LABELS).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS


def test_markdown_table_formatting():
    rows = [{"name": "a|b", "accuracy": 0.912345, "params": 1234567, "lr": 3e-5, "time": 12345.6, "ok": True},
            {"name": "c", "accuracy": np.float32(0.5), "params": np.int64(12)}]
    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| name | accuracy | params | lr | time | ok |"
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: | --- |"  # numbers right-aligned
    assert lines[2] == "| a\\|b | 0.9123 | 1,234,567 | 3e-05 | 12,346 | True |"
    assert lines[3] == "| c | 0.5 | 12 | - | - | - |"  # missing cells read '-'
    renamed = markdown_table(rows, {"name": "model", "accuracy": "acc"})
    assert renamed.splitlines()[0] == "| model | acc |" and "0.9123" in renamed
    assert markdown_table(rows, ["params"]).splitlines()[2] == "| 1,234,567 |"
    assert markdown_table([]) == ""


def test_import_is_cheap():
    code = "import sys, hftransfer.report; print(sorted(m for m in ('matplotlib', 'evaluate', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
