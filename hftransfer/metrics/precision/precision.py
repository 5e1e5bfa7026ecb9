"""Precision: of the examples predicted as a class, the fraction that truly are that class.

Shipped with hftransfer so `evaluate.load` works offline; it takes the arguments of the Hub's `precision` module and
computes what it computes (scikit-learn's `precision_score`).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import precision_score

_DESCRIPTION = "Precision = TP / (TP + FP), per class or averaged over classes."
_INPUTS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    labels (list of int): the labels to include when `average` is not "binary", and their order when it is None.
        By default every label found in `predictions` or `references`, sorted.
    pos_label (int): the positive class when `average` is "binary" (default 1).
    average (str or None): "binary" (default), "micro", "macro", "weighted", "samples" (multilabel), or None for
        one score per label.
    sample_weight (list of float): per-example weights.
    zero_division ("warn", 0, 1 or nan): the precision of a label never predicted; "warn" (default) gives 0 and a
        warning.
Returns:
    precision (float, or an array of floats when `average` is None)
Examples:
    >>> precision = evaluate.load("precision")
    >>> precision.compute(predictions=[0, 0, 1, 1, 0], references=[0, 1, 0, 1, 0])
    {'precision': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Precision(evaluate.Metric):
    def _info(self):
        label = datasets.Sequence(datasets.Value("int32")) if self.config_name == "multilabel" \
            else datasets.Value("int32")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None,
                 zero_division="warn"):
        score = precision_score(references, predictions, labels=labels, pos_label=pos_label, average=average,
                                sample_weight=sample_weight, zero_division=zero_division)
        return {"precision": float(score) if np.ndim(score) == 0 else np.asarray(score)}
