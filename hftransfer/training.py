"""Train in stages with the `Trainer` under Accelerate, evaluate, and leave a folder `from_pretrained` loads.

Each stage gets a fresh `Trainer`: `create_optimizer` keeps only the parameters that need grad when it runs, and
changing `requires_grad` after DDP wrapping breaks the reducer, so the optimizer, scheduler and distributed wrapper
are rebuilt for what trains in that stage. A stage whose base is wholly frozen trains on cached features.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from transformers import Trainer, default_data_collator, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import features as feature_cache
from . import anatomy, card, freezing, hardware, hub, lora, outputs, pooling, report, resume
from .data import is_multi_label, label_names, prepare_splits
from .freezing import FreezePlan
from .outputs import ADAPTER_FOLDER, CARD, EXAMPLES_FOLDER, REPORT_DIR, REPORT_MD, RUN_RECORD, STAGING
from .metrics import classification_metrics, load_metrics, multi_label_metrics
from .anatomy import architecture
from .modeling import load_model
from .zoo import resolve

logger = logging.getLogger(__name__)

# Defaults by architecture, measured (README, benchmarks/results/defaults.json). Convnets (MobileNetV2 on
# Fashion-MNIST): rate 1e-3 (3e-4 within noise), and enough epochs for 500 steps: 6 epochs on 3,000 images gave
# 0.906 against 0.887 for 3. Attention models (MiniLM, 2,000 Rotten Tomatoes snippets): 1e-4 for 150 steps
# (3 epochs) gave 0.806 in 93 s; 5e-5 gave 0.796, and 8 epochs at 5e-5 overfit (training loss 0.01) for 0.804 at
# 2.5x the time.
BASE_DEFAULTS = {"conv": {"learning_rate": 1e-3, "min_steps": 500},
                 "attention": {"learning_rate": 1e-4, "min_steps": 150}}
# LoRA trains few, freshly initialised parameters: a higher rate than full fine-tuning, as in the PEFT examples.
LORA_LEARNING_RATE = {"conv": 2e-3, "attention": 1e-3}
HEAD_MIN_STEPS = 300
EPOCH_RANGE = {"base": (3, 30), "head": (10, 100)}


@dataclass
class Stage:
    name: str
    plan: FreezePlan
    learning_rate: float
    epochs: float
    augment: bool = False
    calibrated_batchnorm: int = 0  # BatchNorm layers re-estimated on the data before this stage


def plan_stages(run, head_stage: bool = True) -> list[Stage]:
    """The strategy as a list of stages. staged = feature extraction, then fine-tuning at the base's rate.
    `head_stage` False: lora trains the head with the adapters, in one stage."""
    transfer, training = run.transfer, run.training
    patterns = {"freeze": list(transfer.freeze), "unfreeze": list(transfer.unfreeze),
                "unfreeze_last_n": transfer.unfreeze_last_n, "layer_lr_decay": transfer.layer_lr_decay,
                "lr_multipliers": list(transfer.lr_multipliers)}
    augment = bool(run.data.augment)
    # Cached features are computed once from un-augmented inputs: the head stage augments only without a cache.
    head = Stage("head", FreezePlan("feature_extraction", **patterns), transfer.head_learning_rate,
                 transfer.head_epochs, augment and not transfer.cache_features)
    if augment and transfer.cache_features:
        logger.warning("--augment: the head-only stage trains on cached features of un-augmented inputs; "
                       "augmentation applies to the stage that trains the base%s",
                       " (--cache_features false augments the head's training too, at the cost of a pass of "
                       "the base every epoch)" if transfer.strategy == "feature_extraction" else "")
    if transfer.strategy == "feature_extraction":
        return [head]
    base_strategy = transfer.strategy
    if transfer.strategy in ("staged", "lora"):  # the user's patterns shape stage 2; stage 1 trains the head alone
        if transfer.strategy == "staged":
            base_strategy = "fine_tune" if transfer.unfreeze_last_n else "full"
        head.plan = FreezePlan("feature_extraction")
    tune = Stage(transfer.strategy, FreezePlan(base_strategy, **patterns), training.learning_rate,
                 training.num_train_epochs, augment)
    if transfer.strategy == "lora" and not head_stage:
        return [tune]
    return [head, tune] if transfer.strategy in ("staged", "lora") else [tune]


def default_learning_rate(model: torch.nn.Module, strategy: str = "full") -> float:
    """The base-training rate when the user gave none: attention models fine-tune at a far lower rate than convnets."""
    if strategy == "lora":
        return LORA_LEARNING_RATE[architecture(model)]
    return BASE_DEFAULTS[architecture(model)]["learning_rate"]


def auto_epochs(run, stage: "Stage", train_size: int, model: torch.nn.Module) -> float:
    """Epochs of a stage whose epochs the user did not give: enough optimizer steps for the data size."""
    kind = "head" if stage.plan.strategy == "feature_extraction" else "base"
    flag = "head_epochs" if kind == "head" else "num_train_epochs"
    if run.given(flag) or run.given("max_steps"):
        return stage.epochs
    world = max(1, run.training.world_size)
    steps_per_epoch = math.ceil(train_size / (run.training.per_device_train_batch_size * world))
    min_steps = HEAD_MIN_STEPS if kind == "head" else BASE_DEFAULTS[architecture(model)]["min_steps"]
    low, high = EPOCH_RANGE[kind]
    return float(min(max(low, math.ceil(min_steps / steps_per_epoch)), high))


class TransferTrainer(Trainer):
    """`Trainer` that never writes the Hub token (`training_args.bin` is saved without it) and groups batches by
    lengths computed once from the raw data (its own grouping would read them through the lazy transform)."""

    def __init__(self, *args, lengths: dict | None = None, plan: FreezePlan | None = None, **kwargs):
        self.lengths = lengths or {}
        self.plan = plan
        self._hits = self._seen = 0
        super().__init__(*args, **kwargs)
        # Classifiers average their loss over the batch. A forward that merely takes **kwargs (MobileNetV2's does,
        # and ignores them) makes the Trainer count items and multiply the loss by the number of processes, which
        # doubled gradients and logged losses under 2-process DDP; a mean over equal batches needs no rescaling.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The `Trainer`'s loss; single-label batches also count correct predictions, so every logging step reports
        `train_accuracy` at no extra forward pass (this process's batches since the last log)."""
        labels = inputs.get("labels")
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if labels is not None and labels.dim() == 1 and model.training:
            # a device tensor: read (one host sync) only when logged, never at every step
            self._hits = self._hits + (outputs.logits.detach().argmax(-1) == labels).sum()
            self._seen += len(labels)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs and self._seen:
            logs["train_accuracy"] = round(int(self._hits) / self._seen, 4)
            self._hits = self._seen = 0
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        """The `Trainer`'s optimizer, with one parameter group per (rate factor, weight decay) from the plan."""
        plan = self.plan
        if self.optimizer is not None or plan is None or not (plan.layer_lr_decay or plan.lr_multipliers):
            return super().create_optimizer(model)
        model = self.model if model is None else model
        factors = freezing.lr_factors(model, plan)
        decay_names = set(self.get_decay_parameter_names(model))
        groups: dict[tuple, list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                key = (factors.get(name, 1.0), self.args.weight_decay if name in decay_names else 0.0)
                groups.setdefault(key, []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls([{"params": params, "lr": self.args.learning_rate * factor,
                                         "weight_decay": weight_decay}
                                        for (factor, weight_decay), params in groups.items()], **optimizer_kwargs)
        return self.optimizer

    def _length_sampler(self, split: str, batch_size: int):
        lengths = self.lengths.get(split)
        if self.args.train_sampling_strategy != "group_by_length" or lengths is None:
            return None
        return LengthGroupedSampler(batch_size, lengths=lengths,
                                    generator=torch.Generator().manual_seed(self.args.seed))

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if len(dataset) == len(self.lengths.get("train") or []):
            sampler = self._length_sampler("train", self.args.train_batch_size * self.args.gradient_accumulation_steps)
            if sampler is not None:
                return sampler
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if len(eval_dataset) == len(self.lengths.get("validation") or []):
            sampler = self._length_sampler("validation", self.args.eval_batch_size)
            if sampler is not None:
                return sampler
        return super()._get_eval_sampler(eval_dataset)

    def _save(self, output_dir=None, state_dict=None):
        token, self.args.hub_token = self.args.hub_token, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token


def _above_half(logits, labels):
    return (logits > 0).int()  # sigmoid(logit) > 0.5


def make_compute_metrics(num_labels: int, multi_label: bool, extra_names=()):
    """Single-label: accuracy, macro F1/precision/recall, top-5 past 5 classes (the shipped `evaluate` modules),
    plus any `evaluate` module named in `extra_names`. Multi-label: micro/macro F1 and exact match."""
    if multi_label:
        return lambda prediction: multi_label_metrics(prediction.predictions, prediction.label_ids)
    extra = load_metrics([name for name in extra_names if name != "accuracy"])

    def compute(prediction):
        logits, references = prediction.predictions, prediction.label_ids
        result = classification_metrics(logits, references, num_labels)
        for metric in extra:
            result.update(metric.compute(predictions=logits.argmax(-1), references=references))
        return result

    return compute


def with_multi_hot_labels(transform, num_labels: int):
    """Label-id lists -> float vectors of 0/1, what `multi_label_classification` trains on."""
    def apply(batch):
        inputs = transform(batch)
        if "labels" in inputs:
            hot = torch.zeros(len(inputs["labels"]), num_labels)
            for row, ids in enumerate(inputs["labels"]):
                hot[row, list(ids)] = 1.0
            inputs["labels"] = hot.tolist()
        return inputs

    return apply


class Preprocess:
    """A `set_transform` function that `datasets` fingerprints by identity. It would pickle the function whole to
    hash it, processor or tokenizer included: 0.8 s a call for a BERT tokenizer, three calls a run, for a hash that
    only names caches of `map` results, which nothing makes from a lazily transformed split."""

    def __init__(self, function):
        self.function = function

    def __call__(self, batch):
        return self.function(batch)


def _fingerprint_by_identity(pickler, preprocess: Preprocess) -> None:
    pickler.save(f"hftransfer.Preprocess:{os.getpid()}:{id(preprocess)}")


try:  # datasets' own registry of reducers for hashing; ordinary pickling is unchanged
    from datasets.utils._dill import pklregister

    pklregister(Preprocess)(_fingerprint_by_identity)
except ImportError:  # another datasets layout: hashing is slower, nothing else changes
    pass


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by PyTorch on a GPU; else this process's peak resident memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


class TransferRun:
    """One run of the lesson: load, freeze, add head, train in stages, evaluate, save."""

    def __init__(self, run, task):
        self.run, self.task = run, task
        self.args = run.training
        self.history: list[dict] = []
        self.final_trainer: TransferTrainer | None = None  # the last stage's: it evaluates and saves
        self.eval_output = None

    # data and model --------------------------------------------------------
    def setup(self):
        set_seed(self.args.seed)
        if self.run.transfer.restart and self.args.should_save:  # an interrupted run's stages must not come back
            for old in Path(self.args.output_dir).glob("stage-*"):
                shutil.rmtree(old)
        with self.args.main_process_first(desc="data preparation"):
            self.splits, self.data_report = prepare_splits(self.run.data, self.task, self.args.seed,
                                                           self.run.explicit)
        self.labels = label_names(self.splits)
        self.multi_label = is_multi_label(self.splits["train"])
        transfer = self.run.transfer
        self.model, self.processor, self.head_replaced = load_model(
            self.task, self.run.model, self.labels, self.multi_label, transfer.head_hidden_sizes, transfer.head_dropout)
        self.decoder = anatomy.is_decoder_classifier(self.model)
        if self.decoder and not self.run.given("strategy"):
            self.run.transfer = replace(transfer, strategy="lora")
            logger.info("%s is a decoder classifier: strategy lora, its adapters and score head trained in one "
                        "stage (its head reads the last real token, which cached features do not carry, so a "
                        "head-only stage would cost a pass of the whole model every epoch)", type(self.model).__name__)
        if not hardware.fsdp_enabled(self.args):  # FSDP2 refuses the non-contiguous channels-last weights
            self.model = self.task.prepare_model(self.model)
        self.model.to(self.args.device)  # the cache extracts where it trains
        self.processor = self.task.adapt_processor(self.processor, self.model, self.splits)
        self.collator = self.task.collator(self.processor) or default_data_collator
        self._group_by_length()
        self.train_raw = self.splits["train"].with_transform(self.transform(train=False))
        self.eval_raw = self.splits["validation"].with_transform(self.transform(train=False))
        self.compute_metrics = make_compute_metrics(len(self.labels), self.multi_label,
                                                    self.run.transfer.metric_names)
        self.predictions = _above_half if self.multi_label else None  # single-label metrics need the logits (top-5)
        self._cache = {}
        logger.info("%d training and %d validation examples, %d classes", len(self.splits["train"]),
                    len(self.splits["validation"]), len(self.labels))

    def _group_by_length(self) -> None:
        """Texts of similar length share a batch, so dynamic padding pads little (Rotten Tomatoes snippets run from
        1 to 1,000 words: random batches pad most of them to the longest)."""
        self.lengths = {split: self.task.lengths(d, self.processor) for split, d in self.splits.items()}
        if self.lengths["train"] is not None and not self.run.given("train_sampling_strategy"):
            self.args = self.run.training = replace(self.args, train_sampling_strategy="group_by_length")

    def transform(self, train: bool):
        transform = self.task.transform(self.processor, train=train)
        return Preprocess(with_multi_hot_labels(transform, len(self.labels)) if self.multi_label else transform)

    def _stage_args(self, stage: Stage, **changes):
        output_dir = self.args.output_dir
        if self.args.save_strategy != "no":
            output_dir = os.path.join(output_dir, f"stage-{stage.name}")
        return self._final_args(learning_rate=stage.learning_rate, num_train_epochs=stage.epochs,
                                output_dir=output_dir, **changes)

    def _final_args(self, **changes):
        # The Trainer would create the repo and push each stage's checkpoints; the finished folder is pushed once,
        # after its checks (`hub.push`).
        return replace(self.args, push_to_hub=False, **changes)

    def _add_adapters(self, stage: Stage) -> dict:
        """Wrap the model (base frozen, head trainable) with LoRA adapters; returns the settings for the plan."""
        transfer = self.run.transfer
        self.model = lora.wrap(self.model, transfer, list(anatomy.head_modules(self.model)))
        targets = sorted(self.model.peft_config["default"].target_modules)
        return {"r": transfer.lora_r, "alpha": transfer.lora_alpha, "dropout": transfer.lora_dropout,
                "target_modules": targets}

    # feature cache ---------------------------------------------------------
    def _cache_layout(self):
        if "layout" not in self._cache and hardware.fsdp_enabled(self.args):
            logger.warning("FSDP: no feature cache (the base it would stand in for is what FSDP wraps and shards); "
                           "the head trains on the frozen base")
            self._cache["layout"] = None
        if "layout" not in self._cache:
            rows = [self.eval_raw[i] for i in range(min(4, len(self.eval_raw)))]
            batch = {k: v.to(self.args.device) for k, v in self.collator(rows).items()}
            try:
                layout = feature_cache.discover_layout(self.model, {k: v for k, v in batch.items() if k != "labels"})
            except (feature_cache.LayoutError, RuntimeError, TypeError, ValueError, AttributeError) as err:
                # a structure the cache cannot split is never a crash: the frozen base serves, only slower
                logger.warning("No feature cache for %s (%s: %s). Training on the frozen base without a cache",
                               type(self.model).__name__, type(err).__name__, err)
                self._cache["layout"] = None
                return None
            ok = feature_cache.agrees(self.model, batch, layout)
            if not ok:
                logger.warning("Cached features do not reproduce %s's own outputs: training on the frozen base "
                               "without a cache", type(self.model).__name__)
            elif layout.per_token:
                ok = False
                logger.warning("%s's head reads whole token sequences (%s), whose length changes from batch to "
                               "batch: training on the frozen base without a cache", type(self.model).__name__,
                               ", ".join(layout.per_token))
            self._cache["layout"] = layout if ok else None
        return self._cache["layout"]

    def _features(self, split: str):
        """The split's cached features, extracted where training runs, in its precision: each process extracts
        its share and all end with the whole matrix (one process's disk write). Kept on the training device."""
        if split not in self._cache:
            layout = self._cache_layout()
            precision = feature_cache.Precision.of(self.args)
            path = feature_cache.cache_path(self._on_main_process(lambda: self._cache_key(split, layout, precision)))
            world = self.args.world_size
            if all(gather_object([path.is_file()]) if world > 1 else [path.is_file()]):
                features, labels = feature_cache.load(path, f"Features ({split})")
            else:
                features, labels = self._extract(split, layout, precision)
                if self.args.should_save:
                    feature_cache.store(path, features, labels)
            self._cache[split] = feature_cache.FeatureDataset(features.to(self.args.device),
                                                              labels.to(self.args.device),
                                                              self.model.main_input_name)
        return self._cache[split]

    def _cache_key(self, split: str, layout, precision) -> str:
        return feature_cache.cache_key(resolve(self.run.model.model_name_or_path), self.run.model.model_revision,
                                       self.processor, feature_cache.data_fingerprint(self.splits[split]), layout,
                                       feature_cache.statistics_fingerprint(self.model),
                                       getattr(self.model.config, pooling.CONFIG_KEY, None), precision.describe())

    def _on_main_process(self, compute):
        """`compute()` on the main process only (hashing all the data once, not once per process), shared."""
        if self.args.world_size == 1:
            return compute()
        value = [compute() if self.args.process_index == 0 else None]
        broadcast_object_list(value, from_process=0)
        return value[0]

    def _extract(self, split: str, layout, precision):
        dataset = self.train_raw if split == "train" else self.eval_raw
        # shortest inputs first where lengths vary: features and labels stay paired, their order is free
        lengths = self.lengths[split]
        order = list(range(len(dataset))) if lengths is None else np.argsort(lengths, kind="stable").tolist()
        rows = feature_cache.share(order, self.args.process_index, self.args.world_size)
        workers = self.args.dataloader_num_workers
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, sampler=rows,
                                             collate_fn=self.collator, num_workers=workers,
                                             pin_memory=self.args.dataloader_pin_memory and precision.device.type
                                             == "cuda", persistent_workers=False)
        with precision.autocast():
            features, labels = feature_cache.extract(self.model, loader, layout, f"Features ({split})")
        return feature_cache.gather_shares(features, labels, self.args.world_size)

    @staticmethod
    def _on_cache(args) -> dict:
        """Trainer settings over cached features: whole batches indexed from the matrix where it sits (no workers
        to fork every epoch, nothing to pin: it may already be on the device)."""
        return {"args": replace(args, dataloader_num_workers=0, dataloader_pin_memory=False),
                "data_collator": feature_cache.collate_batch}

    def _trains_on_cache(self) -> bool:
        """Whether the model as now frozen can train on cached features: the whole base frozen, and a layout that
        reproduces the model's own logits."""
        head = {n for g in anatomy.param_groups(self.model) if g.name == "head" for n in g.params}
        base_frozen = not any(p.requires_grad for n, p in self.model.named_parameters() if n not in head)
        return self.run.transfer.cache_features and base_frozen and self._cache_layout() is not None

    # killed runs ------------------------------------------------------------
    def _checkpointing(self) -> bool:
        return self.args.save_strategy != "no"

    def _restore_finished(self, stage: Stage) -> bool:
        """A stage an earlier, interrupted run of this command finished: its model is loaded, not retrained."""
        if not self._checkpointing() or self.run.transfer.restart:
            return False
        record = resume.restore_completed(self.model, resume.stage_dir(self.args.output_dir, stage.name))
        if record is None:
            return False
        self._apply_plan(stage.plan)  # what trains next, and the plan
        stage.plan.lora = record["plan"].get("lora")
        self.history.append(record)
        logger.info("Stage '%s' was finished by an earlier run: restored from %s", stage.name,
                    resume.stage_dir(self.args.output_dir, stage.name))
        return True

    def _resume_checkpoint(self, stage: Stage) -> str | None:
        """`--resume_from_checkpoint PATH` when it is this stage's, else this stage's last complete checkpoint."""
        if not self._checkpointing() or self.run.transfer.restart:
            return None
        folder = resume.stage_dir(self.args.output_dir, stage.name)
        given = self.args.resume_from_checkpoint
        if given and Path(given).is_dir():
            chosen = given if Path(given).resolve().parent == folder.resolve() else None
        else:
            found = resume.complete_checkpoints(folder)
            chosen = str(found[0]) if found else None
        if chosen:
            logger.info("Resuming stage '%s' from %s (an earlier run of this command stopped there; --restart "
                        "starts over)", stage.name, chosen)
        return chosen

    def _apply_plan(self, plan) -> None:
        """What trains next (requires_grad, BatchNorm modes), recorded in the plan."""
        transfer = self.run.transfer
        freezing.apply(self.model, plan, transfer.reset_bn_momentum, transfer.freeze_bn_stats)

    def _mark_finished(self, stage: Stage) -> None:
        if self._checkpointing() and self.args.should_save:
            resume.mark_completed(self.model, resume.stage_dir(self.args.output_dir, stage.name), self.history[-1])

    def _calibrate_batchnorm_for(self, stage: Stage) -> int:
        """Before the head-only stage: the BatchNorm layers that `stage` will train get the training data's
        statistics, so the head learns the features `stage` starts from (`freezing.calibrate_batchnorm`)."""
        if not self.run.transfer.calibrate_bn:
            return 0
        names = freezing.batchnorm_to_train(self.model, stage.plan, self.run.transfer.freeze_bn_stats)
        if names:  # every process makes the same pass, so all hold the same statistics
            loader = torch.utils.data.DataLoader(self.train_raw, batch_size=self.args.per_device_eval_batch_size,
                                                 collate_fn=self.collator)
            freezing.calibrate_batchnorm(self.model, names, loader)
            logger.info("BatchNorm statistics of the %d layers that stage '%s' trains re-estimated on the training "
                        "data before the head trains (--calibrate_bn)", len(names), stage.name)
        return len(names)

    # stages ----------------------------------------------------------------
    def train_stage(self, stage: Stage, last: bool = False) -> dict:
        """Train one stage. The last one also evaluates, through its own trainer: the engine it prepared
        (DeepSpeed's, FSDP's) serves the evaluation, which a new trainer would have to initialise again."""
        self._apply_plan(stage.plan)
        if self.args.should_log:
            logger.info("Stage '%s' (lr %.2g, %.3g epochs):\n%s", stage.name, stage.learning_rate, stage.epochs,
                        freezing.report(self.model, stage.plan))
        if self.args.gradient_checkpointing or getattr(self.args, "activation_checkpointing", False):
            try:  # checkpointed blocks after frozen embeddings would otherwise get inputs without grad: no gradients
                self.model.enable_input_require_grads()
            except (NotImplementedError, AttributeError):
                pass  # no input embeddings to hook (convnets)
        adapted = stage.plan.strategy == "lora"
        if adapted:
            stage.plan.lora = self._add_adapters(stage)
        cached = not adapted and self._trains_on_cache()
        evaluating = self.args.eval_strategy != "no"
        common = {"model": self.model, "args": self._stage_args(stage), "plan": stage.plan,
                  "compute_metrics": self.compute_metrics if evaluating else None,
                  "preprocess_logits_for_metrics": self.predictions if evaluating else None}
        if cached:
            train, layout = self._features("train"), self._cache["layout"]
            held_out = self._features("validation") if evaluating or last else None  # extracted by the real base
            with feature_cache.swapped_base(self.model, feature_cache.CachedBase(layout)):
                trainer = TransferTrainer(train_dataset=train, eval_dataset=held_out,
                                          **{**common, **self._on_cache(common["args"])})
                result = trainer.train(resume_from_checkpoint=self._resume_checkpoint(stage))
                if last:
                    self._evaluate_with(trainer, held_out)
        else:
            train = self.splits["train"].with_transform(self.transform(train=stage.augment))
            trainer = TransferTrainer(train_dataset=train, eval_dataset=self.eval_raw if evaluating else None,
                                      data_collator=self.collator, lengths=self.lengths, **common)
            result = trainer.train(resume_from_checkpoint=self._resume_checkpoint(stage))
            if last:  # LoRA: before the merge, which changes the weights by float rounding only
                self._evaluate_with(trainer, self.eval_raw)
        metrics = {**result.metrics, "stage": stage.name, "cached_features": cached,
                   "trainable_parameters": freezing.trainable_count(self.model)[0]}
        if adapted:  # a plain model again, so saving and the demo need no PEFT
            adapter_dir = Path(self.args.output_dir) / ADAPTER_FOLDER if self.args.should_save else None
            self.model = trainer.model = lora.merge(self.model, adapter_dir)  # the trainer saves the merged model
        if last:
            self.final_trainer = trainer
        else:
            self._release(trainer)
        self.history.append({"stage": stage.name, "learning_rate": stage.learning_rate, "epochs": stage.epochs,
                             "calibrated_batchnorm": stage.calibrated_batchnorm, "plan": asdict(stage.plan),
                             "metrics": metrics,
                             "log": trainer.state.log_history})
        self._mark_finished(stage)
        return metrics

    def _evaluate_with(self, trainer: TransferTrainer, dataset) -> None:
        trainer.compute_metrics, trainer.preprocess_logits_for_metrics = self.compute_metrics, self.predictions
        self.eval_output = trainer.predict(dataset, metric_key_prefix="eval")

    @staticmethod
    def _release(trainer: TransferTrainer) -> None:
        """A finished stage lets go of its engine: Accelerate destroys a DeepSpeed engine (whose gradient hooks would
        stay live on the parameters the next stage trains) and drops the prepared model, optimizer and loaders."""
        trainer.accelerator.free_memory()
        trainer.model_wrapped = trainer.model

    def evaluate(self) -> tuple[TransferTrainer, dict]:
        """The last stage's evaluation (`train_stage`); where that stage was restored from an earlier run, a new
        evaluation, through the cache when the stage trained on it."""
        if self.eval_output is None:
            self._evaluate_restored()
        output, trainer = self.eval_output, self.final_trainer
        self.eval_predictions, self.eval_references = output.predictions, output.label_ids  # for the report
        metrics = dict(output.metrics)
        metrics.pop("epoch", None)  # the evaluation trained nothing; train_results.json has the epochs
        metrics["eval_samples"] = len(self.splits["validation"])
        return trainer, metrics

    def _evaluate_restored(self) -> None:
        args = self._final_args(eval_strategy="no")
        if self.history[-1]["metrics"]["cached_features"]:
            features = self._features("validation")  # extracted by the real base, before the swap
            with feature_cache.swapped_base(self.model, feature_cache.CachedBase(self._cache_layout())):
                self.final_trainer = TransferTrainer(model=self.model, **self._on_cache(args))
                self._evaluate_with(self.final_trainer, features)
        else:
            self.final_trainer = TransferTrainer(model=self.model, args=args, data_collator=self.collator,
                                                 lengths=self.lengths)
            self._evaluate_with(self.final_trainer, self.eval_raw)

    # the whole run ---------------------------------------------------------
    def execute(self) -> dict:
        start = time.time()
        self.setup()
        stages = plan_stages(self.run, head_stage=not self.decoder)
        for stage in stages:
            freezing.check_trains(self.model, stage.plan, stage.name)
        for stage, following in zip(stages, stages[1:] + [None]):
            stage.epochs = auto_epochs(self.run, stage, len(self.splits["train"]), self.model)
            if stage.plan.strategy != "feature_extraction" and not self.run.given("learning_rate"):
                stage.learning_rate = default_learning_rate(self.model, stage.plan.strategy)
            if not self._restore_finished(stage):
                if following is not None and stage.plan.strategy == "feature_extraction":
                    stage.calibrated_batchnorm = self._calibrate_batchnorm_for(following)
                self.train_stage(stage, last=following is None)
        trainer, eval_metrics = self.evaluate()
        train_metrics = self._train_metrics(time.time() - start)
        self.save(trainer, train_metrics, eval_metrics, stages)
        self.push()
        return {**train_metrics, **eval_metrics}

    def _train_metrics(self, wall: float) -> dict:
        stages = [h["metrics"] for h in self.history]
        return {"train_samples": len(self.splits["train"]), "train_runtime": sum(m["train_runtime"] for m in stages),
                "train_loss": stages[-1]["train_loss"], "epoch": sum(m.get("epoch", 0) for m in stages),
                "total_runtime": round(wall, 2), "trainable_parameters": stages[-1]["trainable_parameters"],
                "skipped_examples": self.data_report.total_skipped, "peak_memory_mb": peak_memory_mb()}

    def save(self, trainer: TransferTrainer, train_metrics: dict, eval_metrics: dict, stages: list[Stage]):
        """Model, processor, metrics in the `save_metrics` convention, freeze plan, the run's record, report, demo
        examples and model card: written to a staging folder, then moved into `output_dir` file by file."""
        out = Path(self.args.output_dir)
        staging = out / STAGING
        with self.args.main_process_first(desc="staging folder"):
            if self.args.should_save:
                staging = resume.staging_dir(out)
        trainer.save_model(str(staging))  # every process: sharded (FSDP, DeepSpeed) weights are gathered here
        if not trainer.is_world_process_zero():
            return
        self.processor.save_pretrained(staging)
        all_results = {**train_metrics, **eval_metrics}
        for name, metrics in (("train", train_metrics), ("eval", eval_metrics), ("all", all_results)):
            (staging / outputs.results_file(name)).write_text(json.dumps(metrics, indent=4, sort_keys=True) + "\n")
        stages[-1].plan.save(staging)
        record = {"settings": self.run.to_dict(), "stages": self.history, "data": self.data_report.to_dict(),
                  "head_replaced": self.head_replaced, "labels": self.labels, "multi_label": self.multi_label,
                  "world_size": self.args.world_size}
        (staging / RUN_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
        self._write_report(staging, eval_metrics, stages[-1].plan)
        self._save_examples(staging / EXAMPLES_FOLDER)
        card.write_card(staging, self.run.training.hub_model_id or out.resolve().name)
        resume.publish(staging, out)
        logger.info(self.data_report.summary())
        logger.info("Report: %s; model card: %s", out / REPORT_DIR / REPORT_MD, out / CARD)

    def _write_report(self, out: Path, eval_metrics: dict, plan: FreezePlan) -> None:
        single = not self.multi_label
        report.write_report(out, labels=self.labels, history=self.history, metrics=eval_metrics, plan=asdict(plan),
                            predictions=self.eval_predictions.argmax(-1).tolist() if single else None,
                            references=self.eval_references.tolist() if single else None)

    def _save_examples(self, folder: Path, count: int = 8) -> None:
        """A few validation inputs, one class after another, for the demo's examples."""
        validation = self.splits["validation"]
        column = self.task.input_columns(self.run.data)[0]
        chosen: dict = {}
        for index, label in enumerate(validation["label"]):
            key = tuple(label) if self.multi_label else label
            chosen.setdefault(key, index)
            if len(chosen) == count:
                break

        def name(key):
            return "+".join(self.labels[i] for i in key) if self.multi_label else self.labels[key]

        self.task.save_examples([(validation[i][column], name(key)) for key, i in chosen.items()], folder)

    def push(self) -> str | None:
        """`--push_to_hub`: the main process pushes the finished folder, after `hub.push`'s checks."""
        if not (self.args.push_to_hub and self.args.should_save):
            return None
        return hub.push(self.args.output_dir, repo_id=self.args.hub_model_id, token=self.args.hub_token,
                        private=self.args.hub_private_repo)
