"""`hftransfer export MODEL --format onnx [--quantize int8] --output DIR`: a model that runs fast where it is deployed.

The graph comes from `torch.onnx.export` (the `torch.export`-based exporter), not optimum: optimum's ONNX exporter
(`optimum-onnx`) requires transformers < 4.58 and hftransfer runs on 5.x; the PyTorch exporter takes any model that
`torch.export` can trace, so plain, MLP-head, merged-LoRA, mean-pooling and timm models go the same way. Batch axes are
dynamic (and the sequence axis for text). int8 is onnxruntime's quantization: static (QDQ, weights per channel,
activation ranges calibrated on training inputs) for convolutional networks, whose convolutions need quantized
activations to gain; dynamic (int8 weights, activations quantized per batch) for attention models, as onnxruntime
advises for transformers.

Checked before anything is written to DIR: the ONNX fp32 graph must give the PyTorch model's probabilities within
`TOLERANCE` on real inputs (the run's validation split, re-read as training read it; the folder's examples where the
data is gone), else the export is refused. int8 is measured on the same validation inputs: its accuracy and its
agreement with fp32 go into export.json and the card, and an accuracy drop beyond `--max_int8_drop` points refuses
the export. The folder is self-describing: config (labels), processor or tokenizer, export.json, the source folder's
results, report and examples (so `hftransfer demo` shows them), and a card.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .inference import OnnxEngine, Predictor, is_exported, model_folder
from .outputs import (ALL_RESULTS, CONFIG, DATA_QUALITY, EXAMPLES_FOLDER, EXPORT_RECORD, ONNX_FILE, PLAN_FILE,
                      REPORT_DIR, RUN_RECORD, OutputFolder, write_json)
from .tasks import text_length

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # the largest |probability difference| allowed between ONNX fp32 and PyTorch
OPSET = 18
BATCH = 64
CALIBRATION_INPUTS = 256
COPIED = (ALL_RESULTS, "eval_results.json", "train_results.json", RUN_RECORD, PLAN_FILE, DATA_QUALITY, REPORT_DIR,
          EXAMPLES_FOLDER)


class ExportError(InputError, ValueError):
    """An export that cannot be made or trusted (its output, its checks)."""


def export(model: str, output: str | Path, quantize: str | None = None, max_int8_drop: float = 1.0) -> dict:
    """Export `model` (an output folder or a Hub id) into `output`; returns what export.json records."""
    if not max_int8_drop >= 0:  # NaN too: it turned the check off
        raise ExportError(f"--max_int8_drop {max_int8_drop}: a number of accuracy points, 0 or more")
    source = model_folder(model)
    if is_exported(source):
        raise ExportError(f"{source} is an exported folder already; export the output folder it came from")
    output = Path(output)
    _check_replaceable(output, source)
    staging = output.with_name(output.name + ".exporting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        record = _export_into(source, staging, quantize, max_int8_drop)
        shutil.rmtree(output, ignore_errors=True)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from .card import write_card

    write_card(output, output.resolve().name)
    return record


def _check_replaceable(output: Path, source: Path) -> None:
    """The export replaces `output` whole, so only a new or empty folder, or an earlier export, may be there: never
    the model's own folder, a folder inside it or holding it, the current one, nor a folder of anything else."""
    target = output.resolve()
    for held, what in ((source.resolve(), "the model being exported"), (Path.cwd().resolve(), "the current folder")):
        if target == held or target in held.parents:
            raise ExportError(f"--output {output}: it is or holds {what}, and the export replaces it whole; choose a "
                              "new folder")
    if target.is_relative_to(source.resolve()):  # a push of the model would upload it; a rerun leave it stale
        raise ExportError(f"--output {output}: inside the model's folder {source}, whose files are the model's; "
                          "choose a folder outside it")
    if output.exists() and not (output.is_dir() and (is_exported(output) or not any(output.iterdir()))):
        raise ExportError(f"--output {output}: exists and is not an earlier export, and the export replaces it "
                          "whole; choose a new or empty folder")


