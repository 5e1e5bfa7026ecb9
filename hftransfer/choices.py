"""Every automatic choice of a run, made here once and recorded with its reason (`hftransfer_run.json`, "chosen").

Settings flow one way: parsed (`args`), then resolved here into the settings the run uses, then used; nothing
rewrites them later. Only settings the user did not give are chosen (`RunArguments.given`). The facts behind a
choice come from the modules that own them: the hardware (`hardware`), the model's kind (`anatomy`), the data's
columns, sizes and lengths (`data`, the task adapters).

    hardware      precision, TF32, loader workers, CPU threads       before anything runs (`hardware.apply_defaults`)
    columns       label and input columns                           once the training data is read
    input size    image size or token limit                         the task adapter, from the data and checkpoint
    strategy      decoder classifiers: lora                          once the model is loaded
    grouping      batches grouped by text length                    once the lengths are known
    labels        class-size loss, the metric for the best epoch     once the training labels are counted
    stages        each stage's learning rate and epochs, augmenting, before the first stage trains
                  early-stopping patience, R-Drop, adversarial training
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import hardware
from .anatomy import ModelError, architecture, has_dropout, input_embeddings
from .selection import imbalance_ratio
from .strategies import ADAPTERS, BASE, HEAD, STRATEGIES, Stage, plan_stages

logger = logging.getLogger(__name__)

# Defaults by architecture, measured (README, benchmarks/results/defaults.json). Convnets (MobileNetV2 on
# Fashion-MNIST): rate 1e-3 (3e-4 within noise), and enough epochs for 500 steps: 6 epochs on 3,000 images gave
# 0.906 against 0.887 for 3. Attention models (MiniLM, 2,000 Rotten Tomatoes snippets): 1e-4 (5e-5 gave 0.796
# against 0.806) for 300 steps, 5 epochs on 2,000 texts: above 150 steps (3 epochs) on 5 of 7 paired seeds of three
# draws, by 0.6 points on the means (0.801 -> 0.807, 0.8005 -> 0.806), at 1.7x the time; 2016 debates, 644
# statements, 15 epochs against 8: +1.2 and -0.2 points on two seeds (README, "Pooling of sentence-transformers
# checkpoints").
BASE_DEFAULTS = {"conv": {"learning_rate": 1e-3, "min_steps": 500},
                 "attention": {"learning_rate": 1e-4, "min_steps": 300}}
# LoRA trains few, freshly initialised parameters: a higher rate than full fine-tuning, as in the PEFT examples.
LORA_LEARNING_RATE = {"conv": 2e-3, "attention": 1e-3}
HEAD_MIN_STEPS = 300
EPOCH_RANGE = {"base": (3, 30), "head": (10, 100)}
# Class imbalance (README, "Imbalanced classes"; benchmarks/results/imbalance.json): the largest class this many
# times the smallest, or more, is "imbalanced": a logit-adjusted loss and macro-F1 for the best epoch. Fashion-MNIST
# from 600 images a class down, balanced validation, macro-F1 of the plain loss -> the logit-adjusted one: down to 10
# (ratio 60): 0.779 -> 0.821 and 0.792 -> 0.850 (two seeds; balanced class weights 0.797 and 0.825, balanced sampling
# 0.772); down to 200 (ratio 3): 0.895 -> 0.901; down to 400 (ratio 1.5): 0.919 -> 0.911, worse
IMBALANCE_RATIO = 3.0
# Early stopping (README, "Early-stopping patience"; benchmarks/results/patience.json): on the full validation curves
# of runs that never stopped, patience 1 and 2 would have kept a worse epoch (up to 4.4 points lower), 3 and more
# never; 5 keeps a margin and still ends a long stage that has stopped learning
EARLY_STOPPING_PATIENCE = 5
# R-Drop in the stages that train the base (README, "R-Drop"): measured on MiniLM, 2,000 Rotten Tomatoes snippets
# and the 644 debates statements; small data, where fine-tuning overfits (the validation loss doubles by the third
# epoch) and where its 1.6 times the step time costs least. Convnets are not measured, and a model without dropout
# would run two identical passes: off. Weight 3 scored the same within the seeds' spread (+0.08 points on three runs).
RDROP_WEIGHT = 1.0
RDROP_MAX_EXAMPLES = 10_000
# Adversarial training on the token embeddings (FGM; README, "Adversarial training on the embeddings"): measured on
# MiniLM with R-Drop, 2,000 reviews of two draws, seeds 42-44: means 0.809 -> 0.814 and 0.8085 -> 0.815, higher on
# all six paired runs (a third draw 0.8295 -> 0.841), at up to twice the fine-tuning time; epsilon 0.3 was level
# (seed 42). The 644 debates statements (3 classes), two seeds: 0.7413 -> 0.7249 and 0.7413 -> 0.7483 (level
# within the spread). Small data, as R-Drop.
ADVERSARIAL_EPSILON = 0.1
# With FGM on, the stage that trains the base runs at least this many optimizer steps: the moved pass slows the fit
# (README, "Adversarial training on the embeddings"): on 2,000 reviews 8 epochs instead of 5, seeds 42-44 mean
# 0.8165 against 0.814, reviews_c 0.8172 against 0.8148; five of seven paired review runs higher, one level, one
# 0.15 lower: a small gain. The debates (24 epochs against 15): seed 42 at least 0.7459 against 0.7249, seed 43
# 0.7436 against 0.7483.
ADVERSARIAL_MIN_STEPS = 500
# AdamW weight decay of a head that is the whole trained model (feature extraction: no later stage starts from it).
# On frozen MiniLM features the head overfits within a few epochs (on mr_a its best epoch is the first); README,
# "Another corpus": six review sets, seeds 42-44, means 0.7532 (0.01) -> 0.7564 (0.3), higher on five sets of six,
# 0.1 lower on one; 1 scored 0.7562, 3 0.7491. The stages of the staged default keep the 0.01 of the flag.
HEAD_ONLY_WEIGHT_DECAY = 0.3
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "sentiment", "y")


@dataclass
class Choices:
    """What was chosen, and why: `{setting: {"value": ..., "reason": ...}}`, logged as it is made."""

    made: dict[str, dict] = field(default_factory=dict)

    def add(self, setting: str, value, reason: str) -> None:
        self.made[setting] = {"value": value, "reason": reason}
        self._log(setting)

    def log(self) -> None:
        """Log every choice made so far (those made before logging was set up)."""
        for setting in self.made:
            self._log(setting)

    def _log(self, setting: str) -> None:
        logger.info("Chosen: %s = %s (%s)", setting, self.made[setting]["value"], self.made[setting]["reason"])

    def to_dict(self) -> dict:
        return dict(self.made)


def choose_hardware(run, choices: Choices) -> None:
    """This machine's defaults on the training arguments (and the CPU threads), before anything runs."""
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    reason = ("a GPU of compute capability {}.{}".format(*capability) if capability and not run.training.use_cpu
              else "the CPU")
    for setting, value in hardware.apply_defaults(run, capability).items():
        choices.add(setting, value, f"this hardware: {reason}")


