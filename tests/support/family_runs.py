"""Quick training runs and the checks each architecture row makes on them (test_architectures, test_timm)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import pipeline

from hftransfer import saving
from hftransfer.args import parse_args
from hftransfer.tasks import _open_image
from hftransfer.training import TransferRun

from .wider_families import PADDING_DEPENDENT

QUICK = ["--head_epochs", "1", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
         "--disable_tqdm", "true"]


@pytest.fixture(autouse=True)
def no_report(monkeypatch):
    """The report (plots, per-class tables) is tested on its own; here it would be a second or more of every run.
    Autouse in each test file that imports it."""
    monkeypatch.setattr(saving, "_write_report", lambda *args, **kwargs: None)


def train_quick(task_class, checkpoint, data_flags, out, *flags) -> TransferRun:
    run = parse_args(["--model_name_or_path", str(checkpoint), *data_flags, "--output_dir", str(out), *QUICK, *flags])
    transfer = TransferRun(run, task_class(run.data))
    transfer.execute()
    return transfer


def check_stages(out, expected_cache: bool | None, log: str = "") -> list[dict]:
    """Every stage trained parameters; the first used the cache as expected (None: the cache, or the fallback
    announced in `log` where the cache could not reproduce the model's own logits, as BEiT's at a new size, where
    the run has a head stage to use it)."""
    stages = json.loads((out / "hftransfer_run.json").read_text())["stages"]
    assert all(stage["metrics"]["trainable_parameters"] > 0 for stage in stages)
    cached = stages[0]["metrics"]["cached_features"]
    if expected_cache is None and stages[0]["kind"] != "head":
        assert not cached  # no stage on the frozen base (XLNet reads its last token, as decoders do): nothing to say
    elif expected_cache is None:
        assert cached or "without a cache" in log
    else:
        assert cached is expected_cache
    return stages


def check_reload(transfer: TransferRun, out, auto_class, task: str) -> None:
    """The folder loads with the Auto class, and a pipeline's label and score on a validation example are the
    trained model's own on the run's preprocessing of it."""
    assert type(auto_class.from_pretrained(out)).__name__ == type(transfer.model).__name__
    row = transfer.splits["validation"][0]
    raw = _open_image(row["image"]).convert("RGB") if "image" in row else row["text"]
    batch = transfer.collator([transfer.eval_raw[0], transfer.eval_raw[-1]])
    model = transfer.model.eval()
    with torch.no_grad():
        both = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    # a model that gives every input the same logits (activations that vanish in a random network) would pass the
    # comparison below whatever the pipeline's preprocessing did
    assert not torch.allclose(both[0], both[1], atol=1e-6), "the model's logits do not depend on its input"
    probabilities = both[0].softmax(-1)
    if model.config.model_type in PADDING_DEPENDENT:  # the pipeline reads the text alone, unpadded
        with torch.no_grad():
            probabilities = model(**transfer.processor(raw, return_tensors="pt")).logits[0].softmax(-1)
    top = model.config.id2label[int(probabilities.argmax())]
    predicted = pipeline(task, model=str(out))(raw, top_k=1)[0]
    assert predicted["label"] == top
    assert predicted["score"] == pytest.approx(float(probabilities.max()), abs=1e-4)
