"""The architecture matrix: every family a user would pick from the Hub, as a tiny random-init checkpoint in the
Hub's layout (`support/families.py`), through the strategies.

Per row, two runs cover the four kinds of stage: `staged --unfreeze_last_n 2` (its first stage is the
`feature_extraction` strategy, on the feature cache or with the fallback announced; its second is `fine_tune` of the
last two blocks) and `lora` (head stage, then adapters, merged). Each stage must train parameters, the freeze report
must find a head and blocks, and the saved folder must load with the Auto class and give, through a `pipeline`,
the prediction the trained model gives on the run's own preprocessing. `make family-sweep` runs the same checks on
71 more families (`support/wider_families.py`).
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_image_folder, write_reviews_csv
from support.families import (DECODER_FAMILIES, IMAGE_FAMILIES, SEQ2SEQ_FAMILIES, TEXT_FAMILIES,
                              save_image_checkpoint, save_text_checkpoint)
from support.family_runs import check_reload, check_stages, no_report, train_quick  # noqa: F401 - no_report: autouse
from support.wider_families import (NO_BASE_IMAGE, NO_LORA_TARGETS, PADDING_DEPENDENT, WIDER_DECODERS, WIDER_IMAGE,
                                    WIDER_SEQ2SEQ, WIDER_TEXT)
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from hftransfer import anatomy, freezing
from hftransfer.args import ModelArguments
from hftransfer.modeling import ModelError, load_model
from hftransfer.tasks import ImageTask, TextTask
from hftransfer.training import TransferRun

# ALBERT runs one shared layer group as all its layers: one block, so fine-tuning "the last two" cannot exist
ONE_BLOCK = {"albert"}
# `make family-sweep`: the families beyond the matrix as well (support/wider_families.py), each row checked alike
SWEEP = os.environ.get("HFTRANSFER_FAMILY_SWEEP") == "1"
SWEPT_IMAGE = WIDER_IMAGE if SWEEP else []
SWEPT_TEXT = WIDER_TEXT + WIDER_DECODERS + WIDER_SEQ2SEQ if SWEEP else []


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return make_image_folder(root / "train", 4, seed=0), make_image_folder(root / "validation", 2, seed=1)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    return write_reviews_csv(root / "train.csv", repeat=1), write_reviews_csv(root / "validation.csv", repeat=1)


def _check_anatomy(transfer: TransferRun, family: str) -> None:
    groups = {g.name for g in anatomy.param_groups(transfer.model)}
    blocks = sum(name.startswith("base.block.") for name in groups)
    assert "head" in groups and blocks >= (1 if family in ONE_BLOCK else 2)
    report = freezing.report(transfer.model)
    assert "head" in report and "base.block.0" in report


@pytest.mark.parametrize("family", IMAGE_FAMILIES + SWEPT_IMAGE)
def test_image_family(family, image_data, tmp_path, caplog):
    checkpoint = save_image_checkpoint(tmp_path / "ckpt", family)
    train, validation = image_data
    data = ["--train_dir", str(train), "--validation_dir", str(validation)]

    with caplog.at_level("WARNING"):
        staged = train_quick(ImageTask, checkpoint, data, tmp_path / "staged", "--unfreeze_last_n", "2")
    _check_anatomy(staged, family)
    stages = check_stages(tmp_path / "staged", None, caplog.text)
    assert [s["plan"]["strategy"] for s in stages] == ["feature_extraction", "fine_tune"]
    check_reload(staged, tmp_path / "staged", AutoModelForImageClassification, "image-classification")

    with caplog.at_level("WARNING"):
        lora = train_quick(ImageTask, checkpoint, data, tmp_path / "lora", "--strategy", "lora")
    check_stages(tmp_path / "lora", None, caplog.text)
    check_reload(lora, tmp_path / "lora", AutoModelForImageClassification, "image-classification")


def test_a_regnet_shaped_as_transformers_tests_shape_it_trains_at_its_processors_size(image_data, tmp_path):
    """RegNetModelTester's sizes (the hf-internal-testing tiny RegNets) beside ConvNextImageProcessor's defaults, as
    facebook/regnet-* ship them: its first shortcut, a 1x1 convolution of stride 2 on 10 channels, crashed the whole
    process (a segmentation fault in torch's CPU kernel) in the staged run's backward pass on channels-last weights.
    Such a model stays contiguous; the matrix's RegNet, 16 channels and up, still goes channels-last."""
    from transformers import ConvNextImageProcessor, RegNetConfig, RegNetForImageClassification

    config = RegNetConfig(embedding_size=10, hidden_sizes=[10, 20, 30, 40], depths=[1, 1, 2, 1], hidden_act="relu",
                          num_labels=2)
    RegNetForImageClassification(config).save_pretrained(tmp_path / "ckpt")
    ConvNextImageProcessor().save_pretrained(tmp_path / "ckpt")
    shortcut = ImageTask().prepare_model(RegNetForImageClassification(config)).regnet.encoder.stages[0]
    assert shortcut.layers[0].shortcut.convolution.weight.is_contiguous()
    matrix_regnet = load_model(ImageTask(), ModelArguments(model_name_or_path=str(save_image_checkpoint(
        tmp_path / "matrix", "regnet"))), ["a", "b"])[0]
    assert ImageTask().prepare_model(matrix_regnet).regnet.embedder.embedder.convolution.weight.is_contiguous(
        memory_format=torch.channels_last)
    train, validation = image_data
    train_quick(ImageTask, tmp_path / "ckpt", ["--train_dir", str(train), "--validation_dir", str(validation)],
                tmp_path / "out")
    check_stages(tmp_path / "out", None)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_clip_and_siglip_take_their_vision_configs_size_over_a_default_processors(family, image_data, tmp_path,
                                                                                  caplog):
    """CLIP's and SigLIP's classifiers at transformers' test sizes (30 px, in `vision_config`) beside their
    processors' 224 px defaults: the run stopped before training ("Input image size (224*224) doesn't match model
    (30*30)") where a ViT of the same sizes is resized to its config's 30 px, since their config keeps the size in
    `vision_config`. They train at 30 px now, and the saved processor makes 30 px inputs."""
    import transformers as tf
    from PIL import Image

    sizes = {"vision_config": dict(image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37),
             "text_config": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37)}
    model, processor = ((tf.CLIPForImageClassification(tf.CLIPConfig(**sizes, projection_dim=32)),
                         tf.CLIPImageProcessor()) if family == "clip" else
                        (tf.SiglipForImageClassification(tf.SiglipConfig(**sizes)), tf.SiglipImageProcessor()))
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    train, validation = image_data
    with caplog.at_level("WARNING"):
        train_quick(ImageTask, tmp_path / "ckpt", ["--train_dir", str(train), "--validation_dir", str(validation)],
                    tmp_path / "out", "--strategy", "feature_extraction")
    assert "takes 30 px inputs (its config's image_size), not the 224 px" in caplog.text
    check_stages(tmp_path / "out", None)
    saved = tf.AutoImageProcessor.from_pretrained(tmp_path / "out")
    image = Image.open(next(path for path in sorted(train.rglob("*")) if path.is_file())).convert("RGB")
    assert saved(image, return_tensors="pt")["pixel_values"].shape[-2:] == (30, 30)