def choose_columns(columns: list[str], features, data_args, task, given: frozenset, choices: Choices):
    """Columns the user did not name and the data does not have under the default name: the only plausible one (a
    label-like name; the only column of the task's input type). Named columns are never guessed. Returns the data
    arguments with the columns the run reads."""
    changes = {}
    if data_args.label_column_name not in columns and "label_column_name" not in given:
        lowered = {c.lower(): c for c in columns}
        found = next((lowered[n] for n in LABEL_COLUMNS if n in lowered), None)
        if found:
            changes["label_column_name"] = found
            choices.add("label_column_name", found, f"no column '{data_args.label_column_name}'; a label-like name")
    resolved = replace(data_args, **changes)
    setting = task.column_setting
    if all(c in columns for c in task.input_columns(resolved)) or setting in given:
        return resolved
    inputs = [c for c in columns if c != resolved.label_column_name and task.is_input_feature(features[c])]
    if len(inputs) == 1:
        choices.add(setting, inputs[0], f"no column {task.input_columns(resolved)}; the only {task.name} column")
        resolved = replace(resolved, **{setting: inputs[0]})
    return resolved


def choose_for_model(run, model, is_decoder: bool, lengths: dict, choices: Choices):
    """Settings that depend on the loaded model and the data's lengths: the run's settings from here on."""
    if is_decoder and not run.given("strategy") and not run.transfer.unfreeze_last_n:  # blocks named: staged
        choices.add("strategy", "lora", f"{type(model).__name__} is a decoder classifier: its adapters and score head "
                    "train in one stage (its head reads the last real token, which cached features do not carry)")
        run = replace(run, transfer=replace(run.transfer, strategy="lora"))
    if lengths.get("train") is not None and not run.given("train_sampling_strategy"):
        # texts of similar length share a batch, so dynamic padding pads little (Rotten Tomatoes snippets run from
        # 1 to 1,000 words: random batches pad most of them to the longest)
        choices.add("train_sampling_strategy", "group_by_length", "texts of unequal length: little padding")
        run = replace(run, training=replace(run.training, train_sampling_strategy="group_by_length"))
    return run


