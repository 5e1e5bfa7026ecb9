"""`hftransfer compare TASK [recipe flags]`: feature extraction, staged fine-tuning and LoRA on the same data.

Each strategy runs as its own `accelerate launch` (so the user's Accelerate config applies, and each run's peak
memory is its own) into `OUTPUT_DIR/<strategy>/`, one after another. The table (accuracy, macro-F1, time,
trainable parameters, peak memory) is written to `OUTPUT_DIR/comparison.json` and `comparison.md`; the model card
and the demo show it. The shared flags are parsed and the data read once before the first launch, so a misspelt
flag or a data error is one error, not three. A strategy whose run fails does not stop the others: its row says so,
and `compare` exits with an error naming it once the table is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .card import write_card
from .outputs import COMPARISON_FILE, COMPARISON_MD, CONFIG, RUN_RECORD, OutputFolder, write_json
from .report import COMPARISON_COLUMNS, add_comparison, comparison_table
from .strategies import COMPARED


def _pop_flag(flags: list[str], name: str) -> tuple[str | None, list[str]]:
    """A flag's value and the flags without it; spelled `--output_dir` or `--output-dir`, as the recipes take it."""
    spellings = {name, name.replace("_", "-")}
    for i, flag in enumerate(flags):
        if flag in spellings:
            if i + 1 >= len(flags):
                raise SystemExit(f"{name} needs a value")
            return flags[i + 1], flags[:i] + flags[i + 2:]
        if flag.split("=", 1)[0] in spellings and "=" in flag:
            return flag.split("=", 1)[1], flags[:i] + flags[i + 1:]
    return None, flags


def run_strategy(task: str, strategy: str, flags: list[str], output_dir: Path) -> dict:
    out = output_dir / strategy
    command = [sys.executable, "-m", "accelerate.commands.launch", "-m", "hftransfer.cli", "train", task, *flags,
               "--strategy", strategy, "--output_dir", str(out)]
    print(f"[compare] {strategy}: {' '.join(command[3:])}", flush=True)
    start = time.time()
    done = subprocess.run(command)
    if done.returncode:
        failed = f"exit {done.returncode}"
        if _holds_a_model(out):  # its card and demo would pass for this comparison's result
            failed += f"; {out} holds an earlier run's model, not this comparison's"
        print(f"[compare] the {strategy} run failed ({failed}); see its output above", flush=True)
        return {"strategy": strategy, "failed": failed, "wall_s": round(time.time() - start, 1)}
    results = OutputFolder(out).results
    row = {key: results.get(key) for key in COMPARISON_COLUMNS if key not in ("strategy", "failed")}
    return {"strategy": strategy, **row, "wall_s": round(time.time() - start, 1), "output_dir": str(out)}


def _holds_a_model(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and (folder / RUN_RECORD).is_file()  # read nothing: a damaged one is no error


def write_table(rows: list[dict], output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / COMPARISON_FILE, rows)
    path = output_dir / COMPARISON_MD
    path.write_text(comparison_table(rows))
    return path


def check_flags(task_cls, flags: list[str], strategy: str, output_dir: Path) -> None:
    """Parse the flags every strategy's run shares and read the data as the runs will: an unknown setting, a bad
    value or data no run can train on stops `compare` here, before any launch, with the recipe's own message (each
    run would have failed with it). In a process of its own, with no GPU visible: `TrainingArguments` sets up the
    device as it parses, and this process, waiting on the runs, must not hold a CUDA context."""
    code = ("import sys; sys.argv[0] = 'hftransfer'; from hftransfer.compare import check_in_this_process; "
            "check_in_this_process(sys.argv[1], sys.argv[2:])")
    argv = ["--model_name_or_path", task_cls.default_model, *flags, "--strategy", strategy,  # later flags win
            "--output_dir", str(output_dir / strategy)]
    done = subprocess.run([sys.executable, "-c", code, task_cls.name, *argv], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"compare: {message[-1] if message else f'the flags were refused (exit {done.returncode})'}")


def check_in_this_process(task_name: str, argv: list[str]) -> None:
    """`check_flags`' process: the flags parsed, the data loaded and checked (`data.prepare_splits`)."""
    from .args import parse_args
    from .data import prepare_splits
    from .errors import InputError
    from .tasks import TASKS

    run = parse_args(argv)
    try:
        prepare_splits(run.data, TASKS[task_name](run.data), run.training.seed, run.explicit)
    except InputError as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None


def compare(task: str, flags: list[str], strategies=COMPARED) -> list[dict]:
    from .tasks import TASKS

    if task not in TASKS:
        raise SystemExit(f"compare: the task is one of {', '.join(TASKS)}, not '{task}'")
    if any(f == "--strategy" or f.startswith("--strategy=") for f in flags):
        raise SystemExit("error: compare runs each strategy itself: leave out --strategy")
    output_dir, flags = _pop_flag(flags, "--output_dir")
    output_dir = Path(output_dir or f"outputs/{task}-compare")
    check_flags(TASKS[task], flags, strategies[0], output_dir)
    rows = [run_strategy(task, strategy, flags, output_dir) for strategy in strategies]
    path = write_table(rows, output_dir)
    for row in rows:  # each model's card and report show the table it is part of
        if "failed" not in row:
            folder = Path(row["output_dir"])
            write_table(rows, folder)
            write_card(folder)
            add_comparison(folder, rows)
    print(f"\n{comparison_table(rows)}\nComparison table: {path} (and {COMPARISON_FILE})")
    failed = [row["strategy"] for row in rows if "failed" in row]
    if failed:
        raise SystemExit(f"[compare] {', '.join(failed)} failed (see the output above); the table shows the rest")
    return rows
