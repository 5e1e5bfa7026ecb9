"""The checkpoint's own pooling: a sentence-transformers encoder classifies the way it was trained to embed.

Sentence-transformers checkpoints name their pooling in `modules.json` / `1_Pooling/config.json` (mean pooling for
all-MiniLM-L6-v2), but `*ForSequenceClassification` reads the first token, through BERT's pooler where it has one:
a reading sentence-transformers never trained. Measured on all-MiniLM-L6-v2 (features of 2,000 Rotten Tomatoes
snippets, linear head trained as the head stage trains it, 2,000 test): pooler 0.649, first token 0.688, mean 0.751,
mean then LayerNorm 0.740; on the 2016 debates (3 classes): 0.469, 0.573, 0.611, 0.641 (README, "Pooling").

Mean pooling goes into the model as one more encoder layer, so the saved folder stays a plain `transformers` model
that `AutoModelForSequenceClassification`, `pipeline`, the Hub widget and an ONNX export run as trained: query and
key weights zero (every unmasked token gets the same attention weight, padding none), value the identity, the
attention output scaled far above the residual so the post-norm LayerNorm returns LayerNorm(mean) (it is blind to
scale), feed-forward zero. The first token of that layer's output is the normalised mean of the encoder's tokens;
the model's own head reads it, through BERT's pooler set to a fixed, nearly linear pass-through (POOLER_SCALE).
The layer is checked on a padded probe batch and removed again if the model's layers are not of that post-norm
kind (MPNet's shared position bias, pre-norm layers, DeBERTa's relative attention): the log then says the
classifier keeps its own reading. The layer and the pooler never train (see `freezing`), LoRA gives them no
adapters, and the config records both under `hftransfer_pooling`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .anatomy import POOLING_KEY as CONFIG_KEY
from .anatomy import block_list_name, is_decoder_classifier
# The attention output's weight over the residual: LayerNorm(SCALE * mean + token) differs from LayerNorm(mean) by
# about |token| / (SCALE * |mean|): at most 0.01 for all-MiniLM-L6-v2 (values of unit spread); fp16's range ends at
# 65,504, 16 times the largest mean MiniLM gives. A layer of another kind misses by whole units.
SCALE = 4096.0
TOLERANCE = 2e-2
# The head reads the pooling through the pooler's tanh. At the identity, tanh squashes LayerNorm'd features (values
# of unit spread); at a tenth of it tanh stays within 3% of linear up to 3 spreads, and the head, learning at 1 /
# POOLER_SCALE times its rate (`anatomy.head_rate_factor`), trains as a linear head on the pooling itself. Measured
# (README, "Pooling"): a linear head on the mean's features, 5 seeds, reviews 0.755 against 0.746 through tanh,
# debates 0.647 against 0.628.
POOLER_SCALE = 0.1
MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
         "pooling_mode_mean_sqrt_len_tokens": "mean", "pooling_mode_max_tokens": "max",
         "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


# sentence-transformers' encoder modules: `Transformer` since 0.3, one class a family before (0.2's `0_BERT/`)
ENCODER_MODULES = {"Transformer", "BERT", "RoBERTa", "DistilBERT", "XLMRoBERTa", "ALBERT", "CamemBERT", "XLNet", "T5"}


@dataclass(frozen=True)
class CheckpointModules:
    """What a sentence-transformers checkpoint's `modules.json` lists (nothing for other checkpoints), read once per
    load: from the Hub each file read is a request."""

    modules: tuple[dict, ...] = ()
    pooling_config: dict = field(default_factory=dict)  # the pooling module's own config.json

    @classmethod
    def read(cls, path: str, revision: str = "main", cache_dir: str | None = None) -> CheckpointModules:
        modules = tuple(_read_json(path, "modules.json", revision, cache_dir) or ())
        pooling = next((m for m in modules if _kind(m).endswith("Pooling")), None)
        config = _read_json(path, f"{pooling.get('path')}/config.json", revision, cache_dir) if pooling else None
        return cls(modules, config or {})

    @property
    def pooling(self) -> str | None:
        """The pooling the checkpoint was trained with ("mean", "cls", ...), None for other checkpoints.
        `mean_sqrt_len` is mean here: the LayerNorm that follows removes the scale it differs by."""
        config = self.pooling_config
        if isinstance(config.get("pooling_mode"), str):
            return {"mean_sqrt_len_tokens": "mean"}.get(config["pooling_mode"], config["pooling_mode"])
        chosen = [mode for key, mode in MODES.items() if config.get(key)]
        return "+".join(dict.fromkeys(chosen)) or None

    @property
    def after_pooling(self) -> list[str]:
        """The modules the checkpoint runs after its pooling that the classifier does not (LaBSE's and distiluse's
        `2_Dense`), as "PATH (TYPE)"; Normalize is left out: the LayerNorm the head reads through removes the scale
        it sets."""
        kinds = [_kind(m) for m in self.modules]
        first = next((i for i, kind in enumerate(kinds) if kind.endswith("Pooling")), len(kinds))
        return [f"{m.get('path')} ({kind.rsplit('.', 1)[-1]})"
                for m, kind in zip(self.modules[first + 1:], kinds[first + 1:]) if not kind.endswith("Normalize")]

    @property
    def encoder_subfolder(self) -> str:
        """Where the checkpoint keeps its encoder: "" (the top, as every checkpoint saved since sentence-transformers
        2 does), or the folder modules.json names (`0_Transformer/`, as 1.x saved them, `0_BERT/` before, with no
        config at the top for `from_pretrained` to read)."""
        encoder = next((m for m in self.modules if _kind(m).rsplit(".", 1)[-1] in ENCODER_MODULES), None)
        return str(encoder.get("path") or "").strip("/") if encoder else ""


def _kind(module: dict) -> str:
    return str(module.get("type", ""))


def _read_json(path: str, name: str, revision: str, cache_dir: str | None):
    local = Path(path)
    if local.is_dir():
        file = local / name
        return json.loads(file.read_text()) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, name, revision=revision, cache_dir=cache_dir)).read_text())
    except Exception:  # no such file in the repo, or no Hub: the checkpoint is read as a plain encoder
        return None


def adopt(model: nn.Module, mode: str | None, untrained: Collection[str] = ()) -> str:
    """Make `model` read its encoder the way `mode` pools; returns a log line saying what was done. A model that
    already pools so (a trained folder, its config's `hftransfer_pooling`) is left as it is. `untrained`: the
    parameters the checkpoint had no weights for (transformers' load report)."""
    if getattr(model.config, CONFIG_KEY, None):
        return ""
    if mode is None:
        return _untrained_pooler_fixed(model, untrained)
    if is_decoder_classifier(model):  # its `score` head reads the last real token; a causal layer cannot average
        if mode == "lasttoken":
            return f"Pooling: the checkpoint pools its last token, as {type(model).__name__} reads it"
        return _keeps_own_reading(model, mode, "the last real token")
    if mode == "cls":
        pooler = _pooler_to_scale(model)
        model.config.update({CONFIG_KEY: {"mode": "cls", "layer": None, **_pooler_spec(pooler)}})
        return (f"Pooling: the checkpoint pools its first token, as {type(model).__name__} reads it"
                + (f"; {pooler} set to {POOLER_SCALE:g} x the identity, frozen (it was never trained for this "
                   "checkpoint)" if pooler else ""))
    if mode != "mean":
        return _keeps_own_reading(model, mode, "the first token")
    layer = _append_mean_layer(model)
    if layer is None:
        return (f"Pooling: the checkpoint mean-pools, but {type(model).__name__}'s layers cannot be made into a "
                "mean-pooling layer (checked on a probe batch); the classifier keeps its own reading of the first "
                "token")
    pooler = _pooler_to_scale(model)
    model.config.update({CONFIG_KEY: {"mode": "mean", "layer": layer, **_pooler_spec(pooler)}})
    return (f"Pooling: the checkpoint mean-pools its tokens; encoder layer {layer} added to do so (frozen), "
            + (f"{pooler} ({POOLER_SCALE:g} x the identity, frozen) passes its mean to the head" if pooler
               else "the head reads its mean"))


def _keeps_own_reading(model: nn.Module, mode: str, reading: str) -> str:
    return (f"Pooling: the checkpoint pools by '{mode}', which {type(model).__name__} cannot express as a layer; the "
            f"classifier keeps its own reading of {reading}")


def _layers(model: nn.Module) -> nn.ModuleList | None:
    name = block_list_name(model)
    return model.get_submodule(name) if name else None


def _append_mean_layer(model: nn.Module) -> int | None:
    layers = _layers(model)
    if layers is None:
        return None
    layer = copy.deepcopy(layers[-1])
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in layer.modules() if isinstance(m, nn.LayerNorm)]
    if len(linears) != 6 or len(norms) != 2 or any(m.bias is None for m in linears):
        return None
    query, key, value, output, up, down = linears  # registration order of BERT-, RoBERTa- and DistilBERT-style layers
    if not all(m.in_features == m.out_features for m in (query, key, value, output)):
        return None
    with torch.no_grad():
        for module in (query, key, up, down):
            module.weight.zero_()
            module.bias.zero_()
        value.weight.copy_(torch.eye(value.in_features))
        output.weight.copy_(SCALE * torch.eye(output.in_features))
        for module in (value, output, *norms):
            module.bias.zero_()
        for norm in norms:
            norm.weight.fill_(1.0)
    index = len(layers)
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index
    layers.append(layer)
    model.config.num_hidden_layers = index + 1
    if _pools_mean(model):
        return index
    del layers[index]
    model.config.num_hidden_layers = index
    return None


@torch.no_grad()
def _pools_mean(model: nn.Module) -> bool:
    """Whether the last layer's first token is LayerNorm of the mean of its unpadded inputs, on a padded batch."""
    base = model.base_model
    vocab = getattr(model.config, "vocab_size", 100)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, min(vocab, 1000)), (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    was_training = model.training
    model.eval()
    try:
        hidden = base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    except Exception:  # a layer that does not run as a copy: not a layer this works for
        return False
    finally:
        model.train(was_training)
    weights = mask.unsqueeze(-1).float()
    mean = (hidden[-2] * weights).sum(1) / weights.sum(1)
    expected = nn.functional.layer_norm(mean, mean.shape[-1:], eps=1e-5)
    return torch.allclose(hidden[-1][:, 0], expected, atol=TOLERANCE)


def _untrained_pooler_fixed(model: nn.Module, untrained: Collection[str]) -> str:
    """A checkpoint saved without the pooler its classifier reads (a BERT saved as a masked LM): the pooler would
    start random and, as the top of a frozen base, stay random, the head reading a random projection of the first
    token. It is made the fixed pass-through a sentence-transformers CLS checkpoint gets instead."""
    prefix = f"{model.base_model_prefix}.pooler."
    if not any(name.startswith(prefix) for name in untrained):
        return ""
    pooler = _pooler_to_scale(model)
    if pooler is None:
        return ""
    model.config.update({CONFIG_KEY: {"mode": "cls", "layer": None, "pooler_untrained": True, **_pooler_spec(pooler)}})
    return (f"Pooling: the checkpoint has no weights for {pooler} (saved without it, as masked-LM checkpoints are): "
            f"set to {POOLER_SCALE:g} x the identity, frozen, so the head reads the first token rather than a random "
            "projection of it")


def _pooler_to_scale(model: nn.Module) -> str | None:
    """BERT-style poolers (dense + tanh on the first token; ALBERT's dense is the pooler itself) were not trained by
    sentence-transformers: a fixed, nearly linear pass-through (POOLER_SCALE)."""
    pooler = getattr(model.base_model, "pooler", None)
    dense = pooler if isinstance(pooler, nn.Linear) else getattr(pooler, "dense", None)
    if not isinstance(dense, nn.Linear) or dense.in_features != dense.out_features:
        return None
    with torch.no_grad():
        dense.weight.copy_(POOLER_SCALE * torch.eye(dense.in_features))
        dense.bias.zero_()
    return f"{model.base_model_prefix}.pooler"


def _pooler_spec(pooler: str | None) -> dict:
    return {"pooler": pooler, "pooler_scale": POOLER_SCALE} if pooler else {}
