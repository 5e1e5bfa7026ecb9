"""The passes that decode every training image before training, side by side on one core (the plain way: one image
after another, as hftransfer did before) and on every core of this process (`hardware.thread_map`):

    python benchmarks/image_checks.py [--images 2000] [--side 800]

- the unusable-image check (`ImageTask.drop_unusable`: each image decoded, the ones that cannot be are skipped);
- the data-quality pass's fingerprints (`quality.fingerprints`: each image decoded, greyed, shrunk and blurred).

Images: JPEGs of `--side` x 3/4 `--side` px (quality 90) cut from scikit-image's sample photos at random angles
(seed 0), one in a hundred truncated, so both ways must skip the same files. The one-core run is this process
pinned to one core (`os.sched_setaffinity`), which is what `hardware.cores_per_process` reads. The ways alternate,
`--rounds` times each, after a pass that brings the files into the page cache; the medians' ratio is reported.
Writes `benchmarks/results/image_checks.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULT = ROOT / "benchmarks" / "results" / "image_checks.json"
DATA = Path("/tmp/hftransfer-bench/image_checks")


def photos(count: int, side: int) -> list[str]:
    import numpy as np
    from PIL import Image
    from skimage import data

    folder = DATA / f"{count}_{side}"
    paths = [str(folder / f"{n}.jpg") for n in range(count)]
    if all(os.path.exists(p) for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    for n, path in enumerate(paths):
        image = Image.fromarray(sources[n % len(sources)]).resize((side, side * 3 // 4))
        image.rotate(float(rng.uniform(-20, 20))).save(path, quality=90)
        if n % 100 == 99:  # truncated: unusable
            Path(path).write_bytes(Path(path).read_bytes()[:2000])
    return paths


def passes(paths: list[str]) -> dict:
    from datasets import Dataset, Image as ImageFeature

    from hftransfer import quality
    from hftransfer.data import DataReport
    from hftransfer.tasks import ImageTask

    dataset = Dataset.from_dict({"image": paths}).cast_column("image", ImageFeature())
    task, report = ImageTask(), DataReport()
    start = time.perf_counter()
    kept = task.drop_unusable(dataset, "train", report)
    check = time.perf_counter() - start
    raw = task.raw_inputs(kept)
    start = time.perf_counter()
    prints = quality.fingerprints(raw)
    fingerprint = time.perf_counter() - start
    return {"check_s": round(check, 2), "fingerprints_s": round(fingerprint, 2), "kept": len(kept),
            "skipped": report.total_skipped, "prints": prints}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from hftransfer.fastpath import reexec_with_fast_malloc

    reexec_with_fast_malloc()  # the allocator the recipes run with
    paths = photos(args.images, args.side)
    cores = sorted(os.sched_getaffinity(0))
    names = {"one core (plain)": cores[:1], f"{len(cores)} cores (thread_map)": cores}
    runs = {name: [] for name in names}
    passes(paths)  # files into the page cache
    for _ in range(args.rounds):  # alternated: this machine's speed drifts by a third from minute to minute
        for name, pinned in names.items():
            os.sched_setaffinity(0, pinned)
            runs[name].append(passes(paths))
    os.sched_setaffinity(0, cores)
    plain, threaded = (way[-1] for way in runs.values())
    assert (plain["kept"], plain["skipped"]) == (threaded["kept"], threaded["skipped"])
    assert plain["prints"].equal(threaded["prints"])
    rows = {name: {"check_s": [r["check_s"] for r in way], "fingerprints_s": [r["fingerprints_s"] for r in way],
                   "kept": way[-1]["kept"], "skipped": way[-1]["skipped"]} for name, way in runs.items()}
    plain, threaded = rows.values()
    result = {"images": args.images, "size": f"{args.side} x {args.side * 3 // 4}", "machine_cores": len(cores),
              "ways": rows, **{f"{key}_speedup_median": round(statistics.median(plain[key]) /
                                                             statistics.median(threaded[key]), 2)
                               for key in ("check_s", "fingerprints_s")}}
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