@pytest.mark.parametrize("family", TEXT_FAMILIES + DECODER_FAMILIES + SEQ2SEQ_FAMILIES + SWEPT_TEXT)
def test_text_family(family, text_data, tmp_path, caplog):
    checkpoint = save_text_checkpoint(tmp_path / "ckpt", family)
    train, validation = text_data
    data = ["--train_file", str(train), "--validation_file", str(validation)]
    # a decoder's head finds the last real token from input_ids, an encoder-decoder's reads the decoder's output;
    # beyond the matrix: the cache, or its fallback announced
    expected_cache = True if family in TEXT_FAMILIES else None if family in WIDER_TEXT else False
    caplog.set_level("WARNING")

    if family in ONE_BLOCK:
        with pytest.raises(freezing.PatternError, match="only 1 blocks"):
            train_quick(TextTask, checkpoint, data, tmp_path / "last2", "--unfreeze_last_n", "2")
        staged = train_quick(TextTask, checkpoint, data, tmp_path / "staged", "--strategy", "staged",
                             "--unfreeze_last_n", "1")
    else:  # named: a decoder's default is lora
        staged = train_quick(TextTask, checkpoint, data, tmp_path / "staged", "--strategy", "staged",
                             "--unfreeze_last_n", "2")
    _check_anatomy(staged, family)
    check_stages(tmp_path / "staged", expected_cache, caplog.text)
    check_reload(staged, tmp_path / "staged", AutoModelForSequenceClassification, "text-classification")
    assert ("with the padding its batch adds" in caplog.text) == (family in PADDING_DEPENDENT)

    if family in NO_LORA_TARGETS:
        with pytest.raises(freezing.PatternError, match="hold no Linear, Conv1D or ungrouped Conv2d"):
            train_quick(TextTask, checkpoint, data, tmp_path / "lora", "--strategy", "lora")
        return
    lora = train_quick(TextTask, checkpoint, data, tmp_path / "lora", "--strategy", "lora")
    check_stages(tmp_path / "lora", expected_cache, caplog.text)
    check_reload(lora, tmp_path / "lora", AutoModelForSequenceClassification, "text-classification")


def test_a_plan_that_trains_nothing_is_an_error_before_any_training(text_data, tmp_path):
    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "distilbert")
    train, validation = text_data
    data = ["--train_file", str(train), "--validation_file", str(validation)]
    with pytest.raises(freezing.PatternError) as error:
        train_quick(TextTask, checkpoint, data, tmp_path / "out", "--strategy", "feature_extraction",
                    "--freeze", "classifier", "pre_classifier")
    message = str(error.value)
    assert "would train 0 parameters" in message and "head: classifier, pre_classifier" in message
    assert "--unfreeze" in message and "3 blocks" in message
    assert not (tmp_path / "out" / "hftransfer_run.json").exists()


