"""Fast paths that must not change a number: image preprocessing and BatchNorm folding for feature extraction."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import IMAGE_FAMILIES, tiny_image_model
from PIL import Image
from torch import nn
from transformers import ConvNextImageProcessorPil, MobileNetV2ImageProcessorPil, ViTImageProcessorPil
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from hftransfer import features
from hftransfer.pixels import FastPixels
from hftransfer.tasks import ImageTask


def images(seed=0):
    """Odd sizes and aspect ratios, and every uint8 level, so rounding in resize, crop and the table shows."""
    rng = np.random.default_rng(seed)
    sizes = [(28, 28), (300, 200), (97, 263), (256, 256), (33, 517)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


PROCESSORS = {
    "mobilenet checkpoint (shortest edge 256, crop 224)": lambda: MobileNetV2ImageProcessorPil(),
    "mobilenet at 112 px": lambda: MobileNetV2ImageProcessorPil(size={"height": 112, "width": 112},
                                                                do_center_crop=False),
    "vit 224 (no crop)": lambda: ViTImageProcessorPil(),
    "nearest resample, no rescale": lambda: ViTImageProcessorPil(resample=0, do_rescale=False, image_mean=100,
                                                                 image_std=50),
}


@pytest.mark.parametrize("make", PROCESSORS.values(), ids=PROCESSORS.keys())
def test_fast_pixels_are_identical_to_the_processor(make):
    processor = make()
    fast = FastPixels.for_processor(processor)
    assert fast is not None
    batch = images()
    got = fast(batch)
    assert got is not None and fast.table is not None  # the first-batch check passed
    assert torch.equal(got, processor(batch, return_tensors="pt")["pixel_values"])


def test_processors_with_their_own_resize_keep_the_processor():
    processor = ConvNextImageProcessorPil()  # resize with crop_pct: not the backend's resize
    assert FastPixels.for_processor(processor) is None
    task = ImageTask()
    assert torch.equal(task.pixel_values(processor, images()), processor(images(), return_tensors="pt")["pixel_values"])


def test_a_processor_step_the_fast_path_does_not_know_switches_it_off():
    class ChannelsFlipped(ViTImageProcessorPil):  # RGB -> BGR in its own `_preprocess`
        def _preprocess(self, images, **kwargs):
            return super()._preprocess([image[::-1].copy() for image in images], **kwargs)

    processor = ChannelsFlipped()
    task = ImageTask()
    expected = processor(images(), return_tensors="pt")["pixel_values"]
    assert torch.equal(task.pixel_values(processor, images()), expected)
    assert task._fast_pixels[1].table is None  # found out on the first batch, off from then on
    assert torch.equal(task.pixel_values(processor, images(1)), processor(images(1), return_tensors="pt")["pixel_values"])


def test_a_crop_larger_than_the_image_goes_to_the_processor_which_pads():
    processor = MobileNetV2ImageProcessorPil(size={"height": 100, "width": 100}, crop_size={"height": 120, "width": 120})
    task = ImageTask()
    assert torch.equal(task.pixel_values(processor, images()), processor(images(), return_tensors="pt")["pixel_values"])


# ---------------------------------------------------------------- BatchNorm folding

def randomize_batchnorm(model):
    """Random-init BN has mean 0 and variance 1, which folds to nothing: give it statistics worth folding."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator))
    return model


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_folded_base_gives_the_same_features_and_leaves_the_model_alone(family):
    model = randomize_batchnorm(tiny_image_model(family)).eval()
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32)}
    layout = features.discover_layout(model, inputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        expected = features.base_features(model, inputs, layout)
    folded = features.folded_base(model, inputs, layout, expected)
    has_batchnorm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (folded is not None) == has_batchnorm  # ViT and ConvNeXt (LayerNorm) have nothing to fold
    if folded is not None:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        other = {"pixel_values": torch.randn(4, 3, 32, 32)}
        with torch.inference_mode():
            real = features.base_features(model, other, layout)
            with features.swapped_base(model, folded):
                fast = features.base_features(model, other, layout)
        torch.testing.assert_close(fast, real, atol=1e-4, rtol=1e-4)  # equal up to float rounding
    after = model.state_dict()  # the model itself is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class ToyBase(nn.Module):
    """conv -> BN, then a BN whose convolution output is also added back before normalisation."""

    def __init__(self, residual_before_norm: bool):
        super().__init__()
        self.residual_before_norm = residual_before_norm
        self.conv1, self.norm1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.norm2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)

    def forward(self, pixel_values):
        x = self.norm1(self.conv1(pixel_values))
        y = self.conv2(x)
        x = self.norm2(y) + y if self.residual_before_norm else self.norm2(y)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=x, pooler_output=x.mean((2, 3)))


class Toy(nn.Module):
    base_model_prefix = "base"
    main_input_name = "pixel_values"

    def __init__(self, residual_before_norm: bool):
        super().__init__()
        self.base, self.head = ToyBase(residual_before_norm), nn.Linear(4, 2)

    def forward(self, pixel_values):
        return self.head(self.base(pixel_values).pooler_output)


@pytest.mark.parametrize("residual", [False, True])
def test_folding_is_refused_when_it_would_change_the_features(residual):
    model = randomize_batchnorm(Toy(residual)).eval()
    inputs = {"pixel_values": torch.randn(2, 3, 12, 12)}
    layout = features.Layout(BaseModelOutputWithPoolingAndNoAttention, ["last_hidden_state", "pooler_output"],
                             {"pooler_output": (4,)})
    assert len(features._conv_bn_pairs(model, inputs, model.base)) == 2
    with torch.inference_mode():
        expected = features.base_features(model, inputs, layout)
    folded = features.folded_base(model, inputs, layout, expected)
    assert (folded is None) == residual  # the residual reads conv2's output before its BN: folding would change it


# ---------------------------------------------------------------- garbage collector during imports

def test_imports_without_gc_pauses_the_collector_and_freezes_what_was_built():
    import gc

    from hftransfer.fastpath import imports_without_gc

    frozen = gc.get_freeze_count()
    try:
        with imports_without_gc():
            assert not gc.isenabled()
            built = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(built)  # later collections skip them
        gc.disable()
        with imports_without_gc():
            pass
        assert not gc.isenabled()  # a collector the caller had switched off stays off
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tunables are glibc's")
def test_fast_start_restarts_with_the_tunables_before_its_block_imports_without_the_collector():
    """The start every entry point shares: a fresh process is restarted with the tunables (and `extra`) first."""
    from hftransfer.fastpath import MALLOC_TUNABLES, SERVER_TUNABLES

    code = ("import gc, os\nfrom hftransfer.fastpath import SERVER_TUNABLES, fast_start\n"
            "with fast_start(SERVER_TUNABLES):\n    print(os.environ['GLIBC_TUNABLES'], gc.isenabled())\n"
            "print(gc.isenabled())")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "HFTRANSFER_NO_REEXEC")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [f"{MALLOC_TUNABLES}:{SERVER_TUNABLES}", "False", "True"]
