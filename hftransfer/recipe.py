"""The recipes' shared `main`: the lesson in order. `recipes/image.py` and `recipes/text.py` only pick the task.

This module imports torch and transformers, so a process that owns its run imports it inside
`fastpath.fast_start()`, as the recipes and `hftransfer train` do: the allocator setting must come first.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import datasets
import transformers

from .args import parse_args
from .choices import Choices, choose_hardware
from .errors import InputError
from .hub import check_repo_id
from .tasks import TASKS
from .training import TransferRun

logger = logging.getLogger("hftransfer")


def setup_logging(training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    # INFO from hftransfer on the main process (the freeze report, chosen settings), warnings elsewhere
    level = logging.INFO if training_args.should_log else logging.WARNING
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))


def _start(task_name: str, argv: list[str] | None, trains: bool = True) -> TransferRun:
    """Parse, choose the hardware's settings, start logging: the run, not yet set up."""
    if task_name not in TASKS:
        raise SystemExit(f"error: the task is one of {', '.join(TASKS)}, not '{task_name}'")
    task_cls = TASKS[task_name]
    run = parse_args(argv, defaults={"model_name_or_path": task_cls.default_model,
                                     "output_dir": f"outputs/{task_name}"}, trains=trains)
    if run.training.push_to_hub and run.training.hub_model_id:  # the Hub refused it only once the model was trained
        try:
            check_repo_id(run.training.hub_model_id, "--hub_model_id")
        except InputError as err:
            raise SystemExit(f"error: {err}") from None
    choices = Choices()
    choose_hardware(run, choices)  # first: the precision and devices settle before anything reads them
    setup_logging(run.training)
    choices.log()
    return TransferRun(run, task_cls(run.data), choices)


def main(task_name: str, argv: list[str] | None = None) -> dict:
    transfer = _start(task_name, argv)
    run = transfer.run
    try:
        metrics = transfer.execute()
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    if run.training.should_log:
        # the metric that picked the best epochs first: macro-F1 when classes are imbalanced
        shown = dict.fromkeys(key for key in (f"eval_{transfer.args.metric_for_best_model}", "eval_accuracy")
                              if key in metrics)
        print(f"\nModel, processor, report and model card: {run.training.output_dir}\n"
              f"{'  '.join(f'{k} = {metrics[k]:.4f}' for k in shown)}  (train {metrics['train_runtime']:.0f} s, "
              f"total {metrics['total_runtime']:.0f} s)\n"
              f"Open its demo: {demo_command(run.training.output_dir)}")
        if run.transfer.serve_demo:
            from .demo import serve

            serve(run.training.output_dir)
    return metrics


def check(task_name: str, argv: list[str] | None = None) -> dict:
    """`hftransfer check`: the data-quality pass of a run, without training. Writes data_quality.json and
    data_quality.md (with thumbnails of the images it shows) into --output_dir."""
    from . import data_quality

    transfer = _start(task_name, argv, trains=False)
    try:
        transfer.setup()
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    found = data_quality.check(transfer)
    data_quality.announce(found)
    if transfer.args.should_save:
        path = data_quality.write(transfer, found, transfer.args.output_dir)
        print(f"\nData quality: {path}")
    return found


def demo_command(output_dir: str) -> str:
    """The command that serves the demo, runnable as printed: the venv's `hftransfer` where that is not on PATH,
    relative where the venv is under the working directory, else absolute (not ../../../../work/.venv/...)."""
    import shlex
    import shutil

    local = Path(sys.executable).with_name("hftransfer")
    if not local.exists() or shutil.which("hftransfer") == str(local):
        return f"hftransfer demo {shlex.quote(output_dir)}"
    relative = os.path.relpath(local)
    program = str(local) if relative.startswith("..") else relative
    return f"{shlex.quote(program)} demo {shlex.quote(output_dir)}"
