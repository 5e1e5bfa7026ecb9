"""timm checkpoints through `TimmWrapperForImageClassification` (VGG16, Inception-v3, ResNet-50: the lesson's
models): the head and blocks come from timm's own metadata, every strategy trains, the output reloads.

Run here on timm's module layouts (`support/timm_layout.py` says why timm itself does not import on this machine);
`scripts/timm_rows.py` runs the same checks on the real networks where timm imports.
"""

from __future__ import annotations

import json

import pytest
from conftest import make_image_folder
from support import timm_layout
from support.family_runs import check_reload, check_stages, no_report, train_quick  # noqa: F401 - no_report: autouse
from transformers import AutoModelForImageClassification

from hftransfer import anatomy, freezing
from hftransfer.tasks import ImageTask

HEADS = {"resnet50": "timm_model.fc", "vgg16": "timm_model.head.fc", "inception_v3": "timm_model.fc"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm-images")
    train, validation = make_image_folder(root / "train", 4, seed=0), make_image_folder(root / "validation", 2, seed=1)
    return ["--train_dir", str(train), "--validation_dir", str(validation)]


@pytest.mark.parametrize("architecture", timm_layout.ARCHITECTURES)
def test_timm_network_anatomy_from_its_own_metadata(architecture, monkeypatch, tmp_path):
    timm_layout.install(monkeypatch)
    checkpoint = timm_layout.save_checkpoint(tmp_path / "ckpt", architecture)
    model = AutoModelForImageClassification.from_pretrained(checkpoint)
    groups = {g.name: g.params for g in anatomy.param_groups(model)}
    assert list(anatomy.head_modules(model)) == [HEADS[architecture]]
    assert groups["head"] == [f"{HEADS[architecture]}.weight", f"{HEADS[architecture]}.bias"]
    blocks = sum(name.startswith("base.block.") for name in groups)
    assert blocks == len(model.timm_model.feature_info) >= 4  # timm's feature_info cut points (five here)
    if architecture == "vgg16":  # the fully connected layers after the last stage, as the lesson's VGG has
        assert all(n.startswith("timm_model.pre_logits.") for n in groups["base.top"])
    last_two = freezing.resolve(model, freezing.FreezePlan("fine_tune", unfreeze_last_n=2))
    assert set(groups["base.block.4"]) <= last_two and not set(groups["base.block.2"]) & last_two


@pytest.mark.parametrize("architecture", timm_layout.ARCHITECTURES)
def test_timm_network_trains_with_every_strategy_and_reloads(architecture, images, monkeypatch, tmp_path, caplog):
    timm_layout.install(monkeypatch)
    checkpoint = timm_layout.save_checkpoint(tmp_path / "ckpt", architecture)
    with caplog.at_level("WARNING"):
        staged = train_quick(ImageTask, checkpoint, images, tmp_path / "staged", "--unfreeze_last_n", "2")
    assert "its head is inside it" in caplog.text  # the cache cannot split a timm network: announced fallback
    stages = check_stages(tmp_path / "staged", expected_cache=False)
    assert stages[0]["plan"]["trainable"] == [f"{HEADS[architecture]}.weight", f"{HEADS[architecture]}.bias"]
    assert [s["plan"]["strategy"] for s in stages] == ["feature_extraction", "fine_tune"]
    check_reload(staged, tmp_path / "staged", AutoModelForImageClassification, "image-classification")
    card = (tmp_path / "staged" / "README.md").read_text()  # its config has no image size to tell it by
    assert "An image classifier" in card and "pipeline_tag: image-classification" in card

    lora = train_quick(ImageTask, checkpoint, images, tmp_path / "lora", "--strategy", "lora")
    plan = json.loads((tmp_path / "lora" / "hftransfer_run.json").read_text())["stages"][1]["plan"]
    assert plan["lora"]["target_modules"] and all(t.startswith("timm_model.") for t in plan["lora"]["target_modules"])
    check_reload(lora, tmp_path / "lora", AutoModelForImageClassification, "image-classification")


def test_a_timm_folder_with_its_class_count_in_model_args_takes_a_new_label_count(images, monkeypatch, tmp_path):
    """timm's `save_for_hf` may write `model_args.num_classes`; TimmWrapper then got two class counts."""
    timm_layout.install(monkeypatch)
    checkpoint = timm_layout.save_checkpoint(tmp_path / "ckpt", "resnet50", num_classes_in_model_args=True)
    train_quick(ImageTask, checkpoint, images, tmp_path / "out", "--strategy", "feature_extraction")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 3 and model.timm_model.fc.out_features == 3
