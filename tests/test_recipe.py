"""End to end: real training runs through `accelerate launch`, and the saved folders reload."""

import json

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from support.launch import accelerate_launch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hftransfer.args import parse_args
from hftransfer.tasks import ImageTask
from hftransfer.training import TransferRun


def predict(folder, images):
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    with torch.no_grad():
        return model(**processor([i.convert("RGB") for i in images], return_tensors="pt")).logits.argmax(-1).numpy()


@pytest.mark.long
def test_embedded_default_trains_through_accelerate_and_reloads(tmp_path):
    out = tmp_path / "out"
    done = accelerate_launch(["--output_dir", str(out), "--max_train_samples", "600", "--max_eval_samples", "200",
                              "--num_train_epochs", "1"])
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]
    assert "train_runtime" in json.loads((out / "train_results.json").read_text())
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "freeze_plan.json"} <= files
    assert not any(f.endswith((".bin", ".pth")) for f in files - {"training_args.bin"})
    assert "New head: classifier" in done.stdout and "strategy=full" in done.stdout  # reports were printed

    from hftransfer.data import prepare_splits

    run = parse_args(["--max_eval_samples", "200", "--output_dir", str(out)])
    validation = prepare_splits(run.data, ImageTask(run.data), 42)[0]["validation"]
    predictions = predict(out, validation["image"])
    reloaded_accuracy = float(np.mean(predictions == np.array(validation["label"])))
    assert reloaded_accuracy == pytest.approx(results["eval_accuracy"], abs=0.02)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "T-shirt/top" and config["label2id"]["Ankle boot"] == 9


def _run(args):
    run = parse_args(args)
    transfer = TransferRun(run, ImageTask(run.data))
    return transfer, transfer.execute()


def test_bad_files_are_skipped_and_the_run_goes_on(tmp_path, image_folders):
    train, validation = image_folders
    (train / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (train / "hstripes" / "readme.txt").write_text("hello")
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    _, metrics = _run(["--model_name_or_path", str(checkpoint), "--train_dir", str(train), "--validation_dir",
                       str(validation), "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1",
                       "--disable_tqdm", "true"])
    assert metrics["skipped_examples"] == 2
    record = json.loads((tmp_path / "out" / "hftransfer_run.json").read_text())
    assert sum(record["data"]["skipped"]["train"].values()) == 2


def test_no_file_in_the_output_holds_the_hub_token(tmp_path, image_folders):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "resnet")
    out = tmp_path / "out"
    _run(["--model_name_or_path", str(checkpoint), "--train_dir", str(image_folders[0]), "--validation_dir",
          str(image_folders[1]), "--output_dir", str(out), "--num_train_epochs", "1", "--hub_token", "hf_SECRET42",
          "--disable_tqdm", "true"])
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    assert not [p.name for p in written if b"hf_SECRET42" in p.read_bytes()]


def test_tables_of_image_bytes_and_of_relative_paths_train(tmp_path, image_folders):
    """Training decodes a Parquet column of image bytes (it handed them to PIL as a file name) and a CSV's paths
    relative to its own folder (the run starts in the repository, not there)."""
    import pandas as pd

    train, validation = image_folders
    files = sorted(train.rglob("*.png"))
    pd.DataFrame({"image": [f.read_bytes() for f in files], "label": [f.parent.name for f in files]}).to_parquet(
        tmp_path / "train.parquet")
    rows = [f"{f.relative_to(tmp_path).as_posix()},{f.parent.name}\n" for f in sorted(validation.rglob("*.png"))]
    (tmp_path / "validation.csv").write_text("image,label\n" + "".join(rows))
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "vit")
    _, metrics = _run(["--model_name_or_path", str(checkpoint), "--train_file", str(tmp_path / "train.parquet"),
                       "--validation_file", str(tmp_path / "validation.csv"), "--output_dir", str(tmp_path / "out"),
                       "--num_train_epochs", "1", "--disable_tqdm", "true"])
    assert metrics["skipped_examples"] == 0 and metrics["eval_samples"] == 12
