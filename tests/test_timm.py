"""timm checkpoints through `TimmWrapperForImageClassification` (VGG16, Inception-v3, ResNet-50: the lesson's
models): the head and blocks come from timm's own metadata, every strategy trains, the output reloads.

In `make test` on timm's module layouts (`support/timm_layout.py` says why timm does not import in that venv);
`make timm-rows` runs the same checks on the real networks (`scripts/timm_rows.py`).
"""

from __future__ import annotations

import json

import pytest
from conftest import make_image_folder
from support import timm_layout
from support.family_runs import check_reload, check_stages, no_report, train_quick  # noqa: F401 - no_report: autouse
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hftransfer import anatomy, freezing, hub
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
    # the stretches of timm's feature_info cut points that hold parameters: five (VGG's sixth ends at a max-pool)
    assert blocks == 5 and len(model.timm_model.feature_info) == (6 if architecture == "vgg16" else 5)
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
    # the size recorded is the size used: timm's own input size (299 for Inception-v3), which its processor keeps
    native = {"inception_v3": 299}.get(architecture, 224)
    chosen = json.loads((tmp_path / "staged" / "hftransfer_run.json").read_text())["chosen"]["image_size"]
    assert chosen["value"] == native or not timm_layout.REAL_TIMM, chosen
    saved = AutoImageProcessor.from_pretrained(tmp_path / "staged")
    assert saved(images=[Image.new("RGB", (50, 40))], return_tensors="pt")["pixel_values"].shape[-1] == chosen["value"]
    card = (tmp_path / "staged" / "README.md").read_text()  # its config has no image size to tell it by
    assert "An image classifier" in card and "pipeline_tag: image-classification" in card
    assert hub.problems(tmp_path / "staged") == []  # push's checks: timm saves the names as label_names

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