def choose_for_labels(run, counts: list[int] | None, choices: Choices):
    """Settings that depend on the training labels' counts (None: multi-label): class weights and the metric that
    picks each stage's best epoch. Returns the run's settings from here on."""
    imbalanced = counts is not None and imbalance_ratio(counts) >= IMBALANCE_RATIO
    ratio = f"the largest class is {imbalance_ratio(counts):.1f} times the smallest" if counts else "multi-label"
    transfer, training = run.transfer, run.training
    if transfer.class_weights == "auto":
        weights = "logit_adjusted" if imbalanced else "none"
        choices.add("class_weights", weights, f"{ratio} (adjusted from {IMBALANCE_RATIO:g} times)" if counts
                    else "multi-label: every label is its own binary loss")
        transfer = replace(transfer, class_weights=weights)
    if not run.given("metric_for_best_model"):
        metric = "f1_macro" if imbalanced or counts is None else "accuracy"
        choices.add("metric_for_best_model", metric, f"{ratio}: macro-F1 weighs every class the same"
                    if metric == "f1_macro" else f"{ratio}: balanced enough for accuracy")
        training = replace(training, metric_for_best_model=metric, greater_is_better=True)
    return replace(run, transfer=transfer, training=training)


def _patience(run, choices: Choices) -> int:
    """Evaluations without improvement before a stage stops (the best epoch is kept either way)."""
    if run.transfer.early_stopping_patience is not None:
        return run.transfer.early_stopping_patience
    choices.add("early_stopping_patience", EARLY_STOPPING_PATIENCE, "evaluated every epoch (measured default)")
    return EARLY_STOPPING_PATIENCE


def choose_stages(run, model, train_size: int, head_stage: bool, choices: Choices) -> list[Stage]:
    """The strategy's stages (`strategies`) with their rates, epochs, augmentation and early-stopping patience."""
    transfer = run.transfer
    patterns = {"freeze": list(transfer.freeze), "unfreeze": list(transfer.unfreeze),
                "unfreeze_last_n": transfer.unfreeze_last_n, "layer_lr_decay": transfer.layer_lr_decay,
                "lr_multipliers": list(transfer.lr_multipliers)}
    stages = plan_stages(transfer.strategy, patterns, head_stage and not _adapters_under_fsdp(run, choices))
    if not head_stage and len(stages) < len(STRATEGIES[transfer.strategy]):
        choices.add("head_stage", False, "decoder classifier: its score head reads the last real token, which cached "
                    "features do not carry, so a head-only stage would cost a pass of the whole model every epoch; "
                    "the head trains with the rest in one stage")
    augment = bool(run.data.augment)
    patience = _patience(run, choices) if run.training.eval_strategy != "no" else 0
    trains_base = any(s.kind == BASE for s in stages)
    rdrop_weight = _rdrop_weight(run, model, train_size, trains_base, choices)
    adversarial_epsilon = _adversarial_epsilon(run, model, train_size, trains_base, choices)
    for stage in stages:
        if stage.kind == HEAD:
            stage.learning_rate = transfer.head_learning_rate
            # cached features are computed once from un-augmented inputs: the head augments only without a cache
            stage.augment = augment and not transfer.cache_features
        else:
            stage.learning_rate = _base_rate(run, model, stage, choices)
            stage.augment = augment
            stage.rdrop_weight = rdrop_weight if stage.kind == BASE else 0.0
            stage.adversarial_epsilon = adversarial_epsilon if stage.kind == BASE else 0.0
        stage.epochs = _epochs(run, stage, train_size, model, choices)
        stage.weight_decay = _weight_decay(run, stage, stage is stages[-1], choices)
        stage.patience = patience
    if augment and transfer.cache_features and stages[0].kind == HEAD:
        logger.warning("--augment: the head-only stage trains on cached features of un-augmented inputs; "
                       "augmentation applies to the stage that trains the base%s",
                       " (--cache_features false augments the head's training too, at the cost of a pass of "
                       "the base every epoch)" if transfer.strategy == "feature_extraction" else "")
    return stages


