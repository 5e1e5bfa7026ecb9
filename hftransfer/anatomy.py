"""What a classifier is made of: its base, the blocks inside the base, and its head. The one owner of that answer.

Read from the model's own metadata where it has some, a generic search where not:
- transformers families: the base is `model.base_model` (found through `base_model_prefix`) and the head is every
  parameter outside it (`classifier`, `score`, DistilBERT's `pre_classifier`); the blocks are the largest
  `ModuleList` in the base (transformer layers, inverted residuals, stages). SigLIP's and CLIP's image classifiers
  name a prefix (`siglip`, `clip`) but keep their base as `vision_model`: where the prefix names no child and the
  model has one base and one head as children, the base is the larger (a base spread over several children, HGNet
  V2's, is an error before training);
- timm networks under `TimmWrapperForImageClassification`: the whole network, classifier included, is the one child
  `timm_model` (also the base prefix). The head is what timm's `pretrained_cfg["classifier"]` names (`fc`,
  `head.fc`), and the blocks are the stretches of the network that end at each module of its `feature_info` (its
  stages, as timm's feature extraction cuts them);
- the mean-pooling layer `pooling.adopt` adds to a sentence-transformers encoder, and the fixed pooler it sets, are a
  group of their own, never a block.

The parameters then fall into ordered groups: what comes before the blocks (stem, embeddings), each block, what
follows them (final norm, pooler, VGG's fully connected layers), and the head. Strategies, `--unfreeze_last_n`, the
learning-rate factors, LoRA's targets and the head that a new label set replaces all read these groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import InputError

POOLING_GROUP = "base.pooling"
FALLBACK_BASE = "_hftransfer_base_child"  # `base_prefix`'s answer where it falls back, kept on the model
POOLING_KEY = "hftransfer_pooling"  # the config entry `pooling.adopt` writes: {"mode", "layer", "pooler", ...}


def _pooling_spec(model: nn.Module) -> dict:
    return getattr(model.config, POOLING_KEY, None) or {}


def pooling_layer(model: nn.Module) -> int | None:
    """Index of the mean-pooling layer in the base's block list, None when the model has none."""
    return _pooling_spec(model).get("layer")


def head_rate_factor(model: nn.Module) -> float:
    """The head's learning-rate factor: 1 / the scale of the fixed pooler it reads through (`pooling`), so it learns
    as it would on the pooling itself; 1 for every other model."""
    return 1.0 / _pooling_spec(model).get("pooler_scale", 1.0)


class ModelError(InputError, ValueError):
    """A model hftransfer cannot use, found before training (reported without a traceback)."""


@dataclass
class ParamGroup:
    name: str  # "head", "base.stem", "base.block.3", "base.pooling", "base.top"
    params: list[str]


