"""Decoder classifiers (a Qwen2 layout, whose tokenizer has no padding token, as decoder LMs ship)."""

import csv
import json

import pytest
import torch
from conftest import save_tiny_text_checkpoint, write_reviews_csv
from support.families import save_decoder_checkpoint
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hftransfer.args import parse_args
from hftransfer.tasks import TextTask
from hftransfer.training import TransferRun


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    return save_decoder_checkpoint(root / "ckpt", "qwen2"), write_reviews_csv(root / "reviews.csv")


@pytest.mark.parametrize("strategy", ["feature_extraction", "staged"])
def test_a_decoder_without_a_pad_token_trains_in_batches_and_reloads(decoder, strategy, tmp_path):
    checkpoint, reviews = decoder
    assert AutoTokenizer.from_pretrained(checkpoint).pad_token is None
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(out), "--strategy", strategy, "--head_epochs", "2", "--num_train_epochs", "1",
                      "--per_device_train_batch_size", "8", "--disable_tqdm", "true"])
    TransferRun(run, TextTask(run.data)).execute()
    record = json.loads((out / "hftransfer_run.json").read_text())
    assert all(stage["metrics"]["trainable_parameters"] > 0 for stage in record["stages"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == tokenizer.pad_token_id
    texts = ["a wonderful, moving film", "awful"]  # different lengths: one padded
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    batched = classify(texts, batch_size=2)
    alone = [classify(t)[0] for t in texts]
    assert [b["label"] for b in batched] == [a["label"] for a in alone]
    assert [b["score"] for b in batched] == pytest.approx([a["score"] for a in alone], abs=1e-5)
    if strategy == "staged":  # one stage: the head-only stage left out, which the record and the card say
        assert [stage["stage"] for stage in record["stages"]] == ["staged"]
        assert record["chosen"]["head_stage"]["value"] is False
        assert "here in one stage, without the head-only stage (decoder classifier" in (out / "README.md").read_text()


def test_the_tokenizers_padding_id_wins_over_a_different_one_in_the_config(tmp_path, caplog):
    """A config naming a padding id the tokenizer does not pad with (here a real token's) made the classifier read
    padding as the last real token of every padded example, in training and in batched predictions."""
    checkpoint = save_decoder_checkpoint(tmp_path / "ckpt", "llama")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "pad_token_id": 5}))
    out = tmp_path / "out"
    reviews = write_reviews_csv(tmp_path / "r.csv")
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews),
                      "--output_dir", str(out), "--num_train_epochs", "1", "--disable_tqdm", "true"])
    with caplog.at_level("WARNING"):
        TransferRun(run, TextTask(run.data)).execute()
    assert "config pads with id 5, its tokenizer with" in caplog.text
    classify = pipeline("text-classification", model=str(out))
    assert classify.model.config.pad_token_id == classify.tokenizer.pad_token_id != 5
    texts = ["a wonderful, moving film", "awful"]
    batched, alone = classify(texts, batch_size=2), [classify(t)[0] for t in texts]
    assert [b["score"] for b in batched] == pytest.approx([a["score"] for a in alone], abs=1e-5)


def test_decoder_heads_train_without_the_cache_and_say_why(decoder, tmp_path, caplog):
    checkpoint, reviews = decoder
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(tmp_path / "out"), "--strategy", "feature_extraction", "--head_epochs", "1",
                      "--disable_tqdm", "true"])
    with caplog.at_level("WARNING"):
        TransferRun(run, TextTask(run.data)).execute()
    # its head finds the last real token from input_ids, which cached features do not carry
    assert ("Cached features do not reproduce Qwen2ForSequenceClassification's own outputs: training on the frozen "
            "base without a cache") in caplog.text
    record = json.loads((tmp_path / "out" / "hftransfer_run.json").read_text())
    assert record["stages"][0]["metrics"]["cached_features"] is False


def test_deberta_caches_the_first_token_its_pooler_reads_over_batches_of_any_length(tmp_path):
    """DeBERTa-v2/v3's ContextPooler reads the hidden states itself: the cache stores their first token, so batches
    padded to different lengths concatenate (they crashed the cache before), and the cached head trains."""
    checkpoint = save_tiny_text_checkpoint(tmp_path / "ckpt", "deberta-v2")
    long_texts = [f'"{"a long and winding review that goes on and on " * 6}",good']
    reviews = write_reviews_csv(tmp_path / "reviews.csv", extra_rows=long_texts * 4)
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(out), "--strategy", "feature_extraction", "--head_epochs", "2",
                      "--per_device_eval_batch_size", "4", "--disable_tqdm", "true"])
    transfer = TransferRun(run, TextTask(run.data))
    transfer.execute()
    assert transfer.store.layout(transfer.model).first_token == ("last_hidden_state",)
    record = json.loads((out / "hftransfer_run.json").read_text())
    assert record["stages"][0]["metrics"]["cached_features"] is True


