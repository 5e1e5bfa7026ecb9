"""`accelerate launch` of a recipe, as users run it (test_recipe, test_distributed)."""

import os
import subprocess
import sys

from conftest import ROOT
from support.ports import free_port


def accelerate_launch(args, processes=1, timeout=900, config=None, recipe="image", **env_changes):
    """`accelerate launch` of the image (or text) recipe: with explicit flags, or with one of the shipped `config`
    files."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_each(processes)), **env_changes}
    if config:
        launch = ["--config_file", str(ROOT / "recipes" / "accelerate_configs" / f"{config}.yaml")]
    else:
        launch = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  *(["--multi_gpu"] if processes > 1 else [])]  # torchrun; on a CPU, DDP over gloo
    if processes > 1:
        launch += ["--main_process_port", str(free_port())]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), *launch,
               str(ROOT / "recipes" / f"{recipe}.py"), *args, "--disable_tqdm", "true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def threads_each(processes: int) -> int:
    """This worker's share of the cores (`pytest -n 2` on two cores: one), split among the launched processes: a
    launch of two threads beside the other worker's run oversubscribed the cores, and both waited."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 2) // workers // processes)
