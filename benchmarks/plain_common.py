"""What both plain baselines do alike, as a plain script would: the embedded sample as a `DatasetDict` (or the
first N shuffled training rows of it), and the checkpoint loaded with a new head for its labels."""

from pathlib import Path

from datasets import load_dataset

SAMPLES = Path(__file__).resolve().parent.parent / "hftransfer" / "samples"


def embedded_sample(name: str, max_train_samples: int | None = None):
    files = {split: str(SAMPLES / name / f"{split}.parquet") for split in ("train", "validation")}
    data = load_dataset("parquet", data_files=files)
    if max_train_samples:
        data["train"] = data["train"].shuffle(seed=42).select(range(max_train_samples))
    return data, data["train"].features["label"].names


def with_new_head(auto_class, folder, names, **kwargs):
    return auto_class.from_pretrained(folder, num_labels=len(names), id2label=dict(enumerate(names)),
                                      label2id={n: i for i, n in enumerate(names)}, **kwargs)
