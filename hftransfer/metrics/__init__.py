"""`evaluate` metrics that work offline: modules shipped here load from the package, any other name from the Hub."""

from __future__ import annotations

from pathlib import Path

import evaluate

SHIPPED = Path(__file__).parent


def load_metrics(names: list[str]) -> list[evaluate.EvaluationModule]:
    return [evaluate.load(str(SHIPPED / name) if (SHIPPED / name / f"{name}.py").is_file() else name)
            for name in names]
