"""The GPU check: hftransfer's own training path on one GPU, as one command, one table.

    bash benchmarks/gpu_check.sh            # on a GPU machine (installs what is missing, then runs this)
    bash benchmarks/gpu_check.sh --rows smoke  # only the groups named: defaults, throughput, smoke
    python benchmarks/gpu_check.py --dry_run  # the same steps on a CPU with tiny models, to check the script

Rows (each a recipe run in its own process, as a user runs it):
- the embedded image default (zoo:mobilenet_v2 on the Fashion-MNIST sample) in bf16 and in fp32 (TF32 off), and the
  embedded text default (zoo:all-MiniLM-L6-v2 on the Rotten Tomatoes sample) the same way, where the zoo's weight
  packages are installed;
- a ViT-base-sized and a BERT-base-sized model (random init, saved in the Hub's layout), fine-tuned (`--strategy
  full`) and with the base frozen (`feature_extraction --cache_features false`, so every step runs the base):
  images/s or tokens/s from the Trainer, and achieved TFLOP/s (6 x non-embedding parameters x tokens for a step
  that trains the base, 2 x for a frozen one) against a bf16 matmul peak measured after a warm-up;
- FSDP2 and DeepSpeed ZeRO-2 smoke runs (`accelerate launch --config_file recipes/accelerate_configs/...`, one
  process) of `staged` and LoRA on a tiny ViT and BERT and of a tiny Qwen2 decoder's default, DeepSpeed only where
  it is installed.
Writes the table to stdout and, as JSON, to --out (default $OUT/gpu_check.json, else benchmarks/results/).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def matmul_peak(device: torch.device, size: int, dtype=torch.bfloat16) -> float:
    """FLOP/s of a square matrix product, timed after three warm-up products (clocks and kernels chosen)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ a
    sync(device)
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ a
    sync(device)
    return repeats * 2 * size ** 3 / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def image_folders(root: Path, count: int, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("validation", max(16, count // 8))):
        for i in range(n):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root / "train", root / "validation"


def text_files(root: Path, count: int, words: int, vocabulary: list[str]) -> tuple[Path, Path]:
    import csv

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n in (("train", count), ("validation", max(16, count // 8))):
        path = root / f"{split}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(n):
                writer.writerow([" ".join(rng.choice(vocabulary, words)), f"l{i % 2}"])
        paths.append(path)
    return paths[0], paths[1]


def save_vit(folder: Path, tiny: bool) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else {}
    model = ViTForImageClassification(ViTConfig(image_size=224, patch_size=16, num_labels=2, **size))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def save_bert(folder: Path, tiny: bool, vocabulary: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + vocabulary)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=512)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else {}
    model = BertForSequenceClassification(BertConfig(vocab_size=len(vocab), num_labels=2, **size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_qwen2(folder: Path, vocabulary: list[str]) -> Path:
    """A tiny decoder classifier with a byte-level BPE tokenizer that, as decoder LMs ship, has an end-of-text token
    and no pad token (Qwen2's tokenizer class reads its vocabulary and merges, and would default to padding)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(vocabulary, vocab_size=300, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                        model_max_length=128)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
                         num_labels=2)
    Qwen2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "pad_token": None}))
    return folder


def non_embedding_parameters(folder: Path) -> int:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder)
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def recipe(task: str, out: Path, *flags: str, launcher: list[str] | None = None, timeout: int = 600) -> dict:
    """Run a recipe; its record: samples/s of the last stage, accuracy, wall time (or the error and the log's tail)."""
    command = [*(launcher or [sys.executable]), str(ROOT / "recipes" / f"{task}.py"), "--output_dir", str(out),
               "--disable_tqdm", "true", "--report_to", "none", *flags]
    start = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - start
    if done.returncode:
        lines = output_lines(done.stdout + done.stderr)
        error = error_line(lines) or f"exit code {done.returncode} (no error named); last line: {lines[-1:]}"
        return {"error": error, "log_tail": "\n".join(lines)[-1500:], "wall_s": round(wall, 1)}
    run = json.loads((out / "hftransfer_run.json").read_text())
    results = json.loads((out / "all_results.json").read_text())
    stage = run["stages"][-1]["metrics"]
    return {"wall_s": round(wall, 1), "eval_accuracy": round(results["eval_accuracy"], 4),
            "samples_per_s": round(stage["train_samples_per_second"], 1),
            "peak_memory_mb": results.get("peak_memory_mb"), "precision": _precision(run["settings"])}


def output_lines(output: str) -> list[str]:
    """A run's output without its progress bars, which come last and say nothing of an error."""
    return [line for line in output.replace("\r", "\n").splitlines()
            if line.strip() and not re.search(r"\d+%\||it/s\]|examples/s\]", line)]


def error_line(lines: list[str]) -> str:
    """The line naming the error ("" where none does: a signal): a rank's own where a launcher ran the recipe
    (torchrun's report, which comes last, names only its ChildFailedError)."""
    named = [line for line in lines if re.match(r"(\[rank\d+\]:\s*)?[\w.]+(Error|Exception)\b", line)]
    return ([line for line in named if line.startswith("[rank")] or named or [""])[-1]


def _precision(settings: dict) -> str:
    return "bf16" if settings.get("bf16") else "fp16" if settings.get("fp16") else \
        "fp32+tf32" if settings.get("tf32") else "fp32"


def zoo_installed(entry: str) -> bool:
    from hftransfer import zoo

    try:
        zoo.resolve(f"zoo:{entry}")
    except Exception:  # noqa: BLE001 - any failure: the weight package is not here
        return False
    return True


def defaults_rows(work: Path, quick: list[str]) -> list[dict]:
    rows = []
    for task, entry in (("image", "mobilenet_v2"), ("text", "all-MiniLM-L6-v2")):
        if not zoo_installed(entry):
            rows.append({"row": f"{task} default", "error": f"zoo:{entry}'s weight package is not installed"})
            continue
        on_cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # the dry run: CPU autocast
        for name, flags in (("bf16", ["--bf16", "true", *on_cpu]), ("fp32", ["--bf16", "false", "--tf32", "false"])):
            rows.append({"row": f"{task} default ({entry}), {name}",
                         **recipe(task, work / f"{task}-{name}", *quick, *flags)})
    return rows


def throughput_rows(work: Path, tiny: bool, count: int, peak: float) -> list[dict]:
    vocabulary = [f"w{i}" for i in range(30000 if not tiny else 500)]
    train_images, validation_images = image_folders(work / "images", count, 224)
    train_text, validation_text = text_files(work / "texts", count, 126, vocabulary)  # 128 tokens with CLS/SEP
    models = {"vit-base": (save_vit(work / "vit", tiny), "image", 197,
                           ["--train_dir", str(train_images), "--validation_dir", str(validation_images)]),
              "bert-base": (save_bert(work / "bert", tiny, vocabulary), "text", 128,
                            ["--train_file", str(train_text), "--validation_file", str(validation_text),
                             "--max_seq_length", "128"])}
    rows = []
    for name, (folder, task, tokens, data) in models.items():
        parameters = non_embedding_parameters(folder)
        # one forward and one backward a step, what the FLOPs formula counts: R-Drop and FGM (on by default for text
        # on up to 10,000 examples) run more passes
        single_pass = ["--rdrop_weight", "0", "--adversarial_epsilon", "0"]
        for base, flags, factor in (("trained", ["--strategy", "full", "--num_train_epochs", "1", *single_pass], 6),
                                    ("frozen", ["--strategy", "feature_extraction", "--cache_features", "false",
                                                "--head_epochs", "1"], 2)):
            row = recipe(task, work / f"{name}-{base}", "--model_name_or_path", str(folder), *data, *flags,
                         "--per_device_train_batch_size", "64", "--save_strategy", "no")
            if "error" not in row:
                flops = factor * parameters * tokens * row["samples_per_s"]
                row.update(tokens_per_s=round(tokens * row["samples_per_s"]), tflops=round(flops / 1e12, 1),
                           fraction_of_peak=round(flops / peak, 3))
            rows.append({"row": f"{name} ({parameters / 1e6:.0f}M non-embedding), base {base}", **row})
    return rows


def smoke_rows(work: Path) -> list[dict]:
    """Each launcher config on tiny models: both stages of `staged` (the second re-wraps what the first wrapped) and
    LoRA, on a ViT; `staged` and LoRA on a BERT (its embeddings wrapped on their own); a decoder's default (LoRA)."""
    vocabulary = [f"w{i}" for i in range(500)]
    train, validation = image_folders(work / "smoke-images", 64, 224)
    train_text, validation_text = text_files(work / "smoke-texts", 64, 30, vocabulary)
    runs = {"staged": ("image", save_vit(work / "tiny-vit", tiny=True), "staged"),
            "lora": ("image", work / "tiny-vit", "lora"),
            "text staged": ("text", save_bert(work / "tiny-bert", True, vocabulary), "staged"),
            "text lora": ("text", work / "tiny-bert", "lora"),
            "decoder default": ("text", save_qwen2(work / "tiny-qwen2", vocabulary), None)}
    data = {"image": ["--train_dir", str(train), "--validation_dir", str(validation)],
            "text": ["--train_file", str(train_text), "--validation_file", str(validation_text)]}
    rows = []
    configs = {"fsdp": "fsdp.yaml", "deepspeed zero2": "deepspeed_zero2.yaml"}
    for name, config in configs.items():
        if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
            rows.append({"row": f"{name} smoke", "error": "deepspeed is not installed"})
            continue
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "recipes" / "accelerate_configs" / config), "--num_processes", "1"]
        for label, (task, model, strategy) in runs.items():
            chosen = ["--strategy", strategy] if strategy else []  # none: the recipe chooses
            rows.append({"row": f"{name} smoke, {label}",
                         **recipe(task, work / f"{name.split()[0]}-{label.replace(' ', '-')}", "--model_name_or_path",
                                  str(model), *data[task], *chosen, "--head_epochs", "2", "--num_train_epochs", "1",
                                  launcher=launcher)})
    return rows


def table(rows: list[dict]) -> str:
    columns = ["row", "precision", "samples_per_s", "tokens_per_s", "tflops", "fraction_of_peak", "eval_accuracy",
               "wall_s", "peak_memory_mb"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['row']} | failed or skipped: {row['error'][:160]} |")
        else:
            lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry_run", action="store_true", help="tiny models and few examples, on any machine")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rows", default="defaults,throughput,smoke",
                        help="which groups of rows to run, comma-separated (a short lease: the ones left to check)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("no GPU: run with --dry_run to check the script")
    work = Path(tempfile.mkdtemp(prefix="hftransfer-gpu-"))
    os.environ["HFTRANSFER_CACHE"] = str(work / "cache")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run)"
    capability = torch.cuda.get_device_capability(0) if device.type == "cuda" else None
    peak = matmul_peak(device, 1024 if args.dry_run else 8192)
    quick = ["--max_train_samples", "64", "--max_eval_samples", "32", "--num_train_epochs", "1",
             "--head_epochs", "1"] if args.dry_run else []
    groups = set(args.rows.split(","))
    rows = defaults_rows(work, quick) if "defaults" in groups else []
    count = 64 if args.dry_run else 2048
    rows += throughput_rows(work, args.dry_run, count, peak) if "throughput" in groups else []
    rows += smoke_rows(work) if "smoke" in groups else []
    result = {"gpu": name, "capability": capability, "torch": torch.__version__,
              "matmul_peak_tflops": round(peak / 1e12, 1), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    print(f"\n{name}, compute capability {capability}, torch {torch.__version__}; bf16 matmul peak "
          f"{result['matmul_peak_tflops']} TFLOP/s (after warm-up)\n")
    print(table(rows))
    out = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results") / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any("error" in r and "not installed" not in r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
