"""Custom heads: the lesson's "add custom layers" step (Flatten -> Dense(128, relu) -> Dense(n)) for any family.

The model's own final classifier Linear (the last `Linear` outside the base with one output per label) is replaced by
an `MLPHead`; whatever the model does before it (pooling, flattening, DistilBERT's pre-classifier) stays. The head's
shape is written into the config under `hftransfer_head`, so `modeling.load_trained` rebuilds it before loading the
weights. `transformers` alone cannot rebuild it without remote code, which is why the default stays the plain linear
head that `transformers.pipeline` loads.
"""

from __future__ import annotations

from torch import nn

from .anatomy import head_modules

CONFIG_KEY = "hftransfer_head"


class MLPHead(nn.Sequential):
    """(Linear -> ReLU -> Dropout) per hidden size, then Linear to the labels."""

    def __init__(self, in_features: int, hidden_sizes: list[int], num_labels: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
            in_features = size
        layers.append(nn.Linear(in_features, num_labels))
        super().__init__(*layers)


def classifier_name(model: nn.Module) -> str:
    """The name of the final classifier: the last Linear of the head with one output per label."""
    num_labels = model.config.num_labels
    found = [name for name, module in head_modules(model).items()
             if isinstance(module, nn.Linear) and module.out_features == num_labels]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Linear classifier with {num_labels} outputs in its head")
    return found[-1]


def install(model: nn.Module, hidden_sizes: list[int], dropout: float = 0.0) -> str:
    """Put an MLP head in place of the classifier Linear and record its shape in the config. Returns its name."""
    name = classifier_name(model)
    linear = model.get_submodule(name)
    model.set_submodule(name, MLPHead(linear.in_features, list(hidden_sizes), linear.out_features, dropout))
    setattr(model.config, CONFIG_KEY, {"module": name, "hidden_sizes": list(hidden_sizes), "dropout": dropout})
    return name


def restore(model: nn.Module) -> bool:
    """Rebuild the MLP head a saved config describes (before loading weights). False when it has none."""
    spec = getattr(model.config, CONFIG_KEY, None)
    if not spec:
        return False
    linear = model.get_submodule(spec["module"])
    model.set_submodule(spec["module"], MLPHead(linear.in_features, spec["hidden_sizes"], linear.out_features,
                                                spec["dropout"]))
    return True


def with_mlp_head(model_class: type) -> type:
    """`model_class` with the configured MLP head built in `__init__`, under the same name (saved configs keep
    their `architectures`)."""
    def __init__(self, config, *args, **kwargs):
        model_class.__init__(self, config, *args, **kwargs)
        restore(self)

    return type(model_class.__name__, (model_class,), {"__init__": __init__})
