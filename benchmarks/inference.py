"""Inference after training: PyTorch fp32, ONNX fp32 and ONNX int8 side by side in one run, on this CPU.

    python benchmarks/inference.py [--tasks image text] [--image_model DIR] [--text_model DIR]

For each task's default (image: MobileNetV2 trained on Fashion-MNIST 3,000 with its 10,000-image test set as
validation, 112 px inputs; image_224: MobileNetV2 on 300 RGB texture patches of 96 px, shown at 224 px, predicting
10,000 more; text: all-MiniLM-L6-v2 on 2,000 Rotten Tomatoes snippets, 2,000 validation), trained here unless a
finished output folder is given: `hftransfer export` to fp32 and to int8 (timed), then per engine
- batch-1 latency: one input preprocessed and predicted, median over 200 validation inputs;
- batch throughput: inputs a second at batch 64 over the whole validation set, preprocessing excluded (done once);
- accuracy on the validation set;
and `hftransfer predict` over the whole validation set (the folder of 10,000 images, the CSV of 2,000 texts) with the
output folder and with the int8 export: the same command, wall time from start to exit, one after the other
(image_224: over the 10,000 extra patches).
Results: benchmarks/results/inference.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from defaults import DATA, DATASETS, cut_patches  # noqa: E402 - the benchmark data sets, built once

RESULTS = ROOT / "benchmarks" / "results" / "inference.json"
TASKS = {"image": ("fashion_3000", ["validation"]), "text": ("reviews_2000", ["test.csv"]),
         "image_224": ("textures", ["validation"])}
TEXTURES = ["hubble_deep_field", "immunohistochemistry", "retina", "astronaut", "coffee"]


def textures_10000() -> Path:
    """10,000 RGB patches of 96 px (2,000 a class) of the textures set's photos: `predict`'s input for image_224,
    whose model sees 224 px inputs (small images are shown at 4x, up to the checkpoint's size)."""
    out = DATA / "textures_10000"
    if not out.exists():
        cut_patches(out, TEXTURES, 96, {"validation": 2000}, split_photos=False)
    return out / "validation"
LATENCY_INPUTS = 200
BATCH = 64


def train_default(task: str, output: Path) -> Path:
    if (output / "all_results.json").is_file():
        return output
    dataset, _ = TASKS[task]
    folder = DATASETS[dataset]()
    data = (["--train_dir", str(folder / "train"), "--validation_dir", str(folder / "validation")]
            if task.startswith("image")
            else ["--train_file", str(folder / "train.csv"), "--validation_file", str(folder / "test.csv")])
    recipe = ROOT / "recipes" / f"{task.split('_')[0]}.py"  # image_224: the image recipe
    subprocess.run([sys.executable, str(recipe), *data, "--output_dir", str(output), "--disable_tqdm", "true"],
                   check=True, stdout=subprocess.DEVNULL)
    return output


def hftransfer(*args: str) -> float:
    start = time.time()
    subprocess.run([str(Path(sys.executable).parent / "hftransfer"), *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return round(time.time() - start, 1)


def engine_rows(model: Path, exports: dict[str, Path]) -> list[dict]:
    """Latency, throughput and accuracy of each engine on the run's validation split."""
    from hftransfer.export import evaluation_inputs
    from hftransfer.inference import Predictor

    reference = Predictor(model, engine="pytorch")
    validation, _, _ = evaluation_inputs(model, reference)
    values = [v for v, _ in validation]
    labels = np.array([label for _, label in validation])
    batches = [reference.inputs(values[i:i + BATCH], fast=True) for i in range(0, len(values), BATCH)]
    predictors = {"PyTorch fp32": reference, **{name: Predictor(path) for name, path in exports.items()}}
    rows = []
    for name, predictor in predictors.items():
        predictor.scores(batches[0])  # warm-up
        latencies = []
        for value in values[:LATENCY_INPUTS]:
            start = time.perf_counter()
            predictor.scores(predictor.inputs([value], fast=True))
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        predicted = np.concatenate([predictor.scores(batch).argmax(-1) for batch in batches])
        seconds = time.perf_counter() - start
        rows.append({"engine": name, "batch-1 latency ms (median)": round(1000 * float(np.median(latencies)), 2),
                     f"batch-{BATCH} inputs/s": round(len(values) / seconds, 1),
                     "accuracy": round(float((predicted == labels).mean()), 4)})
    return rows


def benchmark(task: str, model: Path, scratch: Path) -> dict:
    exports = {}
    export_seconds = {}
    for precision in ("fp32", "int8"):
        target = scratch / f"{task}-{precision}"
        flags = ["--quantize", "int8"] if precision == "int8" else []
        export_seconds[precision] = hftransfer("export", str(model), "--output", str(target), *flags)
        exports[f"ONNX {precision}"] = target
    rows = engine_rows(model, exports)
    dataset, parts = TASKS[task]
    inputs = [str(textures_10000())] if task == "image_224" else [str(DATA / dataset / part) for part in parts]
    predict = {}
    for name, folder in (("PyTorch fp32", model), ("ONNX int8", exports["ONNX int8"])):
        output = scratch / f"{task}-{name.split()[0]}.csv"
        predict[name] = hftransfer("predict", str(folder), *inputs, "--output", str(output), "--quiet")
    return {"task": task, "model": str(model), "engines": rows, "export_s": export_seconds,
            "predict_wall_s": predict, "predict_speedup_int8": round(predict["PyTorch fp32"] / predict["ONNX int8"], 2),
            "export_records": {name: json.loads((path / "export.json").read_text()) for name, path in exports.items()}}


def table(result: dict) -> str:
    rows = result["engines"]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    wall = result["predict_wall_s"]
    lines.append(f"\n`hftransfer predict` over the validation set: PyTorch {wall['PyTorch fp32']} s, ONNX int8 "
                 f"{wall['ONNX int8']} s: **{result['predict_speedup_int8']}x**; export {result['export_s']} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--image_model", help="a finished image output folder (default: train one)")
    parser.add_argument("--text_model", help="a finished text output folder (default: train one)")
    options = parser.parse_args()
    scratch = DATA / "inference"
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    for task in options.tasks:
        given = getattr(options, f"{task}_model", None)
        model = Path(given) if given else train_default(task, scratch / f"{task}-model")
        result = benchmark(task, model, scratch)
        print(f"\n## {task}\n\n{table(result)}\n", flush=True)
        results.append(result)
    record = {"machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))}"
                         " cores, no GPU", "when": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"results": []}
    kept = [r for r in previous["results"] if r["task"] not in options.tasks]  # other tasks' last measurement
    record["results"] = kept + results
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
