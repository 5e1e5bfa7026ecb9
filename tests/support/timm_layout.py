"""timm networks as `TimmWrapperForImageClassification` holds them, for the project's venv, where timm does not import.

timm imports torchvision, and PyPI's Linux torchvision wheels are CUDA builds that fail to load beside the CPU torch
2.13.0 of `make setup` (`operator torchvision::nms does not exist`). So in `make test` the real
`TimmWrapperForImageClassification` and `TimmWrapperConfig` run, with `timm.create_model` replaced by tiny networks
that keep timm's module layout for the lesson's checkpoints: the names of `timm/resnet50.a1_in1k`,
`timm/vgg16.tv_in1k` and `timm/inception_v3.tv_in1k` (stem, stages, VGG's `pre_logits` and nested `head.fc`), their
`pretrained_cfg["classifier"]` and their `feature_info` cut points, with channel counts cut down. `make timm-rows`
runs the same tests on the real timm networks, on the CPU, in a venv of its own with the matched CUDA pair torch
2.14.1 / torchvision 0.29.1 (`scripts/timm_rows.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

LABEL_NAMES = ["tench", "goldfish", "shark"]
# Set by scripts/timm_rows.py where timm imports: the same tests on the real timm networks (random init)
REAL_TIMM = os.environ.get("HFTRANSFER_REAL_TIMM") == "1"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Head(nn.Module):
    """timm's `ClassifierHead`: global pool, then `fc`."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x, pre_logits: bool = False):
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)


class TimmLikeNetwork(nn.Module):
    """The part of timm's model API that TimmWrapper and hftransfer use."""

    def __init__(self, architecture: str, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        builder = {"resnet50": self._resnet, "vgg16": self._vgg, "inception_v3": self._inception}[architecture]
        classifier, cuts = builder(num_classes)
        self.pretrained_cfg = {"architecture": architecture, "classifier": classifier, "input_size": (3, 224, 224)}
        self.feature_info = [{"module": name, "num_chs": 8, "reduction": 2 ** (i + 1)} for i, name in enumerate(cuts)]

    def _resnet(self, num_classes):
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(_conv(8, 8, 1 if i == 1 else 2), _conv(8, 8)))
        self.global_pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, num_classes)
        return "fc", ["act1", "layer1", "layer2", "layer3", "layer4"]

    def _vgg(self, num_classes):
        layers, cuts, cin = [], [], 3
        for stage, convs in enumerate([2, 2, 3, 3, 3]):
            for _ in range(convs):
                layers += [nn.Conv2d(cin, 8, 3, 1, 1), nn.ReLU()]
                cin = 8
            cuts.append(f"features.{len(layers) - 1}")
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        cuts.append(f"features.{len(layers) - 1}")  # timm's sixth cut: the last max-pool, which holds no parameters
        self.pre_logits = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU())
        self.head = _Head(16, num_classes)
        return "head.fc", cuts

    def _inception(self, num_classes):
        names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b",
                 "Mixed_5d", "Mixed_6a", "Mixed_6e", "Mixed_7a", "Mixed_7c"]
        for i, name in enumerate(names):
            setattr(self, name, _conv(3 if i == 0 else 8, 8, 2 if name in ("Conv2d_1a_3x3", "Mixed_6a") else 1))
        self.global_pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, num_classes)
        return "fc", ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]

    def forward_features(self, x):
        for name, module in self.named_children():
            if name in ("global_pool", "fc", "head", "pre_logits"):
                break
            x = module(x)
        return self.pre_logits(x) if hasattr(self, "pre_logits") else x

    def forward_head(self, x, pre_logits: bool = False):
        if hasattr(self, "head"):
            return self.head(x, pre_logits=pre_logits)
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


ARCHITECTURES = ["resnet50", "vgg16", "inception_v3"]


def install(monkeypatch) -> None:
    """TimmWrapper builds the stand-ins instead of calling timm, and the processor is read from the folder's
    `preprocessor_config.json` (a timm folder's own is `TimmWrapperImageProcessor`, which needs timm)."""
    if REAL_TIMM:
        return
    from transformers.models.auto import image_processing_auto
    from transformers.models.timm_wrapper import configuration_timm_wrapper, modeling_timm_wrapper

    def create(config, num_classes=1000, **model_args):
        return TimmLikeNetwork(config.architecture, num_classes)

    monkeypatch.setattr(modeling_timm_wrapper, "_create_timm_model_with_error_handling", create)
    monkeypatch.setattr(modeling_timm_wrapper, "requires_backends", lambda *args, **kwargs: None)
    monkeypatch.setattr(configuration_timm_wrapper, "requires_backends", lambda *args, **kwargs: None)
    monkeypatch.setattr(image_processing_auto, "is_timm_local_checkpoint", lambda path: False)


def save_checkpoint(folder: Path, architecture: str, num_classes_in_model_args: bool = False) -> Path:
    """A folder as timm's `push_to_hf_hub` writes it (config.json with `architecture`, `num_classes`,
    `label_names`, `pretrained_cfg`), its weights under `timm_model.`, and a 224 px processor config."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor

    from .families import keep_activations

    config = TimmWrapperConfig(architecture=architecture, num_labels=len(LABEL_NAMES))
    config.id2label = dict(enumerate(LABEL_NAMES))
    model = keep_activations(TimmWrapperForImageClassification(config))  # N(0, 0.02) let them vanish
    model.save_pretrained(folder)
    settings = json.loads((folder / "config.json").read_text())
    if REAL_TIMM:  # timm's own pretrained_cfg, which its processor reads from config.json
        settings["pretrained_cfg"] = json.loads(json.dumps(model.timm_model.pretrained_cfg, default=list))
        if num_classes_in_model_args:
            settings["model_args"] = {"num_classes": len(LABEL_NAMES)}
        (folder / "config.json").write_text(json.dumps(settings, indent=2))
        return folder
    settings["pretrained_cfg"] = {"classifier": model.timm_model.pretrained_cfg["classifier"],
                                  "input_size": [3, 224, 224], "crop_pct": 0.875}
    if num_classes_in_model_args:
        settings["model_args"] = {"num_classes": len(LABEL_NAMES)}
    (folder / "config.json").write_text(json.dumps(settings, indent=2))
    # TimmWrapperImageProcessor needs timm itself: the stand-in ships the plain processor of the same 224 px size
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder
