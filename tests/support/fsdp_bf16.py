"""Two failures seen on an H200 under `fsdp.yaml` (bf16), through Accelerate's own FSDP2 preparation (its
Accelerator refuses FSDP on a CPU, so a stand-in hands it the plugin) on a gloo CPU group:

    python -m torch.distributed.run --nproc_per_node 2 tests/support/fsdp_bf16.py OUT_PREFIX SETTLE

- a stage that trains the base after a head-only stage (each stage prepares the model again, as its trainer does),
  with `hardware.settle_fsdp_precision` called (SETTLE 1) or not (0, the control);
- LoRA on a sharded model, merged by `lora.merge` into a plain model.
Each rank writes OUT_PREFIX.RANK.json: what the second stage did, and the merged model's class, whether its weights
are plain tensors, its logits against the wrapped model's and the untrained model's, and a checksum of its weights.
"""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import transformers as tf
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model

sys.path[:0] = [str(Path(__file__).resolve().parents[i]) for i in (2, 1)]  # the checkout and tests/: a script
from hftransfer import hardware, lora  # noqa: E402
from support.gloo_ranks import leave  # noqa: E402

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
PLUGIN = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP",
                                        mixed_precision_policy="bf16")


def vit():
    return tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, **SIZE))


def train_step(model, pixels, settle: bool):
    """What each stage's trainer does before and at its first step."""
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=PLUGIN), torch_device_mesh=None,
                                  mixed_precision="bf16", is_main_process=dist.get_rank() == 0,
                                  device=torch.device("cpu"))
    hardware.prepare_for_fsdp(model)
    model = fsdp2_prepare_model(accelerator, model)
    if settle:
        hardware.settle_fsdp_precision(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model(pixel_values=pixels).logits.sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    return model


def second_stage(pixels, settle: bool) -> str:
    model = vit()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("classifier"))
    model = train_step(model, pixels, settle=True)  # the head's stage
    model.requires_grad_(True)  # the next stage trains the base too
    try:
        train_step(model, pixels, settle)
    except RuntimeError as err:
        return str(err)[:160]
    return "trained"


def merged_lora(pixels) -> dict:
    model = vit()
    with torch.no_grad():
        untrained = model(pixel_values=pixels).logits
    transfer = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0)
    adapted = train_step(lora.wrap(model, transfer, lora.default_targets(model), sharded=True), pixels, settle=True)
    with torch.no_grad():
        wrapped = adapted(pixel_values=pixels).logits.float()
        merged = lora.merge(adapted, None)
        logits = merged(pixel_values=pixels).logits
    return {"class": type(merged).__name__,
            "plain": all(type(p) is torch.nn.Parameter for p in merged.parameters()),  # no DTensor left
            "gap": (logits - wrapped).abs().max().item(), "moved": (logits - untrained).abs().max().item(),
            "checksum": sum(t.double().sum().item() for t in merged.state_dict().values())}


def main() -> None:
    prefix, settle = sys.argv[1], sys.argv[2] == "1"
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same model on every rank, as each loads the same checkpoint
    pixels = torch.randn(2, 3, 32, 32) + dist.get_rank()  # each rank its own batch
    found = {"second stage": second_stage(pixels, settle)}
    if settle:
        found["merged"] = merged_lora(pixels)
    Path(f"{prefix}.{dist.get_rank()}.json").write_text(json.dumps(found))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    leave()
