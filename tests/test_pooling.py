"""A sentence-transformers checkpoint classifies the way it was trained to embed: its modules.json pooling."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import write_reviews_csv
from safetensors.torch import load_file
from support.families import masked_lm_checkpoint, save_text_checkpoint
from support.family_runs import check_reload
from support.hub_server import local_hub, upload  # noqa: F401 - a fixture
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hftransfer import cli, freezing, lora, pooling, zoo
from hftransfer.args import ModelArguments, parse_args
from hftransfer.modeling import load_model
from hftransfer.tasks import TextTask
from hftransfer.training import TransferRun


def _pooling_config(folder, **modes):
    (folder / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                      "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    return folder


def _pooling_of(folder) -> str | None:
    return pooling.CheckpointModules.read(str(folder)).pooling


def test_the_pooling_is_read_from_modules_json(tmp_path):
    assert _pooling_of(tmp_path) is None  # a plain encoder
    assert _pooling_of(_pooling_config(tmp_path, pooling_mode_mean_tokens=True)) == "mean"
    assert _pooling_of(_pooling_config(tmp_path, pooling_mode_cls_token=True)) == "cls"
    # the LayerNorm after the pooling layer removes the scale by which mean_sqrt_len differs from mean
    assert _pooling_of(_pooling_config(tmp_path, pooling_mode_mean_sqrt_len_tokens=True)) == "mean"
    assert _pooling_of(_pooling_config(tmp_path, pooling_mode_max_tokens=True)) == "max"
    assert _pooling_of(zoo.prepare("all-MiniLM-L6-v2")) == "mean"


def test_a_dense_layer_after_the_pooling_is_named_as_not_reproduced(tmp_path, caplog):
    """LaBSE-style: CLS pooling, then a Dense layer and Normalize. The classifier reads the pooling itself; the log
    names the Dense layer it leaves out (before, nothing said so)."""
    from hftransfer.args import ModelArguments
    from hftransfer.modeling import load_model

    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "sentence-transformers")
    modules = json.loads((checkpoint / "modules.json").read_text())
    modules += [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (checkpoint / "modules.json").write_text(json.dumps(modules))
    assert pooling.CheckpointModules.read(str(checkpoint)).after_pooling == ["2_Dense (Dense)"]
    with caplog.at_level("INFO"):
        load_model(TextTask(), ModelArguments(model_name_or_path=str(checkpoint)), ["bad", "good"])
    assert "The checkpoint's 2_Dense (Dense) after its pooling is not part of the classifier" in caplog.text
    minilm = pooling.CheckpointModules.read(str(zoo.prepare("all-MiniLM-L6-v2")))
    assert minilm.after_pooling == []  # its Normalize only


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooling")
    checkpoint = save_text_checkpoint(root / "ckpt", "sentence-transformers")
    reviews = write_reviews_csv(root / "reviews.csv")
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(root / "out"), "--head_epochs", "2", "--num_train_epochs", "1", "--disable_tqdm", "true"])
    transfer = TransferRun(run, TextTask(run.data))
    transfer.execute()
    return checkpoint, root / "out", transfer


def test_the_classifier_reads_the_mean_of_the_unpadded_tokens(trained):
    checkpoint, out, _ = trained
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.hftransfer_pooling == {"mode": "mean", "layer": 3, "pooler": "bert.pooler",
                                               "pooler_scale": pooling.POOLER_SCALE}
    assert model.config.num_hidden_layers == 4  # the checkpoint's three layers and the pooling layer
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a wonderful, moving film with a great cast", "awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch, output_hidden_states=True).hidden_states
    weights = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden[-2] * weights).sum(1) / weights.sum(1)
    expected = torch.nn.functional.layer_norm(mean, mean.shape[-1:], eps=model.config.layer_norm_eps)
    torch.testing.assert_close(hidden[-1][:, 0], expected, atol=0.02, rtol=0)
    # padding changes nothing: batched and alone agree through a plain pipeline
    classify = pipeline("text-classification", model=str(out))
    texts = ["a wonderful, moving film with a great cast", "awful"]
    batched = classify(texts, batch_size=2)
    alone = [classify(t)[0] for t in texts]
    assert [b["score"] for b in batched] == pytest.approx([a["score"] for a in alone], abs=1e-4)


def test_the_pooling_layer_never_trains_and_gets_no_adapters(trained):
    _, out, transfer = trained
    record = json.loads((out / "hftransfer_run.json").read_text())
    full = record["stages"][-1]["plan"]
    assert full["strategy"] == "full" and full["trainable"]
    assert not [n for n in full["trainable"] if n.startswith("bert.encoder.layer.3.")]
    assert any(n.startswith("bert.encoder.layer.2.") for n in full["trainable"])
    groups = {g.name: g.params for g in freezing.param_groups(transfer.model)}
    assert all(n.startswith(("bert.encoder.layer.3.", "bert.pooler.")) for n in groups["base.pooling"])
    assert not [t for t in lora.default_targets(transfer.model) if t.startswith("bert.encoder.layer.3.")]
    last_two = freezing.resolve(transfer.model, freezing.FreezePlan("fine_tune", unfreeze_last_n=2))
    assert any(n.startswith("bert.encoder.layer.1.") for n in last_two)  # the last two real layers: 1 and 2
    # asked for by name, the fixed pooling is refused (it would have stayed frozen without a word); a pattern
    # that also names the real layers trains those
    with pytest.raises(freezing.PatternError, match=r"--unfreeze 'bert.pooler.\*' names only .*base.pooling"):
        freezing.resolve(transfer.model, freezing.FreezePlan("feature_extraction", unfreeze=["bert.pooler.*"]))
    broad = freezing.resolve(transfer.model, freezing.FreezePlan("feature_extraction", unfreeze=["bert.encoder.*"]))
    assert any(n.startswith("bert.encoder.layer.2.") for n in broad) and not broad & set(groups["base.pooling"])


def test_the_freeze_report_of_the_checkpoint_pools_as_the_run_did(trained, capsys):
    checkpoint, out, _ = trained
    cli.main(["freeze-report", str(checkpoint), "--plan", str(out / "freeze_plan.json")])  # reproduces the run's plan
    printed = capsys.readouterr().out
    assert "encoder layer 3 added" in printed and "base.pooling" in printed
    with pytest.raises(SystemExit, match="do not reproduce the plan"):  # the first-token reading trains its pooler
        cli.main(["freeze-report", str(checkpoint), "--plan", str(out / "freeze_plan.json"),
                  "--checkpoint_pooling", "false"])


def test_the_head_reads_the_mean_through_a_frozen_nearly_linear_pooler_at_its_scaled_rate(trained):
    _, out, transfer = trained
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    features = torch.randn(4, model.config.hidden_size).clamp(-3, 3)  # LayerNorm'd features: unit spread
    with torch.no_grad():
        passed = model.bert.pooler(features.unsqueeze(1)) / pooling.POOLER_SCALE
    torch.testing.assert_close(passed, features, rtol=0.03, atol=1e-6)
    record = json.loads((out / "hftransfer_run.json").read_text())
    for stage in record["stages"]:
        assert not [n for n in stage["plan"]["trainable"] if n.startswith("bert.pooler.")]
    factors = freezing.lr_factors(transfer.model, freezing.FreezePlan("full"))
    assert factors["classifier.weight"] == pytest.approx(1 / pooling.POOLER_SCALE)
    assert factors["bert.encoder.layer.2.output.dense.weight"] == 1.0
    copied = copy.deepcopy(transfer.model)
    wrapped = lora.wrap(copied, transfer.run.transfer, lora.default_targets(copied))
    wrapped_factors = freezing.lr_factors(wrapped, freezing.FreezePlan("lora"))
    adapters = [n for n in wrapped_factors if "lora_A" in n]
    assert adapters and all(wrapped_factors[n] == 1.0 for n in adapters)
    head = [n for n, p in wrapped.named_parameters() if p.requires_grad and "classifier" in n]
    assert head and all(wrapped_factors[n] == pytest.approx(1 / pooling.POOLER_SCALE) for n in head)


def test_the_card_says_how_the_model_pools(trained):
    _, out, _ = trained
    assert "Pooling: mean of the tokens" in (out / "README.md").read_text()


def test_a_layer_kind_that_cannot_mean_pool_keeps_the_classifier_reading(tmp_path, caplog):
    """MPNet adds one relative position bias to every layer's attention, so no layer of it attends uniformly."""
    checkpoint = _pooling_config(save_text_checkpoint(tmp_path / "ckpt", "mpnet"), pooling_mode_mean_tokens=True)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    layers = model.config.num_hidden_layers
    message = pooling.adopt(model, _pooling_of(checkpoint))
    assert "cannot be made into a mean-pooling layer" in message
    assert model.config.num_hidden_layers == layers and len(model.mpnet.encoder.layer) == layers
    assert getattr(model.config, pooling.CONFIG_KEY, None) is None


