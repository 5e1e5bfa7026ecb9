"""Settings as `HfArgumentParser` dataclasses: one set drives the command line, YAML/JSON configs and the saved record.

Names follow the Hugging Face example scripts where they overlap, and every `TrainingArguments` flag is accepted.
Precedence: built-in defaults < automatic choices (made from the data and hardware) < config file < command line.
Only settings the user did not give are chosen automatically, so `explicit` remembers what the user gave.
"""

from __future__ import annotations

import json
import math
import sys
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .freezing import PatternError, multiplier_rules
from .outputs import DATA_QUALITY, ONNX_FILE, RUN_RECORD, STAGE_PREFIX, file_in_the_way, others_files
from .strategies import STRATEGIES


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id, local folder, or `zoo:NAME` (see `hftransfer zoo list`). "
                                        "Default: the recipe's own."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub checkpoint."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code from the checkpoint's repository. Off: only turn it on for "
                                         "repositories you trust."})
    checkpoint_pooling: bool = field(
        default=True, metadata={"help": "Classify with the pooling a sentence-transformers checkpoint was trained "
                                        "with (its modules.json: mean or first token), and read the first token "
                                        "through a fixed pooler where the checkpoint has no pooler weights (a "
                                        "masked-LM BERT). false: the classifier's own reading, its pooler as loaded."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={
        "help": "Hub id or local dataset folder for load_dataset, or a save_to_disk folder."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder: one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for validation."})
    train_file: str | None = field(default=None, metadata={"help": "CSV, JSON, JSON Lines or Parquet file."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation file, same formats."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    text_column_names: str = field(default="text", metadata={"help": "Text column, or two comma-separated for pairs."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of training data held out when no validation set is given."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training data (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation data (debugging)."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Token limit; default: the model's, capped."})
    image_size: int | None = field(
        default=None, metadata={"help": "Square input size in pixels. Default: chosen from the images' own size, at "
                                        "most the checkpoint's (small images are not blown up to 224 px)."})
    augment: bool | None = field(
        default=None, metadata={"help": "Random crop and horizontal flip while the base trains. Default: off."})

    @classmethod
    def from_settings(cls, settings: dict) -> DataArguments:
        """The data arguments a run recorded (`hftransfer_run.json`'s settings: its columns as it resolved them)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})


@dataclass
class TransferArguments:
    strategy: str = field(
        default="staged",
        metadata={"help": "staged: train the new head on the frozen base, then fine-tune the whole model at a lower "
                          "rate. feature_extraction: train the head only. fine_tune: train the head and the last "
                          "blocks (--unfreeze_last_n, default 2, or the one ALBERT has). full: train everything. "
                          "lora: train the head on the frozen base, then low-rank adapters in the base's blocks with "
                          "the head (PEFT); the model is saved with the adapters merged.",
                  "choices": tuple(STRATEGIES)})
    freeze: list[str] = field(default_factory=list, metadata={
        "help": "Parameter-name patterns to freeze (globs like 'bert.encoder.layer.[0-3].*', or 're:REGEX').",
        "nargs": "*"})
    unfreeze: list[str] = field(default_factory=list, metadata={
        "help": "Patterns to train even where the strategy or --freeze froze them.", "nargs": "*"})
    unfreeze_last_n: int | None = field(
        default=None, metadata={"help": "Train the last N blocks of the base (and what follows them)."})
    layer_lr_decay: float | None = field(
        default=None, metadata={"help": "Discriminative rates: each block deeper in the base trains at the rate of "
                                        "the block above times this (e.g. 0.8); the head at the full rate."})
    lr_multipliers: list[str] = field(default_factory=list, metadata={
        "help": "Rate factors by pattern, 'PATTERN=FACTOR' (e.g. 'bert.embeddings.*=0.1'); they multiply.",
        "nargs": "*"})
    head_epochs: float = field(
        default=10, metadata={"help": "Epochs for the head on the frozen base (stage 1 of `staged`, or the "
                                      "feature-extraction run). Default: enough for 300 steps, 10 to 100."})
    head_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the head-only stage."})
    cache_features: bool = field(
        default=True, metadata={"help": "When the whole base is frozen, run it once and train the head on stored "
                                        "features (same result, a fraction of the time)."})
    head_hidden_sizes: list[int] = field(default_factory=list, metadata={
        "help": "Hidden layers of an MLP head in place of the linear classifier, e.g. 128 (Linear-ReLU-Dropout per "
                "size, then Linear to the labels). Default: the checkpoint's own linear head, which "
                "`transformers.pipeline` loads without hftransfer.", "nargs": "*"})
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout after each hidden layer of the MLP head."})
    rdrop_weight: float | None = field(
        default=None, metadata={"help": "R-Drop (Liang et al. 2021) in the stages that train the base: each batch "
                                        "runs twice under different dropout masks, and the loss adds this weight "
                                        "times the symmetric KL between the two predictions (one doubled forward "
                                        "pass: about 1.6 times the step time); 0: off. Default: chosen (see the "
                                        "README)."})
    adversarial_epsilon: float | None = field(default=None, metadata={"help": (
        "Adversarial training on the token embeddings (FGM, Miyato et al. 2017) in the stages that train the base: "
        "each batch runs again with its embeddings moved this far (L2, per example) along the loss's gradient, "
        "that pass's loss added (about twice the step time); 0: off. Default: chosen (see the README).")})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (strategy lora)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: updates are scaled by "
                                                            "alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] = field(default_factory=list, metadata={
        "help": "Modules that get adapters: names or name suffixes as in PEFT, or 're:REGEX'. Default: every Linear "
                "and ungrouped Conv2d inside the base's blocks (attention and MLP projections; pointwise convs).",
        "nargs": "*"})
    metric_names: list[str] = field(default_factory=list, metadata={
        "help": "More `evaluate` metrics on the predicted labels, by Hub name or local path (accuracy, macro "
                "F1/precision/recall and top-5 are always computed, offline).", "nargs": "*"})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop a stage after this many epochs without improvement on the validation "
                                        "set (the best epoch is kept either way); 0: never early. Default: chosen "
                                        "per stage (see the README)."})
    keep_best_epoch: bool = field(
        default=True, metadata={"help": "Evaluate every epoch of each stage that trains and keep its best epoch "
                                        "(--metric_for_best_model; default accuracy, or macro-F1 when classes are "
                                        "imbalanced) instead of its last."})
    class_weights: str = field(
        default="auto", metadata={"help": "How class sizes enter the training loss. logit_adjusted: each class's log "
                                          "frequency added to its logit in training (Menon et al. 2021), so rare "
                                          "classes need a wider margin; balanced: cross-entropy weighted n / (classes "
                                          "x n_class); none: every example the same; auto: chosen from the class "
                                          "counts (see the README).",
                                  "choices": ("auto", "none", "balanced", "logit_adjusted")})
    check_data: bool = field(
        default=True, metadata={"help": "Before training, look for likely label errors (on the frozen base's "
                                        "features) and for copies within training and from training into validation "
                                        "(by content): data_quality.json, the report, the card. Nothing is removed."})
    restart: bool = field(default=False, metadata={
        "help": "Start over even when output_dir holds the checkpoints of an interrupted run of this command (by "
                "default a re-run resumes from them)."})
    serve_demo: bool = field(default=False, metadata={
        "help": "After training, serve the Gradio demo of the saved model (as `hftransfer demo OUTPUT_DIR`)."})
    reset_bn_momentum: bool = field(
        default=True, metadata={"help": "Give trainable BatchNorm layers PyTorch's momentum 0.1 when the checkpoint "
                                        "carries a TensorFlow-style decay (> 0.5, e.g. MobileNetV2's 0.997)."})
    freeze_bn_stats: bool = field(
        default=False, metadata={"help": "Keep every BatchNorm layer in inference mode (its pretrained running "
                                         "statistics), also where its weights train, as the Keras fine-tuning guide "
                                         "advises: on small data, batch statistics are noisy."})
    calibrate_bn: bool = field(
        default=False, metadata={"help": "Staged training: before the head-only stage, re-estimate on the training "
                                         "data the statistics of the BatchNorm layers that stage 2 trains (AdaBN), "
                                         "so the head learns the features that fine-tuning starts from. Measured: "
                                         "helps where frozen features already fit (digits, faces), costs 1.8 points "
                                         "on 150 Fashion-MNIST images: off by default."})


@dataclass
class TransferTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for transfer learning on a few thousand examples.

    The learning rate and epochs given here are those of the fine-tuning stage; the head stage has its own.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Where the model and results are written."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the stage that trains the "
                                                                 "base (AdamW, warm-up then linear decay). Default: "
                                                                 "1e-3 for convnets, 1e-4 for attention models."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of the stage that trains the base. Default: "
                                                                   "enough for 500 steps, 3 to 30."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up: steps, or a fraction of them if < 1."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay. Default: 0.01; 0.3 where the "
                                                                "head trains alone as the final model "
                                                                "(feature_extraction)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Batch size per device for evaluation."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate during training (each epoch "
                                                                  "keeps the best, --keep_best_epoch); the final "
                                                                  "evaluation always runs."})
    save_strategy: str = field(default="no", metadata={"help": "When to save checkpoints; the final model is always "
                                                               "saved."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw columns: transforms run lazily."})
    seed: int = field(default=42, metadata={"help": "Random seed."})

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """A fraction's warm-up leaves a stage at least one step after it: a stage of one optimizer step (data in one
        batch, --max_steps 1) ran that step at the warm-up's rate of 0 and trained nothing, in silence."""
        steps = super().get_warmup_steps(num_training_steps)
        return min(steps, max(num_training_steps - 1, 0)) if self.warmup_steps < 1 else steps


# Defaults of parent fields whose types HfArgumentParser cannot redeclare in a subclass.
TRAINING_DEFAULTS = {"report_to": "none"}  # nothing leaves the machine unless asked

ARGUMENT_CLASSES = (ModelArguments, DataArguments, TransferArguments, TransferTrainingArguments)


@dataclass
class RunArguments:
    model: ModelArguments
    data: DataArguments
    transfer: TransferArguments
    training: TransferTrainingArguments
    explicit: frozenset[str]  # the settings the user gave in a config file or on the command line

    def given(self, name: str) -> bool:
        return name in self.explicit

    def to_dict(self) -> dict:
        """A record of the run without secrets (`hub_token` never leaves memory)."""
        record = {}
        for part in (self.model, self.data, self.transfer):
            record.update(asdict(part))
        record.update({k: v for k, v in self.training.to_dict().items() if "token" not in k})
        return record


def _config_file(argv: list[str]) -> tuple[Path | None, list[str]]:
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        return Path(argv[0]), argv[1:]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("error: --config needs a file")
        return Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    return None, argv


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: config file not found: {path}")
    try:
        text = path.read_text()
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:  # not JSON, not YAML, not UTF-8
        raise SystemExit(f"error: {path}: cannot be read as {'JSON' if path.suffix == '.json' else 'YAML'} "
                         f"({' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise SystemExit(f"error: {path}: expected a mapping of setting -> value at the top level")
    return config


def _as_flags(config: dict, path: Path, parser: HfArgumentParser) -> tuple[list[str], dict]:
    """A config file's settings as the flags that give them, read before the command line's (which override them),
    so each value meets the flag's own type and choices (as defaults they were taken as they were: `seed: 1.5` failed
    in training, `max_train_samples: true` trained on one example). One value for a setting that takes several is a
    list of one (`freeze: "bert.*"` was read as one pattern a character); null only where a setting may be unset.
    Returned beside the flags: what no flag can say (a mapping or a list where the setting's type takes one, an empty
    list, a value that starts with '-'), kept as a default."""
    kinds = {name: str(kind) for cls in ARGUMENT_CLASSES  # the annotations: the parser rewrites the fields' types
             for name, kind in typing.get_type_hints(cls).items()}
    flags, defaults = [], {}
    for name, value in config.items():
        action = parser._option_string_actions[f"--{name}"]
        several = action.nargs in ("+", "*")
        values = value if isinstance(value, list) else [value]
        if value is None:
            if action.default is not None:
                raise SystemExit(f"error: {path}: {name} is null; give it a value, or leave it out for the default")
        elif isinstance(value, dict) or isinstance(value, list) and not several:
            shape = "dict" if isinstance(value, dict) else "list"
            if shape not in kinds[name]:  # report_to: [a, b], lr_scheduler_kwargs: {power: 2}
                raise SystemExit(f"error: {path}: {name} takes {'values' if several else 'one value'}, not a "
                                 f"{'mapping' if shape == 'dict' else 'list'}")
            defaults[name] = value
        elif any(isinstance(v, (dict, list)) or v is None for v in values):
            raise SystemExit(f"error: {path}: {name} takes a list of values, not {value!r}")
        elif not values or several and any(str(v).startswith("-") for v in values):
            defaults[name] = values
        else:
            text = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            flags += [f"--{name}", *text] if several else [f"--{name}={text[0]}"]
    _parse_alone(parser, flags, path)
    return flags, defaults


def _parse_alone(parser: HfArgumentParser, flags: list[str], path: Path) -> None:
    """A config value the flag's type or choices refuse is an error that names the file as well as the setting."""
    def refuse(message: str):
        raise SystemExit(f"error: {path}: {message}")

    shown, parser.error = parser.error, refuse
    try:
        parser.parse_known_args(flags)
    finally:
        parser.error = shown


def _flag_names(argv: list[str]) -> set[str]:
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name.removeprefix("no_"))
            names.add(name)
    return names


def parse_args(argv: list[str] | None = None, defaults: dict | None = None, trains: bool = True) -> RunArguments:
    """Parse `[config.yaml] [--flag value ...]`; unknown settings are errors that name them. `trains`: the command
    writes a model into --output_dir (`hftransfer check` writes its findings alone)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)  # a typo must not pass for a prefix
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}
    config_path, argv = _config_file(argv)
    config = _read_config(config_path) if config_path else {}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SystemExit(f"error: {config_path}: unknown setting(s) {', '.join(unknown)}")
    flags, unflagged = _as_flags(config, config_path, parser)
    parser.set_defaults(**{**TRAINING_DEFAULTS, **(defaults or {}), **unflagged})
    try:
        model, data, transfer, training, rest = parser.parse_args_into_dataclasses(
            args=flags + argv, return_remaining_strings=True, look_for_args_file=False)
    except ValueError as err:  # TrainingArguments' own checks (--bf16 on a CPU without --use_cpu ...): a flag error
        raise SystemExit(f"error: {err}") from None
    if rest:
        raise SystemExit(f"error: unknown argument(s): {' '.join(rest)}. See --help for the settings.")
    explicit = frozenset((set(config) | _flag_names(argv)) & known)
    _check_ranges(data, transfer, training)
    _check_output_dir(training.output_dir, model.model_name_or_path, data, trains)
    return RunArguments(model, data, transfer, training, explicit)


# Ranges, checked once, where the settings are parsed. Outside them a run failed inside torch or peft once the data
# and the model had loaded, or trained something else in silence: a NaN or infinite rate or factor saved a model of
# NaN weights, 0 epochs an untrained one, --max_train_samples 0 was read as no limit, a negative --unfreeze_last_n as
# "all blocks but the first", --layer_lr_decay 0 as 1 and --lora_alpha 0 scaled every adapter to nothing. A rate of 0
# holds a stage still, as tests do. NaN and infinity are outside every range.
AT_LEAST_0 = ("head_learning_rate", "learning_rate", "weight_decay", "rdrop_weight", "adversarial_epsilon",
              "unfreeze_last_n", "early_stopping_patience")
MORE_THAN_0 = ("head_epochs", "num_train_epochs", "layer_lr_decay", "lora_alpha")
AT_LEAST_1 = ("max_train_samples", "max_eval_samples", "max_seq_length", "image_size", "lora_r",
              "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
BELOW_1 = ("head_dropout", "lora_dropout")  # probabilities, from 0
RANGES = ((AT_LEAST_0, lambda v: v >= 0, "0 or more"), (MORE_THAN_0, lambda v: v > 0, "more than 0"),
          (AT_LEAST_1, lambda v: v >= 1, "at least 1"), (BELOW_1, lambda v: 0 <= v < 1, "from 0 to less than 1"))


def range_rule(name: str):
    """A setting's range, as (inside, what it must be): the one rule `hftransfer freeze-report`'s flags use too."""
    return next((inside, expected) for names, inside, expected in RANGES if name in names)


def _check_ranges(*settings) -> None:
    def value(name):
        return next(getattr(group, name) for group in settings if hasattr(group, name))

    def refuse(name, shown, expected):
        raise SystemExit(f"error: --{name} {shown}: must be {expected}")

    for names, inside, expected in RANGES:
        for name in names:
            if name == "num_train_epochs" and value("max_steps") > 0:
                continue  # --max_steps sets the length
            number = value(name)
            if number is not None and not (math.isfinite(number) and inside(number)):
                refuse(name, number, expected)
    if value("max_steps") == 0:  # -1 is "off"; 0 ran one step a stage at a rate of 0, recorded as whole epochs
        refuse("max_steps", 0, "at least 1, or -1 (off: --num_train_epochs sets the length)")
    if not 0 <= value("seed") < 2**32:  # torch's and numpy's range; set_seed failed once the data had loaded
        refuse("seed", value("seed"), "from 0 to 2**32 - 1")
    sizes = value("head_hidden_sizes")
    if any(size < 1 for size in sizes):
        refuse("head_hidden_sizes", " ".join(map(str, sizes)), "at least 1 each")
    try:
        multiplier_rules(value("lr_multipliers"))
    except PatternError as err:
        raise SystemExit(f"error: {err}") from None


def _check_output_dir(output_dir: str, checkpoint: str, data: DataArguments, trains: bool = True) -> None:
    """The output folder neither holds the checkpoint the run starts from (its weights were overwritten, a checkpoint
    of an earlier run removed), an export, or files of another's that the run would overwrite, nor is inside an image
    folder the run reads (the report and examples written there became classes of the next run)."""
    if not output_dir:
        return
    out = Path(output_dir).resolve()
    blocking = file_in_the_way(out)
    if blocking:
        raise SystemExit(f"error: --output_dir {output_dir}: {blocking} is a file, not a folder; name a folder")
    source = Path(checkpoint).resolve() if checkpoint and Path(checkpoint).is_dir() else None
    if source and (source == out or source.is_relative_to(out)  # an earlier run's stage: removed as another's
                   and source.relative_to(out).parts[0].startswith(STAGE_PREFIX)):
        raise SystemExit(f"error: --output_dir {output_dir}: it holds the checkpoint the run starts from "
                         "(--model_name_or_path), which the run would overwrite or remove; name another folder")
    if (out / ONNX_FILE).is_file():  # the old graph would stay beside the new weights, and be what predict runs
        raise SystemExit(f"error: --output_dir {output_dir}: it holds an exported model ({ONNX_FILE}); name another "
                         "folder")
    if not trains and (out / RUN_RECORD).is_file():  # its card and report read the run's own findings
        raise SystemExit(f"error: --output_dir {output_dir}: a trained model's folder, whose {DATA_QUALITY} is its "
                         "run's; give the check a folder of its own")
    theirs = others_files(out) if trains else []  # the check writes none of a model's names
    if theirs:  # a model downloaded there, a project's own README.md: no hftransfer run's, and overwritten
        raise SystemExit(f"error: --output_dir {output_dir}: it holds {', '.join(theirs[:6])}, which no hftransfer run "
                         "wrote and this one would overwrite; name a new folder, or move them out")
    for flag in ("train_dir", "validation_dir"):
        folder = getattr(data, flag)
        if folder and out.is_relative_to(Path(folder).resolve()):
            raise SystemExit(f"error: --output_dir {output_dir}: inside --{flag} {folder}, where what the run writes "
                             "would be read as data; name a folder outside it")

