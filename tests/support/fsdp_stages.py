"""Two stages on one FSDP2-sharded model over a gloo CPU mesh (Accelerate refuses FSDP on a CPU, so `fully_shard`
directly, as Accelerate's FSDP2 path applies it: each block of `_no_split_modules`, then the root).

    python -m torch.distributed.run --nproc_per_node 2 tests/support/fsdp_stages.py OUT.json

Stage 1 trains the head with the base frozen, stage 2 the whole model, each with hftransfer's freeze plan applied to
the sharded model and a new optimizer, as each stage's trainer does. Rank 0 writes what changed in each stage and
whether the gathered full weights, loaded into a plain model, give the sharded model's logits.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import ViTConfig, ViTForImageClassification

sys.path[:0] = [str(Path(__file__).resolve().parents[i]) for i in (2, 1)]  # the checkout and tests/: a script
from hftransfer import freezing  # noqa: E402
from hftransfer.freezing import FreezePlan  # noqa: E402
from support.gloo_ranks import leave  # noqa: E402


def full_weights(model) -> dict:
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}


def changed(before: dict, after: dict, names) -> bool:
    return any(not torch.equal(before[n], after[n]) for n in names)


def train(model, plan: FreezePlan, inputs, labels, steps: int = 3) -> int:
    freezing.apply(model, plan)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(pixel_values=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=8, num_labels=3)
    model = ViTForImageClassification(config)
    plain = ViTForImageClassification(config)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in model.modules():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    generator = torch.Generator().manual_seed(rank)  # each rank its own share of the batch
    inputs, labels = torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    head = {n for n, _ in model.named_parameters() if n.startswith("classifier")}
    base = {n for n, _ in model.named_parameters()} - head
    start = full_weights(model)
    head_trainable = train(model, FreezePlan("feature_extraction"), inputs, labels)
    after_head = full_weights(model)
    full_trainable = train(model, FreezePlan("full"), inputs, labels)
    after_full = full_weights(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    probe = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(99))
    model.eval()
    with torch.no_grad():
        sharded_logits = model(pixel_values=probe).logits
    if rank == 0:
        plain.load_state_dict(state)
        with torch.no_grad():
            plain_logits = plain.eval()(pixel_values=probe).logits
        Path(out).write_text(json.dumps({
            "trainable": [head_trainable, full_trainable], "total": sum(t.numel() for t in start.values()),
            "head_stage": {"head_changed": changed(start, after_head, head),
                           "base_changed": changed(start, after_head, base)},
            "full_stage": {"head_changed": changed(after_head, after_full, head),
                           "base_changed": changed(after_head, after_full, base)},
            "gathered_logits_match": bool(torch.allclose(sharded_logits, plain_logits, atol=1e-5))}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    leave()
