"""A checkpoint without pooler weights (as masked-LM BERTs are saved): the run's reported accuracy and its saved
model's, per seed. README, "A checkpoint without pooler weights".

    python benchmarks/no_pooler.py [--datasets reviews_2000 reviews_c] [--seeds 42 43 44] [--strategy S]

The stand-in is all-MiniLM-L6-v2 with its pooler weights and `modules.json` removed (so it is read as a plain BERT).
Each run is one recipe process, one at a time; the saved model then predicts the validation file with `hftransfer
predict`, whose accuracy must be the run's own (before the cache checked stored features against the base, a second
seed's was at chance).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from defaults import DATA, DATASETS, ROOT, data_flags

STAND_IN = DATA / "minilm-no-pooler"


def make_stand_in() -> Path:
    from hftransfer import zoo

    source = zoo.prepare("all-MiniLM-L6-v2")
    STAND_IN.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file() and file.suffix in (".json", ".txt") and file.name != "modules.json":
            shutil.copy(file, STAND_IN / file.name)
    weights = load_file(source / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, STAND_IN / "model.safetensors",
              metadata={"format": "pt"})
    return STAND_IN


def run(dataset: str, seed: int, strategy: str) -> dict:
    _, *flags = data_flags(dataset, DATASETS[dataset]())
    flags[flags.index("--model_name_or_path") + 1] = str(STAND_IN)
    out = DATA / "runs" / f"no-pooler-{dataset}-{strategy}-seed{seed}"
    subprocess.run([sys.executable, str(ROOT / "recipes" / "text.py"), *flags, "--output_dir", str(out), "--strategy",
                    strategy, "--seed", str(seed), "--disable_tqdm", "true"], check=True, capture_output=True)
    validation = Path(flags[flags.index("--validation_file") + 1])
    predictions = out / "validation_predictions.csv"
    subprocess.run([sys.executable, "-m", "hftransfer.cli", "predict", str(out), str(validation), "--output",
                    str(predictions)], check=True, capture_output=True)
    with validation.open() as truth, predictions.open() as predicted:
        pairs = list(zip(csv.DictReader(truth), csv.DictReader(predicted)))
    saved = sum(row["label"] == guess["label"] for row, guess in pairs) / len(pairs)
    reported = json.loads((out / "all_results.json").read_text())["eval_accuracy"]
    return {"dataset": dataset, "strategy": strategy, "seed": seed, "reported": reported, "saved_model": saved}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["reviews_2000", "reviews_c"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--strategy", default="feature_extraction")
    args = parser.parse_args()
    make_stand_in()
    for dataset in args.datasets:
        for seed in args.seeds:
            print(json.dumps(run(dataset, seed, args.strategy)), flush=True)


if __name__ == "__main__":
    main()
