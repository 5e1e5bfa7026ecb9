"""Top-k accuracy: the fraction of examples whose true label is among the k highest-scoring classes.

Shipped with hftransfer (the Hub has no such module): with many classes, plain accuracy hides how close a model is.
It takes score vectors, not predicted labels, and computes what scikit-learn's `top_k_accuracy_score` computes with
every class listed (so a validation split that lacks some classes still works).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import top_k_accuracy_score

_DESCRIPTION = "Top-k accuracy = (examples whose true label is among their k best-scored classes) / examples."
_INPUTS = """
Args:
    predictions (list of list of float): one score vector (logits or probabilities) per example, one score a class.
    references (list of int): true labels, indices into the score vectors.
    k (int): how many of the best-scored classes count as a hit (default 5).
    normalize (bool): return the fraction (default) rather than the count of hits.
    sample_weight (list of float): per-example weights.
Returns:
    top_{k}_accuracy (float), e.g. top_5_accuracy. With k at least the number of classes every example is a hit.
Examples:
    >>> top_k = evaluate.load("path/to/top_k_accuracy")
    >>> top_k.compute(predictions=[[0.5, 0.2, 0.3], [0.1, 0.2, 0.7]], references=[1, 1], k=2)
    {'top_2_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int32")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/"
                            "sklearn.metrics.top_k_accuracy_score.html"],
        )

    def _compute(self, predictions, references, k=5, normalize=True, sample_weight=None):
        scores, references = np.asarray(predictions, dtype=float), np.asarray(references, dtype=int)
        if scores.ndim != 2:
            raise ValueError(f"top_k_accuracy takes one score vector per example, got an array of shape {scores.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        classes = scores.shape[1]
        if k >= classes:  # every class is in the top k; scikit-learn would warn and say the same
            hits = np.ones(len(references))
        elif classes == 2:  # k == 1 on two classes: scikit-learn's binary branch wants one score, not two
            hits = (scores.argmax(-1) == references).astype(float)
        else:
            return {f"top_{k}_accuracy": float(top_k_accuracy_score(
                references, scores, k=k, normalize=normalize, sample_weight=sample_weight,
                labels=np.arange(classes)))}
        weights = np.ones(len(hits)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float((hits * weights).sum())
        return {f"top_{k}_accuracy": total / float(weights.sum()) if normalize else total}