@pytest.mark.parametrize("strategy", ["full", "fine_tune"])
def test_a_new_head_left_frozen_while_the_base_trains_is_an_error(strategy, text_data, tmp_path):
    """`--strategy full --freeze classifier` trained the base under a head that stayed at its random start: exit 0,
    a model that answers at random. (A head trained in a first stage may be frozen in the next: tested in
    test_strategies.)"""
    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "distilbert")
    train, validation = text_data
    data = ["--train_file", str(train), "--validation_file", str(validation)]
    with pytest.raises(freezing.PatternError) as error:
        train_quick(TextTask, checkpoint, data, tmp_path / "out", "--strategy", strategy,
                    "--freeze", "classifier", "re:.*pre_classifier.*", "distilbert.embeddings.*")
    message = str(error.value)
    assert "No stage would train the new head (classifier, pre_classifier), which starts random" in message
    assert "--freeze 'classifier' 're:.*pre_classifier.*' names it" in message  # not the embeddings' pattern
    assert not (tmp_path / "out" / "hftransfer_run.json").exists()


def test_a_kept_head_may_stay_frozen(text_data, tmp_path):
    """The checkpoint's own head, for the same labels, is trained weights: freezing it is a choice, not an error."""
    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "distilbert")
    train, validation = text_data
    data = ["--train_file", str(train), "--validation_file", str(validation)]
    first = train_quick(TextTask, checkpoint, data, tmp_path / "first", "--strategy", "full")
    again = train_quick(TextTask, tmp_path / "first", data, tmp_path / "again", "--strategy", "full",
                        "--freeze", "classifier", "pre_classifier")
    assert again.model.classifier.weight.equal(first.model.classifier.weight)


@pytest.mark.parametrize("family", IMAGE_FAMILIES + SWEPT_IMAGE + ["bert", "sentence-transformers", "qwen2"])
def test_a_new_label_set_replaces_the_head_and_keeps_every_pretrained_weight(family, tmp_path):
    """The head is what comes after the base, and a new label set re-initialises it alone: every other weight is
    the checkpoint's (a head found too wide would silently restart a pretrained stem)."""
    text = family in TEXT_FAMILIES + DECODER_FAMILIES
    task = TextTask if text else ImageTask
    checkpoint = (save_text_checkpoint if text else save_image_checkpoint)(tmp_path / "ckpt", family)
    pretrained = AutoModelForSequenceClassification if text else AutoModelForImageClassification
    before = dict(pretrained.from_pretrained(checkpoint).named_parameters())
    model, _, replaced = load_model(task(), ModelArguments(model_name_or_path=str(checkpoint)), ["a", "b"])
    assert replaced
    params = dict(model.named_parameters())
    names = list(params)
    groups = {g.name: g.params for g in anatomy.param_groups(model)}
    head = set(groups["head"])
    assert head and names[-len(head):] == [n for n in names if n in head]  # the head comes last
    added = set(groups.get(anatomy.POOLING_GROUP, []))  # a sentence-transformers checkpoint's pooling, built anew
    kept = [n for n in names if n not in head | added]
    assert kept and all(torch.equal(params[n], before[n]) for n in kept)


@pytest.mark.parametrize("family", NO_BASE_IMAGE)
def test_a_base_spread_over_several_children_is_an_error_before_training(family, tmp_path):
    checkpoint = save_image_checkpoint(tmp_path / "ckpt", family)
    spread = r"no base model.* names no child, and its children \(encoder .*embedder .*fc "
    with pytest.raises(ModelError, match=spread):
        load_model(ImageTask(), ModelArguments(model_name_or_path=str(checkpoint)), ["a", "b"])


def test_a_base_found_by_size_stays_the_base_while_the_feature_cache_stands_in_for_it(tmp_path):
    """SigLIP keeps its base outside `base_model_prefix`; the cached head stage swaps it for a stand-in without
    parameters, inside which the head would otherwise be the largest child and get the base's rate factors."""
    from hftransfer.features import CachedBase, swapped_base

    checkpoint = save_image_checkpoint(tmp_path / "ckpt", "siglip")
    model, _, _ = load_model(ImageTask(), ModelArguments(model_name_or_path=str(checkpoint)), ["a", "b"])
    plan = freezing.FreezePlan(layer_lr_decay=0.5)
    outside = freezing.lr_factors(model, plan)
    with swapped_base(model, CachedBase(layout=None)):
        assert anatomy.base_prefix(model) == "vision_model"
        inside = freezing.lr_factors(model, plan)
    assert inside == {name: outside[name] for name in ("classifier.weight", "classifier.bias")} == {
        "classifier.weight": 1.0, "classifier.bias": 1.0}