def test_checkpoint_pooling_false_keeps_the_classifier_reading(tmp_path):
    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "sentence-transformers")
    reviews = write_reviews_csv(tmp_path / "reviews.csv", repeat=1)
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(tmp_path / "out"), "--strategy", "feature_extraction", "--head_epochs", "1",
                      "--checkpoint_pooling", "false", "--disable_tqdm", "true"])
    TransferRun(run, TextTask(run.data)).execute()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and "hftransfer_pooling" not in config


def test_a_masked_lm_checkpoint_reads_the_first_token_through_a_fixed_pooler_not_a_random_one(tmp_path, caplog,
                                                                                             capsys):
    """Before, its pooler started random and, as the top of the frozen base, stayed random in the head stage (the
    load report saying so was hidden). Now it is the fixed pass-through, in the run and in the freeze report."""
    checkpoint = masked_lm_checkpoint(tmp_path / "mlm")
    assert not any("pooler" in k for k in load_file(checkpoint / "model.safetensors"))
    with caplog.at_level("INFO"):
        model, _, _ = load_model(TextTask(), ModelArguments(model_name_or_path=str(checkpoint)), ["bad", "good"])
    assert "the checkpoint has no weights for bert.pooler" in caplog.text
    assert "initialised at random" not in caplog.text  # the pooler was the only weight missing from the base
    dense = model.bert.pooler.dense
    assert torch.equal(dense.weight, pooling.POOLER_SCALE * torch.eye(32)) and not dense.bias.any()
    assert model.config.hftransfer_pooling["pooler_untrained"]
    assert "bert.pooler.dense.weight" not in freezing.resolve(model, freezing.FreezePlan("full"))  # never trains
    cli.main(["freeze-report", str(checkpoint)])
    assert "the checkpoint has no weights for bert.pooler" in capsys.readouterr().out
    reviews = write_reviews_csv(tmp_path / "reviews.csv", repeat=1)
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(tmp_path / "out"), "--strategy", "feature_extraction", "--head_epochs", "1",
                      "--disable_tqdm", "true"])
    transfer = TransferRun(run, TextTask(run.data))
    transfer.execute()
    assert "the checkpoint had no weights for the pooler" in (tmp_path / "out" / "README.md").read_text()
    check_reload(transfer, tmp_path / "out", AutoModelForSequenceClassification, "text-classification")

    caplog.clear()
    with caplog.at_level("INFO"):
        model, _, _ = load_model(TextTask(), ModelArguments(model_name_or_path=str(checkpoint),
                                                            checkpoint_pooling=False), ["bad", "good"])
    assert "Not in the checkpoint, so initialised at random by this run: bert.pooler.dense." in caplog.text
    assert not torch.equal(model.bert.pooler.dense.weight, pooling.POOLER_SCALE * torch.eye(32))


