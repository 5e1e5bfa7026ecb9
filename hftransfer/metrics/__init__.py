"""`evaluate` metrics that work offline: modules shipped here load from the package, any other name from the Hub."""

from __future__ import annotations

from pathlib import Path

import evaluate

from ..errors import InputError

SHIPPED = Path(__file__).parent


class MetricError(InputError, ValueError):
    """A metric named by a flag that cannot be loaded, or one a stage cannot select its best epoch by."""

_CACHE: dict[str, evaluate.EvaluationModule] = {}  # the shipped modules `classification_metrics` reuses


def shipped_names() -> list[str]:
    """The metrics that load without the Hub: one folder each, holding `<name>.py`."""
    return sorted(p.parent.name for p in SHIPPED.glob("*/*.py") if p.stem == p.parent.name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """A shipped module by path, else `evaluate.load(name)`; a Hub miss says which names need no Hub."""
    if not name.strip():
        raise MetricError(f"--metric_names: an empty name (shipped: {', '.join(shipped_names())})")
    if (SHIPPED / name / f"{name}.py").is_file():
        return evaluate.load(str(SHIPPED / name), **kwargs)
    try:
        return evaluate.load(name, **kwargs)
    except OSError as error:  # evaluate raises FileNotFoundError offline and for unknown names alike
        raise MetricError(f"Metric '{name}' is not shipped with hftransfer (shipped: {', '.join(shipped_names())}) "
                         f"and could not be loaded from the Hugging Face Hub (offline, unreachable, or no such "
                         f"module): {error}") from error


def load_metrics(names: list[str]) -> list[evaluate.EvaluationModule]:
    return [load_metric(name) for name in names]


def _shipped(name: str) -> evaluate.EvaluationModule:
    if name not in _CACHE:  # in memory: nothing written under the metrics cache on every evaluation
        _CACHE[name] = load_metric(name, keep_in_memory=True)
    return _CACHE[name]


def classification_metrics(logits, references, num_labels: int) -> dict:
    """Accuracy, macro F1/precision/recall and, past 5 classes, top-5 accuracy: the headline numbers of a run.

    Macro averages run over the labels found in predictions or references (the Hub modules' default), and a label
    never predicted scores 0 rather than warning. Top-5 needs the scores, which is why this takes logits.
    """
    import numpy as np

    logits, references = np.asarray(logits, dtype=float), np.asarray(references).astype(int)
    if logits.ndim != 2 or logits.shape[1] != num_labels:
        raise ValueError(f"Expected logits of shape (examples, {num_labels}), got {logits.shape}")
    predictions = logits.argmax(-1)
    result = dict(_shipped("accuracy").compute(predictions=predictions, references=references))
    for name in ("f1", "precision", "recall"):
        score = _shipped(name).compute(predictions=predictions, references=references, average="macro",
                                       zero_division=0)
        result[f"{name}_macro"] = score[name]
    if num_labels > 5:
        result.update(_shipped("top_k_accuracy").compute(predictions=logits, references=references, k=5))
    return result


def epoch_metrics(logits, references, num_labels: int) -> dict:
    """`classification_metrics`' numbers from one confusion matrix, for the evaluation after every epoch: the `evaluate`
    modules take 50 ms a call on 18 examples and 0.45 s on 10,000, which 100 epochs of a head stage would pay each
    time. Equal to theirs (`tests/test_metrics.py`); the final evaluation still goes through the modules."""
    import numpy as np

    logits, references = np.asarray(logits, dtype=float), np.asarray(references).astype(int)
    predictions = logits.argmax(-1)
    matrix = np.bincount(references * num_labels + predictions, minlength=num_labels**2).reshape(num_labels, -1)
    hits, true, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    seen = (true + predicted) > 0  # scikit-learn's macro average runs over the labels in references or predictions

    def ratio(numerator, denominator):
        return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)

    result = {"accuracy": float(hits.sum() / max(1, len(references))),
              "f1_macro": float(ratio(2 * hits, true + predicted)[seen].mean()),
              "precision_macro": float(ratio(hits, predicted)[seen].mean()),
              "recall_macro": float(ratio(hits, true)[seen].mean())}
    if num_labels > 5:
        top = np.argpartition(-logits, 4, axis=1)[:, :5]
        result["top_5_accuracy"] = float((top == references[:, None]).any(1).mean())
    return result


def per_class_report(predictions, references, labels: list[str]) -> list[dict]:
    """One row a class, in label order, including classes absent from this split (support 0, scores 0)."""
    import numpy as np
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(references).astype(int), np.asarray(predictions).astype(int), labels=list(range(len(labels))),
        zero_division=0)
    return [{"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)]


def confusion(predictions, references, num_labels: int) -> list[list[int]]:
    """Counts with rows = true class, columns = predicted class; plain lists so it serialises to JSON."""
    import numpy as np
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(np.asarray(references).astype(int), np.asarray(predictions).astype(int),
                              labels=list(range(num_labels)))
    return [[int(count) for count in row] for row in matrix]


def multi_label_metrics(predictions, references) -> dict:
    """Micro and macro F1 over labels, and exact-match accuracy (every label of an example right)."""
    import numpy as np
    from sklearn.metrics import f1_score

    predictions, references = np.asarray(predictions).astype(int), np.asarray(references).astype(int)
    return {"accuracy": float((predictions == references).all(axis=1).mean()),
            "f1_micro": float(f1_score(references, predictions, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0))}


def check_best_metric(name: str, num_labels: int, multi_label: bool) -> None:
    """`--metric_for_best_model` must be a number every epoch's evaluation gives (`epoch_metrics`, or the
    multi-label ones, and the loss): `--metric_names` are computed at the end only, so a stage selecting by one of
    them failed after its first epoch."""
    import numpy as np

    found = (multi_label_metrics(np.zeros((1, num_labels)), np.zeros((1, num_labels))) if multi_label
             else epoch_metrics(np.eye(num_labels), np.arange(num_labels), num_labels))
    names = sorted({*found, "loss"})
    if name.removeprefix("eval_") not in names:
        raise MetricError(f"--metric_for_best_model {name}: not a metric of every epoch's evaluation "
                          f"({', '.join(names)}); --metric_names are computed once, at the end")

