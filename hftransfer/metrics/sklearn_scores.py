"""What the shipped f1, precision and recall modules share: their features and the scikit-learn call.

The modules stay one file each, as `evaluate.load(path)` expects; they import this from the installed package.
"""

import datasets
import evaluate
import numpy as np

INPUTS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    labels (list of int): the labels to include when `average` is not "binary", and their order when it is None.
        By default every label found in `predictions` or `references`, sorted.
    pos_label (int): the positive class when `average` is "binary" (default 1).
    average (str or None): "binary" (default), "micro", "macro", "weighted", "samples" (multilabel), or None for
        one score per label.
    sample_weight (list of float): per-example weights.
    zero_division ("warn", 0, 1 or nan): the {name} of {undefined}; "warn" (default) gives 0 and a warning.
Returns:
    {name} (float, or an array of floats when `average` is None)
Examples:
    >>> {name} = evaluate.load("{name}")
    >>> {name}.compute(predictions={predictions}, references={references})
    {result}
"""


def label_info(description: str, inputs: str, multilabel: bool, url: str = "") -> evaluate.MetricInfo:
    """Integer labels (lists of them for the 'multilabel' configuration) in predictions and references."""
    label = datasets.Sequence(datasets.Value("int32")) if multilabel else datasets.Value("int32")
    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs,
                               features=datasets.Features({"predictions": label, "references": label}),
                               reference_urls=[url] if url else [])


def averaged(name: str, score_fn, predictions, references, labels=None, pos_label=1, average="binary",
             sample_weight=None, zero_division="warn") -> dict:
    """`score_fn` (e.g. `f1_score`) as the Hub's module of `name` reports it: a float, or an array per label."""
    score = score_fn(references, predictions, labels=labels, pos_label=pos_label, average=average,
                     sample_weight=sample_weight, zero_division=zero_division)
    return {name: float(score) if np.ndim(score) == 0 else np.asarray(score)}
