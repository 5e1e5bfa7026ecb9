"""Load for a Gradio app through its plain HTTP API: one request, one answer, nothing shared between threads.

gradio_client multiplexes every job of one `Client` over one event stream, and under load it can drop an answer the
server sent (`CancelledError` in `stream_sse_v1plus`; see `scripts/busy_demo_evidence.py`). A load test must tell a
lost request from a client race, so it talks HTTP itself, as Gradio documents for any language:

    POST /gradio_api/upload                  -> the server-side path of an uploaded file
    POST /gradio_api/call/{api}  {"data"}    -> {"event_id"}
    GET  /gradio_api/call/{api}/{event_id}   -> a Server-Sent Events stream ending in `complete` or `error`

Each thread is one visitor: its own connection pool and its own session, kept across its requests as a browser tab
keeps one (without a session every call would open a new one on the server, and Gradio keeps up to 10,000 of them).
Every request's fate is the server's own word: an answer, an error, or a stream that ended without either (reported
as such). Nothing is retried.

`ProbedDemo` starts the demo in its own process, as users do, with a probe that reports its memory in use.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

API = "gradio_api"


class NoAnswer(AssertionError):
    """The server's event stream ended, or said `error`, instead of answering."""

    def __init__(self, event_id: str, what: str):
        super().__init__(f"event {event_id}: {what}")
        self.event_id = event_id


class DemoHttp:
    """The plain HTTP API of one Gradio app; safe to share between threads (each gets its own `httpx.Client`)."""

    def __init__(self, url: str, timeout: float = 120):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=self.timeout)
            self._local.session = uuid.uuid4().hex
            with self._lock:
                self._clients.append(client)
        return client

    def upload(self, path: str | Path) -> dict:
        """The file sent as a browser sends it; returns the FileData that names it on the server."""
        path = Path(path)
        with path.open("rb") as f:
            response = self._http().post(f"{self.url}/{API}/upload", files={"files": (path.name, f)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def predict(self, *data, api_name: str = "predict"):
        """One call: the endpoint's first output, or NoAnswer with what the server said instead."""
        return self.call(*data, api_name=api_name)[1]

    def call(self, *data, api_name: str = "predict") -> tuple[str, object]:
        """One call: its event id and the endpoint's first output, or NoAnswer."""
        http = self._http()
        response = http.post(f"{self.url}/{API}/call/{api_name}",
                             json={"data": list(data), "session_hash": self._local.session})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        events = []
        with http.stream("GET", f"{self.url}/{API}/call/{api_name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
                elif line.startswith("data:") and events and events[-1] in ("complete", "error"):
                    payload = json.loads(line.split(":", 1)[1])
                    if events[-1] == "complete":
                        return event_id, payload[0]
                    raise NoAnswer(event_id, f"error {payload}")
        raise NoAnswer(event_id, f"the stream ended without an answer (events seen: {events})")

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


# Runs in the demo's own process ahead of `hftransfer demo` (again after the command's one re-exec, which repeats
# `-c`). On SIGUSR1 it collects garbage, then writes the resident size and glibc's free heap bytes to the file named by
# DEMO_MEMORY_FILE. Resident memory cannot show a small leak: the demo keeps the heap it frees (fastpath.py), so a
# leaked object first fills those holes while one batch's scratch can add 80 MB of them at any time. Resident minus
# the heap malloc holds free is the memory in use, whatever allocated it (malloc, Python's arenas, torch).
MEMORY_PROBE = """
import ctypes, gc, json, os, signal

class MallocInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallocInfo
reports = 0

def report(signum, frame):
    global reports
    gc.collect()
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    reports += 1
    path = os.environ["DEMO_MEMORY_FILE"]
    with open(path + ".tmp", "w") as f:
        json.dump({"report": reports, "resident": resident, "malloc_free": libc.mallinfo2().fordblks}, f)
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR1, report)
"""


class ProbedDemo:
    """`hftransfer demo MODEL` in its own process as a user starts it, with `probe` (Python code) run ahead of it."""

    def __init__(self, model: str | Path, folder: Path, probe: str = MEMORY_PROBE, env: dict | None = None,
                 timeout: float = 120):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.memory_file = folder / "demo-memory.json"
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "GLIBC_TUNABLES"}  # the command's own
        env["DEMO_MEMORY_FILE"] = str(self.memory_file)
        code = probe + "\nimport sys\nfrom hftransfer.cli import main\nmain(sys.argv[1:])\n"
        self.process = subprocess.Popen([sys.executable, "-c", code, "demo", str(model), "--port", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self._reports = 0
        deadline = time.time() + timeout
        while socket.socket().connect_ex(("127.0.0.1", self.port)):
            if self.process.poll() is not None or time.time() > deadline:
                self.close()
                raise AssertionError(f"the demo did not start: {self.process.stderr.read().decode()[-3000:]}")
            time.sleep(0.3)

    def memory_mb(self) -> dict[str, float]:
        """Resident memory and memory in use (resident minus malloc's free heap), in MiB, after a collection."""
        self._reports += 1
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.time() + 30
        while True:
            try:
                info = json.loads(self.memory_file.read_text())
                if info["report"] >= self._reports:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            assert time.time() < deadline, "the demo's memory probe did not answer"
            time.sleep(0.02)
        mib = 1024 * 1024
        return {"resident": info["resident"] / mib, "in_use": (info["resident"] - info["malloc_free"]) / mib}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
