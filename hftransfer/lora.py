"""LoRA through PEFT: low-rank adapters in the base's blocks, the head trained in full, saved merged.

Target modules are found generically, with no table per family: every `Linear`, transformers' `Conv1D` (GPT-2's
linear layers, weights stored transposed) and ungrouped `Conv2d` inside the base's blocks (the same block list the
freezing code uses). For attention models these are the attention and MLP projections (PEFT's "all-linear" advice);
for convnets the pointwise and full convolutions (PEFT cannot merge LoRA into depthwise convolutions). The stem and
embeddings keep their pretrained weights. The targets are resolved once, before any stage trains (`training`), so
a model with none is an error up front, not after the head's stage.

After training, the adapters are merged into the base (`merge_and_unload`), so `output_dir` is a plain model that
`from_pretrained`, pipelines and the demo load; the adapter itself (with the trained head) is also saved, in
`output_dir/lora_adapter/`, for PEFT users who keep one base and many adapters.

Under FSDP the adapters' stage is the only one (`choices`), and FSDP shards the model in place: `wrap` keeps a plain
copy of it on the CPU, and `merge` gathers the trained weights from every rank into that copy, then merges it. The
result is the same plain model as without FSDP, on every rank (each held the whole checkpoint when it loaded it).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from torch import nn
from transformers.pytorch_utils import Conv1D

from .anatomy import POOLING_GROUP, head_modules, param_groups
from .freezing import PatternError, in_either_naming, match, saved_names

logger = logging.getLogger(__name__)
ADAPTABLE = (nn.Linear, Conv1D, nn.Conv2d)


def default_targets(model: nn.Module) -> list[str]:
    in_blocks = {n.rsplit(".", 1)[0] for g in param_groups(model) if g.name.startswith("base.block.") for n in g.params}
    if not in_blocks:
        raise PatternError(f"{type(model).__name__}: no blocks found in the base; give --lora_target_modules")
    targets = [name for name in _adaptable(model) if name in in_blocks
               and not (isinstance(module := model.get_submodule(name), nn.Conv2d) and module.groups != 1)]
    if not targets:
        kinds = sorted({type(model.get_submodule(name)).__name__ for name in in_blocks})
        raise PatternError(f"{type(model).__name__}: the base's blocks hold no Linear, Conv1D or ungrouped Conv2d "
                           f"for LoRA (their layers: {', '.join(kinds)}); train with --strategy staged, or name such "
                           "modules elsewhere in the model with --lora_target_modules")
    return targets


def _adaptable(model: nn.Module) -> list[str]:
    """Linear, Conv1D and Conv2d modules, less those of the pooling layer (an adapter would turn its mean into learnt
    attention)."""
    fixed = {n.rsplit(".", 1)[0] for g in param_groups(model) if g.name == POOLING_GROUP for n in g.params}
    return [name for name, module in model.named_modules()
            if isinstance(module, ADAPTABLE) and name not in fixed]


def resolve_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Full names of the modules that get adapters. A pattern is a module name, a name suffix (PEFT's rule: 'query'
    is every '...query'), a glob, or 're:REGEX'; one that matches no Linear, Conv1D or Conv2d is an error naming near
    ones."""
    if not patterns:
        return default_targets(model)
    adaptable, saved = _adaptable(model), saved_names(model)
    found: set[str] = set()
    for pattern in patterns:
        found.update(_match_adaptable(model, pattern, adaptable, saved))
    targets = [n for n in adaptable if n in found]
    _check_given_targets(model, targets)
    return targets


def _named_by(pattern: str, names: list[str], saved: dict[str, str]) -> list[str]:
    """PEFT's rule: the names equal to `pattern` or ending in '.' + it; else `pattern` as a glob or 're:' pattern,
    which is an error naming the nearest names where it matches none (`freezing.match`). Both are tried on the
    checkpoint files' names where the model's differ (`saved`: `query` for ViT's `q_proj`)."""
    def peft_rule(name: str) -> bool:
        return name == pattern or name.endswith("." + pattern)
    return in_either_naming(pattern, names, saved, peft_rule) or match(pattern, names, saved)


def _match_adaptable(model: nn.Module, pattern: str, adaptable: list[str], saved: dict[str, str]) -> list[str]:
    """The adaptable modules `pattern` names. One naming only modules LoRA cannot adapt (`LayerNorm`) says which
    they are; it was "matches no parameter", beside a model that has them."""
    try:
        return _named_by(pattern, adaptable, saved)
    except PatternError as none_adaptable:
        others = [name for name, _ in model.named_modules() if name and name not in adaptable]
        try:
            named = _named_by(pattern, others, saved)
        except PatternError:
            raise none_adaptable from None
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in named})
        raise PatternError(f"--lora_target_modules {pattern}: names {len(named)} module(s) LoRA cannot adapt "
                           f"({', '.join(kinds)}: {', '.join(named[:3])}); LoRA adapts Linear, Conv1D and ungrouped "
                           "Conv2d layers (outside the pooling layer); to train other modules in full, use "
                           "--strategy staged with --unfreeze") from None


