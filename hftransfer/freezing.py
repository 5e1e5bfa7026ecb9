"""Freeze and unfreeze by parameter-name patterns, for any `transformers` model, with no table per architecture.

The model is read as ordered groups of parameters (`anatomy`: stem, blocks, pooling, top, head). Strategies and
`--unfreeze_last_n` work on these groups; patterns work on names. The resolved plan is a small JSON document saved
beside the model so a run can be reproduced from it.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .anatomy import (POOLING_GROUP, ParamGroup, base_prefix, block_list_name, describe,  # noqa: F401
                      head_modules, head_rate_factor, param_groups)
from .errors import InputError
from .outputs import PLAN_FILE

logger = logging.getLogger(__name__)
BN_MOMENTUM = 0.1


@dataclass
class FreezePlan:
    """A declarative, serialisable description of what trains (compare PEFT's `LoraConfig`)."""

    strategy: str = "feature_extraction"  # feature_extraction | fine_tune | full | lora (the base gets adapters)
    freeze: list[str] = field(default_factory=list)
    unfreeze: list[str] = field(default_factory=list)
    unfreeze_last_n: int | None = None
    layer_lr_decay: float | None = None  # each group deeper in the base trains at this times the next one's rate
    lr_multipliers: list[str] = field(default_factory=list)  # "PATTERN=FACTOR": rate factors by name
    lora: dict | None = None  # strategy lora: r, alpha, dropout and the modules that got adapters
    trainable: list[str] = field(default_factory=list)  # filled in by `apply`: the resolved result

    def settings(self) -> dict:
        """The strategy and every pattern setting that is set, in order: what each view of the plan shows."""
        shown = {"strategy": self.strategy}
        for key in ("freeze", "unfreeze", "unfreeze_last_n", "layer_lr_decay", "lr_multipliers"):
            if getattr(self, key) not in (None, []):
                shown[key] = getattr(self, key)
        return shown

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PLAN_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FreezePlan:
        """A saved plan (a file, or the output folder holding one); one that cannot be read is a PatternError
        naming the file."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:  # missing, not JSON, not an object of the plan's keys
            raise PatternError(f"{path}: not a freeze plan that can be read ({type(err).__name__}: {err})") from None


FINE_TUNE_BLOCKS = 2  # fine_tune's blocks when --unfreeze_last_n names none


class PatternError(InputError, ValueError):
    """A freeze pattern or plan that names nothing this model has, or cannot be read."""


# ---------------------------------------------------------------- patterns

def _compile(pattern: str):
    """Globs match a parameter name or any module prefix of it; `re:` patterns use `re.fullmatch` the same way."""
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:])
        return lambda name: any(regex.fullmatch(p) for p in _prefixes(name))
    return lambda name: any(fnmatch.fnmatchcase(p, pattern) for p in _prefixes(name))


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def match(pattern: str, names: list[str], saved: dict[str, str] | None = None) -> list[str]:
    """Names matched by `pattern`; a pattern that matches nothing is an error naming the nearest names. Given the
    checkpoint files' names (`saved`, from `saved_names`), the pattern is tried on them too, so one written in
    either naming, or in both, names what it says."""
    try:
        matcher = _compile(pattern)
    except (re.error, OverflowError) as err:  # a{99999999999}: an OverflowError
        raise PatternError(f"Pattern '{pattern}' is not a valid regular expression: {err}") from err
    found = in_either_naming(pattern, names, saved or {}, matcher)
    if not found:
        candidates = sorted({p for n in names for p in _prefixes(n)})
        bare = pattern.removeprefix("re:").replace("*", "").replace("?", "")
        near = difflib.get_close_matches(bare, candidates, n=5, cutoff=0.4) or candidates[:5]
        raise PatternError(f"Pattern '{pattern}' matches no parameter. Nearest names: {', '.join(near)}")
    return found


def saved_names(model: nn.Module) -> dict[str, str]:
    """The model's parameter and module names as its checkpoint files write them, where they differ; built once
    for all the patterns of a resolution (a pass over every parameter). transformers 5 renames some families'
    modules on loading and names them back on saving (ViT's `encoder.layer.3.attention.attention.query` is
    `layers.3.attention.q_proj` in the model), and guides, configs and PEFT examples written for the files' names
    (`--lora_target_modules query value`) matched nothing. Read from transformers' own reverse mapping, the one
    `save_pretrained` uses; a model it does not cover has none."""
    try:
        from transformers.core_model_loading import revert_weight_conversion

        params = dict(model.named_parameters())
        saved_by_tensor = {id(t): k for k, t in revert_weight_conversion(model, dict(params)).items()}
    except Exception:  # noqa: BLE001 (not a transformers model, or another version's internals: no renaming known)
        return {}
    renamed = {}
    for name, tensor in params.items():
        saved = saved_by_tensor.get(id(tensor), name)
        leaf = name.rsplit(".", 1)[-1]
        if saved != name:  # the parameter's module too, where the renaming left the parameter's own name alone
            renamed[name] = saved
            if saved.endswith("." + leaf):
                renamed.setdefault(name.removesuffix("." + leaf), saved.removesuffix("." + leaf))
    return renamed


def in_either_naming(pattern: str, names: list[str], saved: dict[str, str], matches) -> list[str]:
    """The `names` that `matches`, then those whose checkpoint-file name (in `saved`) does, the latter said in the
    log with what the model calls them (a pattern that mixes both namings matched the model's part alone, in
    silence)."""
    own = [name for name in names if matches(name)]
    matched = set(own)
    by_file = [name for name in names if name not in matched and name in saved and matches(saved[name])]
    if by_file:
        logger.info("'%s' names the checkpoint files' layout, which transformers renames on loading: read as %d "
                    "name(s) of this model (%s%s)", pattern, len(by_file), ", ".join(by_file[:3]),
                    ", ..." if len(by_file) > 3 else "")
    return own + by_file


# ---------------------------------------------------------------- applying a plan

def resolve(model: nn.Module, plan: FreezePlan) -> set[str]:
    """The names of the parameters that train under `plan`."""
    groups = param_groups(model)
    names = [n for n, _ in model.named_parameters()]
    head = {n for g in groups if g.name == "head" for n in g.params}
    if plan.strategy == "full":
        trainable = set(names)
    elif plan.strategy in ("feature_extraction", "fine_tune", "lora"):
        trainable = set(head)  # lora: the base stays frozen, PEFT adds trainable adapters to it
    else:
        raise ValueError(f"Unknown strategy '{plan.strategy}' (feature_extraction, fine_tune, full, lora)")
    blocks = [g for g in groups if g.name.startswith("base.block.")]
    last_n = plan.unfreeze_last_n
    if last_n is None and plan.strategy == "fine_tune":  # its default: the last 2 blocks, or ALBERT's one
        last_n = min(FINE_TUNE_BLOCKS, len(blocks)) or FINE_TUNE_BLOCKS
    if last_n:
        if last_n > len(blocks):
            asked = (f"--unfreeze_last_n {last_n}" if plan.unfreeze_last_n is not None
                     else f"fine_tune (by default its last {last_n} blocks)")
            raise PatternError(f"{asked}: the base has only {len(blocks)} blocks")
        for group in blocks[-last_n:] + [g for g in groups if g.name == "base.top"]:
            trainable.update(group.params)
    saved = saved_names(model) if plan.freeze or plan.unfreeze else {}
    for pattern in plan.freeze:
        trainable.difference_update(match(pattern, names, saved))
    # The pooling layer and pooler (`pooling`) are fixed computations (uniform attention, identity values, a nearly
    # linear pass-through): training them would unlearn them.
    fixed = {n for g in groups if g.name == POOLING_GROUP for n in g.params}
    for pattern in plan.unfreeze:
        found = match(pattern, names, saved)
        if fixed.issuperset(found):
            raise PatternError(f"--unfreeze '{pattern}' names only the checkpoint's pooling (the freeze report's "
                               f"{POOLING_GROUP}), a fixed computation that never trains: training it would unlearn "
                               "it. --checkpoint_pooling false keeps the model's own first-token reading instead")
        trainable.update(found)
    return trainable - fixed


def check_trains(model: nn.Module, plan: FreezePlan, stage: str) -> None:
    """Refuse, before any training, a plan under which nothing would train (a structure `anatomy` cannot read).
    LoRA adds its own parameters; its targets are checked when they are resolved."""
    if plan.strategy == "lora" or resolve(model, plan):
        return
    raise PatternError(f"Stage '{stage}' ({plan.strategy}) would train 0 parameters of {type(model).__name__}: found "
                       f"{describe(model)}. Name what trains with --unfreeze PATTERN (and --freeze PATTERN), e.g. "
                       f"--unfreeze '{_example_pattern(model)}'; `hftransfer freeze-report` lists the names")


def check_new_head_trains(model: nn.Module, plans: list[FreezePlan]) -> None:
    """A new head starts random: refuse, before any training, stages none of which trains it (`--strategy full
    --freeze classifier` trained the base under a random head, exit 0). A later stage may freeze a trained head."""
    head = {n for g in param_groups(model) if g.name == "head" for n in g.params}
    if not head or any(head & resolve(model, plan) for plan in plans):
        return
    names, saved = [n for n, _ in model.named_parameters()], saved_names(model)
    frozen_by = " ".join(repr(p) for p in dict.fromkeys(p for plan in plans for p in plan.freeze)
                         if head & set(match(p, names, saved)))
    raise PatternError(f"No stage would train the new head ({', '.join(sorted(head_modules(model)))}), which starts "
                       f"random: --freeze {frozen_by} names it. Freeze the base's parameters only "
                       "(`hftransfer freeze-report` lists the names)")


def _example_pattern(model: nn.Module) -> str:
    last = [n for n, _ in model.named_parameters()][-1]
    return last.rsplit(".", 1)[0] + ".*"


def apply(model: nn.Module, plan: FreezePlan, reset_bn_momentum: bool = True,
          freeze_bn_stats: bool = False) -> FreezePlan:
    """Set `requires_grad` from `plan`, pin fully frozen BatchNorm layers (all of them with `freeze_bn_stats`) to
    eval mode, and record the result."""
    trainable = resolve(model, plan)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            _set_bn_policy(module, reset_bn_momentum, freeze_bn_stats)
    plan.trainable = sorted(trainable, key=[n for n, _ in model.named_parameters()].index)
    return plan


def _keep_eval(module: nn.Module, args) -> None:
    # Runs before each forward: Trainer calls model.train() every step, which would put a frozen BN back in train
    # mode, and HF MobileNetV2's momentum of 0.997 would then replace the ImageNet statistics within a few batches.
    module.training = False


def _pin_to_eval(module: _BatchNorm) -> None:
    module._hftransfer_eval_hook = module.register_forward_pre_hook(_keep_eval)


def _set_bn_policy(module: _BatchNorm, reset_bn_momentum: bool, freeze_bn_stats: bool) -> None:
    frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
    keep_stats = frozen or freeze_bn_stats
    hook = getattr(module, "_hftransfer_eval_hook", None)
    if keep_stats and hook is None:
        _pin_to_eval(module)
    elif not keep_stats and hook is not None:
        hook.remove()
        del module._hftransfer_eval_hook
    if not keep_stats and reset_bn_momentum and module.momentum is not None and module.momentum > 0.5:
        # A TensorFlow decay (keep 99.7% of the old value) was passed as PyTorch momentum (take 99.7% of the batch).
        module.momentum = BN_MOMENTUM


def batchnorm_to_train(model: nn.Module, plan: FreezePlan, freeze_bn_stats: bool = False) -> list[str]:
    """Names of the BatchNorm layers that `plan` trains, and so switches to batch statistics."""
    if freeze_bn_stats:
        return []
    trainable = resolve(model, plan)
    return [name for name, module in model.named_modules() if isinstance(module, _BatchNorm)
            and module.track_running_stats and any(f"{name}.{p}" in trainable for p, _ in module.named_parameters())]


def calibrate_for(model: nn.Module, plan: FreezePlan, freeze_bn_stats: bool, batches) -> int:
    """Calibrate the BatchNorm layers that `plan` trains (below) on `batches`; how many there were. Every process
    makes the same pass, so all hold the same statistics."""
    names = batchnorm_to_train(model, plan, freeze_bn_stats)
    if names:
        calibrate_batchnorm(model, names, batches)
    return len(names)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, names: list[str], batches) -> None:
    """Re-estimate the running statistics of the BatchNorm layers `names` on `batches` (AdaBN), weights untouched.

    Why: a head trained on a frozen base sees features normalised with the checkpoint's statistics. Once a stage
    trains those layers they normalise with the statistics of each batch of the new data instead, and for data
    unlike the checkpoint's (Fashion-MNIST against ImageNet, say) the head's inputs change under it: measured on
    MobileNetV2 and 100 LFW faces, the head-trained model's loss went from 0.007 to 9.8 at the switch, so the
    fine-tuning stage began by undoing the head stage. Calibrated first, the head learns the features that
    fine-tuning starts from. Every other layer runs as it will then: in inference mode. Opt-in (`--calibrate_bn`):
    that undoing also pushes the base to adapt, and on 150 Fashion-MNIST images staged scored 1.8 points less
    without it (README, "How the defaults were chosen").
    """
    modules = [model.get_submodule(name) for name in names]
    momenta = [module.momentum for module in modules]
    was_training = model.training
    model.eval()
    for module in modules:
        module.reset_running_stats()
        module.momentum = None  # a plain average over all batches, each weighing the same
        module.train()
    with _unpinned(modules):
        for batch in batches:
            model(**{k: v.to(model.device) for k, v in batch.items() if k != "labels"})
    for module, momentum in zip(modules, momenta):
        module.momentum = momentum
    model.train(was_training)


@contextmanager
def _unpinned(modules: list[nn.Module]):
    """Without the hooks that pin frozen BatchNorm layers to inference mode, for the duration."""
    pinned = [m for m in modules if getattr(m, "_hftransfer_eval_hook", None) is not None]
    for module in pinned:
        module._hftransfer_eval_hook.remove()
    try:
        yield
    finally:
        for module in pinned:
            _pin_to_eval(module)


# ---------------------------------------------------------------- discriminative learning rates

PEFT_PREFIX = "base_model.model."  # how a `PeftModel` names the parameters of the model it wraps


def lr_factors(model: nn.Module, plan: FreezePlan) -> dict[str, float]:
    """Learning-rate factor of every parameter: `layer_lr_decay` per group below the head (head and base.top 1,
    last block decay, ..., stem decay^(blocks+1)), times every `lr_multipliers` factor whose pattern matches; the head
    also times `anatomy.head_rate_factor` (it reads through a scaled pooler). A PEFT-wrapped model is read through the
    model it wraps (adapters in a block take the block's factor, the head's trained copy the head's), named as the
    wrapper names its parameters."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if inner is not model:
        return {PEFT_PREFIX + name: factor for name, factor in lr_factors(inner, plan).items()}
    groups = param_groups(model)
    blocks = sum(g.name.startswith("base.block.") for g in groups)
    decay = plan.layer_lr_decay or 1.0
    factors = {}
    for group in groups:
        if group.name in ("head", "base.top", POOLING_GROUP):
            exponent = 0
        elif group.name == "base.stem":
            exponent = blocks + 1
        else:
            exponent = blocks - int(group.name.rsplit(".", 1)[1])
        rate = head_rate_factor(model) if group.name == "head" else 1.0
        factors.update({name: rate * decay ** exponent for name in group.params})
    names, rules = list(factors), multiplier_rules(plan.lr_multipliers)
    saved = saved_names(model) if rules else {}
    for pattern, factor in rules:
        for name in match(pattern, names, saved):
            factors[name] *= factor
    return factors


def multiplier_rules(rules: list[str]) -> list[tuple[str, float]]:
    """`--lr_multipliers` as (pattern, factor); a rule that is not PATTERN=FACTOR with a factor of 0 or more is an
    error (a NaN or negative factor trained the model into NaN weights, or against its gradient)."""
    parsed = []
    for rule in rules:
        pattern, _, value = rule.rpartition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not (pattern and math.isfinite(factor) and factor >= 0):
            raise PatternError(f"--lr_multipliers '{rule}': expected PATTERN=FACTOR with a factor of 0 or more, e.g. "
                               "'bert.embeddings.*=0.1'")
        parsed.append((pattern, factor))
    return parsed


# ---------------------------------------------------------------- reporting

def report(model: nn.Module, plan: FreezePlan | None = None) -> str:
    """A table of groups, parameters, trainable parameters and percent, as printed before training."""
    params = dict(model.named_parameters())
    factors = lr_factors(model, plan) if plan is not None else {}
    rows = []
    for group in param_groups(model):
        total = sum(params[n].numel() for n in group.params)
        train = sum(params[n].numel() for n in group.params if params[n].requires_grad)
        lrs = sorted({factors.get(n, 1.0) for n in group.params if params[n].requires_grad})
        lr = "-" if not lrs else f"{lrs[0]:.3g}" if len(lrs) == 1 else f"{lrs[0]:.2g}-{lrs[-1]:.2g}"
        rows.append((group.name, len(group.params), total, train, lr))
    total = sum(r[2] for r in rows)
    train = sum(r[3] for r in rows)
    lines = [f"{'group':<16}{'tensors':>8}{'parameters':>14}{'trainable':>14}{'%':>8}{'lr x':>10}"]
    for name, count, size, trainable, lr in rows:
        lines.append(f"{name:<16}{count:>8}{size:>14,}{trainable:>14,}{100 * trainable / max(size, 1):>7.1f}%"
                     f"{lr:>10}")
    lines.append(f"{'total':<16}{len(params):>8}{total:>14,}{train:>14,}{100 * train / max(total, 1):>7.1f}%")
    if plan is not None:
        lines.insert(0, " ".join(f"{key}={value}" for key, value in plan.settings().items()))
    return "\n".join(lines)


def trainable_count(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
