"""Stages and their engines: the last stage's trainer evaluates and saves (no second engine set-up, which DeepSpeed
ZeRO-2 refuses for inference), and every earlier stage lets go of its engine before the next one starts."""

import json

import pytest
import torch
from conftest import ROOT, save_tiny_checkpoint
from support.gloo_ranks import run_two_ranks

from hftransfer import hardware
from hftransfer.args import parse_args
from hftransfer.tasks import ImageTask
from hftransfer.trainer import TransferTrainer
from hftransfer.training import TransferRun


@pytest.mark.parametrize("strategy", ["staged", "lora"])
def test_the_last_stage_evaluates_and_earlier_engines_are_released(strategy, monkeypatch, image_folders, tmp_path):
    created = []
    init = TransferTrainer.__init__

    def counted_init(self, *args, **kwargs):
        created.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(TransferTrainer, "__init__", counted_init)
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]),
                      "--validation_dir", str(image_folders[1]), "--output_dir", str(tmp_path / "out"),
                      "--strategy", strategy, "--head_epochs", "2", "--num_train_epochs", "1",
                      "--disable_tqdm", "true"])
    transfer = TransferRun(run, ImageTask(run.data))
    results = transfer.execute()
    assert [h["stage"] for h in transfer.history] == ["head", strategy]
    assert len(created) == 2  # one trainer a stage, none for the evaluation
    head, last = created
    # Accelerate's free_memory (which destroys a DeepSpeed engine) ran on the head stage's accelerator: nothing of
    # that stage stays prepared; the last stage's engine stays, for the evaluation and the save
    assert head.accelerator._models == [] and head.accelerator._optimizers == [] and head.model_wrapped is head.model
    assert last.accelerator._models and transfer.final_trainer is last and results["eval_samples"] == 12
    assert not hasattr(last.model, "peft_config")  # it saved the merged model
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert [h["weight_decay"] for h in transfer.history] == [run.training.weight_decay] * 2  # the flag's default


def feature_extraction_run(family: str, image_folders, tmp_path) -> TransferRun:
    """One epoch of the head on a tiny `family` checkpoint, run to the end."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", family)
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]),
                      "--validation_dir", str(image_folders[1]), "--output_dir", str(tmp_path / "out"),
                      "--strategy", "feature_extraction", "--head_epochs", "1", "--disable_tqdm", "true"])
    transfer = TransferRun(run, ImageTask(run.data))
    transfer.execute()
    return transfer


def test_a_head_trained_as_the_final_model_decays_its_weights_at_the_chosen_rate(image_folders, tmp_path):
    from hftransfer.card import write_card
    from hftransfer.choices import HEAD_ONLY_WEIGHT_DECAY

    transfer = feature_extraction_run("vit", image_folders, tmp_path)
    decays = {group["weight_decay"] for group in transfer.final_trainer.optimizer.param_groups}
    assert decays == {HEAD_ONLY_WEIGHT_DECAY, 0.0}  # the classifier's weight, and its bias (never decayed)
    record = json.loads((tmp_path / "out" / "hftransfer_run.json").read_text())
    assert record["stages"][0]["weight_decay"] == HEAD_ONLY_WEIGHT_DECAY
    assert record["chosen"]["weight_decay (head)"]["value"] == HEAD_ONLY_WEIGHT_DECAY
    card = write_card(tmp_path / "out").read_text()  # the decay the head trained with, not the flag's default
    assert "| weight decay |" in card and f" {HEAD_ONLY_WEIGHT_DECAY:g} |" in card and "| weight_decay |" not in card


def test_under_fsdp_the_head_trains_on_the_frozen_base_without_channels_last(monkeypatch, image_folders, tmp_path):
    """FSDP wraps and shards the base that the cache would replace, and refuses channels-last weights."""
    monkeypatch.setattr(hardware, "fsdp_enabled", lambda args: True)
    transfer = feature_extraction_run("resnet", image_folders, tmp_path)
    assert transfer.history[0]["metrics"]["cached_features"] is False
    convolutions = [m.weight for m in transfer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous() for w in convolutions)


def test_lora_under_fsdp_trains_one_stage_and_saves_the_model_gathered_into_its_plain_copy(tmp_path, monkeypatch):
    """The run's own wiring under FSDP (Accelerate's FSDP needs a GPU: `hardware.fsdp_enabled` stands in; the
    sharded path itself is tests/test_hardware.py's): LoRA has one stage, recorded as chosen, each trainer settles
    the wrapped groups' precision, and the saved model is the plain copy kept at wrap time, merged."""
    from conftest import save_tiny_text_checkpoint, write_reviews_csv
    from transformers import AutoModelForSequenceClassification

    from hftransfer import lora
    from hftransfer.tasks import TextTask

    settled, copies = [], []
    settle, merge = hardware.settle_fsdp_precision, lora.merge
    monkeypatch.setattr(hardware, "fsdp_enabled", lambda args: True)
    monkeypatch.setattr(hardware, "settle_fsdp_precision", lambda model: settled.append(model) or settle(model))
    monkeypatch.setattr(lora, "merge", lambda model, folder: copies.append(model._hftransfer_plain) or merge(model,
                                                                                                        folder))
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(save_tiny_text_checkpoint(tmp_path / "bert", "bert")),
                      "--train_file", str(write_reviews_csv(tmp_path / "reviews.csv")), "--output_dir", str(out),
                      "--strategy", "lora", "--num_train_epochs", "1", "--disable_tqdm", "true"])
    TransferRun(run, TextTask(run.data)).execute()
    record = json.loads((out / "hftransfer_run.json").read_text())
    assert [stage["stage"] for stage in record["stages"]] == ["lora"]
    assert record["chosen"]["head_stage"]["value"] is False
    assert [type(model).__name__ for model in settled] == ["PeftModel"]  # the one stage's trainer, as handed over
    saved = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    gathered = copies[0].base_model.model.state_dict()  # merged in place by `merge`
    assert saved.keys() <= gathered.keys() and all(torch.equal(saved[k], gathered[k]) for k in saved)


def test_two_stages_on_an_fsdp2_sharded_model_over_a_gloo_mesh(tmp_path):
    """The freeze plan of each stage on a model sharded by `fully_shard` (tests/support/fsdp_stages.py, 2 processes):
    stage 1 moves the head only, stage 2 the base too, and the gathered weights give the sharded model's logits."""
    out = tmp_path / "fsdp.json"
    run_two_ranks(ROOT / "tests" / "support" / "fsdp_stages.py", out)
    result = json.loads(out.read_text())
    head_only, everything = result["trainable"]
    assert 0 < head_only < everything == result["total"]
    assert result["head_stage"] == {"head_changed": True, "base_changed": False}
    assert result["full_stage"] == {"head_changed": True, "base_changed": True}
    assert result["gathered_logits_match"]
