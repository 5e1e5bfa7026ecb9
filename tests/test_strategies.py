"""Custom MLP heads, LoRA, gradient checkpointing over frozen embeddings, and `hftransfer compare`."""

import json

import pytest
import torch
from conftest import (IMAGE_FAMILIES, save_tiny_checkpoint, save_tiny_text_checkpoint, tiny_image_model,
                      tiny_text_model, write_reviews_csv)
from torch import nn
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from hftransfer import heads, lora, outputs
from hftransfer.args import parse_args
from hftransfer.freezing import PatternError
from hftransfer.modeling import load_trained
from hftransfer.tasks import ImageTask, TextTask
from hftransfer.training import TransferRun

FAMILIES = [("image", f) for f in IMAGE_FAMILIES] + [("text", "bert"), ("text", "distilbert")]


def tiny(kind, family):
    return tiny_image_model(family) if kind == "image" else tiny_text_model(family, num_labels=3)


def inputs(kind, model):
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, 32, 32)}
    return {"input_ids": torch.randint(0, 1000, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def train(task_cls, args):
    parsed = parse_args([*args, "--disable_tqdm", "true"])
    transfer = TransferRun(parsed, task_cls(parsed.data))
    return transfer, transfer.execute()


@pytest.mark.parametrize("kind,family", FAMILIES)
def test_mlp_head_replaces_the_final_classifier_of_every_family(kind, family):
    model = tiny(kind, family)
    before = {n for n, _ in model.named_parameters()}
    name = heads.install(model, [16, 8], dropout=0.2)
    head = model.get_submodule(name)
    assert isinstance(head, heads.MLPHead)
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [16, 8, 3]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert model(**inputs(kind, model)).logits.shape == (2, 3)
    if family == "distilbert":  # the pre-classifier stays: only the final Linear is replaced
        assert name == "classifier" and "pre_classifier.weight" in before
    if family == "resnet":
        assert name == "classifier.1"  # inside ResNet's Sequential(Flatten, Linear)
    assert getattr(model.config, heads.CONFIG_KEY) == {"module": name, "hidden_sizes": [16, 8], "dropout": 0.2}


def test_mlp_head_trains_on_cached_features_and_reloads_with_its_weights(tmp_path, image_folders):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    out = tmp_path / "out"
    transfer, metrics = train(ImageTask, [
        "--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]), "--validation_dir",
        str(image_folders[1]), "--output_dir", str(out), "--strategy", "feature_extraction", "--head_epochs", "3",
        "--head_hidden_sizes", "32", "--head_dropout", "0.1"])
    assert transfer.history[0]["metrics"]["cached_features"]
    batch = transfer.collator([transfer.eval_raw[i] for i in range(len(transfer.eval_raw))])
    reloaded = load_trained(str(out))
    assert isinstance(reloaded.classifier, heads.MLPHead)
    with torch.no_grad():
        expected = transfer.model.eval()(pixel_values=batch["pixel_values"]).logits
        got = reloaded(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(got, expected)
    accuracy = (got.argmax(-1) == batch["labels"]).float().mean().item()
    assert accuracy == pytest.approx(metrics["eval_accuracy"])
    plain = AutoModelForImageClassification.from_pretrained(out)  # what plain transformers would do: a new head
    assert not isinstance(plain.classifier, heads.MLPHead)


def test_lora_default_targets_skip_depthwise_convs_and_stem():
    mobilenet = tiny_image_model("mobilenet_v2")
    targets = lora.default_targets(mobilenet)
    modules = dict(mobilenet.named_modules())
    assert targets and all(modules[t].groups == 1 for t in targets)
    assert not any("conv_stem" in t for t in targets)
    bert = tiny_text_model("bert")
    targets = lora.default_targets(bert)
    assert "bert.encoder.layer.0.attention.self.query" in targets
    assert not any("embeddings" in t or "pooler" in t for t in targets)
    assert lora.resolve_targets(bert, ["query", "value"]) == [
        f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(6) for p in ("query", "value")]
    with pytest.raises(PatternError, match="Nearest"):
        lora.resolve_targets(bert, ["qurey"])
    # modules that exist but LoRA cannot adapt were "matches no parameter"
    with pytest.raises(PatternError, match=r"LayerNorm: names 13 module\(s\) LoRA cannot adapt \(LayerNorm: "
                                           r"bert.embeddings.LayerNorm, .*LoRA adapts Linear"):
        lora.resolve_targets(bert, ["LayerNorm"])
    with pytest.raises(PatternError, match=r"re:.*\.dropout: names .* \(Dropout: "):
        lora.resolve_targets(bert, ["re:.*\\.dropout"])
    # named, what the defaults leave out: the run failed after training (the merge) or after the head's stage (PEFT)
    with pytest.raises(PatternError, match="classifier are the head, which trains in full"):
        lora.resolve_targets(bert, ["classifier"])
    mobilenet = tiny_image_model("mobilenet_v2")
    with pytest.raises(PatternError, match=r"conv_3x3.convolution .*grouped \(depthwise\) convolutions"):
        lora.resolve_targets(mobilenet, ["mobilenet_v2.layer.0.conv_3x3.convolution"])


def test_lora_targets_that_match_nothing_stop_the_run_before_the_head_trains(tmp_path, caplog):
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    reviews = write_reviews_csv(tmp_path / "t.csv")
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews),
                      "--output_dir", str(tmp_path / "out"), "--strategy", "lora", "--lora_target_modules", "qurey"])
    with caplog.at_level("INFO"), pytest.raises(PatternError, match="Nearest"):
        TransferRun(run, TextTask(run.data)).execute()
    assert "Stage 'head'" not in caplog.text


