"""Early-stopping patience, measured: full validation curves of runs that never stop, and what each patience would
have done with them.

    python benchmarks/patience.py [--sets NAME ...] [--out benchmarks/results/patience.json]
    python benchmarks/patience.py --table          # the simulation from the stored curves only

Each set runs its recipe at the defaults with `--early_stopping_patience 0` (every planned epoch trains and is
evaluated; the best epoch is kept), one process at a time. Since a stage that stops early has trained exactly the
epochs the full run trained up to there (the learning-rate schedule is planned for all of them), the full curve
tells what patience P would have done: the stage stops at the P-th evaluation in a row without improvement, and keeps
the best epoch seen so far. Where that is the full run's best epoch, the stage ends with the same weights; so does
the run, when every stage's is. Per patience and kind of stage (head on cached features, base), the table gives the
stages that would have kept a worse epoch, the largest loss in the selection metric, and the share of epochs saved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
RUNS = Path("/tmp/hftransfer-bench/patience")
PATIENCES = (1, 2, 3, 4, 5, 6, 8, 10)


def sets() -> dict:
    from defaults import make_debates, make_fashion, make_reviews
    from imbalance import make_set

    return {
        "fashion_3000": lambda: ("image", ["--train_dir", str(make_fashion("fashion_3000", 300, "all") / "train"),
                                           "--validation_dir", str(make_fashion("fashion_3000", 300, "all") /
                                                                   "validation")]),
        "long_tail_1": lambda: ("image", ["--train_dir", str(make_set(1, 200) / "train"),
                                          "--validation_dir", str(make_set(1, 200) / "validation")]),
        "embedded_image": lambda: ("image", []),
        "embedded_text": lambda: ("text", []),
        "reviews_2000": lambda: ("text", ["--train_file", str(make_reviews() / "train.csv"),
                                          "--validation_file", str(make_reviews() / "test.csv")]),
        "debates": lambda: ("text", ["--train_file", str(make_debates() / "train.csv"),
                                     "--validation_file", str(make_debates() / "test.csv")]),
    }


def run(name: str, task: str, data: list[str]) -> dict:
    out = RUNS / name
    command = [sys.executable, str(ROOT / "recipes" / f"{task}.py"), *data, "--output_dir", str(out),
               "--restart", "true", "--disable_tqdm", "true", "--check_data", "false",
               "--early_stopping_patience", "0"]
    start = time.time()
    subprocess.run(command, check=True, capture_output=True)
    record = json.loads((out / "hftransfer_run.json").read_text())
    results = json.loads((out / "all_results.json").read_text())
    stages = []
    for stage in record["stages"]:
        metric = stage["metrics"]["selection_metric"]
        curve = [[entry["epoch"], entry[metric], entry["eval_loss"]] for entry in stage["log"] if metric in entry]
        stages.append({"stage": stage["stage"], "kind": stage["kind"], "metric": metric, "curve": curve,
                       "cached_features": stage["metrics"]["cached_features"]})
    return {"set": name, "stages": stages, "wall_s": round(time.time() - start, 1),
            "eval_accuracy": results["eval_accuracy"], "eval_f1_macro": results.get("eval_f1_macro")}


def stopped(curve: list, patience: int) -> tuple[int, int]:
    """(index of the kept evaluation, evaluations run) under `patience`, as `selection.BestEpoch` decides."""
    best, best_at, stale = None, 0, 0
    for index, (_, metric, loss) in enumerate(curve):
        score = (metric, -loss)
        if best is None or score > best:
            best, best_at, stale = score, index, 0
        else:
            stale += 1
            if stale >= patience:
                return best_at, index + 1
    return best_at, len(curve)


def table(rows: list[dict]) -> str:
    lines = ["| patience | stage kind | stages | kept a worse epoch | largest metric loss | epochs saved |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for patience in PATIENCES:
        for kind in ("head", "base"):
            found = [s for row in rows for s in row["stages"] if (s["cached_features"] if kind == "head"
                                                                   else not s["cached_features"]) and s["curve"]]
            if not found:
                continue
            worse, loss, saved, total = 0, 0.0, 0, 0
            for stage in found:
                curve = stage["curve"]
                full_best, _ = stopped(curve, len(curve) + 1)
                kept, ran = stopped(curve, patience)
                if kept != full_best:
                    worse += 1
                    loss = max(loss, curve[full_best][1] - curve[kept][1])
                saved, total = saved + len(curve) - ran, total + len(curve)
            lines.append(f"| {patience} | {kind} | {len(found)} | {worse} | {loss:.4f} | {saved / total:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", nargs="*")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "patience.json")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    if not args.table:
        for name, make in sets().items():
            if args.sets and name not in args.sets:
                continue
            task, data = make()
            row = run(name, task, data)
            rows = [r for r in rows if r["set"] != name] + [row]
            args.out.write_text(json.dumps(rows, indent=1) + "\n")
            print(name, row["wall_s"], "s", row["eval_accuracy"], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
