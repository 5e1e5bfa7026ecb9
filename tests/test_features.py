"""The feature cache where training runs: one precision for every split, batches indexed whole from the matrix."""

import copy
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hftransfer import features
from hftransfer.args import parse_args
from hftransfer.tasks import ImageTask
from hftransfer.training import TransferRun


def extract_again(run: TransferRun, split: str, model, autocast: bool) -> torch.Tensor:
    dataset = run.train_raw if split == "train" else run.eval_raw
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=run.collator)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with context:
        return features.extract(model, loader, run.store.layout(model), split)[0]


def test_bf16_on_the_cpu_extracts_every_split_in_bf16(image_folders, tmp_path):
    """Validation features extracted after the head stage (when Accelerate has wrapped the model's forward in its
    autocast) are computed as the training features were, before it: both in the run's bf16."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    run = parse_args(["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]),
                      "--validation_dir", str(image_folders[1]), "--output_dir", str(tmp_path / "out"),
                      "--strategy", "feature_extraction", "--head_epochs", "2", "--bf16", "true", "--use_cpu", "true",
                      "--disable_tqdm", "true"])
    transfer = TransferRun(run, ImageTask(run.data))
    results = transfer.execute()
    assert results["eval_samples"] == 12 and transfer.history[0]["metrics"]["cached_features"]
    plain = copy.deepcopy(transfer.model)
    vars(plain).pop("forward", None)  # without the autocast wrapper Accelerate left on the forward
    for split in ("train", "validation"):
        cached = transfer.store.features(transfer.model, split).features.float()
        in_bf16, in_fp32 = (extract_again(transfer, split, plain, autocast) for autocast in (True, False))
        assert torch.allclose(cached, in_bf16, atol=1e-6), split
        assert not torch.allclose(cached, in_fp32, atol=1e-4), split  # bf16 rounding is visible


def test_feature_batches_are_one_indexing_of_the_matrix():
    matrix, labels = torch.randn(10, 4), torch.arange(10)
    dataset = features.FeatureDataset(matrix, labels, "pixel_values")
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=features.collate_batch,
                                         generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert torch.equal(batch["pixel_values"], matrix[batch["labels"]])  # rows and labels stay paired
        seen += batch["labels"].tolist()
    assert sorted(seen) == list(range(10))


def run_image(args):
    run = parse_args([*args, "--disable_tqdm", "true"])
    transfer = TransferRun(run, ImageTask(run.data))
    return transfer, transfer.execute()


def predict(folder, images):
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    with torch.no_grad():
        return model(**processor([i.convert("RGB") for i in images], return_tensors="pt")).logits.argmax(-1).numpy()


def test_cache_trained_head_equals_the_saved_full_model(tmp_path, image_folders, caplog):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    common = ["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]), "--validation_dir",
              str(image_folders[1]), "--strategy", "feature_extraction", "--head_epochs", "3", "--disable_tqdm", "true"]
    transfer, metrics = run_image([*common, "--output_dir", str(tmp_path / "a")])
    assert transfer.history[0]["metrics"]["cached_features"]
    validation = transfer.splits["validation"]
    reloaded = predict(tmp_path / "a", validation["image"])
    assert metrics["eval_accuracy"] == pytest.approx(float(np.mean(reloaded == np.array(validation["label"]))))
    card = (tmp_path / "a" / "README.md").read_text()  # the run's strategy, not its one stage's name ("head")
    assert "- feature_extraction\n" in card and "(strategy `feature_extraction`)" in card
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        run_image([*common, "--output_dir", str(tmp_path / "b"), "--head_learning_rate", "0.01"])
    assert caplog.text.count("reusing cached features") == 2  # train and validation: no second pass of the base


def test_staged_rerun_with_other_head_settings_reuses_its_calibrated_features(tmp_path, image_folders, caplog):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "mobilenet_v2")
    common = ["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]), "--validation_dir",
              str(image_folders[1]), "--head_epochs", "2", "--num_train_epochs", "1", "--calibrate_bn", "true"]
    first, _ = run_image([*common, "--output_dir", str(tmp_path / "a")])
    assert first.history[0]["calibrated_batchnorm"] > 0
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        again, _ = run_image([*common, "--output_dir", str(tmp_path / "b"), "--head_learning_rate", "0.01"])
    assert "reusing cached features" in caplog.text  # the same data gives the same statistics, so the same key
    assert again.history[0]["calibrated_batchnorm"] == first.history[0]["calibrated_batchnorm"]


@pytest.mark.parametrize("family, first_token", [("vit", True), ("dinov2", False)])
def test_a_vit_caches_only_the_token_its_head_reads(tmp_path, image_folders, family, first_token):
    """ViT's classifier reads the CLS token of its 197 x 768 sequence (ViT-base at 224 px): the cache stores that
    token alone (the whole sequence made 1.2 GB for 2,048 images, and the data-quality check's components of it
    asked for 92 GB). Dinov2's classifier also averages the patch tokens: its sequence stays whole."""
    from support.families import save_image_checkpoint

    checkpoint = save_image_checkpoint(tmp_path / "ckpt", family)
    transfer, _ = run_image(["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]),
                             "--validation_dir", str(image_folders[1]), "--strategy", "feature_extraction",
                             "--head_epochs", "1", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "out")])
    assert transfer.history[0]["metrics"]["cached_features"]
    layout = transfer.store.layout(transfer.model)
    hidden = transfer.model.config.hidden_size
    assert (layout.first_token == ("last_hidden_state",)) == first_token
    width = transfer.store.features(transfer.model, "train").features.shape[1]
    assert (width == hidden) == first_token and width >= hidden


