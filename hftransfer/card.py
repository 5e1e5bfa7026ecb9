"""The model card: `README.md` in `output_dir`, built from the folder's own files with `huggingface_hub`'s classes.

Everything comes from what the run saved (config, `hftransfer_run.json`, results, freeze plan, report, comparison),
so `write_card(folder)` can rebuild the card of any output folder. The YAML header carries what the Hub indexes:
`base_model`, `datasets`, `metrics`, `model-index` results, `pipeline_tag`, `library_name` and tags.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import zoo
from .anatomy import POOLING_KEY
from .args import DataArguments
from .heads import CONFIG_KEY as HEAD_KEY
from .outputs import (CONFIG, CONFUSION_PNG, CURVES_PNG, ONNX_FILE, PLAN_FILE, REPORT_DIR, REPORT_MD, RUN_RECORD,
                      OutputFolder, OutputFolderError)
from .report import comparison_table, data_quality_summary, leak_warning, markdown_table, plan_table, stage_rows
from .strategies import DESCRIPTIONS
from .tasks import TASKS, task_name_for

HEADLINE = {"eval_accuracy": ("accuracy", "Accuracy"), "eval_f1_macro": ("f1", "Macro F1"),
            "eval_precision_macro": ("precision", "Macro precision"), "eval_recall_macro": ("recall", "Macro recall"),
            "eval_top_5_accuracy": ("top_5_accuracy", "Top-5 accuracy"), "eval_f1_micro": ("f1", "Micro F1")}


def headline_rows(results: dict, run: dict | None) -> list[dict]:
    """The card's and demo's metric table: the metric that picked the best epochs first (macro-F1 when classes are
    imbalanced), then the others."""
    first = f"eval_{((run or {}).get('settings') or {}).get('metric_for_best_model')}"
    keys = sorted((key for key in HEADLINE if key in results), key=lambda key: key != first)
    return [{"metric": HEADLINE[key][1], "value": results[key]} for key in keys]


def _hub_id(name: str | None) -> str | None:
    """A Hub id for the card's metadata, or None for local folders."""
    if not name:
        return None
    if zoo.is_zoo_name(name):
        return zoo.ZOO[name.split(":", 1)[1]].hub_id
    return None if os.path.exists(name) or name.count("/") != 1 else name


def _data_name(settings: dict) -> str:
    """A readable name for local data: the folder or file, or its parent where that is just 'train'."""
    source = settings.get("train_dir") or settings.get("train_file")
    if not source:
        return "embedded sample"
    path = Path(source)
    name = path.stem if path.is_file() else path.name
    return path.resolve().parent.name if name.lower() in ("train", "training", "data") else name


def card_data(folder: Path, run: dict, results: dict, task: str, model_name: str,
              exported: dict | None = None) -> ModelCardData:
    settings = run["settings"]
    dataset = _hub_id(settings.get("dataset_name"))
    data_label = dataset or _data_name(settings)
    evals = [EvalResult(task_type=TASKS[task].pipeline_tag, dataset_type=dataset or "custom", dataset_name=data_label,
                        dataset_split="validation", metric_type=kind, metric_value=round(float(results[key]), 4),
                        metric_name=name)
             for key, (kind, name) in HEADLINE.items() if key in results]
    return ModelCardData(
        model_name=model_name, base_model=_hub_id(settings.get("model_name_or_path")),
        datasets=[dataset] if dataset else None, metrics=sorted({e.metric_type for e in evals}),
        pipeline_tag=TASKS[task].pipeline_tag, library_name="onnx" if exported else "transformers",
        tags=["hftransfer", "transfer-learning", TASKS[task].pipeline_tag, run["settings"]["strategy"],
              *(["onnx", exported["precision"]] if exported else [])],
        eval_results=evals or None)


def _usage(adapter, folder_name: str, mlp_head: bool) -> str:
    name = json.dumps(folder_name)  # a Python string literal whatever the name holds (a quote broke the snippet)
    if mlp_head:
        return (f"This model has an MLP head (`{HEAD_KEY}` in its config), which plain `transformers` cannot "
                f"rebuild; load it with hftransfer:\n\n```python\nfrom hftransfer.modeling import load_trained\n\n"
                f"model = load_trained({name})  # a folder or a Hub id\n```\n")
    return (f"```python\nfrom transformers import pipeline\n\nclassifier = pipeline(\"{adapter.pipeline_tag}\", "
            f"model={name})\nprint(classifier({adapter.usage_example}))\n```\n\nOr open the demo: "
            f"`hftransfer demo {shlex.quote(folder_name)}`.\n")