def test_lora_run_saves_a_merged_model_equal_to_base_plus_adapter(tmp_path):
    from peft import PeftModel

    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    data = write_reviews_csv(tmp_path / "train.csv")
    out = tmp_path / "out"
    transfer, metrics = train(TextTask, ["--model_name_or_path", str(checkpoint), "--train_file", str(data),
                                         "--output_dir", str(out), "--strategy", "lora", "--lora_r", "4",
                                         "--eval_strategy", "epoch",
                                         "--head_epochs", "2", "--num_train_epochs", "2", "--learning_rate", "3e-2"])
    assert [s["stage"] for s in transfer.history] == ["head", "lora"]
    lora_stage, head_stage = transfer.history[1]["metrics"], transfer.history[0]["metrics"]
    assert not lora_stage["cached_features"] and head_stage["cached_features"]
    total = sum(p.numel() for p in transfer.model.parameters())
    assert 0 < lora_stage["trainable_parameters"] < total / 4
    plan = json.loads((out / "freeze_plan.json").read_text())
    assert plan["strategy"] == "lora" and plan["lora"]["r"] == 4
    # every module that got an adapter, by its full name (36 here: PEFT's own config keeps suffixes from 20 on)
    assert plan["lora"]["target_modules"] == sorted(lora.default_targets(transfer.model))
    assert len(plan["lora"]["target_modules"]) == 36
    assert "on 36 modules (merged)" in (out / "report" / "report.md").read_text()

    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no PEFT needed
    validation = transfer.collator([transfer.eval_raw[i] for i in range(len(transfer.eval_raw))])
    with torch.no_grad():  # the reported evaluation is the saved model's (not stale cached features of the base)
        assert merged(**validation).loss.item() == pytest.approx(metrics["eval_loss"], rel=1e-4)
    tokenizer = transfer.processor
    batch = tokenizer(["a wonderful film", "a dull mess of a movie"], return_tensors="pt", padding=True)
    base = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2).eval()
    adapted = PeftModel.from_pretrained(base, out / outputs.ADAPTER_FOLDER).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted(**batch).logits, atol=1e-4, rtol=1e-4)
        before = AutoModelForSequenceClassification.from_pretrained(checkpoint).bert.encoder.layer[0]
        query = merged.bert.encoder.layer[0].attention.self.query.weight
        assert not torch.equal(query, before.attention.self.query.weight)  # the adapter was merged into the base


def test_lora_trains_what_the_users_patterns_name_beside_the_adapters(tmp_path):
    """PEFT freezes all but its adapters and `modules_to_save`: a LayerNorm `--unfreeze` names trains in full and is
    saved with the adapter; a head `--freeze` names stays out (both were PEFT's choice before, silently)."""
    from safetensors.torch import load_file

    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    out = tmp_path / "out"
    norm = "bert.encoder.layer.2.output.LayerNorm"
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    train(TextTask, ["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir", str(out),
                     "--strategy", "lora", "--lora_r", "4", "--head_epochs", "1", "--num_train_epochs", "2",
                     "--learning_rate", "3e-2", "--unfreeze", f"{norm}.*", "--freeze", "classifier.*"])
    saved = load_file(out / outputs.ADAPTER_FOLDER / "adapter_model.safetensors")
    assert any(key.endswith(f"{norm}.weight") for key in saved) and not any("classifier" in key for key in saved)
    before = AutoModelForSequenceClassification.from_pretrained(checkpoint).get_submodule(norm).weight
    assert not torch.equal(AutoModelForSequenceClassification.from_pretrained(out).get_submodule(norm).weight, before)