def _export_into(source: Path, staging: Path, quantize: str | None, max_int8_drop: float) -> dict:
    start = time.time()
    reference = Predictor(source, engine="pytorch", device="cpu")
    validation, calibration, data_source = evaluation_inputs(source, reference)
    _copy_described(source, reference, staging)
    sample = reference.inputs(_two_distinct([value for value, _ in validation] or calibration))
    fp32_path = staging / ("model_fp32.onnx" if quantize else ONNX_FILE)
    names = write_onnx(reference.engine.model, sample, fp32_path)
    engines = {"onnx_fp32": OnnxEngine(staging, file=fp32_path.name)}
    if quantize:
        method = quantize_int8(fp32_path, staging / ONNX_FILE, reference, calibration or validation)
        engines["onnx_int8"] = OnnxEngine(staging)
    measured = compare_engines(reference, engines, validation)
    fp32 = measured["onnx_fp32"]
    if fp32["max_probability_difference"] > TOLERANCE:
        raise ExportError(f"the ONNX graph differs from the PyTorch model by up to "
                          f"{fp32['max_probability_difference']:.2g} in probability on {measured['inputs_checked']} "
                          f"input(s) of {data_source} (tolerance {TOLERANCE:g}); not exported")
    record = {"format": "onnx", "file": ONNX_FILE, "opset": OPSET, "precision": quantize or "fp32",
              "source": str(source), "inputs": names, "dynamic_axes": _dynamic_axes(names),
              "tolerance": TOLERANCE, "checked_on": data_source, **measured}
    if quantize:
        fp32_path.unlink()
        record["quantization"] = method
        int8 = measured["onnx_int8"]
        if "accuracy" in int8 and "accuracy" in measured["pytorch"]:
            drop = round(100 * (measured["pytorch"]["accuracy"] - int8["accuracy"]), 2)
            record["int8_accuracy_drop_points"] = drop
            if drop > max_int8_drop:
                raise ExportError(f"int8 accuracy {int8['accuracy']:.4f} is {drop} points under PyTorch's "
                                  f"{measured['pytorch']['accuracy']:.4f} on {data_source} (--max_int8_drop "
                                  f"{max_int8_drop}); export fp32 instead, or allow more")
    record["seconds"] = round(time.time() - start, 1)
    record["summary"] = summary(record)
    write_json(staging / EXPORT_RECORD, record)
    logger.info(record["summary"])
    return record


def summary(record: dict) -> str:
    fp32 = record["onnx_fp32"]
    text = (f"ONNX {record['precision']}; fp32 graph agrees with PyTorch on {fp32['agreement']:.2%} of "
            f"{record['inputs_checked']} input(s), probabilities within {fp32['max_probability_difference']:.1e}")
    if "onnx_int8" in record:
        int8 = record["onnx_int8"]
        text += f"; int8 agrees on {int8['agreement']:.2%}"
        if "int8_accuracy_drop_points" in record:
            text += (f", accuracy {record['pytorch']['accuracy']:.4f} -> {int8['accuracy']:.4f} "
                     f"({-record['int8_accuracy_drop_points']:+.2f} points)")
    return text


# ---------------------------------------------------------------- data

def evaluation_inputs(source: Path, reference: Predictor) -> tuple[list, list, str]:
    """(validation inputs with their label ids, calibration inputs, where they came from): the run's own splits,
    re-read as the run read them; the folder's examples where the run's data cannot be found."""
    run = OutputFolder(source).run
    try:
        splits = _run_splits(run, reference) if run else None
    except Exception as err:  # noqa: BLE001 - moved or deleted data: fall back to the examples, and say so
        logger.warning("The run's data cannot be read again (%s): checking on the folder's examples", err)
        splits = None
    if splits is not None:
        validation, train = splits
        return validation, train, _validation_source(len(validation), OutputFolder(source).results)
    examples = [(value, None) for value in reference.examples()]
    if not examples:
        raise ExportError(f"{source}: neither the run's data nor examples/ to check the export on")
    return examples, [value for value, _ in examples], f"{len(examples)} example(s) of {EXAMPLES_FOLDER}/"


def _validation_source(rows: int, results: dict) -> str:
    """Where the check's inputs came from, for the record: the run's validation split, or its files as they read
    now where they no longer hold the rows the run validated on (the record said "the run's split" regardless)."""
    validated = results.get("eval_samples")
    if validated is None or validated == rows:
        return "the run's validation split"
    logger.warning("The run's validation data now holds %d rows, not the %d it validated on: checking on the rows "
                   "as they read now", rows, validated)
    return f"the run's validation files as they read now ({rows} rows; the run validated on {validated})"