def _export_usage(adapter, folder_name: str) -> str:
    example, what = ("photos/", "a folder") if adapter.name == "image" else ("texts.csv", "a table or a folder")
    if adapter.pairs:
        example, what = "pairs.csv", f"a table with columns {' and '.join(adapter.columns)}"
    return (f"An ONNX export (no PyTorch weights): `hftransfer predict {folder_name} {example} --output "
            f"predictions.csv` predicts {what} with the training preprocessing; `hftransfer demo "
            f"{folder_name}` serves it. In onnxruntime directly, `{ONNX_FILE}` takes the processor's or tokenizer's "
            "outputs (names below) and returns `logits`.\n")


def _export_section(record: dict) -> str:
    rows = [{"engine": "PyTorch fp32 (source)", "accuracy": record["pytorch"].get("accuracy", "not measured"),
             "agreement with PyTorch": "-", "max probability difference": "-"}]
    for name, label in (("onnx_fp32", "ONNX fp32"), ("onnx_int8", "ONNX int8")):
        if name in record:
            found = record[name]
            rows.append({"engine": label, "accuracy": found.get("accuracy", "not measured"),
                         "agreement with PyTorch": f"{found['agreement']:.2%}",
                         "max probability difference": found["max_probability_difference"]})
    axes = sorted({label for dims in record["dynamic_axes"].values() for label in dims.values()})
    text = (f"## Export\n\n`{record['file']}`: ONNX opset {record['opset']}, {record['precision']}; inputs "
            f"{', '.join(f'`{n}`' for n in record['inputs'])}, dynamic axes: {', '.join(axes)}. Checked at export on "
            f"{record['inputs_checked']} input(s) of {record['checked_on']}: the fp32 graph must give PyTorch's "
            f"probabilities within {record['tolerance']:g}.\n\n" + markdown_table(rows))
    if "quantization" in record:
        text += f"\nint8 by onnxruntime: {record['quantization']}.\n"
    return text


def _pooling_line(config: dict) -> str:
    pooling = config.get(POOLING_KEY) or {}
    if pooling.get("mode") == "mean":
        return (f"\nPooling: mean of the tokens, as the sentence-transformers checkpoint was trained, computed by "
                f"encoder layer {pooling['layer']} (added, frozen: uniform attention over the unpadded tokens), so "
                "plain `transformers` runs it.\n")
    if pooling.get("pooler_untrained"):
        return ("\nPooling: the first token; the checkpoint had no weights for the pooler, which is a fixed, nearly "
                "linear pass-through.\n")
    if pooling.get("mode") == "cls":
        return ("\nPooling: the first token, as the sentence-transformers checkpoint was trained (the pooler a fixed, "
                "nearly linear pass-through).\n")
    return ""


def _training_section(run: dict, plan: dict | None, config: dict) -> str:
    settings = run["settings"]
    stages = stage_rows(run["stages"])
    keys = ["strategy", "per_device_train_batch_size", "warmup_steps", "lr_scheduler_type", "seed",  # decay: per stage
            "image_size", "max_seq_length", "layer_lr_decay", "lr_multipliers", "head_hidden_sizes", "head_dropout",
            "rdrop_weight", "adversarial_epsilon", "bf16", "fp16"]
    made = run.get("chosen") or {}  # a flag the run could not honour is there too, with the value it used
    hyper = [{"setting": k, "value": settings.get(k)} for k in keys
             if settings.get(k) not in (None, [], False) and k not in made]
    text = "## Training procedure\n\n" + markdown_table(stages) + "\n" + markdown_table(hyper)
    chosen = [{"setting": k, "value": v["value"], "why": v["reason"]} for k, v in made.items()]
    if chosen:
        text += "\nChosen or adjusted automatically:\n\n" + markdown_table(chosen)
    if plan:
        text += (f"\nFreeze plan of the last stage (`{PLAN_FILE}`; `hftransfer freeze-report MODEL --plan {PLAN_FILE}` "
                 f"reproduces it):\n\n" + plan_table(plan))
    return text + _pooling_line(config)


