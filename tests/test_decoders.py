"""Decoder classifiers (a Qwen2 layout, whose tokenizer has no padding token, as decoder LMs ship)."""

import json

import pytest
from conftest import save_tiny_decoder_checkpoint, write_reviews_csv
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hftransfer.args import parse_args
from hftransfer.tasks import TextTask
from hftransfer.training import TransferRun


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    return save_tiny_decoder_checkpoint(root / "ckpt"), write_reviews_csv(root / "reviews.csv")


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