def test_albert_s_pooler_a_single_linear_layer_is_fixed_the_same_way(tmp_path):
    """ALBERT's pooler is the dense layer itself (BERT's holds one); a masked-LM ALBERT has no weights for it."""
    import transformers as tf

    sizes = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "embedding_size": 16}
    tf.AlbertForMaskedLM(tf.AlbertConfig(**sizes)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2")).save_pretrained(tmp_path)
    model, _, _ = load_model(TextTask(), ModelArguments(model_name_or_path=str(tmp_path)), ["bad", "good"])
    assert torch.equal(model.albert.pooler.weight, pooling.POOLER_SCALE * torch.eye(32))
    assert model.config.hftransfer_pooling["pooler"] == "albert.pooler"


def test_weights_a_checkpoint_lacks_inside_the_base_are_named(tmp_path, caplog):
    """transformers' load report is replaced by the new head's line; what it says of the base is said still."""
    checkpoint = masked_lm_checkpoint(tmp_path / "mlm", drop="encoder.layer.")
    with caplog.at_level("INFO"):
        load_model(TextTask(), ModelArguments(model_name_or_path=str(checkpoint)), ["bad", "good"])
    assert "initialised at random by this run: bert.encoder.layer.0.attention.output.LayerNorm" in caplog.text
    assert " and 16 more. They train only in the stages that train the base" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        load_model(TextTask(), ModelArguments(model_name_or_path=str(save_text_checkpoint(tmp_path / "bert", "bert"))),
                   ["bad", "good"])
    assert "initialised at random" not in caplog.text and "New head: classifier" in caplog.text


@pytest.mark.usefixtures("local_hub")
def test_from_hub_ids_the_checkpoint_pools_and_trains_as_its_local_folder_does(tmp_path):
    """The real Hub path (`from_pretrained(repo_id)`, the pooling files through `hf_hub_download`, `load_dataset(
    repo_id)`), against the local endpoint that speaks the Hub's API: the same pooling and the same trained weights
    as the same run from local folders."""
    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "sentence-transformers")
    data = tmp_path / "data"
    data.mkdir()
    write_reviews_csv(data / "train.csv")
    write_reviews_csv(data / "test.csv", repeat=1)
    common = ["--strategy", "full", "--num_train_epochs", "1", "--seed", "3", "--disable_tqdm", "true"]
    runs = {"hub": ["--model_name_or_path", upload(checkpoint, "tiny-st"), "--dataset_name",
                    upload(data, "reviews", "dataset"), "--cache_dir", str(tmp_path / "hf")],
            "local": ["--model_name_or_path", str(checkpoint), "--train_file", str(data / "train.csv"),
                      "--validation_file", str(data / "test.csv")]}
    for name, flags in runs.items():
        run = parse_args([*flags, "--output_dir", str(tmp_path / name), *common])
        TransferRun(run, TextTask(run.data)).execute()
    configs = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in runs}
    assert configs["hub"]["hftransfer_pooling"]["mode"] == "mean"
    assert configs["hub"]["hftransfer_pooling"] == configs["local"]["hftransfer_pooling"]
    results = {name: json.loads((tmp_path / name / "all_results.json").read_text()) for name in runs}
    assert (results["hub"]["train_samples"], results["hub"]["eval_samples"]) == (48, 12)
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in runs}
    assert weights["hub"].keys() == weights["local"].keys()
    assert all(torch.allclose(weights["hub"][k], weights["local"][k], atol=1e-6) for k in weights["hub"])


