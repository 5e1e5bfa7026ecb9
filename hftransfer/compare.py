"""`hftransfer compare TASK [recipe flags]`: feature extraction, staged fine-tuning and LoRA on the same data.

Each strategy runs as its own `accelerate launch` (so the user's Accelerate config applies, and each run's peak
memory is its own) into `OUTPUT_DIR/<strategy>/`, one after another. The table (accuracy, macro-F1, time,
trainable parameters, peak memory) is written to `OUTPUT_DIR/comparison.json` and `comparison.md`; the model card
and the demo show it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .outputs import ALL_RESULTS, COMPARISON_FILE, REPORT_DIR, REPORT_MD
from .report import markdown_table

STRATEGIES = ("feature_extraction", "staged", "lora")
COLUMNS = {"strategy": "strategy", "eval_accuracy": "accuracy", "eval_f1_macro": "macro-F1",
           "train_runtime": "train time (s)", "total_runtime": "total time (s)",
           "trainable_parameters": "trainable parameters", "peak_memory_mb": "peak memory (MB)"}


def _pop_flag(flags: list[str], name: str) -> tuple[str | None, list[str]]:
    if name in flags:
        i = flags.index(name)
        if i + 1 >= len(flags):
            raise SystemExit(f"{name} needs a value")
        return flags[i + 1], flags[:i] + flags[i + 2:]
    for i, flag in enumerate(flags):
        if flag.startswith(name + "="):
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
        raise SystemExit(f"[compare] the {strategy} run failed (exit {done.returncode}); see its output above")
    results = json.loads((out / ALL_RESULTS).read_text())
    row = {key: results.get(key) for key in COLUMNS if key != "strategy"}
    return {"strategy": strategy, **row, "wall_s": round(time.time() - start, 1), "output_dir": str(out)}


def markdown(rows: list[dict]) -> str:
    return markdown_table(rows, COLUMNS)


def write_table(rows: list[dict], output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / COMPARISON_FILE).write_text(json.dumps(rows, indent=2) + "\n")
    path = output_dir / "comparison.md"
    path.write_text(markdown(rows))
    return path


def compare(task: str, flags: list[str], strategies=STRATEGIES) -> list[dict]:
    if task not in ("image", "text"):
        raise SystemExit(f"compare: the task is 'image' or 'text', not '{task}'")
    if any(f == "--strategy" or f.startswith("--strategy=") for f in flags):
        raise SystemExit("compare runs each strategy itself: leave out --strategy")
    output_dir, flags = _pop_flag(flags, "--output_dir")
    output_dir = Path(output_dir or f"outputs/{task}-compare")
    rows = [run_strategy(task, strategy, flags, output_dir) for strategy in strategies]
    path = write_table(rows, output_dir)
    from .card import write_card  # each model's card and report show the table it is part of

    for row in rows:
        folder = Path(row["output_dir"])
        write_table(rows, folder)
        write_card(folder)
        report_md = folder / REPORT_DIR / REPORT_MD
        if report_md.is_file():
            section = "\n## Strategies compared on the same data\n\n" + markdown(rows)
            report_md.write_text(report_md.read_text() + section)
    print(f"\n{markdown(rows)}\nComparison table: {path} (and {COMPARISON_FILE})")
    return rows