def _check_given_targets(model: nn.Module, targets: list[str]) -> None:
    """What the default targets leave out, refused when named, before anything trains: PEFT cannot merge adapters
    into a grouped (depthwise) convolution (the run failed at the merge, after the LoRA stage), and the head trains
    in full beside the adapters (PEFT then found no module to adapt)."""
    grouped = [n for n in targets if isinstance(module := model.get_submodule(n), nn.Conv2d) and module.groups != 1]
    if grouped:
        raise PatternError(f"--lora_target_modules: {', '.join(grouped[:3])} are grouped (depthwise) convolutions, "
                           "whose adapters PEFT cannot merge into the saved model; name ungrouped ones")
    head = {n.rsplit(".", 1)[0] for g in param_groups(model) if g.name == "head" for n in g.params}
    in_head = [n for n in targets if n in head]
    if in_head:
        raise PatternError(f"--lora_target_modules: {', '.join(in_head[:3])} are the head, which trains in full beside "
                           "the adapters; name modules of the base")


def wrap(model: nn.Module, transfer, targets: list[str], sharded: bool = False):
    """The model as a `PeftModel`: adapters on the targets (`resolve_targets`), the head modules trained in full
    (`modules_to_save`). `sharded` (FSDP): with a plain CPU copy to gather the trained weights into (`merge`)."""
    from peft import LoraConfig, get_peft_model

    head_names = _trained_in_full(model, targets)
    # Conv1D keeps its weight as (in, out): PEFT must know (where Conv1D and Linear targets mix, it sets the flag
    # module by module itself, with a warning each)
    transposed = all(isinstance(model.get_submodule(name), Conv1D) for name in targets)
    config = LoraConfig(r=transfer.lora_r, lora_alpha=transfer.lora_alpha, lora_dropout=transfer.lora_dropout,
                        target_modules=targets, modules_to_save=head_names, fan_in_fan_out=transposed)
    unsharded = _cpu_copy(model) if sharded else None
    peft_model = get_peft_model(model, config)  # first: its adapters draw the same initial values as without FSDP
    _expose_convolution_geometry(peft_model)
    if unsharded is not None:  # kept off the module tree, where FSDP would shard it too
        plain = get_peft_model(unsharded, copy.deepcopy(config))
        _expose_convolution_geometry(plain)
        object.__setattr__(peft_model, "_hftransfer_plain", plain)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%g on %d modules (%s ...); %s of %s parameters train (%.2f%%)", transfer.lora_r,
                transfer.lora_alpha, len(targets), ", ".join(targets[:3]), f"{trainable:,}", f"{total:,}",
                100 * trainable / total)
    return peft_model


def _trained_in_full(model: nn.Module, targets: list[str]) -> list[str]:
    """The modules the stage's plan trains beside the adapters, as PEFT's `modules_to_save` (PEFT freezes everything
    else): the head, unless `--freeze` froze it, and the modules of parameters `--unfreeze` named. A parameter of an
    adapted module cannot also train in full: said, and its adapters train instead."""
    heads = [name for name in head_modules(model)
             if any(p.requires_grad for p in model.get_submodule(name).parameters())]
    owners = {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad
              and not any(name.startswith(head + ".") for head in heads)} - {""}
    inside = sorted(owner for owner in owners if owner in targets)
    if inside:
        logger.warning("LoRA adapts %s: their own parameters that --unfreeze names do not train in full, the adapters "
                       "train instead", ", ".join(inside[:5]))
    return heads + sorted(owners - set(inside))


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose tensors are on the CPU, made tensor by tensor: a copy on the GPU, then moved, would
    hold the model twice there. Tied weights stay tied (one copy per tensor)."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("FSDP with LoRA needs every rank to load the whole checkpoint: set "
                         "fsdp_cpu_ram_efficient_loading: false in the Accelerate config (as fsdp.yaml does)")
    memo = {id(p): nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
            for p in model.parameters()}
    memo.update({id(b): b.detach().to("cpu", copy=True) for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _expose_convolution_geometry(peft_model) -> None:
    """PEFT's LoRA wrapper of a `Conv2d` does not pass on its geometry, which some model code reads from the module:
    MobileNetV1's and V2's TensorFlow padding (`tf_padding`, on in Google's checkpoints) asks for `stride`. The
    wrapper gets copies of those plain settings."""
    for module in peft_model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Conv2d) and module is not base:
            for name in ("stride", "padding", "dilation", "kernel_size", "groups", "in_channels", "out_channels"):
                if name not in vars(module):
                    setattr(module, name, getattr(base, name))


def settings(peft_model, transfer) -> dict:
    """What the freeze plan records of the adapters: rank, scaling, dropout and the modules that got them (read off
    the wrapped model: from 20 targets on, PEFT's config keeps only name suffixes, such as 'conv1')."""
    from peft.tuners.lora import LoraLayer

    adapted = [name for name, module in peft_model.get_base_model().named_modules() if isinstance(module, LoraLayer)]
    return {"r": transfer.lora_r, "alpha": transfer.lora_alpha, "dropout": transfer.lora_dropout,
            "target_modules": sorted(adapted)}


def merge(peft_model, adapter_dir: str | Path | None):
    """Save the adapter (when `adapter_dir` is given: main process only), then return the merged plain model. A
    sharded model (FSDP) is first gathered into its plain copy, on every rank (a collective): merged in place, it
    would run only inside FSDP's wrapper."""
    plain = getattr(peft_model, "_hftransfer_plain", None)
    if plain is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        device = next(peft_model.parameters()).device  # the device of this rank's shards
        plain.load_state_dict(get_model_state_dict(peft_model, options=StateDictOptions(full_state_dict=True)))
        peft_model = plain.to(device)
    if adapter_dir is not None:
        peft_model.save_pretrained(adapter_dir)
    return peft_model.merge_and_unload()
