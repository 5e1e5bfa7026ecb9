"""The shipped `evaluate` modules and the helpers built on them: hand-worked numbers, and no network on the way."""

from __future__ import annotations

import socket
import warnings

import evaluate
import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import precision_recall_fscore_support, top_k_accuracy_score

from hftransfer import metrics
from hftransfer.metrics import classification_metrics, confusion, load_metrics, per_class_report

# 3 classes, 6 examples.
REFERENCES = [0, 0, 1, 1, 2, 2]
PREDICTIONS = [0, 1, 1, 1, 2, 0]
# Confusion, rows = true class:   pred 0  1  2
#                         true 0:      1  1  0
#                         true 1:      0  2  0
#                         true 2:      1  0  1
# accuracy = (1 + 2 + 1) / 6 = 2/3
# class 0: TP 1, FP 1 (a true 2), FN 1 -> P 1/2, R 1/2, F1 1/2
# class 1: TP 2, FP 1 (a true 0), FN 0 -> P 2/3, R 1,   F1 2*(2/3)/(5/3) = 4/5
# class 2: TP 1, FP 0,            FN 1 -> P 1,   R 1/2, F1 2*(1/2)/(3/2) = 2/3
# macro P  = (1/2 + 2/3 + 1) / 3   = 13/18
# macro R  = (1/2 + 1 + 1/2) / 3   = 2/3
# macro F1 = (1/2 + 4/5 + 2/3) / 3 = 59/90
CONFUSION = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
PER_CLASS = {"precision": [1 / 2, 2 / 3, 1], "recall": [1 / 2, 1, 1 / 2], "f1": [1 / 2, 4 / 5, 2 / 3]}


def one_hot_logits(predictions, num_labels):
    logits = np.full((len(predictions), num_labels), -1.0)
    logits[np.arange(len(predictions)), predictions] = 2.0
    return logits


