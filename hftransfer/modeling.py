"""Load a pretrained classifier with a head for the user's labels.

A new label set needs a new head: it is replaced on purpose and said so in the log (module, old -> new size), rather
than leaving users to discover `ignore_mismatched_sizes`. A checkpoint whose labels are exactly the user's keeps its
head. The real label names go into the config, so the Hub widget and pipelines never show `LABEL_0`.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from torch import nn
from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from . import heads, pooling, zoo
from .anatomy import POOLING_GROUP, ModelError, head_modules, param_groups
from .errors import is_the_machines
from .outputs import ONNX_FILE

logger = logging.getLogger(__name__)


def _wrong_task(name: str, config, task) -> str:
    from .tasks import task_for_config

    message = f"{name} ({type(config).__name__}) is not {task.noun} classifier"
    try:
        other = task_for_config(config)
    except ValueError:
        return message
    return f"{message}: it is {other.noun} model; use recipes/{other.name}.py"


def _require_safetensors(path: str, name: str) -> None:
    """Pickled weights (`pytorch_model.bin`) can run code when loaded: a local folder without safetensors weights is
    refused with a message that says so (`from_pretrained(use_safetensors=True)` refuses Hub repos the same way)."""
    folder = Path(path)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    if (folder / ONNX_FILE).is_file():
        raise ModelError(f"{name}: an exported model ({ONNX_FILE}), which `predict`, `demo` and `push` read; train or "
                         "report from the output folder it was exported from")
    pickled = sorted(p.name for p in folder.iterdir()  # training_args.bin: the Trainer's settings, not weights
                     if p.suffix in (".bin", ".pt", ".pth", ".ckpt") and p.name != "training_args.bin")
    found = f" (found {', '.join(pickled)})" if pickled else ""
    try:  # the config's own class keeps the checkpoint's head; AutoModel would save the base alone
        saved_as = f"transformers.{json.loads((folder / 'config.json').read_text())['architectures'][0]}"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        saved_as = "the model's class in transformers"
    raise ModelError(f"{name}: no safetensors weights{found}; only safetensors are loaded, "
                     "since pickled weights can run code. Convert them once, in a trusted environment, with "
                     f"`{saved_as}.from_pretrained(path).save_pretrained(path)`"
                     + (f", path being {folder}." if str(folder) != name else "."))


def checkpoint_path(name: str, label: str | None = None) -> str:
    """Where to load the model `name` from: a zoo entry's folder, a local folder, or the Hub id as given. A path
    that is no folder, or a folder with nothing saved in it, is an error naming it (`label`, default the name), where
    transformers would call the first a malformed Hub id and the second a config without a `model_type`."""
    label = label or name
    try:
        path = zoo.resolve(name)
    except zoo.ZooError as err:
        raise ModelError(f"{label}: {err}") from None
    folder = Path(path)
    if not folder.is_dir():
        if path.startswith(("/", ".", "~")) or folder.exists():
            home = " (a quoted ~ is not the home folder: write it out)" if path.startswith("~") else ""
            raise ModelError(f"{label}: not a folder{home}")
        return path
    if not any((folder / file).is_file() for file in ("config.json", "modules.json")):  # modules.json: ST 1.x
        raise ModelError(f"{label}: no config.json in this folder, so no model saved there (a run's output_dir, "
                         "or a folder written by `save_pretrained`)")
    return path


@contextmanager
def checkpoint_errors(label: str):
    """What transformers or the Hub cannot find (no such repo, revision or file; no network; a malformed Hub id) as
    a ModelError naming the model (`label`), reported without a traceback. Those errors carry no errno; the
    system's (a full disk, no permission on the cache) do, are not the model's, and are raised as they are."""
    try:
        yield
    except HFValidationError as err:
        raise ModelError(f"{label}: {err}") from err
    except OSError as err:
        if is_the_machines(err):
            raise
        raise ModelError(f"{label}: {err}") from err


def read_config(path: str, label: str, **loading):
    """The model's `AutoConfig`; a config transformers cannot read (no `model_type`, no config.json where a
    sentence-transformers 1.x folder keeps its encoder in a subfolder) is an error naming the model (`label`)."""
    with checkpoint_errors(label):
        try:
            return AutoConfig.from_pretrained(path, **loading)
        except ValueError as err:
            raise ModelError(f"{label}: {err}") from None


def load_model(task, model_args, labels: list[str], multi_label: bool = False,
               head_hidden_sizes: list[int] = (), head_dropout: float = 0.0):
    """Returns (model, processor, head_replaced). `head_hidden_sizes` puts an MLP head in place of the linear one.
    What is missing is an error naming the checkpoint (`checkpoint_path`, `checkpoint_errors`)."""
    label = f"--model_name_or_path {model_args.model_name_or_path}"
    with checkpoint_errors(label):
        return _load_model(task, model_args, labels, multi_label, head_hidden_sizes, head_dropout, label)


def _load_model(task, model_args, labels, multi_label, head_hidden_sizes, head_dropout, label):
    path = checkpoint_path(model_args.model_name_or_path, label)
    modules = pooling.CheckpointModules.read(path, model_args.model_revision, model_args.cache_dir)
    common = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir,
              "trust_remote_code": model_args.trust_remote_code, **_encoder_folder(modules)}
    config = read_config(path, label, **common)
    if type(config) not in task.auto_model_class._model_mapping:
        raise ModelError(_wrong_task(model_args.model_name_or_path, config, task))
    if "num_classes" in (getattr(config, "model_args", None) or {}):
        # timm's `save_for_hf` may record its class count among the network's arguments; TimmWrapper passes the
        # label count as well, and two values of one keyword fail: the label count is the one that holds.
        config.model_args = {k: v for k, v in config.model_args.items() if k != "num_classes"}
    old_labels = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    keep_head = old_labels == labels
    id2label = dict(enumerate(labels))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # our own log line replaces the load report about the mismatched head
    _require_safetensors(str(Path(path, common.get("subfolder", ""))), model_args.model_name_or_path)
    try:
        # num_labels first: PVT's config keeps its own (1000), which id2label alone leaves as it was
        config.update({"num_labels": len(labels), "id2label": id2label, "label2id": {n: i for i, n in id2label.items()},
                       "problem_type": "multi_label_classification" if multi_label else "single_label_classification"})
        if getattr(config, "label_names", None) is not None:  # timm's: saved in place of id2label, the old names
            config.label_names = list(labels)
        model, loading = task.auto_model_class.from_pretrained(
            path, config=config, ignore_mismatched_sizes=True, use_safetensors=True, dtype=torch.float32,
            output_loading_info=True, **common)
    finally:
        hf_logging.set_verbosity(verbosity)
    if not keep_head and not multi_label and sorted(old_labels) == sorted(labels):
        keep_head = _reorder_outputs(model, [old_labels.index(label) for label in labels])
    if keep_head:
        logger.info("The checkpoint's %d labels are this data's labels: keeping its head%s", len(labels),
                    "" if old_labels == labels else " (its outputs put in this data's order)")
    else:
        replaced = head_modules(model)  # its inner layers (DistilBERT's pre_classifier) output the hidden size
        for module in replaced.values():
            _reinitialise(model, module)
        logger.info("New head: %s re-initialised for %d labels (the checkpoint's: %d)",
                    ", ".join(f"{name} ({type(module).__name__})" for name, module in replaced.items()),
                    len(labels), len(old_labels))
    untrained = not_in_checkpoint(loading)
    if model_args.checkpoint_pooling:
        adopted = pooling.adopt(model, modules.pooling, untrained)
        if adopted:
            logger.info(adopted)
        if modules.after_pooling:
            logger.warning("The checkpoint's %s after its pooling is not part of the classifier: the head reads the "
                           "pooling itself and learns its own projection", ", ".join(modules.after_pooling))
    _warn_untrained(model, untrained)
    if head_hidden_sizes:
        name = heads.install(model, head_hidden_sizes, head_dropout)
        logger.info("MLP head in place of %s: hidden sizes %s, dropout %g", name, head_hidden_sizes, head_dropout)
    processor = task.load_processor(path, **common)
    return model, processor, not keep_head or bool(head_hidden_sizes)


def _encoder_folder(modules: pooling.CheckpointModules) -> dict:
    """`subfolder` for every loader where a sentence-transformers 1.x checkpoint keeps its encoder in a folder of its
    own; its pooling is still read from the top."""
    if not modules.encoder_subfolder:
        return {}
    logger.info("A sentence-transformers checkpoint in its 1.x layout: the encoder is read from %s/",
                modules.encoder_subfolder)
    return {"subfolder": modules.encoder_subfolder}


def not_in_checkpoint(loading: dict) -> set[str]:
    """The weights `from_pretrained` initialised itself (its load report): missing from the checkpoint, or of
    another shape there (`ignore_mismatched_sizes`). BatchNorm's batch counters are left out: checkpoints converted
    from older code lack them, and they change no output."""
    found = set(loading["missing_keys"]) | {key[0] for key in loading["mismatched_keys"]}
    return {name for name in found if not name.endswith("num_batches_tracked")}


def _warn_untrained(model, untrained: set[str]) -> None:
    """The load report transformers would print, for what it says beyond the new head (whose own line replaces it)
    and the fixed pooling: weights the run starts at random inside the base, which a frozen base keeps random."""
    if not untrained:
        return
    fixed_or_head = {n for g in param_groups(model) if g.name in ("head", POOLING_GROUP) for n in g.params}
    modules = sorted({name.rsplit(".", 1)[0] for name in untrained - fixed_or_head})
    if modules:
        logger.warning("Not in the checkpoint, so initialised at random by this run: %s%s. They train only in the "
                       "stages that train the base there; a frozen base keeps them random", ", ".join(modules[:8]),
                       f" and {len(modules) - 8} more" if len(modules) > 8 else "")


def _reorder_outputs(model, order: list[int]) -> bool:
    """The same label names in another order (a checkpoint's `{0: "positive", 1: "negative"}`, this data's sorted
    names): the final layer's output rows are permuted into the data's order, so the trained head is kept. False
    where the head has no single layer with one output per label."""
    finals = list({id(m): m for head in head_modules(model).values() for m in head.modules()  # once each
                   if isinstance(m, nn.Linear) and m.out_features == len(order)}.values())
    if len(finals) != 1:
        return False
    with torch.no_grad():
        finals[0].weight.copy_(finals[0].weight[order])
        if finals[0].bias is not None:
            finals[0].bias.copy_(finals[0].bias[order])
    return True


def _reinitialise(model, module: nn.Module) -> None:
    # Same-size heads are not re-initialised by `ignore_mismatched_sizes`: a 10-class checkpoint reused for other
    # 10 classes would otherwise start from the old classes' weights.
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    if hasattr(model, "_init_weights"):
        model._init_weights(module)


def classifier_task(config, name: str):
    """The task adapter of a saved classifier's config; a config no task classifies is an error naming the model."""
    from .tasks import task_for_config

    try:
        return task_for_config(config)
    except ValueError as err:
        raise ModelError(f"{name}: {err}") from None


