"""Hardware defaults: by the GPU's compute capability, never over what the user set, and every CPU core under a
plain `accelerate launch` (whose default is one thread per process)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from hftransfer import hardware
from hftransfer.args import parse_args

PROBE = """
import json, os, sys
sys.path.insert(0, {root!r})
from hftransfer import hardware
if {whole}:  # the recipe's own call
    from hftransfer.args import parse_args
    chosen = hardware.apply_defaults(parse_args(["--output_dir", "unused"]))
else:  # its thread decision alone: no transformers to import
    chosen = {{"cpu_threads": hardware.launcher_threads(hardware.parent_launcher())}}
print("PROBE" + json.dumps({{"env": os.environ.get("OMP_NUM_THREADS"), "torch": hardware.torch.get_num_threads(),
                            "chosen": chosen}}))
"""


def launch_probe(tmp_path, *launch_flags, whole=False):
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(root=str(ROOT), whole=whole))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *launch_flags, str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("PROBE"))
    return json.loads(line[len("PROBE"):])


@pytest.mark.skipif(hardware.usable_cores() < 2, reason="one core: nothing to gain")
def test_plain_accelerate_launch_trains_on_every_core(tmp_path):
    cores = hardware.usable_cores()
    probe = launch_probe(tmp_path, whole=True)
    assert probe["torch"] == cores and probe["env"] == str(cores)
    assert "accelerate launch's default was 1" in probe["chosen"]["cpu_threads"]
    # the user's own choice stays: the launcher's flag, or OMP_NUM_THREADS in the launching shell
    probe = launch_probe(tmp_path, "--num_cpu_threads_per_process", "1")
    assert probe["chosen"]["cpu_threads"] is None and probe["torch"] == 1


def test_threads_the_user_chose_stay(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.launcher_threads(launcher("--num_cpu_threads_per_process", "1")) is None
    assert hardware.launcher_threads(launcher(environ={"OMP_NUM_THREADS": "1"})) is None
    expected = hardware.usable_cores() if hardware.usable_cores() > 1 else None
    assert hardware.launcher_threads(launcher()) == expected  # accelerate's default 1


def test_no_launcher_no_thread_change():
    assert hardware.parent_launcher(os.getpid()) is None  # pytest is not `accelerate launch`
    assert hardware.launcher_threads(None) is None


def launcher(*argv, environ=None):
    return hardware.Launcher(["python", "-m", "accelerate.commands.launch", *argv, "train.py"],
                             environ if environ is not None else {"HOME": "/nonexistent"})


@pytest.mark.parametrize("capability, precision, tf32", [((7, 0), "fp16", False), ((7, 5), "fp16", False),
                                                         ((8, 0), "bf16", True), ((9, 0), "bf16", True)])
def test_gpu_defaults_follow_the_compute_capability(capability, precision, tf32):
    run = parse_args(["--output_dir", "unused"])
    changes = hardware.gpu_defaults(run, capability, launcher())
    assert changes[precision] is True and ({"bf16", "fp16"} - {precision}).isdisjoint(changes)
    assert changes.get("tf32", False) is tf32  # TF32 raises on pre-Ampere cards
    assert 0 <= changes["dataloader_num_workers"] <= hardware.MAX_WORKERS


def test_gpu_defaults_leave_what_the_user_set(tmp_path):
    run = parse_args(["--output_dir", "unused", "--fp16", "true", "--tf32", "false", "--dataloader_num_workers", "1",
                      "--logging_nan_inf_filter", "true"])
    assert hardware.gpu_defaults(run, (9, 0), launcher()) == {}
    plain = parse_args(["--output_dir", "unused"])
    # the Makefile's `accelerate launch --mixed_precision no`, or a config file that names a precision
    assert not {"bf16", "fp16"} & set(hardware.gpu_defaults(plain, (9, 0), launcher("--mixed_precision", "no")))
    config = tmp_path / "config.yaml"
    config.write_text("mixed_precision: 'no'\nnum_processes: 1\n")
    assert not {"bf16", "fp16"} & set(hardware.gpu_defaults(plain, (9, 0), launcher("--config_file", str(config))))
    config.write_text("num_processes: 1\n")
    assert hardware.gpu_defaults(plain, (9, 0), launcher("--config_file", str(config)))["bf16"] is True


def test_apply_defaults_with_a_mocked_gpu_sets_the_training_arguments():
    run = parse_args(["--output_dir", "unused"])
    chosen = hardware.apply_defaults(run, capability=(7, 5), launcher=launcher())
    assert run.training.fp16 and not run.training.bf16 and "tf32" not in chosen


def test_training_steps_never_read_a_tensor_back(monkeypatch, tmp_path):
    """A host sync per step stalls a GPU: between two logs the loop must not call `.item()` or `bool()` on a
    tensor (counted on the CPU, where the same calls would sync a GPU). A convnet, whose own forward reads nothing
    back (BERT's attention-mask shortcut does, inside transformers)."""
    import torch
    from conftest import tiny_image_model
    from transformers import TrainingArguments

    from hftransfer.trainer import TransferTrainer

    model = tiny_image_model("resnet", image_size=16)
    data = [{"pixel_values": torch.randn(3, 16, 16), "labels": torch.tensor(i % 3)} for i in range(64)]
    run = parse_args(["--output_dir", str(tmp_path)])
    gpu_like = hardware.gpu_defaults(run, (9, 0), None)  # what a GPU run gets, precision aside
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, max_steps=30, logging_steps=100,
                             report_to=[], save_strategy="no", use_cpu=True,
                             logging_nan_inf_filter=gpu_like["logging_nan_inf_filter"])
    trainer = TransferTrainer(model=model, args=args, train_dataset=data)
    reads = {"item": 0, "bool": 0}
    item, as_bool = torch.Tensor.item, torch.Tensor.__bool__

    def counted_item(self):
        reads["item"] += 1
        return item(self)

    def counted_bool(self):
        reads["bool"] += 1
        return as_bool(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    monkeypatch.setattr(torch.Tensor, "__bool__", counted_bool)
    trainer.train()
    assert reads["item"] + reads["bool"] < 10, reads  # 30 steps; a read per step would be 30 or more


def test_fsdp_and_deepspeed_zero3_shard_the_parameters(monkeypatch):
    """A sharded model runs only once wrapped: the forward check before training is skipped under both."""
    from types import SimpleNamespace

    import transformers.integrations

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not hardware.shards_parameters(SimpleNamespace(fsdp=""))
    assert hardware.shards_parameters(SimpleNamespace(fsdp="full_shard"))
    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    assert hardware.shards_parameters(SimpleNamespace(fsdp=""))


FSDP_PROBE = """
import json, os, sys
from types import SimpleNamespace
sys.path.insert(0, {root!r})
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import torch, torch.distributed as dist
import transformers as tf
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from hftransfer import hardware

dist.init_process_group("gloo")
size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
models = {{"vit": lambda: tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, **size)),
          "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(vocab_size=99, **size))}}
inputs = {{"vit": {{"pixel_values": torch.randn(2, 3, 32, 32)}},
          "roberta": {{"input_ids": torch.randint(5, 99, (2, 7))}}}}
found = {{}}
for name, make in models.items():
    model = make()
    # Accelerate's own FSDP2 preparation; its Accelerator refuses FSDP without a GPU, so a stand-in hands it the plugin
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP")
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                  mixed_precision="no", is_main_process=True, device=torch.device("cpu"))
    hardware.prepare_for_fsdp(model)
    listed = list(model._no_split_modules)
    wrapped = fsdp2_prepare_model(accelerator, model)
    hardware.prepare_for_fsdp(wrapped)  # the next stage's trainer prepares the wrapped model again
    wrapped = fsdp2_prepare_model(accelerator, wrapped)
    wrapped(**inputs[name]).logits.sum().backward()
    found[name] = {{"classes": listed, "then": list(wrapped._no_split_modules),
                   "wrapped": sorted({{type(m).__name__ for m in wrapped.modules()
                                       if type(m).__name__.startswith("FSDP")}}),
                   "gradients": all(p.grad is not None for p in wrapped.parameters() if p.requires_grad)}}
dist.destroy_process_group()
print("PROBE" + json.dumps(found))
"""


def test_fsdp2_wraps_the_layers_not_the_embeddings_holder_that_accelerates_default_breaks_on(tmp_path):
    """Accelerate wraps `_no_split_modules` (ViT's `ViTEmbeddings`, RoBERTa's embeddings among them), then the input
    embeddings inside them again: `fully_shard` failed (`TypeError: Invariant encountered`, seen on an H200). Run
    through Accelerate's own FSDP2 preparation on a one-process gloo group, twice as a staged run's two trainers do:
    the layers and the embeddings are wrapped, and a forward and backward pass run."""
    from support.ports import free_port

    script = tmp_path / "fsdp_probe.py"
    script.write_text(FSDP_PROBE.format(root=str(ROOT), port=free_port()))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(next(line[5:] for line in done.stdout.splitlines() if line.startswith("PROBE")))
    assert found == {
        "vit": {"classes": ["ViTLayer"], "then": [], "gradients": True,
                "wrapped": ["FSDPLayerNorm", "FSDPViTForImageClassification", "FSDPViTLayer",
                            "FSDPViTPatchEmbeddings"]},
        "roberta": {"classes": ["RobertaLayer"], "then": [], "gradients": True,
                    "wrapped": ["FSDPEmbedding", "FSDPRobertaForSequenceClassification", "FSDPRobertaLayer"]}}


@pytest.mark.parametrize("settle", [True, False])
def test_fsdp2_under_bf16_trains_a_second_stage_and_merges_lora_into_a_plain_model(settle, tmp_path):
    """Two failures seen on an H200 under `fsdp.yaml` (bf16), reproduced on two gloo ranks through Accelerate's own
    FSDP2 preparation (tests/support/fsdp_bf16.py): a stage that trains the base after a head-only stage got bf16
    gradients for float32 parameters, as FSDP2 had settled its wrapped blocks' gradient dtype when nothing in them
    trained (the control, `settle` False, shows that error where this torch has it); and LoRA's merge, in place on
    a sharded model, left one that ran only inside FSDP's wrapper. Merged, it is plain, the same on both ranks, and
    gives the wrapped model's logits (bf16 compute there)."""
    from support.gloo_ranks import run_two_ranks

    prefix = tmp_path / "found"
    run_two_ranks(ROOT / "tests" / "support" / "fsdp_bf16.py", prefix, int(settle))
    ranks = [json.loads((tmp_path / f"found.{rank}.json").read_text()) for rank in (0, 1)]
    if not settle:
        if ranks[0]["second stage"] == "trained":
            pytest.skip("this torch settles the gradient dtype again itself")
        assert "gradient with dtype 'c10::BFloat16'" in ranks[0]["second stage"]
        return
    assert [found["second stage"] for found in ranks] == ["trained", "trained"]
    merged = [found["merged"] for found in ranks]
    assert all(m["class"] == "ViTForImageClassification" and m["plain"] for m in merged)
    assert all(m["gap"] < 0.05 < m["moved"] for m in merged)  # the trained weights, not those it started from
    assert merged[0]["checksum"] == merged[1]["checksum"]  # every rank gathered the same model


def test_fsdp_classes_are_narrowed_on_the_model_to_those_it_holds_outside_the_input_embeddings():
    from conftest import tiny_image_model, tiny_text_model

    vit = tiny_image_model("vit")
    hardware.prepare_for_fsdp(vit)
    assert vit._no_split_modules == ["ViTLayer"]
    assert type(vit)._no_split_modules == ["ViTEmbeddings", "ViTLayer"]  # the class, and every other ViT, keep theirs
    bert = tiny_text_model("bert")
    hardware.prepare_for_fsdp(bert)
    assert bert._no_split_modules == ["BertLayer"]
    mobilenet = tiny_image_model("mobilenet_v2")  # no input embeddings; a listed class it never builds
    hardware.prepare_for_fsdp(mobilenet)
    assert mobilenet._no_split_modules == ["MobileNetV2InvertedResidual"]


def test_thread_map_keeps_order_spreads_over_the_cores_and_reads_a_window_ahead(monkeypatch):
    """The image passes before training (the unusable-image check, the data-quality fingerprints) ran on one core;
    an executor's `map` would read every item at once (every image's bytes, for a table that embeds them), and
    leaving the pool waits for all it has queued."""
    import threading
    import time

    monkeypatch.setattr(hardware, "cores_per_process", lambda: 2)
    drawn, threads = [], set()

    def items():
        for n in range(1000):
            drawn.append(n)
            yield n

    def square(n):
        threads.add(threading.get_ident())
        time.sleep(0.001)  # a decode's worth: both threads get work
        return n * n

    results = hardware.thread_map(square, items(), window=4)
    assert next(results) == 0 and len(drawn) <= 2 * 4 + 1
    assert list(results) == [n * n for n in range(1, 1000)]
    assert len(threads) == 2
    calls = []

    def fails_at_20(n):  # an image that raises: the work queued behind it is dropped, not run
        calls.append(n)
        time.sleep(0.001)
        if n == 20:
            raise ValueError(n)
        return n

    with pytest.raises(ValueError):
        list(hardware.thread_map(fails_at_20, range(1000), window=50))  # 100 queued when 20 raises
    assert len(calls) < 60
    monkeypatch.setattr(hardware, "cores_per_process", lambda: 1)
    threads.clear()
    assert list(hardware.thread_map(square, range(5))) == [0, 1, 4, 9, 16] and threads == {threading.get_ident()}
