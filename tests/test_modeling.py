import logging

import pytest
import torch
from conftest import save_tiny_checkpoint, save_tiny_text_checkpoint

from hftransfer.args import ModelArguments
from hftransfer.anatomy import head_modules
from hftransfer.modeling import ModelError, check_runs, load_model
from hftransfer.tasks import ImageTask, TextTask
from transformers import ViTImageProcessor


def load(path, labels):
    return load_model(ImageTask(), ModelArguments(model_name_or_path=str(path)), labels)


def test_new_label_set_replaces_the_head_and_says_so(tmp_path, caplog):
    path = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2", num_labels=3)
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        model, processor, replaced = load(path, ["cat", "dog", "bird", "fish", "ant"])
    assert replaced and model.classifier.out_features == 5
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird", 3: "fish", 4: "ant"}
    assert model.config.label2id["fish"] == 3
    assert "New head: classifier (Linear) re-initialised for 5 labels (the checkpoint's: 3)" in caplog.text
    assert processor is not None


def test_same_labels_keep_the_pretrained_head(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "ckpt", "vit", num_labels=3)
    from transformers import AutoModelForImageClassification

    reference = AutoModelForImageClassification.from_pretrained(path)
    model, _, replaced = load(path, ["old_0", "old_1", "old_2"])
    assert not replaced
    assert torch.equal(model.classifier.weight, reference.classifier.weight)


def test_same_size_but_other_labels_gets_a_fresh_head(tmp_path):
    from transformers import AutoModelForImageClassification

    path = save_tiny_checkpoint(tmp_path / "ckpt", "resnet", num_labels=3)
    reference = AutoModelForImageClassification.from_pretrained(path)
    model, _, replaced = load(path, ["x", "y", "z"])
    assert replaced
    assert not torch.equal(model.classifier[1].weight, reference.classifier[1].weight)
    assert list(head_modules(model)) == ["classifier.1"]


def test_the_same_labels_in_another_order_keep_the_head_with_its_outputs_reordered(tmp_path):
    """A sentiment checkpoint saved as {0: positive, 1: negative}, data whose sorted labels are (negative, positive):
    the fine-tuned head is kept, and each output still scores the label it was trained for."""
    from transformers import AutoModelForSequenceClassification

    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "distilbert")
    trained = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    trained.config.id2label, trained.config.label2id = {0: "positive", 1: "negative"}, {"positive": 0, "negative": 1}
    trained.save_pretrained(checkpoint)
    model, _, replaced = load_model(TextTask(), ModelArguments(model_name_or_path=str(checkpoint)),
                                    ["negative", "positive"])
    assert not replaced and model.config.id2label == {0: "negative", 1: "positive"}
    inputs = {"input_ids": torch.tensor([[101, 2023, 2143, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        before, after = trained(**inputs).logits[0], model.eval()(**inputs).logits[0]
    assert torch.allclose(after, before[[1, 0]], atol=1e-6)


def test_default_learning_rate_follows_the_architecture():
    from conftest import tiny_image_model, tiny_text_model

    from hftransfer.choices import default_learning_rate

    assert default_learning_rate(tiny_image_model("mobilenet_v2")) == 1e-3
    assert default_learning_rate(tiny_image_model("resnet")) == 1e-3
    assert default_learning_rate(tiny_image_model("vit")) == 1e-4
    assert default_learning_rate(tiny_text_model("bert")) == 1e-4


def test_a_model_saved_in_bf16_loads_in_float32_and_takes_processor_inputs(tmp_path):
    """A bf16 engine (DeepSpeed) saves bf16 weights; the demo and predictions feed float32 pixels."""
    import torch
    from conftest import tiny_image_model

    from hftransfer.modeling import load_trained

    model = tiny_image_model("resnet").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = load_trained(str(tmp_path))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    with torch.no_grad():
        assert loaded(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)


def _stack(rows: list[dict]) -> dict:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}


class _Failing(torch.nn.Linear):
    def __init__(self, error: Exception):
        super().__init__(2, 2)
        self.error = error

    def forward(self, **inputs):
        raise self.error


def test_the_forward_check_names_the_inputs_and_leaves_the_devices_own_errors_alone():
    rows = [{"pixel_values": torch.zeros(2), "labels": 0}, {"pixel_values": torch.zeros(3), "labels": 1}]
    # the collator fails (rows of unequal size): the run's inputs, named, not a raw crash
    with pytest.raises(ModelError, match=r"_Failing cannot run on the inputs this run makes \(pixel_values, from "
                                         r"ViTImageProcessor\w*\): RuntimeError: stack expects"):
        check_runs(_Failing(ValueError()), rows, _stack, ViTImageProcessor(), "cpu")
    rows[1]["pixel_values"] = torch.zeros(2)
    with pytest.raises(ModelError, match="TypeError: needs spatial_shapes"):
        check_runs(_Failing(TypeError("needs spatial_shapes")), rows, _stack, ViTImageProcessor(), "cpu")
    model = _Failing(torch.OutOfMemoryError("CUDA out of memory"))
    model.train()
    with pytest.raises(torch.OutOfMemoryError):  # the device's limit, reported as it is
        check_runs(model, rows, _stack, ViTImageProcessor(), "cpu")
    assert model.training  # each module's mode restored


def test_the_forward_check_changes_no_batchnorm_statistics_and_draws_no_random_numbers():
    """It runs in eval mode: the first stage starts from the checkpoint's statistics and the seeded random stream."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.drop = torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5)

        def forward(self, pixel_values):
            return self.drop(self.norm(pixel_values))

    model = Net().train()
    rows = [{"pixel_values": torch.full((2,), 5.0 + i), "labels": i} for i in range(2)]
    state = torch.random.get_rng_state()
    check_runs(model, rows, _stack, ViTImageProcessor(), "cpu")
    assert torch.equal(model.norm.running_mean, torch.zeros(2)) and int(model.norm.num_batches_tracked) == 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and model.norm.training and model.drop.training


def test_batch_counters_a_checkpoint_lacks_are_no_warning_its_running_statistics_are(tmp_path, caplog):
    """Checkpoints converted from older code lack BatchNorm's `num_batches_tracked` (which changes no output); a
    missing running mean leaves the layer at fresh statistics, which does."""
    from safetensors.torch import load_file, save_file

    path = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2", num_labels=3)
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")},
              path / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        load(path, ["cat", "dog"])
    assert "initialised at random" not in caplog.text
    first_mean = next(k for k in weights if k.endswith("running_mean"))
    save_file({k: v for k, v in weights.items() if k != first_mean}, path / "model.safetensors",
              metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        load(path, ["cat", "dog"])
    assert f"initialised at random by this run: {first_mean.rsplit('.', 1)[0]}." in caplog.text
