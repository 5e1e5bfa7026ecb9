"""Accuracy: the fraction of predictions equal to their reference label.

Shipped with hftransfer so `evaluate.load` works offline; it computes what the Hub's `accuracy` module computes.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy = (number of correct predictions) / (number of predictions), optionally weighted."
_INPUTS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    normalize (bool): return the fraction (default) rather than the count of correct predictions.
    sample_weight (list of float): per-example weights.
Returns:
    accuracy (float)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int32"),
                                        "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float((correct * weights).sum())
        return {"accuracy": float(total / weights.sum()) if normalize else total}