def _run_splits(run: dict, reference: Predictor):
    from .data import column_values, label_names, prepare_splits

    if run.get("multi_label"):
        return None  # checked on probabilities only, from the examples
    task = reference.task  # over the run's recorded data arguments (`Predictor`)
    splits, _, data_args = prepare_splits(task.data_args, task, run["settings"].get("seed", 42))
    task = task.with_data(data_args)  # its columns as resolved
    names = label_names(splits)
    to_model = {i: reference.labels.index(name) for i, name in enumerate(names) if name in reference.labels}
    raw = {split: task.inputs_of(d) for split, d in splits.items()}
    validation = [(value, to_model.get(label)) for value, label in zip(raw["validation"],
                                                                       column_values(splits["validation"], "label"))]
    step = max(1, len(raw["train"]) // CALIBRATION_INPUTS)
    return validation, raw["train"][::step][:CALIBRATION_INPUTS]


def _two_distinct(values: list) -> list:
    """Two inputs to trace with: two, so no axis is taken for a constant 1; of unequal text length where possible."""
    inputs = values[:8]
    if len(inputs) == 1:
        inputs = inputs * 2
    by_length = sorted(inputs, key=text_length)
    return [by_length[0], by_length[-1]]


def _copy_described(source: Path, reference: Predictor, staging: Path) -> None:
    shutil.copy2(source / CONFIG, staging / CONFIG)
    reference.processor.save_pretrained(staging)
    for name in COPIED:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, staging / name)
        elif path.is_file():
            shutil.copy2(path, staging / name)


# ---------------------------------------------------------------- graph

class _Logits(torch.nn.Module):
    """The classifier as a function of positional tensors, returning its logits only."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def _dynamic_axes(names: list[str]) -> dict:
    return {name: ({0: "batch"} if name == "pixel_values" else {0: "batch", 1: "sequence"}) for name in names}


def write_onnx(model: torch.nn.Module, sample: dict, path: Path) -> list[str]:
    """Trace the model on `sample` and write the graph; returns its input names. Where the model's code cannot be
    traced as it stands, transformers' traceable equivalents are (`_traced_another_way`)."""
    names = list(sample)
    model = model.to(memory_format=torch.contiguous_format).eval()
    try:
        program = _trace(model, sample, names)
    except Exception as error:  # T5's SDPA and Mixtral's grouped experts as they stand; XLNet's code in no way
        program = _traced_another_way(model, sample, names, error)
    _check_axes_stay_dynamic(program, model)
    program.save(str(path))
    return names


def _check_axes_stay_dynamic(program, model: torch.nn.Module) -> None:
    """torch.export fixes an axis at the sample's size, without an error, where the model's code allows no other
    when traced (CANINE's sequence length: its character downsampling). Such a graph refuses every other input
    (onnxruntime's "Got invalid dimensions for input"), or passes the check where the validation batches happen to
    have that size and fails later: an error, not an export."""
    for tensor in program.model.graph.inputs:
        for axis, label in _dynamic_axes([tensor.name])[tensor.name].items():
            if isinstance(size := tensor.shape[axis], int):
                raise ExportError(f"torch.onnx fixed the {label} axis of {type(model).__name__}'s '{tensor.name}' at "
                                  f"{size}, the traced sample's: the graph would refuse inputs of any other {label}. "
                                  "Not exported; the saved model itself is unaffected: it runs in transformers and "
                                  "in hftransfer predict")


def _trace(model: torch.nn.Module, sample: dict, names: list[str]):
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    shapes = tuple({axis: dims[label] for axis, label in _dynamic_axes([name])[name].items()} for name in names)
    return torch.onnx.export(_Logits(model, names).eval(), tuple(sample[n] for n in names), input_names=names,
                             output_names=["logits"], dynamic_shapes=(shapes,), opset_version=OPSET, dynamo=True,
                             external_data=False, verbose=False)


def _traced_another_way(model: torch.nn.Module, sample: dict, names: list[str], error: Exception):
    """Where the model's code cannot be traced as it stands, transformers' own switches to code that computes the
    same and can be: each token's experts' weights gathered (`batched_mm`) for a mixture-of-experts layer's grouped
    matmul, a custom op with no ONNX function (Mixtral's, Qwen2/3-MoE's, GPT-OSS's), then written-out attention
    (`eager`) for PyTorch's fused attention (SDPA) with a relative-position bias as its mask, which cannot be traced
    for a dynamic batch size (T5's, Swin's, BEiT's). Each switch stays on for the next try; all are undone after.
    The graph is then checked against the PyTorch model like any other (`export`). Any other failure is an error."""
    unexportable = ExportError(f"torch.onnx cannot export {type(model).__name__} for any batch size and input length "
                               f"({_root_cause(error)}). The saved model itself is unaffected: it runs in "
                               "transformers and in hftransfer predict")
    switched = []  # (what the graph uses, what the model used, how to switch back)
    try:
        for switch in (_batched_experts, _eager_attention):
            try:
                if (done := switch(model)) is None:
                    continue
                switched.append(done)
                program = _trace(model, sample, names)
            except Exception:
                continue
            logger.info("Traced with transformers' %s in place of its %s (the model as it stands cannot be traced: %s)",
                        " and ".join(used for used, _, _ in switched), " and ".join(was for _, was, _ in switched),
                        _root_cause(error))
            return program
        raise unexportable from error
    finally:
        for _, _, switch_back in reversed(switched):
            switch_back()


