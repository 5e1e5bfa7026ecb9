"""What a finished run leaves in its output folder, written through `outputs.Staging` (atomic, file by file).

The model and its processor (a folder `from_pretrained` loads), the metrics in `Trainer.save_metrics`' convention,
the freeze plan, the run's record (settings, automatic choices with their reasons, stages with their logs, data
report), the report, a few validation inputs for the demo, and the model card.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from . import card, data_quality, hub, report
from .trainer import peak_memory_mb
from .outputs import (ADAPTER_FOLDER, CARD, DATA_QUALITY, EXAMPLES_FOLDER, REPORT_DIR, REPORT_MD, RUN_RECORD, Staging,
                      write_json)
from .strategies import ADAPTERS

logger = logging.getLogger(__name__)


def save_run(run, trainer, train_metrics: dict, eval_metrics: dict, plan) -> None:
    """Save the finished `TransferRun` `run`: every process takes part in saving the model (sharded weights are
    gathered), the main process writes the rest."""
    args = run.args
    staging = Staging(args.output_dir)
    with args.main_process_first(desc="staging folder"):
        if args.should_save:
            staging.create()
    trainer.save_model(str(staging.folder))
    if not trainer.is_world_process_zero():
        return
    folder = staging.folder
    run.processor.save_pretrained(folder)
    for split, metrics in (("train", train_metrics), ("eval", eval_metrics),
                           ("all", {**train_metrics, **eval_metrics})):
        staging.write_results(split, metrics)
    plan.save(folder)
    write_json(folder / RUN_RECORD, run_record(run))
    if run.data_quality is not None:
        write_json(folder / DATA_QUALITY, run.data_quality)
    _write_report(run, folder, eval_metrics, plan)
    _save_examples(run, folder / EXAMPLES_FOLDER)
    out = Path(args.output_dir)
    card.write_card(folder, args.hub_model_id or out.resolve().name)
    adapted = any(stage["kind"] == ADAPTERS for stage in run.history)
    staging.move_into_place((ADAPTER_FOLDER,) if adapted else (), owned=(ADAPTER_FOLDER,))
    logger.info(run.data_report.summary())
    logger.info("Report: %s; model card: %s", out / REPORT_DIR / REPORT_MD, out / CARD)


def headline_first(metrics: dict, metric: str | None) -> dict:
    """The metric that picked the best epochs first (macro-F1 on imbalanced classes), then the others."""
    key = f"eval_{metric}"
    return {key: metrics[key], **metrics} if key in metrics else metrics


def train_metrics(run, wall: float) -> dict:
    """`train_results.json`: the stages' training summed up, the data skipped, peak memory. A resumed run's total
    counts the stages earlier processes trained, as its training time does (it was this process's wall time alone,
    under the training time)."""
    stages = [h["metrics"] for h in run.history]
    wall += run.checkpoints.restored_seconds
    return {"train_samples": len(run.splits["train"]), "train_runtime": sum(m["train_runtime"] for m in stages),
            "train_loss": stages[-1]["train_loss"], "epoch": sum(m.get("epoch", 0) for m in stages),
            "total_runtime": round(wall, 2), "trainable_parameters": stages[-1]["trainable_parameters"],
            "skipped_examples": run.data_report.total_skipped, "peak_memory_mb": peak_memory_mb()}


def push(args) -> str | None:
    """`--push_to_hub`: the main process uploads the finished folder, after `hub.push`'s checks."""
    if not (args.push_to_hub and args.should_save):
        return None
    try:
        return hub.push(args.output_dir, repo_id=args.hub_model_id, token=args.hub_token,
                        private=args.hub_private_repo)
    except hub.PushError as err:
        raise hub.PushError(f"{err}\nThe trained model is saved in {args.output_dir}; `hftransfer push "
                            f"{args.output_dir}` uploads it later") from None


def run_record(run) -> dict:
    return {"settings": run.run.to_dict(), "chosen": run.choices.to_dict(), "stages": run.history,
            "data": run.data_report.to_dict(), "head_replaced": run.head_replaced, "labels": run.labels,
            "multi_label": run.multi_label, "world_size": run.args.world_size}


def _write_report(run, folder: Path, eval_metrics: dict, plan) -> None:
    single = not run.multi_label
    quality = None
    if run.data_quality is not None:
        pictures = data_quality.thumbnails(run, run.data_quality, folder / REPORT_DIR)
        quality = report.data_quality_section(run.data_quality, pictures)
    report.write_report(folder, labels=run.labels, history=run.history, metrics=eval_metrics, plan=asdict(plan),
                        predictions=run.eval_predictions.argmax(-1).tolist() if single else None,
                        references=run.eval_references.tolist() if single else None, data_quality=quality)


def _save_examples(run, folder: Path, count: int = 8) -> None:
    """A few validation inputs, one class after another, for the demo's examples."""
    validation = run.splits["validation"]
    chosen: dict = {}
    for index, label in enumerate(validation["label"]):
        key = tuple(label) if run.multi_label else label
        chosen.setdefault(key, index)
        if len(chosen) == count:
            break

    def name(key):
        return "+".join(run.labels[i] for i in key) if run.multi_label else run.labels[key]

    inputs = run.task.inputs_of(validation.select(list(chosen.values())))
    run.task.save_examples([(value, name(key)) for value, key in zip(inputs, chosen)], folder)
