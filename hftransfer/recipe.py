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
from .data import DataError
from .freezing import PatternError
from .modeling import ModelError
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


def main(task_name: str, argv: list[str] | None = None) -> dict:
    if task_name not in TASKS:
        raise SystemExit(f"The task is one of {', '.join(TASKS)}, not '{task_name}'")
    task_cls = TASKS[task_name]
    run = parse_args(argv, defaults={"model_name_or_path": task_cls.default_model,
                                     "output_dir": f"outputs/{task_name}"})
    choices = Choices()
    choose_hardware(run, choices)  # first: the precision and devices settle before anything reads them
    setup_logging(run.training)
    choices.log()
    transfer = TransferRun(run, task_cls(run.data), choices)
    try:
        metrics = transfer.execute()
    except (DataError, PatternError, ModelError) as err:
        raise SystemExit(f"error: {err}") from None
    if run.training.should_log:
        print(f"\nModel, processor, report and model card: {run.training.output_dir}\n"
              f"eval_accuracy = {metrics['eval_accuracy']:.4f}  (train {metrics['train_runtime']:.0f} s, "
              f"total {metrics['total_runtime']:.0f} s)\n"
              f"Open its demo: {demo_command(run.training.output_dir)}")
        if run.transfer.serve_demo:
            from .demo import serve

            serve(run.training.output_dir)
    return metrics


def demo_command(output_dir: str) -> str:
    """The command that serves the demo, runnable as printed: the venv's `hftransfer` where that is not on PATH."""
    import shlex
    import shutil

    local = Path(sys.executable).with_name("hftransfer")
    on_path = shutil.which("hftransfer")
    program = os.path.relpath(local) if local.exists() and on_path != str(local) else "hftransfer"
    return f"{program} demo {shlex.quote(output_dir)}"