def _limits(run: dict, results: dict) -> str:
    data = run.get("data", {})
    skipped = sum(sum(v.values()) for v in data.get("skipped", {}).values())
    lines = [f"- Trained on {results.get('train_samples', '?')} examples of {len(run['labels'])} classes "
             f"({', '.join(run['labels'][:12])}{', ...' if len(run['labels']) > 12 else ''}) and validated on "
             f"{results.get('eval_samples', '?')}; it only knows these classes and always answers one of them.",
             "- Inputs unlike the training data (other domains, image sizes or languages) will be classified "
             "with unwarranted confidence.",
             f"- {skipped} unusable example(s) were skipped while loading the data." if skipped else
             "- No example was skipped while loading the data."]
    return "## Intended use and limits\n\n" + "\n".join(lines) + "\n"


def _what_trained(run: dict) -> str:
    """The strategy's stages as they ran: without its head stage where it was left out (decoders, LoRA under FSDP)."""
    strategy = run["settings"]["strategy"]
    chosen = (run.get("chosen") or {}).get("head_stage")
    if not chosen or chosen["value"] is not False:
        return DESCRIPTIONS[strategy]
    return f"{DESCRIPTIONS[strategy]}; here in one stage, without the head-only stage ({chosen['reason']})"


def write_card(folder: str | Path, model_name: str | None = None) -> Path:
    """Write the card; `model_name` (the title, and what its usage loads) defaults to the name the folder's card
    already gives (a Hub id after a push), else the folder's name."""
    output = OutputFolder(folder)
    card = render_card(output, model_name or card_name(output.path) or output.path.resolve().name)
    card.save(output.card)
    return output.card


def card_name(folder: str | Path) -> str | None:
    """The model name a folder's card gives (its model-index name), None without a card that names one."""
    path = OutputFolder(folder).card
    try:
        return ModelCard.load(path).data.model_name if path.is_file() else None
    except Exception:  # huggingface_hub raises several types for malformed metadata
        return None


def name_card_for_repo(folder: str | Path, repo_id: str) -> bool:
    """Before a push: the card names `repo_id`, so its usage snippet loads the pushed model. Only the card hftransfer
    wrote is rewritten (it must equal its own rendering); False where the card is someone's own or was edited."""
    output = OutputFolder(folder)
    current = card_name(output.path)
    if current == repo_id:
        return True
    if current is None or output.config is None or output.run is None:  # no card, or not an hftransfer folder
        return False
    unedited = output.card.read_text() == str(render_card(output, current))
    if unedited:
        render_card(output, repo_id).save(output.card)
    return unedited


def render_card(output: OutputFolder, model_name: str) -> ModelCard:
    folder = output.path
    config, run, results, plan, comparison = output.config, output.run, output.results, output.plan, output.comparison
    if config is None or run is None:
        raise OutputFolderError(f"{folder}: " + (f"no {CONFIG} or {RUN_RECORD} (not an hftransfer output folder)"
                                                 if folder.is_dir() else "no such folder"))
    task = task_name_for(config.get("model_type"))
    exported = output.export
    data = card_data(folder, run, results, task, model_name, exported)
    base = run["settings"].get("model_name_or_path")
    headline = headline_rows(results, run)
    body = [f"# {model_name}\n",
            f"{TASKS[task].noun.capitalize()} classifier fine-tuned from `{base}` with "
            f"hftransfer (strategy `{run['settings']['strategy']}`): {_what_trained(run)}.\n",
            "## Results\n\nOn the validation split:\n\n" + markdown_table(headline)]
    if output.report_file(CONFUSION_PNG):
        body.append(f"![Confusion matrix]({REPORT_DIR}/{CONFUSION_PNG})\n")
    if output.report_file(CURVES_PNG):
        body.append(f"![Training curves]({REPORT_DIR}/{CURVES_PNG})\n")
    if output.report_file(REPORT_MD):
        body.append(f"Per-class scores and details: [{REPORT_DIR}/{REPORT_MD}]({REPORT_DIR}/{REPORT_MD}).\n")
    if comparison:
        body.append("### Strategies compared on the same data\n\n" + comparison_table(comparison))
    if output.data_quality:
        body.append(f"**Data quality.** {leak_warning(output.data_quality)}{data_quality_summary(output.data_quality)} "
                    f"See the [report]({REPORT_DIR}/{REPORT_MD}#data-quality).\n")
    adapter = TASKS[task]().with_data(DataArguments.from_settings(run["settings"]))  # a sentence pair's columns
    usage = _export_usage(adapter, model_name) if exported else _usage(adapter, model_name, bool(config.get(HEAD_KEY)))
    body += ["## How to use\n\n" + usage, *([_export_section(exported)] if exported else []),
             _training_section(run, plan, config), _limits(run, results)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