def _adapters_under_fsdp(run, choices: Choices) -> bool:
    """LoRA under FSDP trains its head in the adapters' stage: PEFT cannot wrap a model that an earlier stage's
    FSDP has sharded (seen on an H200)."""
    if run.transfer.strategy != "lora" or not hardware.fsdp_enabled(run.training):
        return False
    choices.add("head_stage", False, "FSDP: LoRA trains the head with the adapters in one stage (PEFT cannot wrap "
                "a model FSDP has already sharded)")
    return True


def _base_stage_setting(run, flag: str, trains_base: bool) -> float | None:
    """The user's value of a loss setting of the stages that train the base, checked; where no stage trains the
    base, a value given is said to have no effect."""
    given = getattr(run.transfer, flag)  # at least 0 (`args`)
    if given and not trains_base:
        logger.warning("--%s %g has no effect: strategy %s has no stage that trains the base outside adapters",
                       flag, given, run.transfer.strategy)
    return given


def _rdrop_weight(run, model, train_size: int, trains_base: bool, choices: Choices) -> float:
    """R-Drop's weight in the stages that train the base: on for attention models with dropout on small data
    (`RDROP_WEIGHT`); a model without dropout would run its two identical passes for nothing."""
    given = _base_stage_setting(run, "rdrop_weight", trains_base)
    if not trains_base:
        return 0.0
    if getattr(model.config, "problem_type", None) == "multi_label_classification":  # its KL is between softmaxes
        if given:
            logger.warning("--rdrop_weight %g has no effect: R-Drop applies to single-label data only", given)
        elif given is None:
            choices.add("rdrop_weight", 0.0, "multi-label data: R-Drop applies to single-label data only")
        return 0.0
    if given is not None:
        return given
    kind, dropout = architecture(model), has_dropout(model)
    weight = RDROP_WEIGHT if kind == "attention" and dropout and train_size <= RDROP_MAX_EXAMPLES else 0.0
    reason = (f"{kind} model{'' if dropout else ' without dropout'}, {train_size:,} training examples: "
              f"{'on' if weight else 'off'} (on for attention models with dropout, up to {RDROP_MAX_EXAMPLES:,} "
              "examples)")
    choices.add("rdrop_weight", weight, reason)
    return weight


def _adversarial_epsilon(run, model, train_size: int, trains_base: bool, choices: Choices) -> float:
    """FGM's step in the stages that train the base: on for attention models that read tokens, on small data
    (`ADVERSARIAL_EPSILON`, as R-Drop); a model it cannot perturb is an error when asked for, and off by default."""
    given = _base_stage_setting(run, "adversarial_epsilon", trains_base)
    if not trains_base:
        return 0.0
    blocker = _adversarial_blocker(run, model)
    if given is not None:
        if given and blocker:
            raise ModelError(f"--adversarial_epsilon {given:g}: {blocker}; 0 turns it off")
        return given
    kind = architecture(model)
    epsilon = ADVERSARIAL_EPSILON if not blocker and kind == "attention" and train_size <= RDROP_MAX_EXAMPLES else 0.0
    reason = blocker or (f"{kind} model, {train_size:,} training examples: {'on' if epsilon else 'off'} (on for "
                         f"attention models that read tokens, up to {RDROP_MAX_EXAMPLES:,} examples)")
    choices.add("adversarial_epsilon", epsilon, reason)
    return epsilon


