"""Precision: of the examples predicted as a class, the fraction that truly are that class.

Shipped with hftransfer so `evaluate.load` works offline; it takes the arguments of the Hub's `precision` module and
computes what it computes (scikit-learn's `precision_score`).
"""

import evaluate
from sklearn.metrics import precision_score

from hftransfer.metrics.sklearn_scores import INPUTS, averaged, label_info

_DESCRIPTION = "Precision = TP / (TP + FP), per class or averaged over classes."
_INPUTS = INPUTS.format(name="precision", undefined="a label never predicted",
                        predictions="[0, 0, 1, 1, 0]", references="[0, 1, 0, 1, 0]",
                        result="{'precision': 0.5}")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Precision(evaluate.Metric):
    def _info(self):
        return label_info(_DESCRIPTION, _INPUTS, self.config_name == "multilabel",
                          "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html")

    def _compute(self, predictions, references, **options):
        return averaged("precision", precision_score, predictions, references, **options)
