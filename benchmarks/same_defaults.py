"""The embedded defaults before and after a change, side by side in one run: same accuracy, or the change is wrong.

    python benchmarks/same_defaults.py BASE_COMMIT [--tasks image text] [--flags "--train_dir D/train ..."]

Checks out BASE_COMMIT into a temporary worktree and runs each recipe's embedded default (`recipes/image.py`,
`recipes/text.py`, no flags but the output folder) from that tree and from this one, one after the other, with the
same interpreter and environment, so only the code differs. Prints a table of eval_accuracy, eval_f1_macro and
wall time, and appends it to benchmarks/results/same_defaults.json. Training is seeded and runs on the CPU: equal
code paths give equal numbers; a refactoring that changed behaviour shows as a difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "same_defaults.json"
KEYS = ("eval_accuracy", "eval_f1_macro", "train_runtime")


def run_recipe(tree: Path, task: str, output_dir: Path, flags: list[str] = ()) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HFTRANSFER_CACHE": str(output_dir / "cache"),  # no shared cache
           "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647"}
    found = subprocess.run([sys.executable, "-c", "import hftransfer; print(hftransfer.__file__)"], env=env, cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).is_relative_to(tree):  # an installed hftransfer must not stand in for the tree's
        raise SystemExit(f"{tree}: imports hftransfer from {found}")
    start = time.time()
    subprocess.run([sys.executable, str(tree / "recipes" / f"{task}.py"), "--output_dir", str(output_dir),
                    "--disable_tqdm", "true", *flags], env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((output_dir / "all_results.json").read_text())
    return {key: results.get(key) for key in KEYS} | {"wall_s": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the commit before the change")
    parser.add_argument("--tasks", nargs="*", default=["image", "text"])
    parser.add_argument("--flags", default="", help="more recipe flags for both runs, e.g. another data set's "
                                                     "'--train_dir D/train --validation_dir D/validation'")
    options = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), options.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for task in options.tasks:
                for label, tree in ((f"before ({options.base})", base_tree), (f"after ({head} + working tree)", ROOT)):
                    result = run_recipe(tree, task, Path(scratch) / f"{task}-{tree.name}", shlex.split(options.flags))
                    rows.append({"task": task, "code": label, "flags": options.flags, **result})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    history = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps(history + [{"base": options.base, "head": head, "rows": rows}], indent=2) + "\n")
    for task in options.tasks:
        before, after = (r for r in rows if r["task"] == task)
        same = before["eval_accuracy"] == after["eval_accuracy"]
        print(f"{task}: eval_accuracy {before['eval_accuracy']:.4f} before, {after['eval_accuracy']:.4f} after "
              f"({'identical' if same else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
