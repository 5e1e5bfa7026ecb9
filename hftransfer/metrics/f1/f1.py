"""F1: the harmonic mean of precision and recall.

Shipped with hftransfer so `evaluate.load` works offline; it takes the arguments of the Hub's `f1` module and
computes what it computes (scikit-learn's `f1_score`), plus `zero_division`, which the Hub module leaves at
scikit-learn's default.
"""

import evaluate
from sklearn.metrics import f1_score

from hftransfer.metrics.sklearn_scores import INPUTS, averaged, label_info

_DESCRIPTION = "F1 = 2 * (precision * recall) / (precision + recall), per class or averaged over classes."
_INPUTS = INPUTS.format(name="f1", undefined="a label never predicted nor true",
                        predictions="[0, 0, 1, 1, 0]", references="[0, 1, 0, 1, 0]",
                        result="{'f1': 0.5}")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class F1(evaluate.Metric):
    def _info(self):
        return label_info(_DESCRIPTION, _INPUTS, self.config_name == "multilabel",
                          "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html")

    def _compute(self, predictions, references, **options):
        return averaged("f1", f1_score, predictions, references, **options)