def test_a_checkpoint_in_the_sentence_transformers_1_layout_trains_as_its_flat_copy(tmp_path, caplog):
    """sentence-transformers 1.x saved the encoder in `0_Transformer/` (named by modules.json), with nothing at the top
    for `from_pretrained` to read: the run reads it there, pools as the top's `1_Pooling` says, and trains the same
    weights as from the same checkpoint in today's flat layout."""
    import shutil

    flat = save_text_checkpoint(tmp_path / "flat", "sentence-transformers")
    old = tmp_path / "old"
    shutil.copytree(flat, old)
    (old / "0_Transformer").mkdir()
    for file in [f for f in old.iterdir() if f.is_file() and f.name != "modules.json"]:
        file.rename(old / "0_Transformer" / file.name)
    modules = json.loads((old / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (old / "modules.json").write_text(json.dumps(modules))
    reviews = write_reviews_csv(tmp_path / "reviews.csv")
    for name in ("flat", "old"):
        run = parse_args(["--model_name_or_path", str(tmp_path / name), "--train_file", str(reviews), "--output_dir",
                          str(tmp_path / f"out-{name}"), "--strategy", "full", "--num_train_epochs", "1", "--seed", "3",
                          "--disable_tqdm", "true"])
        with caplog.at_level("INFO"):
            TransferRun(run, TextTask(run.data)).execute()
    assert "the encoder is read from 0_Transformer/" in caplog.text
    weights = {name: load_file(tmp_path / f"out-{name}" / "model.safetensors") for name in ("flat", "old")}
    assert weights["old"].keys() == weights["flat"].keys()
    assert all(torch.equal(weights["old"][k], weights["flat"][k]) for k in weights["old"])
    saved = json.loads((tmp_path / "out-old" / "config.json").read_text())
    assert saved["hftransfer_pooling"]["mode"] == "mean"
    classify = pipeline("text-classification", model=str(tmp_path / "out-old"))
    assert classify("a fine film")[0]["label"] in {"good", "bad"}
    modules[0].update(path="0_BERT", type="sentence_transformers.models.BERT")  # as 0.2 named it
    (old / "modules.json").write_text(json.dumps(modules))
    assert pooling.CheckpointModules.read(str(old)).encoder_subfolder == "0_BERT"


@pytest.mark.parametrize("mode, expected", [
    ("pooling_mode_lasttoken", "the checkpoint pools its last token, as Qwen2ForSequenceClassification reads it"),
    ("pooling_mode_mean_tokens", "which Qwen2ForSequenceClassification cannot express as a layer; the classifier "
                                 "keeps its own reading of the last real token")])
def test_a_decoder_embedding_checkpoint_is_told_apart_by_its_last_token_reading(mode, expected, tmp_path):
    """Decoder embedding models (Qwen3-Embedding, gte-Qwen2) pool their last token, which is what a decoder's
    `score` head reads: nothing to add, and the log must not say the classifier reads a first token."""
    from support.families import save_decoder_checkpoint

    checkpoint = _pooling_config(save_decoder_checkpoint(tmp_path / "ckpt", "qwen2"), **{mode: True})
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    layers = model.config.num_hidden_layers
    assert expected in pooling.adopt(model, _pooling_of(checkpoint))
    assert model.config.num_hidden_layers == layers and getattr(model.config, pooling.CONFIG_KEY, None) is None


def test_the_lora_adapter_gives_the_merged_models_logits_on_the_base_with_its_pooling(tmp_path):
    """README's "one base, many adapters" snippet: the fixed pooling layer is rebuilt on the base, not saved."""
    from peft import PeftModel

    checkpoint = save_text_checkpoint(tmp_path / "ckpt", "sentence-transformers")
    reviews = write_reviews_csv(tmp_path / "r.csv")
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(tmp_path / "out"), "--strategy", "lora", "--head_epochs", "1", "--num_train_epochs", "2",
                      "--disable_tqdm", "true"])
    TransferRun(run, TextTask(run.data)).execute()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    batch = tokenizer(["a wonderful, moving film", "awful"], padding=True, return_tensors="pt")
    logits = {}
    for adopted in (True, False):
        base = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2,
                                                                  ignore_mismatched_sizes=True)
        if adopted:
            pooling.adopt(base, _pooling_of(checkpoint))
        model = PeftModel.from_pretrained(base, str(tmp_path / "out" / "lora_adapter")).eval()
        with torch.no_grad():
            logits[adopted] = model(**batch).logits
    with torch.no_grad():
        merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()(**batch).logits
    torch.testing.assert_close(logits[True], merged, atol=1e-5, rtol=0)
    assert not torch.allclose(logits[False], merged, atol=1e-3)