@pytest.fixture
def no_network(monkeypatch):
    """Offline flags set, and any socket connection recorded and refused: the list of attempted addresses."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)  # read at import: set it where it is read
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a, **k: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a, **k: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(metrics, "_CACHE", {})  # load afresh, under the guard
    return attempts


# ---------------------------------------------------------------- the modules

def test_f1_precision_recall_macro_by_hand():
    f1, precision, recall = load_metrics(["f1", "precision", "recall"])
    args = {"predictions": PREDICTIONS, "references": REFERENCES, "average": "macro"}
    assert f1.compute(**args) == {"f1": pytest.approx(59 / 90)}
    assert precision.compute(**args) == {"precision": pytest.approx(13 / 18)}
    assert recall.compute(**args) == {"recall": pytest.approx(2 / 3)}


def test_per_label_scores_with_average_none():
    f1, precision, recall = load_metrics(["f1", "precision", "recall"])
    args = {"predictions": PREDICTIONS, "references": REFERENCES, "average": None}
    for module, name in ((f1, "f1"), (precision, "precision"), (recall, "recall")):
        np.testing.assert_allclose(module.compute(**args)[name], PER_CLASS[name])


def test_binary_default_and_pos_label():
    # references [0 1 0 1 0], predictions [0 0 1 1 0]
    # pos 1: TP 1 (index 3), FP 1 (index 2), FN 1 (index 1) -> P = R = F1 = 1/2
    # pos 0: TP 2 (0, 4),    FP 1 (index 1), FN 1 (index 2) -> P = R = F1 = 2/3
    f1, precision, recall = load_metrics(["f1", "precision", "recall"])
    args = {"predictions": [0, 0, 1, 1, 0], "references": [0, 1, 0, 1, 0]}
    assert f1.compute(**args) == {"f1": 0.5}
    assert precision.compute(**args) == {"precision": 0.5}
    assert recall.compute(**args) == {"recall": 0.5}
    assert f1.compute(**args, pos_label=0)["f1"] == pytest.approx(2 / 3)
    # weights [0.9 0.5 3.9 1.2 0.3], pos 1: TP 1.2, FP 3.9, FN 0.5 -> F1 = 2.4 / (2.4 + 4.4) = 6/17
    assert f1.compute(**args, sample_weight=[0.9, 0.5, 3.9, 1.2, 0.3])["f1"] == pytest.approx(6 / 17)


def test_labels_restrict_the_average():
    # classes 0 and 1 only: F1 (1/2 + 4/5) / 2 = 13/20
    (f1,) = load_metrics(["f1"])
    assert f1.compute(predictions=PREDICTIONS, references=REFERENCES, average="macro",
                      labels=[0, 1])["f1"] == pytest.approx(13 / 20)


def test_zero_division():
    # references [0 0 1 1], predictions [0 0 0 0]: class 1 is never predicted, so its precision is 0/0
    # class 0: P = 2/4 = 1/2; macro = (1/2 + z) / 2
    (precision,) = load_metrics(["precision"])
    args = {"predictions": [0, 0, 0, 0], "references": [0, 0, 1, 1], "average": "macro"}
    with pytest.warns(UndefinedMetricWarning):
        assert precision.compute(**args)["precision"] == 0.25  # default "warn": 0, and a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        assert precision.compute(**args, zero_division=0)["precision"] == 0.25
        assert precision.compute(**args, zero_division=1)["precision"] == 0.75
    # references [0 0 0], predictions [0 1 0], labels [0, 1]: class 1 has no true example, its recall is 0/0
    (recall,) = load_metrics(["recall"])
    args = {"predictions": [0, 1, 0], "references": [0, 0, 0], "labels": [0, 1], "average": None}
    np.testing.assert_allclose(recall.compute(**args, zero_division=0)["recall"], [2 / 3, 0])
    np.testing.assert_allclose(recall.compute(**args, zero_division=1)["recall"], [2 / 3, 1])
    # references = predictions = [0 0], labels [0, 1]: class 1 is neither true nor predicted, its F1 is 0/0
    (f1,) = load_metrics(["f1"])
    args = {"predictions": [0, 0], "references": [0, 0], "labels": [0, 1], "average": None}
    np.testing.assert_allclose(f1.compute(**args, zero_division=0)["f1"], [1, 0])
    np.testing.assert_allclose(f1.compute(**args, zero_division=1)["f1"], [1, 1])


def test_top_k_true_class_fifth_is_a_hit_sixth_is_not():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]  # 7 classes, ranked 0 (best) .. 6
    (top_k,) = load_metrics(["top_k_accuracy"])
    assert top_k.compute(predictions=[scores], references=[4]) == {"top_5_accuracy": 1.0}  # 5th best
    assert top_k.compute(predictions=[scores], references=[5]) == {"top_5_accuracy": 0.0}  # 6th best
    assert top_k.compute(predictions=[scores, scores], references=[4, 5], k=6) == {"top_6_accuracy": 1.0}
    assert top_k.compute(predictions=[scores] * 3, references=[0, 1, 2], k=1) == {"top_1_accuracy": 1 / 3}
    # weights 3 on the hit, 1 on the miss: 3/4
    assert top_k.compute(predictions=[scores, scores], references=[4, 5],
                         sample_weight=[3, 1])["top_5_accuracy"] == pytest.approx(0.75)


def test_top_k_matches_sklearn_and_tolerates_missing_classes():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 10)).astype(np.float32)
    references = rng.integers(0, 6, 40)  # classes 6..9 never occur
    (top_k,) = load_metrics(["top_k_accuracy"])
    for k in (1, 3, 5):
        expected = top_k_accuracy_score(references, scores, k=k, labels=np.arange(10))
        assert top_k.compute(predictions=scores, references=references, k=k)[f"top_{k}_accuracy"] \
            == pytest.approx(expected)


def test_top_k_small_class_counts():
    (top_k,) = load_metrics(["top_k_accuracy"])
    # two classes, k = 1: argmax accuracy; predicted [1, 0, 0] vs references [1, 1, 0] -> 2/3
    two = [[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]]
    assert top_k.compute(predictions=two, references=[1, 1, 0], k=1)["top_1_accuracy"] == pytest.approx(2 / 3)
    assert top_k.compute(predictions=two, references=[1, 1, 0])["top_5_accuracy"] == 1.0  # k >= classes


# ---------------------------------------------------------------- helpers

def test_classification_metrics_by_hand():
    result = classification_metrics(one_hot_logits(PREDICTIONS, 3), REFERENCES, num_labels=3)
    assert result == {"accuracy": pytest.approx(2 / 3), "f1_macro": pytest.approx(59 / 90),
                      "precision_macro": pytest.approx(13 / 18), "recall_macro": pytest.approx(2 / 3)}
    assert all(type(value) is float for value in result.values())  # JSON- and Trainer-log-friendly


@pytest.mark.parametrize(("examples", "classes", "unpredicted"), [(200, 3, False), (500, 10, False), (40, 12, True)])
def test_every_epochs_metrics_equal_the_evaluate_modules(examples, classes, unpredicted):
    rng = np.random.default_rng(classes)
    logits, references = rng.normal(size=(examples, classes)), rng.integers(0, classes, examples)
    if unpredicted:  # classes never predicted, some absent from the references too
        logits[:, classes // 2:] -= 100
        references = np.minimum(references, classes - 2)
    fast = metrics.epoch_metrics(logits, references, classes)
    assert fast == pytest.approx(classification_metrics(logits, references, num_labels=classes), abs=1e-12)


def test_classification_metrics_top_5_past_five_classes():
    # 7 classes, the same ranking twice: the true class 5th (hit), then 6th (miss); argmax is class 0 both times
    logits = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]] * 2)
    result = classification_metrics(logits, [4, 5], num_labels=7)
    assert result["top_5_accuracy"] == 0.5
    assert result["accuracy"] == 0.0
    assert "top_5_accuracy" not in classification_metrics(one_hot_logits([0, 1], 5), [0, 1], num_labels=5)


def test_classification_metrics_never_warns_on_unpredicted_classes():
    # class 2 is true once but never predicted: precision 0/0 for it -> 0, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        result = classification_metrics(one_hot_logits([0, 1, 1], 3), [0, 1, 2], num_labels=3)
    # class 0: P 1, R 1; class 1: P 1/2, R 1; class 2: P 0 (0/0), R 0 -> P 1/2, R 2/3
    assert result["precision_macro"] == pytest.approx(1 / 2)
    assert result["recall_macro"] == pytest.approx(2 / 3)


def test_classification_metrics_checks_shape():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.zeros((4, 3)), [0, 1, 2, 0], num_labels=4)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1, 2], [0, 1, 2], num_labels=3)


def test_classification_metrics_loads_modules_once(monkeypatch):
    monkeypatch.setattr(metrics, "_CACHE", {})
    classification_metrics(one_hot_logits(PREDICTIONS, 3), REFERENCES, num_labels=3)
    first = dict(metrics._CACHE)
    loads = []
    monkeypatch.setattr(metrics, "load_metric", lambda *a, **k: loads.append(a))
    classification_metrics(one_hot_logits(PREDICTIONS, 3), REFERENCES, num_labels=3)
    assert not loads and metrics._CACHE == first


def test_per_class_report_by_hand_and_against_sklearn():
    rows = per_class_report(PREDICTIONS, REFERENCES, ["cat", "dog", "owl"])
    assert [row["label"] for row in rows] == ["cat", "dog", "owl"]
    assert [row["support"] for row in rows] == [2, 2, 2]
    for name in ("precision", "recall", "f1"):
        assert [row[name] for row in rows] == pytest.approx(PER_CLASS[name])
    # a fourth class nobody has: a row of zeros, support 0
    rows = per_class_report(PREDICTIONS, REFERENCES, ["cat", "dog", "owl", "yak"])
    assert rows[3] == {"label": "yak", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    p, r, f, s = precision_recall_fscore_support(REFERENCES, PREDICTIONS, labels=[0, 1, 2, 3], zero_division=0)
    assert [row["f1"] for row in rows] == pytest.approx(list(f))


def test_confusion_rows_are_true_classes():
    assert confusion(PREDICTIONS, REFERENCES, 3) == CONFUSION
    assert confusion([0], [1], 3) == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]  # a true 1 predicted 0: row 1, column 0
    matrix = confusion(PREDICTIONS, REFERENCES, 4)
    assert len(matrix) == 4 and matrix[3] == [0, 0, 0, 0] and type(matrix[0][0]) is int


# ---------------------------------------------------------------- loading

def test_shipped_modules_load_and_compute_without_network(no_network):
    names = ["accuracy", "f1", "precision", "recall", "top_k_accuracy"]
    assert set(names) <= set(metrics.shipped_names())
    accuracy, f1, precision, recall, top_k = load_metrics(names)
    assert accuracy.compute(predictions=PREDICTIONS, references=REFERENCES)["accuracy"] == pytest.approx(2 / 3)
    assert f1.compute(predictions=PREDICTIONS, references=REFERENCES, average="macro")["f1"] \
        == pytest.approx(59 / 90)
    assert top_k.compute(predictions=[[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]], references=[4])["top_5_accuracy"] == 1
    result = classification_metrics(one_hot_logits(PREDICTIONS, 7), REFERENCES, num_labels=7)
    assert result["f1_macro"] == pytest.approx(59 / 90) and "top_5_accuracy" in result
    assert no_network == []


def test_unknown_name_is_a_clear_error(no_network):
    with pytest.raises(ValueError, match=r"'no_such_metric_hftransfer' is not shipped.*Hub") as raised:
        load_metrics(["accuracy", "no_such_metric_hftransfer"])
    assert "f1" in str(raised.value)  # says what would have worked
    assert isinstance(raised.value.__cause__, OSError)


def test_names_not_shipped_still_go_to_evaluate_load(monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "load", lambda name, **kwargs: calls.append(name) or name)
    assert load_metrics(["bleu", "f1"]) == ["bleu", str(metrics.SHIPPED / "f1")]
    assert calls == ["bleu", str(metrics.SHIPPED / "f1")]
