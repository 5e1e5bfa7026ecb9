"""The `Trainer` of every stage, and what it is handed: metrics, label encoding, the lazy preprocessing.

`TransferTrainer` is the `Trainer` with three changes a transfer run needs: it never writes the Hub token, it groups
batches by lengths computed once from the raw data, and it builds one optimizer group per learning-rate factor of the
freeze plan (`--layer_lr_decay`, `--lr_multipliers`). It also reports `train_accuracy` from the training batches, and
adds the regularising losses a stage asks for: R-Drop's and adversarial training's on the input embeddings (FGM).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import freezing, hardware
from .anatomy import input_embeddings
from .freezing import FreezePlan
from .metrics import classification_metrics, epoch_metrics, load_metrics, multi_label_metrics
from .selection import ClassLoss

logger = logging.getLogger(__name__)

# What wrappers insert in parameter names: FSDP version 1 (FSDP2 keeps the names), its activation checkpointing, and
# torch.compile. DDP and DeepSpeed wrap after the optimizer is made.
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _original_name(name: str) -> str:
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch) alone. The Trainer sets the epoch (`set_epoch`,
    through Accelerate's loader): a run resumed from a checkpoint then draws its later epochs as the uninterrupted
    run did, where one generator drawn from epoch after epoch (kept in no checkpoint) would restart at the first
    epoch's order."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class TransferTrainer(Trainer):
    """`Trainer` that never writes the Hub token (`training_args.bin` is saved without it) and groups batches by
    lengths computed once from the raw data (its own grouping would read them through the lazy transform)."""

    def __init__(self, *args, lengths: dict | None = None, plan: FreezePlan | None = None,
                 class_loss: ClassLoss | None = None, rdrop_weight: float = 0.0, adversarial_epsilon: float = 0.0,
                 **kwargs):
        self.lengths = lengths or {}
        self.class_loss = class_loss  # single-label training loss only; evaluation reports the plain loss
        self.rdrop_weight = rdrop_weight
        self._hits = self._seen = 0
        super().__init__(*args, **kwargs)
        self.adversarial = (AdversarialEmbeddings(input_embeddings(self.model), adversarial_epsilon)
                            if adversarial_epsilon else None)
        if hardware.fsdp_enabled(self.args):  # each trainer's Accelerate wraps the model anew, when it trains
            hardware.prepare_for_fsdp(self.model)
            hardware.settle_fsdp_precision(self.model)  # wrapped by an earlier stage: settled for what trains now
        # read off the model as handed over: FSDP (version 1) and torch.compile rename parameters when they wrap it
        self.rate_factors = freezing.lr_factors(self.model, plan) if plan is not None else {}
        # Classifiers average their loss over the batch. A forward that merely takes **kwargs (MobileNetV2's does,
        # and ignores them) makes the Trainer count items and multiply the loss by the number of processes, which
        # doubled gradients and logged losses under 2-process DDP; a mean over equal batches needs no rescaling.
        self.model_accepts_loss_kwargs = False

    def evaluate(self, *args, **kwargs):
        """The `Trainer`'s evaluation, leaving the random stream as it found it: every DataLoader iterator draws a
        seed from it, so validating after each epoch would otherwise change the shuffles and dropout masks of the
        epochs after it (measured: Fashion-MNIST 3,000 / 10,000 went from 0.907 to 0.902 by that alone)."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """Under DDP the `Trainer` averages per-batch mean losses, the last batch filled with repeated examples to even
        the processes' shares: the loss weighs those twice. Where the gathered predictions are at hand (each example
        once), the loss is recomputed from them: the loss one process reports."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        key = f"{metric_key_prefix}_loss"
        if self.args.world_size > 1 and key in output.metrics and output.label_ids is not None and \
                output.predictions is not None:
            output.metrics[key] = self._loss_of(output.predictions, output.label_ids)
        return output

    def _loss_of(self, predictions, labels) -> float:
        """The model's own loss (with `--label_smoothing_factor`, as the Trainer evaluates it) over every example."""
        logits = torch.as_tensor(predictions[0] if isinstance(predictions, tuple) else predictions).float()
        labels = torch.as_tensor(labels)
        if labels.dim() == 1:
            return F.cross_entropy(logits, labels.long(), label_smoothing=self.args.label_smoothing_factor).item()
        return F.binary_cross_entropy_with_logits(logits, labels.float()).item()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The `Trainer`'s loss. In single-label training it is adjusted for class sizes when `class_loss` is given
        (`selection`), and with `rdrop_weight` each batch runs twice in one doubled forward pass, under different
        dropout masks: the loss is the mean of the two passes' plus the weight times their symmetric KL (R-Drop,
        Liang et al. 2021). With `adversarial_epsilon` the batch then runs again with its input embeddings moved
        along that loss's gradient (`AdversarialEmbeddings`), and that pass's label loss is added. Single-label
        batches also count correct predictions, so every logging step reports `train_accuracy` at no extra forward
        pass (the batches of every process since the last log)."""
        labels = inputs.get("labels")
        single_label = labels is not None and labels.dim() == 1 and model.training
        if single_label and (self.class_loss is not None or self.rdrop_weight or self.adversarial):
            passes = 2 if self.rdrop_weight else 1
            features = {k: v for k, v in inputs.items() if k != "labels"}
            if passes > 1:  # R-Drop's two passes as one doubled batch
                features = {k: torch.cat([v, v]) for k, v in features.items()}
            outputs = model(**features)
            logits = outputs.logits.chunk(passes)
            loss = self._mean_label_loss(logits, labels)
            if self.rdrop_weight:
                loss = loss + self.rdrop_weight * symmetric_kl(*logits)
            if self.adversarial:
                moved = self.adversarial.pass_against(loss, lambda: model(**features).logits, self._backward_now)
                loss = loss.detach() + self._mean_label_loss(moved.chunk(passes), labels)
            outputs.logits = logits[0]
        else:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if self.adversarial and model.training:  # multi-label: the model's own loss, on the moved embeddings
                loss = loss.detach() + self.adversarial.pass_against(loss, lambda: model(**inputs).loss,
                                                                     self._backward_now)
        if single_label:
            # a device tensor: read (one host sync) only when logged, never at every step
            self._hits = self._hits + (outputs.logits.detach().argmax(-1) == labels).sum()
            self._seen += len(labels)
        return (loss, outputs) if return_outputs else loss

    def _backward_now(self, loss: torch.Tensor) -> None:
        """A part of the step's loss back-propagated before the rest is computed, scaled as `training_step` scales
        the loss it is returned (the gradients add up to those of the sum, the part's graph freed early)."""
        self.accelerator.backward(loss / getattr(self, "current_gradient_accumulation_steps", 1))

    def _mean_label_loss(self, logits: tuple, labels: torch.Tensor) -> torch.Tensor:
        return sum(self._label_loss(each, labels) for each in logits) / len(logits)

    def _label_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_loss is not None:
            return self.class_loss(logits, labels)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs:  # the training loss, which every process logs together (the Trainer gathers it first)
            hits, seen = self._training_hits()
            if seen:
                logs["train_accuracy"] = round(hits / seen, 4)
            self._hits = self._seen = 0
        super().log(logs, *args, **kwargs)

    def _training_hits(self) -> tuple[int, int]:
        """Correct predictions and examples since the last log, summed over the processes."""
        counts = torch.tensor([int(self._hits), self._seen], device=self.args.device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return int(counts[0]), int(counts[1])

    def create_optimizer(self, model=None):
        """The `Trainer`'s optimizer, with one parameter group per (rate factor, weight decay) from the plan and
        the model (`freezing.lr_factors`, read when the trainer was made), found by the parameters' original names."""
        model = self.model if model is None else model
        factors = {} if self.optimizer is not None else self.rate_factors
        if all(factor == 1.0 for factor in factors.values()):
            return super().create_optimizer(model)
        decay_names = set(self.get_decay_parameter_names(model))
        groups: dict[tuple, list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                factor = factors.get(_original_name(name))
                if factor is None:
                    raise ValueError(f"Learning-rate factors: no factor for parameter {name!r}, a name the model "
                                     "did not have when the stage began (FSDP version 1 needs "
                                     "fsdp_use_orig_params: true)")
                key = (factor, self.args.weight_decay if name in decay_names else 0.0)
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
        return EpochSeededLengthSampler(batch_size, lengths, self.args.seed)

    def _save_checkpoint(self, model, trial):
        # what callbacks keep beside the weights goes in first: trainer_state.json, which the Trainer writes last,
        # marks a checkpoint complete (`resume.complete_checkpoints`)
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "save_to"):
                    callback.save_to(folder)
        super()._save_checkpoint(model, trial)

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

    def release(self) -> None:
        """A finished stage lets go of its engine: Accelerate destroys a DeepSpeed engine (whose gradient hooks would
        stay live on the parameters the next stage trains) and drops the prepared model, optimizer and loaders."""
        self.accelerator.free_memory()
        self.model_wrapped = self.model
        if self.adversarial:
            self.adversarial.remove()

    def _save(self, output_dir=None, state_dict=None):
        token, self.args.hub_token = self.args.hub_token, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token


class AdversarialEmbeddings:
    """Adversarial training on the input embeddings (FGM, Miyato et al. 2017): a forward hook on the embedding table
    keeps its output in training; `pass_against` moves that output by `epsilon` (per example, L2 over the sequence's
    embeddings) along the gradient of the loss and runs the batch again. Frozen embeddings are perturbed too: the
    hook makes their output require a gradient."""

    def __init__(self, table: torch.nn.Module, epsilon: float):
        self.epsilon, self.output, self.delta = epsilon, None, None
        self.handle = table.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.delta is not None:
            return output + self.delta.to(output.dtype)
        if torch.is_grad_enabled() and module.training:
            self.output = output if output.requires_grad else output.requires_grad_()
            return self.output
        return output

    def pass_against(self, loss: torch.Tensor, forward, backward) -> torch.Tensor:
        """`forward()`'s result with the embeddings of the pass that gave `loss` moved along its gradient. `loss` is
        back-propagated first (`backward`), which gives that gradient and frees the first pass's graph before the
        second runs: the step's peak memory stays that of one pass (holding both took 17.7 GB on 644 debates)."""
        if self.output is None:
            raise RuntimeError("adversarial training: the embedding table did not run in this training pass")
        grads = []
        handle = self.output.register_hook(grads.append)
        try:
            backward(loss)
        finally:
            handle.remove()
        grad = grads[0].float()
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, *[1] * (grad.dim() - 1))
        self.delta, self.output = (self.epsilon * grad / norm).detach(), None
        try:
            return forward()
        finally:
            self.delta = None

    def remove(self) -> None:
        self.handle.remove()


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The mean of KL(p1 || p2) and KL(p2 || p1) between two passes' predicted distributions, per example."""
    first, second = F.log_softmax(first.float(), -1), F.log_softmax(second.float(), -1)
    return (F.kl_div(first, second, log_target=True, reduction="batchmean")
            + F.kl_div(second, first, log_target=True, reduction="batchmean")) / 2


def logits_only(logits, labels):
    """What evaluation keeps of a model's outputs: the logits. Encoder-decoder classifiers (BART, T5) also return
    the encoder's hidden states, whose lengths differ from batch to batch."""
    return logits[0] if isinstance(logits, tuple) else logits


def above_half(logits, labels):
    return (logits_only(logits, labels) > 0).int()  # sigmoid(logit) > 0.5


def make_compute_metrics(num_labels: int, multi_label: bool, extra_names=(), every_epoch: bool = False):
    """Single-label: accuracy, macro F1/precision/recall, top-5 past 5 classes (the shipped `evaluate` modules; after
    every epoch the same numbers from a confusion matrix, `epoch_metrics`), plus any `evaluate` module named in
    `extra_names` (final evaluation only). Multi-label: micro/macro F1 and exact match."""
    if multi_label:
        return lambda prediction: multi_label_metrics(prediction.predictions, prediction.label_ids)
    if every_epoch:
        return lambda prediction: epoch_metrics(prediction.predictions, prediction.label_ids, num_labels)
    extra = load_metrics([name for name in extra_names if name != "accuracy"])

    def compute(prediction):
        logits, references = prediction.predictions, prediction.label_ids
        result = classification_metrics(logits, references, num_labels)
        for metric in extra:
            try:
                result.update(metric.compute(predictions=logits.argmax(-1), references=references))
            except Exception as err:  # its own checks (f1's average="binary" on 3 classes): after training, a word
                logger.warning("--metric_names %s cannot be computed on these predictions (%s): left out",
                               metric.name, " ".join(str(err).split()))
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


