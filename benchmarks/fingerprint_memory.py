"""What the data-quality pass's text fingerprints cost at scale, side by side with the plain way:

    python benchmarks/fingerprint_memory.py [--rows 50000 200000]

- the plain way (hftransfer before this measurement): every training text's fingerprint as a dense row of 4,096
  floats, stacked into one matrix, normalised as a whole, then each validation text's best match found against it.
- hftransfer: `quality.fingerprints` (the texts' 4-gram buckets, counted into dense rows a block at a time) and the
  same `quality.near_duplicates`.
- the hashing alone, in this process, the same texts: each 4-gram's `zlib.crc32`, one Python call a gram (hftransfer
  before 2026-12-07), against `quality.fingerprints`' multiply-shift hash of every window of a block of texts at once.

Texts: review-like sentences made by joining halves of two of the embedded Rotten Tomatoes snippets (seed 0); the
validation set is 1,000 snippets as they are. Each way runs in its own process; its peak resident memory is read
after the texts are in memory and subtracted. Both must find the same pairs. Writes
`benchmarks/results/fingerprint_memory.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "fingerprint_memory.json"


def texts(rows: int) -> tuple[list[str], list[str]]:
    import pandas as pd

    sample = pd.concat(pd.read_parquet(p) for p in sorted((ROOT / "hftransfer/samples/rotten_tomatoes").glob("*")))
    snippets = sample["text"].tolist()
    rng = random.Random(0)
    train = []
    for _ in range(rows):
        first, second = snippets[rng.randrange(len(snippets))].split(), snippets[rng.randrange(len(snippets))].split()
        train.append(" ".join(first[:len(first) // 2 + 1] + second[len(second) // 2:]))
    return train, snippets[:1000]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain(train: list[str], validation: list[str]):
    import torch

    from hftransfer import quality

    def dense(texts: list[str]) -> torch.Tensor:
        prints = quality.TextPrints(texts)
        return torch.stack([torch.bincount(prints.buckets[start:stop].long(), minlength=quality.TEXT_BUCKETS).float()
                            for start, stop in zip(prints.offsets[:-1], prints.offsets[1:])])

    whole = torch.nn.functional.normalize(dense(train), dim=1)
    queries = dense(validation)
    return quality.near_duplicates(queries, whole, quality.TEXT_NEAR_DUPLICATE_THRESHOLD)


def hftransfer(train: list[str], validation: list[str]):
    from hftransfer import quality

    return quality.near_duplicates(quality.fingerprints(validation), quality.fingerprints(train),
                                   quality.TEXT_NEAR_DUPLICATE_THRESHOLD)


def child(way: str, rows: int) -> None:
    """One way in this process: prints its peak memory over the texts' and its pairs, as JSON."""
    import torch  # noqa: F401 (imported before the baseline, as both ways import it)

    from hftransfer import quality  # noqa: F401

    train, validation = texts(rows)
    before, start = peak_mb(), time.perf_counter()
    pairs = {"plain": plain, "hftransfer": hftransfer}[way](train, validation)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "extra_mb": round(peak_mb() - before),
                      "pairs": [(i, j) for i, j, _ in pairs]}))


def crc32_buckets(text: str) -> list[int]:
    """The 4-gram hashing hftransfer had before: one `zlib.crc32` call a gram (of the same normal text)."""
    from hftransfer import quality

    normal = quality._normal_text(text)
    return [zlib.crc32(normal[i:i + 4].encode()) % 4096 for i in range(len(normal) - 3)]


def hashing(rows: int) -> dict:
    from hftransfer import quality

    train, _ = texts(rows)
    start = time.perf_counter()
    grams = sum(len(crc32_buckets(text)) for text in train)
    loop = time.perf_counter() - start
    start = time.perf_counter()
    prints = quality.fingerprints(train)
    vectorised = time.perf_counter() - start
    assert len(prints.buckets) == grams  # one gram a character either way (a short text: one)
    return {"crc32_loop_s": round(loop, 1), "hftransfer_s": round(vectorised, 1),
            "speedup": round(loop / vectorised, 1)}


def measure(rows: int) -> dict:
    result = {}
    for way in ("plain", "hftransfer"):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--rows", str(rows)], check=True,
                             capture_output=True, text=True).stdout
        result[way] = json.loads(out.strip().splitlines()[-1])
    same = result["plain"].pop("pairs") == result["hftransfer"].pop("pairs")
    return {"rows": rows, "same_pairs": same, **result, "hashing": hashing(rows),
            "memory_ratio": round(result["plain"]["extra_mb"] / max(1, result["hftransfer"]["extra_mb"]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--child", choices=["plain", "hftransfer"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows[0])
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import machine

    results = [measure(rows) for rows in args.rows]
    for row in results:
        print(f"{row['rows']:>7} texts: plain {row['plain']['extra_mb']} MB in {row['plain']['seconds']} s, "
              f"hftransfer {row['hftransfer']['extra_mb']} MB in {row['hftransfer']['seconds']} s "
              f"({row['memory_ratio']}x less memory), same pairs: {row['same_pairs']}; hashing: crc32 loop "
              f"{row['hashing']['crc32_loop_s']} s, hftransfer {row['hashing']['hftransfer_s']} s "
              f"({row['hashing']['speedup']}x)")
    RESULT.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine(), "rows": results},
                                 indent=1) + "\n")


if __name__ == "__main__":
    main()
