"""What this hardware gets by default: precision, TF32, loader workers and CPU threads, each only where the user
set nothing (a recipe flag, or `accelerate launch`'s own flags and config file).

`accelerate launch` exports OMP_NUM_THREADS to every process it starts: the user's value, else its
`--num_cpu_threads_per_process`, else 1 (it computes cores per process only with `--use_cpu`). A recipe launched
the plain way on a CPU therefore trained on one core: 60 samples/s against 97 with `python` on 2 cores (MobileNetV2,
600 Fashion-MNIST images). The launcher is this process's parent; its command line and environment say whether
that 1 was asked for.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .anatomy import input_embeddings

logger = logging.getLogger(__name__)

AMPERE = (8, 0)  # native bf16 and TF32 from compute capability 8.0 (A100); T4 (7.5) and V100 (7.0) have neither
MAX_WORKERS = 8


@dataclass
class Launcher:
    """The `accelerate launch` that started this process: its arguments and its own environment."""

    argv: list[str]
    environ: dict[str, str]

    def flag(self, name: str) -> bool:
        return any(a == name or a.startswith(name + "=") for a in self.argv)

    def config_value(self, key: str) -> str | None:
        """`key` in the Accelerate config file the launcher read (`--config_file`, else the default one)."""
        path = None
        for i, arg in enumerate(self.argv):
            if arg.startswith("--config_file="):
                path = arg.split("=", 1)[1]
            elif arg == "--config_file" and i + 1 < len(self.argv):
                path = self.argv[i + 1]
        if path is None:
            home = self.environ.get("HF_HOME", os.path.join(self.environ.get("HOME", "~"), ".cache", "huggingface"))
            path = os.path.join(home, "accelerate", "default_config.yaml")
        try:
            import yaml

            config = yaml.safe_load(Path(path).expanduser().read_text()) or {}
        except (OSError, ValueError, ImportError):
            return None
        value = config.get(key) if isinstance(config, dict) else None
        return None if value is None else str(value)


def parent_launcher(pid: int | None = None) -> Launcher | None:
    """The parent process when it is `accelerate launch` (any of its spellings), read from /proc; else None."""
    pid = os.getppid() if pid is None else pid
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        raw_env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    argv = [a for a in argv if a]
    names = [os.path.basename(a) for a in argv[:3]]
    launched = ("accelerate.commands.launch" in argv[:3] or "accelerate-launch" in names
                or any(n == "accelerate" and argv[i + 1:i + 2] == ["launch"] for i, n in enumerate(names)))
    if not launched:
        return None
    environ = dict(item.split("=", 1) for item in raw_env if "=" in item)
    return Launcher(argv, environ)


def inference_device() -> torch.device:
    """Where a trained model answers (the demo): the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fsdp_enabled(args) -> bool:
    """FSDP from the recipe's flags or from `accelerate launch` (its config file's distributed_type)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def prepare_for_fsdp(model) -> None:
    """Name the classes FSDP2 wraps one by one (`_no_split_modules`, on this model only: its class and other
    models keep theirs) where Accelerate's default would fail, each time a trainer hands the model over:
    - Accelerate wraps each listed class, then the input embeddings on their own; where a listed class holds them
      (ViT's and DeiT's `ViTEmbeddings`, BERT's, RoBERTa's and XLM-R's embeddings), the second wrap meets
      parameters already sharded and fails inside `fully_shard` (`TypeError: Invariant encountered`; seen on an
      H200). Those holders are left out; the embeddings get their own wrap;
    - Accelerate 1.15 (a GPU image's) refuses a listed class the model does not hold: one `_no_split_modules` names
      but never builds (MobileNetV2's `MobileNetV2DeepLabV3Plus`), and every class once the first stage's trainer
      has wrapped it (its class is then `FSDP<name>`). Only the classes present are listed.
    Classes a user names (`fsdp_transformer_layer_cls_to_wrap`) take precedence in Accelerate, as before."""
    listed = list(getattr(model, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in model.modules()}
    embeddings = input_embeddings(model)
    holders = {type(m).__name__ for m in model.modules()
               if embeddings is not None and m is not embeddings and m is not model
               and any(sub is embeddings for sub in m.modules())}
    kept = [name for name in listed if name in present and name not in holders]
    if kept != listed:
        model._no_split_modules = kept
        if holders & set(listed):
            logger.info("FSDP: wrapping %s; not %s, which holds the input embeddings Accelerate wraps on their own",
                        ", ".join(kept) or "no blocks", ", ".join(sorted(holders & set(listed))))


def settle_fsdp_precision(model) -> None:
    """FSDP2 settles each wrapped group's gradient dtype at the first forward, from what trains then: a later stage
    that trains more got bf16 gradients for float32 parameters (seen on an H200). Settled again for what trains now,
    as FSDP2's own, idempotent lazy initialisation does."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            state = module._get_fsdp_state()
            groups = getattr(state, "_fsdp_param_groups", None)  # torch before 2.12: one group a module
            for group in groups if groups is not None else [state._fsdp_param_group]:
                if group is not None:
                    group._init_mp_dtypes()


def shards_parameters(args) -> bool:
    """FSDP, or DeepSpeed ZeRO-3 (which loads a model's parameters already partitioned): the model runs only once
    wrapped."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return fsdp_enabled(args) or is_deepspeed_zero3_enabled()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_per_process() -> int:
    """The usable cores shared among this machine's processes of the run."""
    return usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def thread_map(function, items, window: int = 8):
    """`function` of each item, in order, on a thread per core this process has: for the passes that decode every
    image before training, which PIL does outside the GIL (800x600 JPEGs: 1.3 to 1.5 times as fast on 2 cores;
    benchmarks/image_checks.py). At most `window` items a thread are read ahead (an executor's `map` takes them
    all at once: every image's bytes, for a table that embeds them); work not started is dropped when the caller
    stops early or an item raises."""
    threads = max(1, cores_per_process())
    if threads == 1:
        yield from map(function, items)
        return
    pool, pending = ThreadPoolExecutor(threads), deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= threads * window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def launcher_threads(launcher: Launcher | None) -> int | None:
    """Threads per process where `accelerate launch` left its default OMP_NUM_THREADS=1 on a CPU: the cores shared
    among this machine's processes. None where the user chose (the launcher's flag or its environment)."""
    if launcher is None or os.environ.get("OMP_NUM_THREADS") != "1":
        return None
    if launcher.flag("--num_cpu_threads_per_process") or "OMP_NUM_THREADS" in launcher.environ:
        return None
    threads = cores_per_process()
    return threads if threads > 1 else None


def mixed_precision_chosen(run, launcher: Launcher | None) -> bool:
    """Whether the user chose a precision: the recipe's --bf16/--fp16, or the launcher's flag or config file."""
    if run.given("bf16") or run.given("fp16"):
        return True
    if launcher is None:
        return False
    return launcher.flag("--mixed_precision") or launcher.config_value("mixed_precision") is not None


def gpu_defaults(run, capability: tuple[int, int], launcher: Launcher | None) -> dict:
    """bf16 only where native (8.0+), fp16 otherwise; TF32 on 8.0+ only (it raises on older cards); no per-step
    host sync; loader workers from the cores each process has."""
    changes = {}
    if not mixed_precision_chosen(run, launcher):
        changes["bf16" if capability >= AMPERE else "fp16"] = True
    if not run.given("tf32") and capability >= AMPERE:
        changes["tf32"] = True
    if not run.given("logging_nan_inf_filter"):  # its check reads the loss back every step: a host sync
        changes["logging_nan_inf_filter"] = False  # (a NaN loss is then logged as NaN)
    if not run.given("dataloader_num_workers"):
        changes["dataloader_num_workers"] = max(0, min(MAX_WORKERS, cores_per_process() - 1))
    return changes


def cpu_defaults(run) -> dict:
    changes = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not run.given("use_cpu"):
        changes["use_cpu"] = True  # several processes and no GPU: DDP over gloo on the CPU
    if not run.given("dataloader_pin_memory"):
        changes["dataloader_pin_memory"] = False  # nothing to pin for
    return changes


def apply_defaults(run, capability: tuple[int, int] | None = None, launcher: Launcher | None = None) -> dict:
    """Set this hardware's defaults on `run.training` (and the CPU threads); returns what was chosen, for the log.
    `capability` None: the GPU's, if there is one."""
    if capability is None and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
    launcher = parent_launcher() if launcher is None else launcher
    on_gpu = capability is not None and not run.training.use_cpu
    changes = gpu_defaults(run, capability, launcher) if on_gpu else cpu_defaults(run)
    if changes:
        run.training = replace(run.training, **changes)
    chosen = dict(changes)
    threads = None if on_gpu else launcher_threads(launcher)
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # loader workers and children inherit it
        chosen["cpu_threads"] = f"{threads} (accelerate launch's default was 1)"
    return chosen
