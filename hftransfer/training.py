"""One run of the lesson: load, freeze, add a head, train in stages, evaluate, save.

Each stage gets a fresh `Trainer`: `create_optimizer` keeps only the parameters that need grad when it runs, and
changing `requires_grad` after DDP wrapping breaks the reducer, so the optimizer, scheduler and distributed wrapper
are rebuilt for what trains in that stage. A head stage whose base is wholly frozen trains on cached features
(`feature_store`). The settings are resolved by `choices` as the facts they need arrive (data, model), before the first
stage; the stages come from the strategy registry (`strategies`); the output folder is written by `saving`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import default_data_collator, set_seed

from . import anatomy, data_quality, features, freezing, hardware, lora, saving
from .choices import Choices, choose_for_labels, choose_for_model, choose_stages
from .data import class_counts, is_multi_label, label_names, prepare_splits
from .feature_store import FeatureStore, Source
from .metrics import check_best_metric
from .modeling import check_padding, check_runs, load_model
from .outputs import ADAPTER_FOLDER
from .resume import StageCheckpoints
from .selection import BestEpoch, ClassLoss
from .strategies import ADAPTERS, HEAD, Stage
from .trainer import (Preprocess, TransferTrainer, above_half, logits_only, make_compute_metrics,
                      with_multi_hot_labels)

logger = logging.getLogger(__name__)


class TransferRun:
    """One run: `execute` is the lesson in order; `setup` resolves the settings and prepares data and model."""

    def __init__(self, run, task, choices: Choices | None = None):
        self.run, self.task = run, task
        self.choices = choices or Choices()  # the hardware's were made before logging started (`recipe.main`)
        self.history: list[dict] = []
        self.final_trainer: TransferTrainer | None = None  # the last stage's: it evaluates and saves
        self.eval_output = None
        self.data_quality: dict | None = None

    @property
    def args(self):
        return self.run.training

    @property
    def evaluating(self) -> bool:  # while training (--eval_strategy); the final evaluation always runs
        return self.args.eval_strategy != "no"

    def execute(self) -> dict:
        start = time.time()
        self.setup()
        self.checkpoints = StageCheckpoints.of(self.args, self.run, self.splits)  # not in setup: `check` trains nothing
        self.data_quality = data_quality.before_training(self)
        stages = choose_stages(self.run, self.model, len(self.splits["train"]), not self.decoder, self.choices)
        check_stages(self, stages)
        for stage, following in zip(stages, stages[1:] + [None]):
            if not self._restore_finished(stage):
                if following is not None and stage.kind == HEAD:
                    stage.calibrated_batchnorm = calibrate_batchnorm_for(self, following)
                self.train_stage(stage, last=following is None)
        trainer, eval_metrics = self.evaluate(stages[-1])
        train_metrics = saving.train_metrics(self, time.time() - start)
        saving.save_run(self, trainer, train_metrics, eval_metrics, stages[-1].plan)
        saving.push(self.args)
        return {**train_metrics, **eval_metrics}

    # data and model --------------------------------------------------------
    def setup(self) -> None:
        set_seed(self.args.seed)
        with self.args.main_process_first(desc="data preparation"):
            self.splits, self.data_report, data_args = prepare_splits(self.run.data, self.task, self.args.seed,
                                                                      self.run.explicit, self.choices)
        self.run, self.task = replace(self.run, data=data_args), self.task.with_data(data_args)
        self.labels = label_names(self.splits)
        self.multi_label = is_multi_label(self.splits["train"])
        counts = None if self.multi_label else class_counts(self.splits["train"], len(self.labels))
        self.run = choose_for_labels(self.run, counts, self.choices)
        self.class_loss = ClassLoss.for_counts(self.run.transfer.class_weights, counts)
        self._load_model()
        self.lengths = {split: self.task.lengths(d, self.processor) for split, d in self.splits.items()}
        self.run = choose_for_model(self.run, self.model, self.decoder, self.lengths, self.choices)
        inputs = {split: d.with_transform(self.transform(train=False)) for split, d in self.splits.items()}
        self.train_raw, self.eval_raw = inputs["train"], inputs["validation"]
        source = Source(self.run.model.model_name_or_path, self.run.model.model_revision, self.processor, self.splits)
        self.store = FeatureStore(self.args, source, inputs, self.lengths, self.collator)
        self.compute_metrics = make_compute_metrics(len(self.labels), self.multi_label,
                                                    self.run.transfer.metric_names)
        self.epoch_metrics = make_compute_metrics(len(self.labels), self.multi_label, every_epoch=True)
        check_best_metric(self.args.metric_for_best_model or "accuracy", len(self.labels), self.multi_label)
        self.predictions = above_half if self.multi_label else logits_only  # single-label metrics need the logits
        logger.info("%d training and %d validation examples, %d classes", len(self.splits["train"]),
                    len(self.splits["validation"]), len(self.labels))
        if not hardware.shards_parameters(self.args):  # a sharded model runs only once wrapped
            check_runs(self.model, self.eval_raw, self.collator, self.processor, self.args.device)
            if not self.decoder:  # a decoder reads its last real token: equal batched and alone (tested)
                probe = self.task.padding_probe(self.processor, self.splits["train"])
                check_padding(self.model, probe, self.args.device)

    def _load_model(self) -> None:
        transfer = self.run.transfer
        self.model, self.processor, self.head_replaced = load_model(
            self.task, self.run.model, self.labels, self.multi_label, transfer.head_hidden_sizes, transfer.head_dropout)
        self.decoder = anatomy.is_decoder_classifier(self.model)
        if not hardware.fsdp_enabled(self.args):  # FSDP2 refuses the non-contiguous channels-last weights
            self.model = self.task.prepare_model(self.model)
        self.model.to(self.args.device)  # the cache extracts where it trains
        self.processor = self.task.adapt_processor(self.processor, self.model, self.splits, self.choices)
        self.collator = self.task.collator(self.processor) or default_data_collator

    def transform(self, train: bool):
        transform = self.task.transform(self.processor, train=train)
        return Preprocess(with_multi_hot_labels(transform, len(self.labels)) if self.multi_label else transform)

    def _trainer_args(self, stage: Stage | None = None, **changes):
        # no push of each stage's checkpoints: the finished folder is pushed once, after its checks (`hub.push`)
        if stage is not None:
            changes.update(learning_rate=stage.learning_rate, num_train_epochs=stage.epochs,
                           weight_decay=stage.weight_decay, output_dir=self.checkpoints.trainer_output_dir(stage.name))
        return replace(self.args, push_to_hub=False, **changes)

    # stages ----------------------------------------------------------------
    def _apply_plan(self, plan) -> None:
        """What trains next (requires_grad, BatchNorm modes), recorded in the plan."""
        freezing.apply(self.model, plan, self.run.transfer.reset_bn_momentum, self.run.transfer.freeze_bn_stats)

    def _restore_finished(self, stage: Stage) -> bool:
        """A stage an earlier, interrupted run of this command finished: its model is loaded, not retrained."""
        record = self.checkpoints.finished(self.model, stage.name)
        if record is None:
            return False
        self._apply_plan(stage.plan)  # what trains next, and the plan
        stage.plan.lora = record["plan"].get("lora")
        stage.cached_features = record["metrics"]["cached_features"]
        self.history.append(record)
        return True

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
        if stage.kind == ADAPTERS:
            self.model = lora.wrap(self.model, self.run.transfer, stage.lora_targets, hardware.fsdp_enabled(self.args))
            stage.plan.lora = lora.settings(self.model, self.run.transfer)
        stage.cached_features = stage.kind != ADAPTERS and self.store.serves(
            self.model, stage.name, self.run.transfer.cache_features, self.choices)
        trainer, result = (self._train_on_cache if stage.cached_features else self._train_on_inputs)(stage, last)
        metrics = {**result.metrics, "stage": stage.name, "cached_features": stage.cached_features,
                   "trainable_parameters": freezing.trainable_count(self.model)[0], **stage.selection.summary()}
        if stage.kind == ADAPTERS:  # a plain model again, so saving and the demo need no PEFT
            adapter_dir = Path(self.args.output_dir) / ADAPTER_FOLDER if self.args.should_save else None
            self.model = trainer.model = lora.merge(self.model, adapter_dir)  # the trainer saves the merged model
        if last:
            self.final_trainer = trainer
        else:
            trainer.release()
        self.history.append({"stage": stage.name, "kind": stage.kind, "learning_rate": stage.learning_rate,
                             "weight_decay": stage.weight_decay, "epochs": stage.epochs,
                             "calibrated_batchnorm": stage.calibrated_batchnorm,
                             "plan": asdict(stage.plan), "metrics": metrics, "log": trainer.state.log_history})
        self.checkpoints.mark_finished(self.model, stage.name, self.history[-1])
        return metrics

    def _common(self, stage: Stage) -> dict:
        stage.selection = BestEpoch(self.args.metric_for_best_model or "accuracy", stage.patience,
                                    self.run.transfer.keep_best_epoch)
        return {"model": self.model, "args": self._trainer_args(stage), "plan": stage.plan,
                "class_loss": self.class_loss, "rdrop_weight": stage.rdrop_weight,
                "adversarial_epsilon": stage.adversarial_epsilon,
                "callbacks": [stage.selection] if self.evaluating else None,
                "compute_metrics": self.epoch_metrics if self.evaluating else None,
                "preprocess_logits_for_metrics": self.predictions if self.evaluating else None}

    def _train_on_cache(self, stage: Stage, last: bool):
        common = self._common(stage)
        train = self.store.features(self.model, "train")
        held_out = self.store.features(self.model, "validation") if self.evaluating or last else None  # real base
        with features.swapped_base(self.model, features.CachedBase(self.store.layout(self.model))):
            trainer = TransferTrainer(train_dataset=train, eval_dataset=held_out,
                                      **{**common, **FeatureStore.trainer_settings(common["args"])})
            result = trainer.train(resume_from_checkpoint=self.checkpoints.resume_from(stage.name))
            if last:
                self._evaluate_with(trainer, held_out)
        return trainer, result

    def _train_on_inputs(self, stage: Stage, last: bool):
        train = self.splits["train"].with_transform(self.transform(train=stage.augment))
        trainer = TransferTrainer(train_dataset=train, eval_dataset=self.eval_raw if self.evaluating else None,
                                  data_collator=self.collator, lengths=self.lengths, **self._common(stage))
        result = trainer.train(resume_from_checkpoint=self.checkpoints.resume_from(stage.name))
        if last:  # LoRA: before the merge, which changes the weights by float rounding only
            self._evaluate_with(trainer, self.eval_raw)
        return trainer, result

    # evaluation ------------------------------------------------------------
    def _evaluate_with(self, trainer: TransferTrainer, dataset) -> None:
        trainer.compute_metrics, trainer.preprocess_logits_for_metrics = self.compute_metrics, self.predictions
        self.eval_output = trainer.predict(dataset, metric_key_prefix="eval")

    def evaluate(self, last: Stage) -> tuple[TransferTrainer, dict]:
        """The last stage's evaluation (`train_stage`); where that stage was restored from an earlier run, a new
        evaluation, through the cache when the stage trained on it."""
        if self.eval_output is None:
            self._evaluate_restored(last)
        output, trainer = self.eval_output, self.final_trainer
        self.eval_predictions, self.eval_references = output.predictions, output.label_ids  # for the report
        metrics = saving.headline_first(dict(output.metrics), self.args.metric_for_best_model)
        metrics.pop("epoch", None)  # the evaluation trained nothing; train_results.json has the epochs
        metrics["eval_samples"] = len(self.splits["validation"])
        return trainer, metrics

    def _evaluate_restored(self, last: Stage) -> None:
        args = self._trainer_args(eval_strategy="no")
        if last.cached_features:
            held_out = self.store.features(self.model, "validation")  # extracted by the real base, before the swap
            with features.swapped_base(self.model, features.CachedBase(self.store.layout(self.model))):
                self.final_trainer = TransferTrainer(model=self.model, **FeatureStore.trainer_settings(args))
                self._evaluate_with(self.final_trainer, held_out)
        else:
            self.final_trainer = TransferTrainer(model=self.model, args=args, data_collator=self.collator,
                                                 lengths=self.lengths)
            self._evaluate_with(self.final_trainer, self.eval_raw)


def check_stages(run: TransferRun, stages: list[Stage]) -> None:
    """What the stages' plans would fail on, as errors before the first stage trains: a stage that trains nothing,
    LoRA without targets, a new head no stage trains."""
    for stage in stages:
        freezing.check_trains(run.model, stage.plan, stage.name)
        if stage.kind == ADAPTERS:  # no adapter targets: an error now, not after the head's stage
            stage.lora_targets = lora.resolve_targets(run.model, list(run.run.transfer.lora_target_modules))
    if run.head_replaced:
        freezing.check_new_head_trains(run.model, [stage.plan for stage in stages])


def calibrate_batchnorm_for(run: TransferRun, stage: Stage) -> int:
    """Before the head-only stage (--calibrate_bn): the BatchNorm layers that `stage` will train get the training
    data's statistics, so the head learns the features `stage` starts from (`freezing.calibrate_batchnorm`)."""
    if not run.run.transfer.calibrate_bn:
        return 0
    batches = torch.utils.data.DataLoader(run.train_raw, batch_size=run.args.per_device_eval_batch_size,
                                          collate_fn=run.collator)
    count = freezing.calibrate_for(run.model, stage.plan, run.run.transfer.freeze_bn_stats, batches)
    if count:
        logger.info("BatchNorm statistics of the %d layers that stage '%s' trains re-estimated on the training "
                    "data before the head trains (--calibrate_bn)", count, stage.name)
    return count
