"""`evaluate` metrics that work offline: modules shipped here load from the package, any other name from the Hub."""

from __future__ import annotations

from pathlib import Path

import evaluate

SHIPPED = Path(__file__).parent


def load_metrics(names: list[str]) -> list[evaluate.EvaluationModule]:
    return [evaluate.load(str(SHIPPED / name) if (SHIPPED / name / f"{name}.py").is_file() else name)
            for name in names]


def multi_label_metrics(predictions, references) -> dict:
    """Micro and macro F1 over labels, and exact-match accuracy (every label of an example right)."""
    import numpy as np
    from sklearn.metrics import f1_score

    predictions, references = np.asarray(predictions).astype(int), np.asarray(references).astype(int)
    return {"accuracy": float((predictions == references).all(axis=1).mean()),
            "f1_micro": float(f1_score(references, predictions, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0))}
