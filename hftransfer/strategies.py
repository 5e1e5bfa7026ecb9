"""The strategies, as data: each is a list of stages, and each stage has a kind that says what it trains.

    feature_extraction   head                  the new head on the frozen base
    staged               head, base            then the whole model (or its last blocks, --unfreeze_last_n)
    fine_tune            base                  the head and the last blocks (--unfreeze_last_n, default 2)
    full                 base                  everything
    lora                 head, adapters        then low-rank adapters in the base's blocks, with the head

That is the lesson: freeze the base, train a new head, then unfreeze some of the base at a small rate. The run
(`training`), `hftransfer compare`, the freeze report and the model card all read this registry. A head stage trains
on cached features where the base's frozen output can be stored (`TransferRun` decides that once per stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry stays importable without torch (the command line reads it before re-exec)
    from .freezing import FreezePlan

HEAD, BASE, ADAPTERS = "head", "base", "adapters"  # the kinds of stage


@dataclass(frozen=True)
class StageSpec:
    """One stage of a strategy. `trains` is its freeze plan's scope: feature_extraction (the head), fine_tune (the
    head and the last blocks), full, lora (the head, the base frozen under adapters), or `base`: full, or fine_tune
    when the user names how many blocks (`--unfreeze_last_n`)."""

    name: str
    kind: str
    trains: str


HEAD_STAGE = StageSpec("head", HEAD, "feature_extraction")
STRATEGIES: dict[str, tuple[StageSpec, ...]] = {
    "staged": (HEAD_STAGE, StageSpec("staged", BASE, "base")),
    "feature_extraction": (HEAD_STAGE,),
    "fine_tune": (StageSpec("fine_tune", BASE, "fine_tune"),),
    "full": (StageSpec("full", BASE, "full"),),
    "lora": (HEAD_STAGE, StageSpec("lora", ADAPTERS, "lora")),
}
DESCRIPTIONS = {
    "staged": "the new head on the frozen base, then the whole model (or its last blocks) at a lower rate",
    "feature_extraction": "the new head only, on the frozen base",
    "fine_tune": "the new head and the last blocks of the base",
    "full": "the whole model",
    "lora": "the new head on the frozen base, then low-rank adapters in the base's blocks with the head (merged)",
}
# `--unfreeze_last_n` picks the blocks a base stage trains; the other strategies leave it nothing to pick
WITHOUT_LAST_N = {
    "feature_extraction": "it trains the head alone (the head and the last N blocks: --strategy fine_tune)",
    "full": "it trains every block",
    "lora": "its adapters go into every block (the last N blocks fine-tuned: --strategy staged)"}
COMPARED = ("feature_extraction", "staged", "lora")  # `hftransfer compare`: the lesson's three answers


@dataclass
class Stage:
    """A stage as it runs: its kind and plan from the registry, rate, epochs and patience from `choices`."""

    name: str
    kind: str
    plan: FreezePlan
    learning_rate: float = 0.0
    epochs: float = 0.0
    weight_decay: float = 0.0  # AdamW's, from `choices` (the flag's, or the head-only default)
    augment: bool = False
    patience: int = 0  # evaluations without improvement before the stage stops early (0: never)
    rdrop_weight: float = 0.0  # R-Drop's consistency loss (`trainer.TransferTrainer.compute_loss`); 0: off
    adversarial_epsilon: float = 0.0  # FGM's step on the token embeddings (`trainer.AdversarialEmbeddings`); 0: off
    calibrated_batchnorm: int = 0  # BatchNorm layers re-estimated on the data before this stage
    cached_features: bool | None = None  # decided when the stage starts (or read from its record when restored)
    selection: object = None  # the stage's `selection.BestEpoch`, once its trainer is built
    lora_targets: list[str] | None = None  # an adapter stage's modules, resolved before any stage trains


def plan_stages(strategy: str, patterns: dict, head_stage: bool = True) -> list[Stage]:
    """`strategy`'s stages with their freeze plans. The user's patterns shape the last stage; an earlier head stage
    trains the head alone. `head_stage` False (decoder classifiers) leaves head stages out where another follows."""
    from .freezing import FreezePlan, PatternError

    if patterns.get("unfreeze_last_n") and strategy in WITHOUT_LAST_N:
        raise PatternError(f"--unfreeze_last_n {patterns['unfreeze_last_n']} does not apply to --strategy {strategy}: "
                           f"{WITHOUT_LAST_N[strategy]}")
    specs = [spec for spec in STRATEGIES[strategy]
             if head_stage or spec.kind != HEAD or len(STRATEGIES[strategy]) == 1]
    stages = []
    for index, spec in enumerate(specs):
        scope = spec.trains if spec.trains != "base" else "fine_tune" if patterns.get("unfreeze_last_n") else "full"
        last = index == len(specs) - 1
        stages.append(Stage(spec.name, spec.kind, FreezePlan(scope, **patterns) if last else FreezePlan(scope)))
    return stages