def _batched_experts(model: torch.nn.Module):
    current = model.get_experts_implementation() if hasattr(model, "get_experts_implementation") else {}
    if "grouped_mm" not in current.values():
        return None
    model.set_experts_implementation({k: "batched_mm" if v == "grouped_mm" else v for k, v in current.items()})
    return "batched_mm experts", "grouped_mm experts", lambda: model.set_experts_implementation(current)


def _eager_attention(model: torch.nn.Module):
    fused = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
    if fused == "eager" or not hasattr(model, "set_attn_implementation"):
        return None
    model.set_attn_implementation("eager")
    return "eager attention", f"{fused} attention", lambda: model.set_attn_implementation(fused)


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost error: torch.onnx wraps it in a page of advice on filing a bug."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def quantize_int8(fp32: Path, int8: Path, reference: Predictor, calibration: list) -> str:
    """onnxruntime's int8: static QDQ for convolutional networks, dynamic for attention models (module docstring)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .anatomy import architecture

    prepared = fp32.with_name("model_prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        if architecture(reference.engine.model) == "conv":
            values = [v[0] if isinstance(v, tuple) else v for v in calibration]
            first = _first_conv(prepared)
            quantize_static(str(prepared), str(int8), _Calibration(reference, values), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            nodes_to_exclude=[first] if first else [])
            return (f"static QDQ, int8 weights per channel, uint8 activations calibrated on {len(values)} training "
                    "inputs; the first convolution (on the pixels) kept in fp32")
        quantize_dynamic(str(prepared), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        return "dynamic: int8 weights per channel, activations quantized per batch"
    finally:
        prepared.unlink(missing_ok=True)


def _first_conv(path: Path) -> str | None:
    """The convolution that reads the pixels. Kept in fp32: quantizing it cost 3.3 points of accuracy on a
    Fashion-MNIST MobileNetV2 (0.937 -> 0.903), keeping it gained them back (0.943); the classifier made no
    difference (README, "Export")."""
    import onnx

    return next((node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"), None)


class _Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed batches."""

    def __init__(self, reference: Predictor, values: list):
        self.batches = iter([{k: v.numpy() for k, v in reference.inputs(values[i:i + BATCH]).items()}
                             for i in range(0, len(values), BATCH)])

    def get_next(self):
        return next(self.batches, None)


# ---------------------------------------------------------------- checks

def compare_engines(reference: Predictor, engines: dict, validation: list) -> dict:
    """Each engine's predictions against PyTorch's on the same preprocessed batches: agreement, largest probability
    difference, and accuracy where the labels are known."""
    found = {name: {"agree": 0, "diff": 0.0, "correct": 0} for name in engines}
    torch_correct, labelled = 0, 0
    for start in range(0, len(validation), BATCH):
        chunk = validation[start:start + BATCH]
        inputs = reference.inputs([value for value, _ in chunk], fast=True)
        expected = reference.scores(inputs)
        labels = np.array([label if label is not None else -1 for _, label in chunk])
        known = labels >= 0
        torch_correct += int((expected.argmax(-1) == labels)[known].sum())
        labelled += int(known.sum())
        for name, engine in engines.items():
            scores = reference.probabilities(engine(inputs))
            found[name]["agree"] += int((scores.argmax(-1) == expected.argmax(-1)).sum())
            found[name]["diff"] = max(found[name]["diff"], float(np.abs(scores - expected).max()))
            found[name]["correct"] += int((scores.argmax(-1) == labels)[known].sum())
    count = len(validation)
    measured = {"inputs_checked": count, "pytorch": {}}
    if labelled == count:
        measured["pytorch"]["accuracy"] = round(torch_correct / count, 4)
    for name, seen in found.items():
        measured[name] = {"agreement": round(seen["agree"] / count, 4),
                          "max_probability_difference": float(f"{seen['diff']:.3g}")}
        if labelled == count:
            measured[name]["accuracy"] = round(seen["correct"] / count, 4)
    return measured
