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

# two examples' scores at least this far apart: the tolerance below is then at least 5e-6, over three times the
# largest gap between a pipeline and its run measured (1.5e-6, LeViT's)
MIN_SPREAD = 5e-5
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
    """The folder loads with the Auto class, and a pipeline's scores of every label on a validation example are the
    trained model's own on the run's preprocessing of it."""
    assert type(auto_class.from_pretrained(out)).__name__ == type(transfer.model).__name__
    row = transfer.splits["validation"][0]
    raw = _open_image(row["image"]).convert("RGB") if "image" in row else row["text"]
    batch = transfer.collator([transfer.eval_raw[0], transfer.eval_raw[-1]])
    model = transfer.model.eval()
    with torch.no_grad():
        both = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.softmax(-1)
    # The pipeline's scores must be far closer to this example's than another example's are: a tolerance fixed
    # apart from that spread let the check pass whatever the pipeline's preprocessing did where a random network's
    # scores barely move with its input (a masked-LM BERT's two reviews: 6e-6 apart, under the 1e-4 it allowed).
    # The sweep's 211 checks: pipelines within 1.5e-6 of their runs' scores, two examples 2.7e-4 or more apart.
    spread = float((both[0] - both[1]).abs().max())
    assert spread >= MIN_SPREAD, f"two examples' scores are {spread:.2g} apart: too close for the check to tell"
    probabilities = both[0]
    if model.config.model_type in PADDING_DEPENDENT:  # the pipeline reads the text alone, unpadded
        with torch.no_grad():
            probabilities = model(**transfer.processor(raw, return_tensors="pt")).logits[0].softmax(-1)
    scores = {p["label"]: p["score"] for p in pipeline(task, model=str(out))(raw, top_k=None)}
    piped = torch.tensor([scores[model.config.id2label[i]] for i in range(len(probabilities))])
    assert float((piped - probabilities).abs().max()) <= min(1e-4, spread / 10)
