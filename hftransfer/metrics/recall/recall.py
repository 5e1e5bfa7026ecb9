"""Recall: of the examples of a class, the fraction predicted as that class.

Shipped with hftransfer so `evaluate.load` works offline; it takes the arguments of the Hub's `recall` module and
computes what it computes (scikit-learn's `recall_score`).
"""

import evaluate
from sklearn.metrics import recall_score

from hftransfer.metrics.sklearn_scores import INPUTS, averaged, label_info

_DESCRIPTION = "Recall = TP / (TP + FN), per class or averaged over classes."
_INPUTS = INPUTS.format(name="recall", undefined="a label with no true examples",
                        predictions="[0, 1, 0, 1, 1]", references="[0, 0, 1, 1, 1]",
                        result="{'recall': 0.6666666666666666}")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Recall(evaluate.Metric):
    def _info(self):
        return label_info(_DESCRIPTION, _INPUTS, self.config_name == "multilabel",
                          "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.recall_score.html")

    def _compute(self, predictions, references, **options):
        return averaged("recall", recall_score, predictions, references, **options)