def test_the_cache_key_tells_tokenizers_apart_by_how_they_frame_a_pair(tmp_path):
    """The tokenizer's repr leaves out its post-processor, which puts special tokens around a text or between a
    pair's texts (a run may set a pair's separator): features cached with one framing must not be read for another."""
    from support.families import decoder_tokenizer
    from tokenizers import processors

    plain, separated = decoder_tokenizer(), decoder_tokenizer()
    separated.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A", pair="$A <|endoftext|> $B:1", special_tokens=[("<|endoftext|>", separated.eos_token_id)])
    assert repr(plain) == repr(separated)
    layout = features.Layout(output_class=dict, fields=["x"], read={"x": (4,)})
    def key(tokenizer):
        return features.cache_key("m", "main", tokenizer, "data", layout, "", None, {})

    assert key(plain) != key(separated)
    assert key(plain) == key(decoder_tokenizer())


def test_stored_features_the_base_no_longer_computes_are_extracted_again(tmp_path, caplog):
    """A masked-LM BERT read through its own pooler (`--checkpoint_pooling false`) starts the pooler at random, from
    each run's seed: two seeds give the cache one key (same checkpoint files, data and processor), not one base.
    Before, the second seed's head trained on the first seed's features and its saved model, whose base computes
    others, scored at chance where the run reported 0.66 (MiniLM without its pooler, 2,000 reviews)."""
    from conftest import write_reviews_csv
    from support.families import masked_lm_checkpoint

    from hftransfer.tasks import TextTask

    checkpoint = masked_lm_checkpoint(tmp_path / "mlm")
    reviews = write_reviews_csv(tmp_path / "reviews.csv", repeat=2)
    held_out = write_reviews_csv(tmp_path / "held_out.csv", repeat=1)  # not split off by seed: the same data

    def run(seed: int, out: str) -> TransferRun:
        args = parse_args(["--model_name_or_path", str(checkpoint), "--train_file", str(reviews), "--validation_file",
                           str(held_out), "--output_dir", str(tmp_path / out), "--strategy", "feature_extraction",
                           "--checkpoint_pooling", "false", "--seed", str(seed), "--head_epochs", "1",
                           "--disable_tqdm", "true"])
        transfer = TransferRun(args, TextTask(args.data))
        transfer.execute()
        return transfer

    run(1, "a")
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        second = run(2, "b")
    assert "The cached features of train differ from what the base computes now" in caplog.text
    assert "reusing cached features" not in caplog.text
    store, model = second.store, second.model
    rows = store.row_order("train")[:8]
    batch = store.collator([store.inputs["train"][i] for i in rows])
    with torch.no_grad():
        now = features.base_features(model.eval(), {k: v for k, v in batch.items() if k != "labels"},
                                     store.layout(model))
    assert torch.allclose(store.features(model, "train").features[:8], now, atol=1e-5)  # trained on its own base
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        run(2, "c")  # the same seed: what the second run stored is reused
    assert caplog.text.count("reusing cached features") == 2 and "differ from" not in caplog.text
    stored = re.search(r"Features \(train\): reusing cached features (\S+)", caplog.text).group(1)
    features.store(Path(stored), torch.zeros(len(store.inputs["train"]), 5), store.features(model, "train").labels)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hftransfer"):
        run(2, "d")  # a file of another width under the same key (a Hub model re-pushed with another hidden size)
    assert "differ from what the base computes now (5 numbers an example stored, 32 computed)" in caplog.text