def _adversarial_blocker(run, model) -> str | None:
    """Why adversarial training cannot run on this model and set-up, or None."""
    table = input_embeddings(model)
    if not isinstance(table, nn.Embedding):
        found = type(table).__name__ if table is not None else "none"
        return f"{type(model).__name__} has no token embedding table to perturb (its input embeddings: {found})"
    if getattr(model.config, "is_encoder_decoder", False):
        return f"{type(model).__name__} embeds tokens twice a pass (encoder and decoder), not supported"
    if hardware.fsdp_enabled(run.training) or run.training.deepspeed:
        return "not supported under FSDP or DeepSpeed (two backward passes a step, untested on sharded engines)"
    return None


def default_learning_rate(model, kind: str = "base") -> float:
    """The base-training rate when the user gave none: attention models fine-tune at a far lower rate than convnets,
    and LoRA's fresh adapters at a higher one."""
    if kind == ADAPTERS:
        return LORA_LEARNING_RATE[architecture(model)]
    return BASE_DEFAULTS[architecture(model)]["learning_rate"]


def _base_rate(run, model, stage: Stage, choices: Choices) -> float:
    if run.given("learning_rate"):
        return run.training.learning_rate
    rate = default_learning_rate(model, stage.kind)
    choices.add(f"learning_rate ({stage.name})", rate, f"{architecture(model)} model, {stage.kind} stage (measured "
                "defaults)")
    return rate


def _weight_decay(run, stage: Stage, last: bool, choices: Choices) -> float:
    """The flag's weight decay, or, where the user gave none and the head trains alone as the last stage,
    `HEAD_ONLY_WEIGHT_DECAY`: that head is the model, and nothing fine-tunes it after."""
    if run.given("weight_decay") or stage.kind != HEAD or not last:
        return run.training.weight_decay
    choices.add(f"weight_decay ({stage.name})", HEAD_ONLY_WEIGHT_DECAY, "the head trains alone on the frozen base and "
                f"is the final model (measured; {run.training.weight_decay:g} where a later stage trains from it)")
    return HEAD_ONLY_WEIGHT_DECAY


def _optimizer_steps_per_epoch(run, train_size: int) -> int:
    batch = run.training.per_device_train_batch_size * max(1, run.training.world_size)
    return max(1, math.ceil(math.ceil(train_size / batch) / run.training.gradient_accumulation_steps))


def _epochs(run, stage: Stage, train_size: int, model, choices: Choices) -> float:
    """Epochs of a stage: what `--max_steps` amounts to, the flag's, or (chosen) enough optimizer steps for the data
    size."""
    kind = "head" if stage.kind == HEAD else "base"
    flag = "head_epochs" if kind == "head" else "num_train_epochs"
    given = run.transfer.head_epochs if kind == "head" else run.training.num_train_epochs
    steps_per_epoch = _optimizer_steps_per_epoch(run, train_size)
    if run.training.max_steps > 0:  # the Trainer runs max_steps whatever the epochs: log and record what they are
        return run.training.max_steps / steps_per_epoch
    if run.given(flag):
        return given
    min_steps = HEAD_MIN_STEPS if kind == "head" else BASE_DEFAULTS[architecture(model)]["min_steps"]
    slower = stage.adversarial_epsilon > 0 and min_steps < ADVERSARIAL_MIN_STEPS
    min_steps = ADVERSARIAL_MIN_STEPS if slower else min_steps
    low, high = EPOCH_RANGE[kind]
    epochs = float(min(max(low, math.ceil(min_steps / steps_per_epoch)), high))
    choices.add(f"epochs ({stage.name})", epochs, f"at least {min_steps} steps of {steps_per_epoch} an epoch"
                f"{' (adversarial training learns more slowly)' if slower else ''}, {low} to {high} epochs")
    return epochs
