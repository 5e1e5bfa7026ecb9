"""Demo latency through `gradio_client`, against its floor, side by side in one run.

    python benchmarks/demo_latency.py [--requests 60] [--model zoo:mobilenet_v2]

The floor is what no demo can beat: a bare prediction (preprocess + forward + top-k, `Predictor.predict` on the
same model and input, in this process) plus the round trip of a Gradio app whose function does nothing with the
same input and output components. Both servers run as their own processes (as a user runs them); this process is
only the client. Reported: p50/p95 of each, the ratio demo / (bare + no-op), requests per second with 8 concurrent
clients, and the demo server's resident memory before and after the requests. Writes
benchmarks/results/demo_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

NOOP_APP = """
import sys
import gradio as gr

with gr.Blocks() as demo:
    image = gr.Image(type="filepath")
    label = gr.Label(num_top_classes=5)
    button = gr.Button()
    button.click(lambda values: [[{"x": 1.0} for _ in values]], [image], [label], batch=True, max_batch_size=16,
                 api_name="predict")
demo.queue(default_concurrency_limit=1)
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(command: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None:
            raise SystemExit(process.stderr.read().decode()[-3000:])
        time.sleep(0.5)
    raise SystemExit(f"server on port {port} did not start")


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "n": len(ms)}


def time_calls(call, n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_latency(port: int, image: Path, n: int) -> tuple[list[float], object]:
    from gradio_client import Client, handle_file

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    results = []
    times = time_calls(lambda: results.append(client.predict(handle_file(str(image)), api_name="/predict")), n)
    return times, results[-1]


def concurrent_throughput(port: int, image: Path, clients: int = 8, each: int = 10) -> float:
    from gradio_client import Client, handle_file

    connected = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(clients)]

    def work(client):
        for _ in range(each):
            client.predict(handle_file(str(image)), api_name="/predict")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, connected))
    return clients * each / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="zoo:mobilenet_v2")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_latency.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hftransfer-demo-bench-"))
    import skimage.data

    image = work / "chelsea-224.png"
    Image.fromarray(skimage.data.chelsea()).resize((224, 224)).save(image)

    from hftransfer.demo import Predictor

    predictor = Predictor(args.model)
    bare = time_calls(lambda: predictor.predict([str(image)]), args.requests)
    expected = predictor.predict([str(image)])[0]
    del predictor

    noop_port, demo_port = free_port(), free_port()
    (work / "noop.py").write_text(NOOP_APP)
    noop = serve([sys.executable, str(work / "noop.py"), str(noop_port)], noop_port)
    demo = serve([sys.executable, "-m", "hftransfer.cli", "demo", args.model, "--port", str(demo_port)], demo_port)
    try:
        noop_times, _ = client_latency(noop_port, image, args.requests)
        rss_before = rss_mb(demo.pid)
        demo_times, answer = client_latency(demo_port, image, args.requests)
        assert answer["label"] == max(expected, key=expected.get), (answer, expected)
        throughput = {"noop": concurrent_throughput(noop_port, image), "demo": concurrent_throughput(demo_port, image)}
        rss_after = rss_mb(demo.pid)
    finally:
        for process in (noop, demo):
            process.terminate()
            process.wait()

    rows = {"bare prediction": percentiles(bare), "no-op Gradio round trip": percentiles(noop_times),
            "hftransfer demo": percentiles(demo_times)}
    floor = rows["bare prediction"]["p50_ms"] + rows["no-op Gradio round trip"]["p50_ms"]
    floor95 = rows["bare prediction"]["p95_ms"] + rows["no-op Gradio round trip"]["p95_ms"]
    result = {"model": args.model, "image": "chelsea resized to 224x224 PNG", "rows": rows,
              "ratio_p50": round(rows["hftransfer demo"]["p50_ms"] / floor, 3),
              "ratio_p95": round(rows["hftransfer demo"]["p95_ms"] / floor95, 3),
              "throughput_8_clients_rps": {k: round(v, 2) for k, v in throughput.items()},
              "demo_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
              "machine": f"{os.cpu_count()} CPUs, {platform_name()}", "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def platform_name() -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return f"{cpu}, torch {torch.__version__}, " + ("GPU" if torch.cuda.is_available() else "no GPU")


if __name__ == "__main__":
    main()
