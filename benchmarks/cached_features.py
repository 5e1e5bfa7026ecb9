"""Cached-feature training against the plain-Trainer frozen base, side by side in one run.

    python benchmarks/cached_features.py [--epochs 10]

Three runs on the embedded image default (2,000 / 500 Fashion-MNIST, zoo:mobilenet_v2 at 112 px, 10 head epochs),
one at a time, each timed from the start of its command to the saved model with one evaluation pass:
1. plain `Trainer`, base frozen by hand, forward through the base every epoch (`plain_frozen_trainer.py`);
2. `recipes/image.py --strategy feature_extraction` with an empty feature cache;
3. the same again with other head settings: the cache is reused, only the head trains.
Writes benchmarks/results/cached_features.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], env: dict) -> tuple[float, str]:
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return time.time() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hftransfer-cache-bench-"))
    env = {**os.environ, "HFTRANSFER_CACHE": str(work / "cache")}
    subprocess.run([sys.executable, "-m", "hftransfer.cli", "zoo", "prepare", "mobilenet_v2"], env=env, check=True,
                   capture_output=True)
    from hftransfer.fastpath import fast_malloc_env

    plain_env = fast_malloc_env(env)  # the baseline gets the same allocator fix: only the method differs
    plain_time, plain_out = timed([sys.executable, "benchmarks/plain_frozen_trainer.py", str(work / "plain"),
                                   "--epochs", str(args.epochs)], plain_env)
    plain = json.loads(plain_out.strip().splitlines()[-1])
    recipe = [sys.executable, "recipes/image.py", "--strategy", "feature_extraction", "--head_epochs",
              str(args.epochs), "--disable_tqdm", "true"]
    cold_time, _ = timed([*recipe, "--output_dir", str(work / "cold")], env)
    warm_time, _ = timed([*recipe, "--output_dir", str(work / "warm"), "--head_learning_rate", "1e-2"], env)
    results = {
        "plain_trainer": {"wall_s": round(plain_time, 1), "eval_accuracy": plain["eval_accuracy"]},
        "cached_cold": {"wall_s": round(cold_time, 1),
                        "eval_accuracy": json.loads((work / "cold" / "all_results.json").read_text())["eval_accuracy"]},
        "cached_warm_other_lr": {"wall_s": round(warm_time, 1), "eval_accuracy": json.loads(
            (work / "warm" / "all_results.json").read_text())["eval_accuracy"]},
    }
    results["speedup_cold"] = round(plain_time / cold_time, 2)
    results["speedup_warm"] = round(plain_time / warm_time, 2)
    results["machine"] = f"{os.cpu_count()} cores, {os.uname().machine}, no GPU" if not _cuda() else "GPU"
    out = ROOT / "benchmarks" / "results" / "cached_features.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
