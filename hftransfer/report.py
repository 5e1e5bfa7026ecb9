"""A run's report: confusion matrix, training curves across stages, per-class scores, freeze plan, comparison.

Written as PNGs and markdown into `OUTPUT_DIR/report/` so it reads on the Hub and on GitHub without a notebook. The
tables the card and the demo show (stages, freeze plan, comparison) are rendered here too, by one function each.
matplotlib and the metric helpers are imported inside the functions, so importing this module costs nothing; figures
are drawn on an Agg canvas directly (no pyplot), which leaves the caller's backend and global state alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from .outputs import CONFUSION_PNG, CURVES_PNG, DATA_QUALITY, PER_CLASS_MD, REPORT_DIR, REPORT_MD

MAX_LABELLED_CLASSES = 30  # past this, class names and counts on the confusion matrix are unreadable
# quality curves, where logged: train_accuracy comes from the training batches themselves (free), eval_* from
# evaluations during training (--eval_strategy epoch)
CURVE_METRICS = ("train_accuracy", "eval_accuracy", "eval_f1_macro", "eval_top_5_accuracy")
# `hftransfer compare`'s columns, in order, and their headers
COMPARISON_COLUMNS = {"strategy": "strategy", "eval_accuracy": "accuracy", "eval_f1_macro": "macro-F1",
                      "train_runtime": "train time (s)", "total_runtime": "total time (s)",
                      "trainable_parameters": "trainable parameters", "peak_memory_mb": "peak memory (MB)",
                      "failed": "failed"}


# ---------------------------------------------------------------- tables

def format_value(value) -> str:
    """One table cell: ints with thousands separators, floats to 4 significant digits, None as '-'."""
    if getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and abs(value) >= 1000:
            return f"{value:,.0f}"  # runtimes, counts: the fraction is noise
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) if value else "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _numeric(value) -> bool:
    if getattr(value, "ndim", None) == 0:
        value = value.item()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def markdown_table(rows: list[dict], columns: list[str] | dict[str, str] | None = None) -> str:
    """A markdown table of `rows`; `columns` picks and orders keys (a dict also renames them for the header).

    By default, every key in order of first appearance. Numeric columns are right-aligned; missing cells show '-'.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    headers = dict(columns) if isinstance(columns, dict) else {key: key for key in columns}
    if not headers:
        return ""
    keys = list(headers)
    aligns = []
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        aligns.append(" ---: |" if values and all(_numeric(v) for v in values) else " --- |")
    lines = ["| " + " | ".join(format_value(headers[key]) for key in keys) + " |", "|" + "".join(aligns)]
    lines += ["| " + " | ".join(format_value(row.get(key)) for key in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- training curves

def _stage_length(stage: dict) -> float:
    """How many epochs a stage ran: its log's last epoch (early stopping included), else the planned epochs."""
    epochs = [entry["epoch"] for entry in stage.get("log") or [] if isinstance(entry.get("epoch"), (int, float))]
    return float(max(epochs)) if epochs else float(stage.get("epochs") or 0)


def stage_curves(history: list[dict]) -> tuple[list[dict], list[tuple[float, str]]]:
    """Every stage's log entries on one continuous epoch axis, and where each stage begins on it.

    Each stage's Trainer counts epochs from 0, so stage n is shifted by the length of stages 0..n-1. Points keep the
    entry's numeric values (loss, eval_accuracy, ...) with `epoch` replaced by the continuous one, plus `stage` and
    `stage_epoch`; the final summary entry (train_runtime, train_loss) is no curve point and is left out.
    """
    points, boundaries, offset = [], [], 0.0
    for index, stage in enumerate(history):
        name = str(stage.get("stage", f"stage {index + 1}"))
        boundaries.append((offset, name))
        for entry in stage.get("log") or []:
            if "train_runtime" in entry or not isinstance(entry.get("epoch"), (int, float)):
                continue
            values = {key: float(value) for key, value in entry.items()
                      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"}
            points.append({**values, "stage": name, "stage_epoch": float(entry["epoch"]),
                           "epoch": offset + float(entry["epoch"])})
        offset += _stage_length(stage)
    return points, boundaries


def _mark_stages(ax, boundaries: list[tuple[float, str]]) -> None:
    for epoch, name in boundaries:
        ax.axvline(epoch, color="0.4", linestyle="--", linewidth=1)
        ax.text(epoch, 0.98, f" {name}", transform=ax.get_xaxis_transform(), va="top", ha="left", fontsize=8,
                color="0.25")


def curves_figure(history: list[dict]):
    """Training (and eval) loss, and eval accuracy when logged, against the continuous epoch; stages marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points, boundaries = stage_curves(history)
    quality = [key for key in CURVE_METRICS if any(key in point for point in points)]
    figure = Figure(figsize=(11 if quality else 6.5, 4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if quality else 1, squeeze=False)[0]

    def series(key):
        found = [(p["epoch"], p[key]) for p in points if key in p]
        return [x for x, _ in found], [y for _, y in found]

    loss = axes[0]
    for key, style in (("loss", {"linewidth": 1.2}), ("eval_loss", {"marker": "o", "markersize": 3})):
        x, y = series(key)
        if x:
            loss.plot(x, y, label={"loss": "training loss", "eval_loss": "eval loss"}[key], **style)
    loss.set(xlabel="epoch (all stages)", ylabel="loss", title="Loss")
    if not points:
        loss.text(0.5, 0.5, "nothing logged", transform=loss.transAxes, ha="center", va="center")
    if quality:
        ax = axes[1]
        for key in quality:
            x, y = series(key)
            ax.plot(x, y, marker="o", markersize=3, label=key.replace("_", " "))
        ax.set(xlabel="epoch (all stages)", ylabel="score", title="Accuracy")
    for ax in axes:
        _mark_stages(ax, boundaries)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="center right", fontsize=8)
    return figure


# ---------------------------------------------------------------- confusion matrix

def confusion_figure(matrix: list[list[int]], labels: list[str]):
    """Counts in the cells, colour by row (the fraction of each true class), so small classes read as well."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=int).reshape(len(labels), len(labels))
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(labels)
    side = min(max(4.5, 0.42 * n + 2.5), 16)
    figure = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center",
                      fontsize=9 if n <= 15 else 7)
        ax.set_yticks(range(n), labels, fontsize=9 if n <= 15 else 7)
        size = 9 if n <= 10 else 7 if n <= 20 else 6
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=size,
                            color="white" if fractions[i, j] > 0.5 else "black")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({int(counts.sum()):,} examples)")
    return figure


# ---------------------------------------------------------------- the report

def plan_table(plan) -> str:
    """The freeze plan (a `FreezePlan` or its saved dict) as a table: what the report, card and demo show."""
    from .freezing import FreezePlan

    plan = plan if isinstance(plan, FreezePlan) else FreezePlan(**plan)
    rows = []
    for key, value in plan.settings().items():
        shown = ", ".join(f"`{p}`" for p in value) if isinstance(value, list) else value
        rows.append({"setting": key, "value": shown})
        if key == "strategy" and plan.trainable:
            rows.append({"setting": "trainable parameter tensors", "value": len(plan.trainable)})
    if plan.lora:
        rows.append({"setting": "LoRA", "value": f"r={plan.lora['r']} alpha={plan.lora['alpha']} on "
                                                 f"{len(plan.lora['target_modules'])} modules (merged)"})
    return markdown_table(rows)


def comparison_table(rows: list[dict]) -> str:
    """`hftransfer compare`'s rows: the comparison columns the rows have, in order."""
    return markdown_table(rows, {key: header for key, header in COMPARISON_COLUMNS.items()
                                 if any(key in row for row in rows)})


def _comparison_section(rows: list[dict]) -> str:
    return "## Comparison\n\nStrategies compared on the same data (`hftransfer compare`).\n\n" + comparison_table(rows)


def add_comparison(folder, rows: list[dict]) -> None:
    """Append the comparison to a finished run's report (`hftransfer compare`, after each run has written its own)."""
    path = Path(folder) / REPORT_DIR / REPORT_MD
    if path.is_file():
        path.write_text(path.read_text() + "\n" + _comparison_section(rows))


def stage_rows(history: list[dict]) -> list[dict]:
    """One row a stage (rate, epochs, where it starts, loss, what trained): the report, card and demo show it."""
    _, boundaries = stage_curves(history)
    rows = []
    for (start, name), stage in zip(boundaries, history):
        metrics = stage.get("metrics") or {}
        rows.append({"stage": name, "learning rate": stage.get("learning_rate"),
                     "weight decay": stage.get("weight_decay"), "epochs": stage.get("epochs"),
                     "starts at epoch": start, "train loss": metrics.get("train_loss"),
                     "best epoch (kept)": metrics.get("best_epoch") if metrics.get("kept_best_epoch") else None,
                     "trainable parameters": metrics.get("trainable_parameters"),
                     "cached features": metrics.get("cached_features")})
    return rows


# ---------------------------------------------------------------- data quality

QUALITY_ROWS_SHOWN = 12


def leak_warning(found: dict) -> str:
    """The loud line when validation examples copy training ones ('' when none do)."""
    summary = found["summary"]
    if not summary["leaked_validation_examples"]:
        return ""
    return (f"**Warning: {summary['leaked_validation_examples']:,} validation examples "
            f"({100 * summary['leaked_fraction']:.1f}%) are copies or near-copies of training examples: validation "
            f"scores overstate how the model does on new data.**\n")


def data_quality_summary(found: dict) -> str:
    """One line: what the card says."""
    summary = found["summary"]
    return (f"{summary['label_issues']:,} training examples whose label looks wrong, "
            f"{summary['leaked_validation_examples']:,} validation examples copied from training, "
            f"{summary['train_duplicate_pairs']:,} duplicate pairs within training (`{DATA_QUALITY}`; nothing was "
            f"removed or relabelled).")


def data_quality_section(found: dict, pictures: dict | None = None, heading: str = "##") -> str:
    """The report's (and demo's) view of `data_quality.json`: the summary, the leak warning, the first rows of each
    list. `pictures` maps (split, row) to a thumbnail's path relative to the report; texts show as themselves."""
    pictures = pictures or {}

    def shown(entry: dict) -> str:
        picture = pictures.get((entry["split"], entry["row"]))
        item = str(entry["item"])
        text = item if len(item) <= 120 else item[:117] + "..."
        return f"![]({picture}) {text}" if picture else text

    parts = [f"{heading} Data quality\n", "Found before training (label errors from the frozen base's features, "
             "copies by content): " + data_quality_summary(found) + "\n", leak_warning(found)]
    issues = found["label_issues"][:QUALITY_ROWS_SHOWN]
    if issues:
        parts.append(f"{heading}# Likely label errors (most likely first)\n\n" + markdown_table(
            [{"example": shown(e), "given": e["given"], "suggested": e["suggested"], "score": e["score"]}
             for e in issues]))
    pairs = found["duplicates"][:QUALITY_ROWS_SHOWN]
    if pairs:
        parts.append(f"{heading}# Duplicates\n\n" + markdown_table(
            [{"a": f"{p['a']['split']}: {shown(p['a'])}", "b": f"{p['b']['split']}: {shown(p['b'])}",
              "similarity": p["similarity"]} for p in pairs]))
    parts += [f"Not checked: {reason}.\n" for reason in found["summary"]["skipped"]]
    return "\n".join(part for part in parts if part)


def write_report(folder, *, labels: list[str], predictions: list[int] | None, references: list[int] | None,
                 history: list[dict], metrics: dict, plan: dict | None, comparison: list[dict] | None = None,
                 data_quality: str | None = None) -> Path:
    """Write `folder/report/` (confusion_matrix.png, training_curves.png, per_class.md, report.md); return report.md.

    `history` is the trainer's list of stages ({"stage", "learning_rate", "epochs", "metrics", "log"}), `metrics` the
    headline (final evaluation) numbers, `plan` the freeze plan as a dict, `comparison` rows of a strategy comparison,
    `data_quality` the rendered data-quality section. Without `predictions` (multi-label runs) there is no confusion
    matrix or per-class table.
    """
    from .metrics import confusion, per_class_report

    out = Path(folder) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    curves_figure(history).savefig(out / CURVES_PNG)
    sections = ["# Training report\n",
                "## Metrics\n\n" + markdown_table([{"metric": k, "value": v} for k, v in metrics.items()])]
    per_class = None
    if predictions is not None:
        predictions, references = [int(p) for p in predictions], [int(r) for r in references]
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        confusion_figure(confusion(predictions, references, len(labels)), labels).savefig(out / CONFUSION_PNG)
        per_class = markdown_table(per_class_report(predictions, references, labels),
                                   ["label", "precision", "recall", "f1", "support"])
        (out / PER_CLASS_MD).write_text(f"# Per-class scores\n\n{per_class}")
        sections.append(f"## Confusion matrix\n\nRows are the true class, columns the prediction; colour is the "
                        f"fraction of the row.\n\n![confusion matrix]({CONFUSION_PNG})\n")
    sections.append(f"## Training curves\n\nStages follow each other on one epoch axis; dashed lines mark where each "
                    f"begins.\n\n![training curves]({CURVES_PNG})\n")
    if history:
        sections.append("### Stages\n\n" + markdown_table(stage_rows(history)))
    if per_class:
        sections.append(f"## Per-class scores\n\nAlso in [{PER_CLASS_MD}]({PER_CLASS_MD}).\n\n{per_class}")
    if plan:
        sections.append("## Freeze plan\n\n" + plan_table(plan))
    if data_quality:
        sections.append(data_quality)
    if comparison:
        sections.append(_comparison_section(comparison))
    path = out / REPORT_MD
    path.write_text("\n".join(sections))
    return path