def test_a_decoder_trains_lora_with_its_score_head_by_default(decoder, tmp_path, caplog):
    """One stage: adapters and the score head together (a head-only stage could not use the cache). No stage runs
    on a frozen base, so no warning says one does; the data check names why it skipped its label-issue pass."""
    from safetensors.torch import load_file

    checkpoint, reviews = decoder
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--output_dir",
                      str(out), "--num_train_epochs", "1", "--disable_tqdm", "true"])
    with caplog.at_level("WARNING"):
        TransferRun(run, TextTask(run.data)).execute()
    assert "without a cache" not in caplog.text
    quality = json.loads((out / "data_quality.json").read_text())
    assert any("do not reproduce Qwen2ForSequenceClassification" in skip for skip in quality["summary"]["skipped"])
    stages = json.loads((out / "hftransfer_run.json").read_text())["stages"]
    assert [s["plan"]["strategy"] for s in stages] == ["lora"]
    assert stages[0]["plan"]["lora"]["target_modules"] and stages[0]["metrics"]["trainable_parameters"] > 0
    adapter = load_file(out / "lora_adapter" / "adapter_model.safetensors")
    score = [k for k in adapter if "score" in k and k.endswith("weight")]
    assert score, "the score head is trained with the adapters and saved with them"
    merged = AutoModelForSequenceClassification.from_pretrained(out).score.weight
    assert torch.equal(merged.detach(), adapter[score[0]])


def test_a_decoder_reads_a_sentence_pair_with_a_separator_its_saved_tokenizer_keeps(tmp_path):
    """Decoder LMs' tokenizers join a pair's texts with nothing between them, so the model could not tell where the
    first ends. The run puts the end-of-text token between them, and the saved tokenizer (what `pipeline` and
    `predict` load) separates a pair the same way, so the saved folder gives the run's own predictions."""
    from conftest import pair_rows

    from hftransfer.outputs import OutputFolder
    from hftransfer.predict import predict

    checkpoint = save_decoder_checkpoint(tmp_path / "ckpt", "qwen2")
    plain = AutoTokenizer.from_pretrained(checkpoint)
    pieces = [plain(text, add_special_tokens=False)["input_ids"] for text in ("a fine film", "it was good")]
    assert plain("a fine film", "it was good")["input_ids"] == pieces[0] + pieces[1]  # as Qwen2's and GPT-2's do
    rows = pair_rows()
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(data), "--validation_file",
                      str(data), "--text_column_names", "premise,hypothesis", "--output_dir", str(out),
                      "--num_train_epochs", "2", "--disable_tqdm", "true", "--check_data", "false"])
    TransferRun(run, TextTask(run.data)).execute()
    record = json.loads((out / "hftransfer_run.json").read_text())
    assert record["chosen"]["pair_separator"]["value"] == "<|endoftext|>"
    saved = AutoTokenizer.from_pretrained(out)
    assert saved("a fine film", "it was good")["input_ids"] == pieces[0] + [saved.eos_token_id] + pieces[1]
    summary = predict(str(out), [str(data)], tmp_path / "predicted.csv", progress=False)
    assert summary.correct / len(rows) == pytest.approx(OutputFolder(out).results["eval_accuracy"])
    with (tmp_path / "predicted.csv").open() as handle:
        predicted = list(csv.DictReader(handle))
    classify = pipeline("text-classification", model=str(out))
    answers = classify([{"text": r["premise"], "text_pair": r["hypothesis"]} for r in rows])
    assert [a["label"] for a in answers] == [p["label"] for p in predicted]
    assert [a["score"] for a in answers] == pytest.approx([float(p["score"]) for p in predicted], abs=1e-5)


def test_a_joined_pair_that_cannot_get_a_separator_is_said_and_still_encodes(caplog):
    """A tokenizer whose own template adds a special token but none between the texts (`<bos> $A $B`) cannot take a
    second template (tokenizers panics on every pair), and one with no separator or end-of-text token has nothing to
    put there: both keep their encoding, and the run's record and log say the model reads each pair as one text."""
    from support.families import decoder_tokenizer
    from tokenizers import processors

    from hftransfer.choices import Choices
    from hftransfer.tasks import _separate_pairs

    framed = decoder_tokenizer()
    framed.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B:1", special_tokens=[("<|endoftext|>", 0)])
    bare = decoder_tokenizer()
    bare.eos_token = None
    for tokenizer, problem in ((framed, "adds special tokens of its own"), (bare, "no separator or end-of-text")):
        before, choices = tokenizer("a fine film", "it was good")["input_ids"], Choices()
        with caplog.at_level("WARNING"):
            _separate_pairs(tokenizer, choices)
        assert tokenizer("a fine film", "it was good")["input_ids"] == before
        assert choices.made["pair_separator"]["value"] is None and problem in choices.made["pair_separator"]["reason"]
        assert "the model reads each pair as one text" in caplog.text