def test_gradient_checkpointing_over_frozen_embeddings_still_trains_the_blocks(tmp_path):
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    data = write_reviews_csv(tmp_path / "train.csv")
    transfer, _ = train(TextTask, ["--model_name_or_path", str(checkpoint), "--train_file", str(data),
                                   "--output_dir", str(tmp_path / "out"), "--strategy", "fine_tune",
                                   "--unfreeze_last_n", "2", "--num_train_epochs", "2", "--learning_rate", "1e-3",
                                   "--gradient_checkpointing", "true"])
    original = tiny_text_model("bert").__class__.from_pretrained(checkpoint)
    trained, frozen = transfer.model.bert.encoder.layer[5], transfer.model.bert.encoder.layer[0]
    assert transfer.model.is_activation_checkpointing
    assert not torch.equal(trained.attention.self.query.weight, original.bert.encoder.layer[5].attention.self.query.weight)
    assert torch.equal(frozen.attention.self.query.weight, original.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(transfer.model.bert.embeddings.word_embeddings.weight,
                       original.bert.embeddings.word_embeddings.weight)


@pytest.mark.long
def test_compare_runs_three_strategies_and_writes_the_table(tmp_path, image_folders, monkeypatch):
    from hftransfer import cli

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    out = tmp_path / "compare"
    # The command line in this process (a process of its own spent 7 s importing); each strategy is launched as ever.
    cli.main(["compare", "image", "--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]),
              "--validation_dir", str(image_folders[1]), "--output-dir", str(out), "--head_epochs", "2",  # either
              "--num_train_epochs", "1", "--disable_tqdm", "true"])                                     # spelling
    rows = {row["strategy"]: row for row in json.loads((out / "comparison.json").read_text())}
    assert list(rows) == ["feature_extraction", "staged", "lora"]
    trainable = {name: row["trainable_parameters"] for name, row in rows.items()}
    assert trainable["feature_extraction"] < trainable["lora"] < trainable["staged"]
    for name, row in rows.items():
        assert 0 <= row["eval_accuracy"] <= 1 and row["peak_memory_mb"] > 0
        assert set(load_trained(row["output_dir"]).config.label2id) == {"square", "hstripes", "vstripes"}
        assert json.loads((out / name / "all_results.json").read_text())["eval_accuracy"] == row["eval_accuracy"]
    for name in rows:
        assert "| lora " in (out / name / "README.md").read_text()  # each card shows the comparison
        assert "| staged " in (out / name / "report" / "report.md").read_text()
    table = (out / "comparison.md").read_text()
    assert table.count("\n") == 5 and "| lora " in table
    with pytest.raises(SystemExit, match="leave out --strategy"):
        from hftransfer.compare import compare
        compare("image", ["--strategy", "full"])


@pytest.mark.long
def test_compare_goes_on_past_a_failed_strategy_and_names_it(tmp_path, image_folders, monkeypatch):
    """LoRA refuses a target module the model lacks; feature extraction still runs, and the table says which failed.
    Compared into a folder where lora's subfolder holds an earlier run's model (its card and demo), the failure says
    that model is not this comparison's."""
    from hftransfer.compare import _holds_a_model, compare

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    out = tmp_path / "compare"
    data = ["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]), "--validation_dir",
            str(image_folders[1]), "--head_epochs", "1"]
    train(ImageTask, [*data, "--output_dir", str(out / "lora"), "--strategy", "feature_extraction"])  # the earlier
    flags = [*data, "--output_dir", str(out), "--disable_tqdm", "true", "--lora_target_modules", "no_such_module"]
    with pytest.raises(SystemExit, match="lora failed"):
        compare("image", flags, strategies=("lora", "feature_extraction"))
    rows = {row["strategy"]: row for row in json.loads((out / "comparison.json").read_text())}
    assert rows["lora"]["failed"] == f"exit 1; {out / 'lora'} holds an earlier run's model, not this comparison's"
    assert "eval_accuracy" not in rows["lora"]
    assert "failed" not in rows["feature_extraction"] and 0 <= rows["feature_extraction"]["eval_accuracy"] <= 1
    assert "| lora " in (out / "feature_extraction" / "README.md").read_text()
    table = (out / "comparison.md").read_text()
    assert "| failed |" in table.splitlines()[0] and "holds an earlier run's model" in table
    # only a finished run's folder counts: a checkpoint's (no run record) or none is said as the exit alone
    assert _holds_a_model(out / "feature_extraction") and not _holds_a_model(checkpoint)
    assert not _holds_a_model(tmp_path / "none")
    (out / "feature_extraction" / "config.json").write_text('{"id2')  # cut short: still an earlier model, no error
    assert _holds_a_model(out / "feature_extraction")


def test_compare_stops_on_a_misspelt_flag_before_launching_any_strategy(tmp_path, monkeypatch):
    from hftransfer import compare

    def launched(*args, **kwargs):
        raise AssertionError(f"a strategy was launched: {args}")

    monkeypatch.setattr(compare, "run_strategy", launched)
    with pytest.raises(SystemExit, match="unknown argument.*--num_train_epoch 2"):
        compare.compare("text", ["--train_file", "t.csv", "--num_train_epoch", "2",
                                 "--output_dir", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_compare_stops_on_data_no_run_can_train_on_before_launching_any_strategy(tmp_path, monkeypatch):
    """A column the data lacks failed each of the three runs in turn, each with accelerate's traceback."""
    from hftransfer import compare

    def launched(*args, **kwargs):
        raise AssertionError(f"a strategy was launched: {args}")

    monkeypatch.setattr(compare, "run_strategy", launched)
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    with pytest.raises(SystemExit, match=r"^compare: error: .*reviews.csv.*no column 'review'"):
        compare.compare("text", ["--train_file", str(reviews), "--text_column_names", "review",
                                 "--output_dir", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_compare_reads_its_output_folder_in_every_spelling_the_recipes_take():
    from hftransfer.compare import _pop_flag

    for flags in (["--output_dir", "x", "--seed", "1"], ["--output-dir", "x", "--seed", "1"],
                  ["--output_dir=x", "--seed", "1"], ["--output-dir=x", "--seed", "1"]):
        assert _pop_flag(flags, "--output_dir") == ("x", ["--seed", "1"])


@pytest.mark.long
def test_staged_fine_tuning_starts_where_the_head_stage_ended(tmp_path, mobilenet_zoo):
    """Real MobileNetV2 on the embedded Fashion-MNIST sample. Stage 2 normalises with batch statistics; with the
    BatchNorm layers calibrated on the data before the head stage, its first step sees about the loss the head
    stage ended on. Without (the control), the head meets other features and the loss jumps."""
    ends = {}
    for calibrate in ("false", "true"):  # the uncalibrated features are cached first: they must not be reused
        transfer, _ = train(ImageTask, [
            "--model_name_or_path", "zoo:mobilenet_v2", "--max_train_samples", "160", "--max_eval_samples", "32",
            "--head_epochs", "20", "--num_train_epochs", "1", "--logging_strategy", "steps", "--logging_steps", "1",
            "--output_dir", str(tmp_path / calibrate), "--calibrate_bn", calibrate])
        head, tune = transfer.history
        assert (head["calibrated_batchnorm"] > 0) == (calibrate == "true") and tune["calibrated_batchnorm"] == 0
        ends[calibrate] = ([r["loss"] for r in head["log"] if "loss" in r][-1], tune["log"][0]["loss"])
    (head_end, first), (plain_head_end, plain_first) = ends["true"], ends["false"]
    assert first < head_end + 0.3
    assert plain_first > plain_head_end + 1.0


def test_a_stage_of_one_optimizer_step_trains(tmp_path):
    """Data in one batch: the warm-up (a tenth of the steps, rounded up) took the only step, at a rate of 0, and the
    base came back byte for byte while the card listed its trainable parameters."""
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "bert")
    reviews = write_reviews_csv(tmp_path / "reviews.csv", repeat=2)  # 24 rows: one batch of 32
    transfer, _ = train(TextTask, ["--model_name_or_path", str(checkpoint), "--train_file", str(reviews),
                                   "--output_dir", str(tmp_path / "out"), "--strategy", "full",
                                   "--num_train_epochs", "1"])
    before = AutoModelForSequenceClassification.from_pretrained(checkpoint).bert.encoder.layer[0]
    after = transfer.model.bert.encoder.layer[0]
    assert not torch.equal(after.attention.self.query.weight, before.attention.self.query.weight)
    assert transfer.history[-1]["log"][0]["learning_rate"] > 0