def load_trained(model_name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """A trained classifier from an output folder, a Hub id or `zoo:NAME`, in eval mode. Safetensors only."""
    return load_classifier(model_name_or_path, revision, trust_remote_code)[0]


def load_classifier(model_name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """`load_trained`'s model and the parameters it initialised itself (`not_in_checkpoint`): any classifier, a
    pretrained checkpoint's for its freeze report too.

    A model with an hftransfer MLP head loads through a subclass of its own class that rebuilds the head in
    `__init__`, so `from_pretrained` (and its key conversions between checkpoint layouts) fills it; plain
    `from_pretrained` would drop the head's weights and start a random linear one.
    """
    with checkpoint_errors(model_name_or_path):
        path = checkpoint_path(model_name_or_path)
        common = {"revision": revision, "trust_remote_code": trust_remote_code}
        if Path(path).is_dir():  # a checkpoint's freeze report; Hub ids are trained models, never in the 1.x layout
            common.update(_encoder_folder(pooling.CheckpointModules.read(path)))
        _require_safetensors(str(Path(path, common.get("subfolder", ""))), model_name_or_path)
        config = read_config(path, model_name_or_path, **common)
        auto_class = classifier_task(config, model_name_or_path)().auto_model_class  # no task flag needed
        if getattr(config, heads.CONFIG_KEY, None):
            auto_class = heads.with_mlp_head(auto_class._model_mapping[type(config)])
        # float32 whatever the file holds: a model saved by a bf16 engine (DeepSpeed keeps bf16 weights) would
        # otherwise load in bf16 and refuse the float32 inputs every processor makes
        model, loading = auto_class.from_pretrained(path, config=config, use_safetensors=True, dtype=torch.float32,
                                                    output_loading_info=True, **common)
    return model.eval(), not_in_checkpoint(loading)


# What a model's forward pass raises on inputs it cannot take (not the machine's limits: out of memory)
INPUT_ERRORS = (RuntimeError, TypeError, ValueError, AttributeError, IndexError)


@contextmanager
def evaluating(model):
    """Eval mode (no BatchNorm statistics change, no dropout draws from the seeded stream), each module's mode
    restored after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def check_runs(model, inputs, collator, processor, device) -> None:
    """One forward pass on two rows of the run's own `inputs` before anything trains: a model that cannot run on them
    (SigLIP 2's NaFlex classifiers need more than pixels) is an error now that names them, not a crash inside the
    first stage."""
    rows = [inputs[i] for i in range(min(2, len(inputs)))]
    names = ", ".join(k for k in rows[0] if k != "labels")
    try:
        batch = {k: v.to(device) for k, v in collator(rows).items() if k != "labels"}
        with evaluating(model), torch.no_grad():
            model(**batch)
    except torch.OutOfMemoryError:
        raise  # the device's limit, not the model's inputs
    except INPUT_ERRORS as err:
        raise ModelError(f"{type(model).__name__} cannot run on the inputs this run makes ({names}, from "
                         f"{type(processor).__name__}): {type(err).__name__}: {err}") from err


# An input scored alone and padded differs by about 1e-7 where a model masks its padding (README, Families tested)
PADDING_TOLERANCE = 1e-4


def check_padding(model, probe, device) -> None:
    """CANINE, Nystromformer and ConvBERT read the padding a batch adds to a text into its scores (their
    downsampling, landmarks and convolutions span it): the run's evaluation, `predict` and the demo, which pad
    batches, then score a text by the batch it is in, and `pipeline`, which reads one text alone, can differ. Said
    before training, from the task's `padding_probe`; not mended. A probe that cannot run says so at INFO: this is
    a warning, never a reason to stop."""
    if probe is None:
        return
    try:
        with evaluating(model), torch.no_grad():
            alone, padded = (model(**{k: v.to(device) for k, v in inputs.items()}).logits[0].float().softmax(-1)
                             for inputs in probe)
    except INPUT_ERRORS as err:
        logger.info("Padding probe not run (%s: %s)", type(err).__name__, err)
        return
    moved = float((alone - padded).abs().max())
    if moved > PADDING_TOLERANCE:
        logger.warning("%s scores an input differently with the padding its batch adds (a training text alone and "
                       "in a batch with a longer one: up to %.2g apart in the softmax of its logits): the run's "
                       "evaluation, predict and the demo, which pad batches, score a text by the batch it is in, and "
                       "transformers' pipeline, which reads one text alone, can differ from them", type(model).__name__,
                       moved)