def base_prefix(model: nn.Module) -> str:
    """The attribute holding the base: `base_model_prefix` where it names a child, else the fallback below, found
    once and kept on the model (the feature cache swaps the base for a stand-in without parameters, and the largest
    child would then be the head)."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    if FALLBACK_BASE not in model.__dict__:
        model.__dict__[FALLBACK_BASE] = _base_child(model)
    return model.__dict__[FALLBACK_BASE]


def _base_child(model: nn.Module) -> str:
    """A base kept outside `base_model_prefix` (SigLIP's and CLIP's `vision_model`): the larger of exactly two
    children holding parameters, the smaller one a head without blocks. A base spread over several children (HGNet
    V2's `embedder` and `encoder` beside its `fc`) cannot be told from its head: making the largest child the base
    would call the rest the head, and a new label set would re-initialise the pretrained stem."""
    sizes = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    holding = sorted((name for name in sizes if sizes[name]), key=sizes.get, reverse=True)
    if len(holding) == 2 and not any(isinstance(m, nn.ModuleList) for m in getattr(model, holding[1]).modules()):
        return holding[0]
    found = ", ".join(f"{name} ({sizes[name]:,} parameters)" for name in holding) or "none with parameters"
    raise ModelError(f"{type(model).__name__} has no base model: its `base_model_prefix` ({model.base_model_prefix!r})"
                     f" names no child, and its children ({found}) are not one base and one head; hftransfer cannot "
                     "tell which parameters are pretrained and which the new head should replace")


def timm_network(model: nn.Module) -> nn.Module | None:
    """The timm network of a `TimmWrapper` model (a base that carries timm's `pretrained_cfg`), else None."""
    base = getattr(model, base_prefix(model))
    config = getattr(base, "pretrained_cfg", None)
    return base if isinstance(config, dict) and config.get("classifier") else None


def input_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's input embedding table, None where it has none (convnets; CANINE's hashed characters raise)."""
    try:
        return model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def block_list_name(model: nn.Module) -> str | None:
    """The `ModuleList` inside the base holding the most parameters: the base's sequence of blocks. A list of one
    counts only where there is no longer one: ALBERT runs one shared layer group as all its layers (one block)."""
    prefix = base_prefix(model)
    best, best_rank = None, (False, 0)
    for name, module in getattr(model, prefix).named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            rank = (len(module) > 1, sum(p.numel() for p in module.parameters()))
            if rank > best_rank:
                best, best_rank = f"{prefix}.{name}", rank
    return best


def head_module_names(model: nn.Module) -> list[str]:
    """The modules of the head: timm's classifier inside the base, else the modules outside the base."""
    prefix = base_prefix(model)
    network = timm_network(model)
    if network is not None:
        names = network.pretrained_cfg["classifier"]
        names = [names] if isinstance(names, str) else list(names)
        return [f"{prefix}.{n}" for n in names if isinstance(_get(network, n), nn.Module)]
    return [name for name, _ in model.named_modules()
            if name and name != prefix and not name.startswith(prefix + ".")]


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Head modules that own parameters: the classifier, and its hidden layers where it has some."""
    heads = head_module_names(model)
    return {name: module for name, module in model.named_modules()
            if any(name == h or name.startswith(h + ".") for h in heads)
            and any(True for _ in module.parameters(recurse=False))}


def _get(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _block_of(model: nn.Module) -> dict[str, int]:
    """Parameter name -> block index, for the parameters inside blocks (the pooling layer's excluded)."""
    prefix = base_prefix(model)
    network = timm_network(model)
    if network is not None:
        return _timm_blocks(model, prefix, network)
    blocks = block_list_name(model)
    pooling = pooling_layer(model)
    found = {}
    for name, _ in model.named_parameters():
        if blocks and name.startswith(blocks + "."):
            index = int(name[len(blocks) + 1:].split(".", 1)[0])
            found[name] = -1 if index == pooling else index
    return found


def _timm_blocks(model: nn.Module, prefix: str, network: nn.Module) -> dict[str, int]:
    """Blocks cut at the end of each `feature_info` module, in the network's module order."""
    order = {name: i for i, (name, _) in enumerate(network.named_modules())}
    ends = []
    for info in getattr(network, "feature_info", None) or []:
        module = info.get("module") if isinstance(info, dict) else None
        if module in order:
            ends.append(max(i for n, i in order.items() if n == module or n.startswith(module + ".")))
    found = {}
    for name, _ in model.named_parameters():
        owner = name[len(prefix) + 1:].rsplit(".", 1)[0]
        position = order.get(owner)
        index = next((b for b, end in enumerate(ends) if position is not None and position <= end), None)
        if index is not None:
            found[name] = index
    return found


def param_groups(model: nn.Module) -> list[ParamGroup]:
    """Ordered groups: base.stem, base.block.0 .. base.block.N-1, base.pooling, base.top, head (empty ones dropped)."""
    prefix = base_prefix(model)
    heads = head_module_names(model)
    block_of = _block_of(model)
    pooler = _pooling_spec(model).get("pooler")
    stem, top, head, pooled = [], [], [], []
    block_params: dict[int, list[str]] = {}
    for name, _ in model.named_parameters():
        if not name.startswith(prefix + ".") or any(name.startswith(h + ".") for h in heads):
            head.append(name)
        elif name in block_of:
            index = block_of[name]
            (pooled if index < 0 else block_params.setdefault(index, [])).append(name)
        elif pooler and name.startswith(pooler + "."):
            pooled.append(name)
        elif block_params:
            top.append(name)
        else:
            stem.append(name)
    groups = [ParamGroup("base.stem", stem)]
    groups += [ParamGroup(f"base.block.{i}", block_params[i]) for i in sorted(block_params)]
    groups += [ParamGroup(POOLING_GROUP, pooled), ParamGroup("base.top", top), ParamGroup("head", head)]
    return [g for g in groups if g.params]


def architecture(model: nn.Module) -> str:
    """"attention" for models with attention layers (their defaults differ, and their position tables tie them to
    their input size), else "conv"."""
    return "attention" if any("attention" in type(m).__name__.lower() for m in model.modules()) else "conv"


def has_dropout(model: nn.Module) -> bool:
    """Whether training is stochastic: a dropout layer, or a drop-path (stochastic depth) rate, above zero. Many
    configs ship with every rate at 0 (ViT, DeiT, Dinov2, ModernBERT, Llama, Qwen2 in transformers 5)."""
    return any((isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0)
               or (getattr(module, "drop_prob", None) or 0) > 0 for module in model.modules())


def is_decoder_classifier(model: nn.Module) -> bool:
    """A decoder LM with a sequence-classification head (Llama, Qwen2, Mistral, Gemma, GPT-2 ...): its `score` head
    reads the last real token, found from `input_ids`. Encoders (BERT ...) have masked-LM heads as well; these do
    not."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(getattr(model, "config", None), "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def describe(model: nn.Module) -> str:
    """One line for errors: what was found."""
    groups = param_groups(model)
    blocks = sum(g.name.startswith("base.block.") for g in groups)
    heads = [g for g in groups if g.name == "head"]
    head = ", ".join(sorted(head_modules(model))) or "none"
    return (f"base `{base_prefix(model)}`, {blocks} blocks, head: {head}"
            + ("" if heads else " (no parameter outside the base and no classifier named by the model)"))
