"""Who loses a request under load, the demo or the client? Counted on both sides of the same load.

    python scripts/busy_demo_evidence.py [--requests 1000] [--threads 50] [--clients 10] [--drivers gradio_client http]

Starts `hftransfer demo` on the real zoo MobileNetV2 as users start it, with one addition made from outside the
package: the server counts every prediction it queued (`Queue.push`) and every completion message it handed to the
event's stream (`Queue.send_message`, with its event id and success flag). Then it sends the same load through each
driver and compares what each request's caller got with what the server says it sent for that event id:

- `gradio_client`: `--clients` shared `Client` objects across `--threads` threads, as the busy-demo test did;
- `http`: Gradio's plain HTTP API, each request its own POST and event stream (`tests/support/demo_load.py`).

`--busy_threads` keeps the GIL busy in the sending process, as pytest's process is during the suite.

Prints one JSON summary per driver; a request whose caller saw no answer while the server sent one is a client loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Runs in the server's process ahead of `hftransfer demo` (also after its one re-exec with glibc's tunables).
COUNTING_PROBE = """
import json, os, threading
from gradio import queueing
from gradio.server_messages import ProcessCompletedMessage

path, lock, log = os.environ["COUNTS_FILE"], threading.Lock(), {"queued": 0, "completed": {}}

def save():
    with open(path + ".tmp", "w") as f:
        json.dump(log, f)
    os.replace(path + ".tmp", path)

push, send = queueing.Queue.push, queueing.Queue.send_message

async def counted_push(self, body, request, username):
    result = await push(self, body, request, username)
    with lock:
        log["queued"] += bool(result[0])
    return result

def counted_send(self, event, message):
    send(self, event, message)
    if isinstance(message, ProcessCompletedMessage):
        with lock:
            log["completed"][event._id] = bool(message.success)
            save()

queueing.Queue.push, queueing.Queue.send_message = counted_push, counted_send
"""


def via_gradio_client(url: str, image: str, n: int, threads: int, clients: int):
    """The old test's load: Client objects shared across threads. Returns (event id, outcome) per request."""
    from gradio_client import Client, handle_file

    shared = [Client(url, verbose=False) for _ in range(clients)]

    def ask(i):
        job = shared[i % clients].submit(handle_file(image), api_name="/predict")
        try:
            return job.communicator.event_id, job.result(timeout=120)["label"]
        except BaseException as e:  # noqa: BLE001 - the evidence is which exception, for which event
            return job.communicator.event_id, f"{type(e).__module__}.{type(e).__name__}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(ask, range(n)))


def via_http(url: str, image: str, n: int, threads: int, clients: int):
    """The plain HTTP API (tests/support/demo_load.py): every request its own call and event stream."""
    from support.demo_load import DemoHttp, NoAnswer

    demo = DemoHttp(url)

    def ask(_):
        try:
            event_id, answer = demo.call(demo.upload(image))
            return event_id, answer["label"]
        except NoAnswer as e:
            return e.event_id, f"no answer: {e}"

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(ask, range(n)))
    finally:
        demo.close()


def spin() -> None:
    while True:
        sum(range(10_000))


DRIVERS = {"gradio_client": via_gradio_client, "http": via_http}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:mobilenet_v2")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10, help="shared gradio_client Clients")
    parser.add_argument("--drivers", nargs="+", default=list(DRIVERS), choices=list(DRIVERS))
    parser.add_argument("--busy_threads", type=int, default=0,
                        help="pure-Python threads spinning in this process while it sends, as the test suite's other "
                             "in-process Gradio servers and fixtures are: the client's threads then wait for the GIL")
    args = parser.parse_args()
    for _ in range(args.busy_threads):
        threading.Thread(target=spin, daemon=True).start()

    import skimage.data
    from support.demo_load import ProbedDemo
    from PIL import Image

    from hftransfer.demo import Predictor

    work = Path(tempfile.mkdtemp(prefix="busy-demo-"))
    image = str(work / "chelsea.png")
    Image.fromarray(skimage.data.chelsea()).save(image)
    scores = Predictor(args.model).predict([image])[0]
    expected = max(scores, key=scores.get)

    for name in args.drivers:
        counts = work / f"{name}.json"
        server = ProbedDemo(args.model, work, probe=COUNTING_PROBE, env={"COUNTS_FILE": str(counts)}, timeout=180)
        try:
            start = time.time()
            outcomes = DRIVERS[name](server.url, image, args.requests, args.threads, args.clients)
            seconds = time.time() - start
            time.sleep(1)  # the last completion's count reaches the file
            server_log = json.loads(counts.read_text())
        finally:
            server.close()
        completed = server_log["completed"]
        lost = [(event, outcome) for event, outcome in outcomes if outcome != expected]
        print(json.dumps({
            "driver": name, "requests": args.requests, "threads": args.threads, "seconds": round(seconds, 1),
            "client": {"right label": sum(outcome == expected for _, outcome in outcomes),
                       "other outcomes": dict(Counter(outcome for _, outcome in lost))},
            "server": {"queued": server_log["queued"], "completed": len(completed),
                       "completed with success": sum(completed.values())},
            "not answered to the caller, though the server completed them with success":
                [event for event, _ in lost if completed.get(event)],
        }, indent=2), flush=True)


if __name__ == "__main__":
    main()
