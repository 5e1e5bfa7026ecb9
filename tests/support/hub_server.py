"""A local stand-in for the Hugging Face Hub, so push-to-Hub code can be tested with no network and no account.

`LocalHub` is a stdlib `ThreadingHTTPServer` on 127.0.0.1 that speaks the subset of the Hub HTTP API that
`huggingface_hub` 2.4 uses for the calls below (routes read from its source: `hf_api.py`, `_commit_api.py`,
`lfs.py`, `file_download.py`):

- `HfApi.whoami`            GET  /api/whoami-v2
- `HfApi.create_repo`       POST /api/repos/create   (409 + {"url"} when the repo exists, as `exist_ok=True` expects)
- `HfApi.delete_repo`       DELETE /api/repos/delete
- `HfApi.repo_info`, `model_info`, `space_info`, `dataset_info`, `repo_exists`
                            GET  /api/{type}s/{repo_id}[/revision/{rev}]
- `list_repo_files`, `list_repo_tree`
                            GET  /api/{type}s/{repo_id}/tree/{rev}[/{path}]   (one page, no `Link` header)
- `get_paths_info`          POST /api/{type}s/{repo_id}/paths-info/{rev}
- `upload_folder`, `upload_file`, `create_commit`:
    README.md check         POST /api/validate-yaml   (always valid)
    upload modes            POST /api/{type}s/{repo_id}/preupload/{rev}   -> "lfs" or "regular" per file
    LFS batch               POST /{prefix}{repo_id}.git/info/lfs/objects/batch   (basic, or multipart above
                                 `lfs_chunk_size`; objects already stored get no "actions", as on the Hub)
    LFS bytes               PUT  /lfs-upload/{oid}[/{part}]?sig=..   (plays S3: authorised by the signed URL)
    multipart completion    POST /lfs-upload/{oid}/complete?sig=..
    LFS verify              POST /{prefix}{repo_id}.git/info/lfs/objects/verify
    commit                  POST /api/{type}s/{repo_id}/commit/{rev}   (NDJSON: header, file, lfsFile,
                                 deletedFile, deletedFolder)
- `hf_hub_download`, `file_exists`
                            HEAD/GET /{prefix}{repo_id}/resolve/{rev}/{path}   (ETag, X-Repo-Commit,
                                 Content-Length; X-Linked-Etag/X-Linked-Size for LFS files; no X-Xet-Hash, so
                                 downloads are plain HTTP)

Xet: in huggingface_hub 2.4 the server cannot steer the client off Xet. The choice is made client-side
(`utils._runtime.is_xet_available()`: `hf_xet` importable and `HF_HUB_DISABLE_XET` unset), and any file the
preupload endpoint calls "lfs" then goes to the Xet CAS (`upload_folder` -> `_upload_pipeline`, `create_commit` ->
`_upload_xet_files`), which this server does not implement. So with `lfs="auto"` (the default) the preupload
answer is "lfs" only if the in-process client has Xet disabled, and "regular" (base64 inline in the commit NDJSON,
still byte-identical) otherwise. The `local_hub` fixture disables Xet so the LFS batch/PUT path is exercised.
The Xet token routes answer 501 with an explanation, in case a client in another process tries them.

Only the head of "main" is kept (older commits are recorded, not browsable); `create_pr` is refused.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

TOKEN = "hf_testtoken"
USER = "alice"

# Files the Hub stores in LFS whatever their size: the patterns of the default `.gitattributes` it writes in new repos.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx "
    "*.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip "
    "*.zst *tfevents*"
).split()
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub's limit for regular git blobs
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PREFIX_TO_TYPE = {"datasets": "dataset", "spaces": "space", None: "model"}

_RT = r"(?P<type>model|dataset|space)s"
_RID = r"(?P<repo>[^/]+/[^/]+?)"
_GIT_RID = r"(?:(?P<prefix>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)"


class HubError(Exception):
    """An HTTP error answered the way the Hub does: JSON {"error": ...} plus X-Error-Code / X-Error-Message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    """`git hash-object`: what the Hub reports as a regular file's oid (and what the client compares for no-ops)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _hash_file(path: Path) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) of a file, read once in chunks."""
    size = path.stat().st_size
    h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h256.update(chunk)
            h1.update(chunk)
    return h256.hexdigest(), h1.hexdigest(), size


def _safe_repo_path(path: str) -> str:
    p = PurePosixPath(path)
    bad_part = any(part in ("", ".", "..") for part in path.split("/"))
    if not path or p.is_absolute() or bad_part or path.startswith(".git/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return str(p)



def _read_exactly(rfile, size: int, chunk_size: int):
    """`size` bytes of `rfile`, in chunks; a body cut short is an error, not a silently short file."""
    while size:
        data = rfile.read(min(size, chunk_size))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        size -= len(data)
        yield data

class _Request:
    """What a route needs from the HTTP request; the body is read lazily (plain or chunked)."""

    def __init__(self, handler: BaseHTTPRequestHandler, method: str):
        split = urlsplit(handler.path)
        self.handler, self.method, self.path = handler, method, split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.headers = handler.headers
        self.authorization = handler.headers.get("Authorization")
        chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        self._chunked = chunked
        self._length = int(handler.headers.get("Content-Length") or 0)
        self.body_consumed = not chunked and self._length == 0

    def iter_body(self, chunk_size: int = 1 << 20):
        """Yield the request body. httpx streams file uploads with `Transfer-Encoding: chunked`, hence both modes."""
        rfile = self.handler.rfile
        if self._chunked:
            while True:
                size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                yield from _read_exactly(rfile, size, chunk_size)
                rfile.readline()
        else:
            yield from _read_exactly(rfile, self._length, chunk_size)
        self.body_consumed = True

    def body(self) -> bytes:
        return b"".join(self.iter_body())

    def json(self):
        try:
            return json.loads(self.body() or b"null")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries Content-Length
    server_version = "LocalHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    def _dispatch(self, method: str):
        hub: LocalHub = self.server.hub  # type: ignore[attr-defined]
        req = _Request(self, method)
        hub._record(method, req.path, req.authorization)
        try:
            result = hub._route(req)
        except HubError as e:
            body = json.dumps({"error": e.message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            return self._send(req, e.status, body, headers)
        except Exception as e:  # a server bug: say so to the client and keep it for the test to see
            hub.errors.append(traceback.format_exc())
            body = json.dumps({"error": f"LocalHub internal error: {e!r}"}).encode()
            return self._send(req, 500, body, {"Content-Type": "application/json"})
        status, payload, headers = result
        if isinstance(payload, Path):
            return self._send_file(req, status, payload, headers)
        if payload is None:
            body = b""
        elif isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **headers}
        self._send(req, status, body, headers)

    def _start(self, req: _Request, status: int, headers: dict, length: int):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(length))
        if not req.body_consumed:  # a refused upload: don't read it, drop the connection instead
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _send(self, req: _Request, status: int, body: bytes, headers: dict):
        self._start(req, status, headers, len(body))
        if req.method != "HEAD":
            self.wfile.write(body)

    def _send_file(self, req: _Request, status: int, path: Path, headers: dict):
        size = path.stat().st_size
        start, end = 0, size - 1
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and req.method == "GET" and size and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(size - int(match.group(2)), 0)
            if start >= size:
                return self._send(req, 416, b"", {"Content-Range": f"bytes */{size}"})
            status, headers = 206, {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        length = max(end - start + 1, 0)
        self._start(req, status, {"Accept-Ranges": "bytes", **headers}, length)
        if req.method == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            while length:
                data = f.read(min(length, 1 << 20))
                if not data:
                    break
                self.wfile.write(data)
                length -= len(data)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")


class LocalHub:
    """A Hugging Face Hub on 127.0.0.1 for tests; use as a context manager.

    `token` is the one valid token; it belongs to the first of `users` (sorted) and may write to every namespace
    in `users` (the others act as its orgs). Repos live on disk under `self.root`:
    `repos/{type}s/{namespace}/{name}/` holds the head of "main"; `lfs/{sha256}` holds uploaded LFS objects.

    `lfs`: "auto" (default) answers "lfs" from the preupload endpoint for LFS-worthy files (>= 10 MiB, a default
    `.gitattributes` pattern such as *.safetensors, or binary) when the in-process client has Xet disabled, else
    "regular"; True always answers "lfs" for those files; False always "regular". LFS objects larger than
    `lfs_chunk_size` use the multipart transfer, smaller ones a single PUT.

    Test-facing state: `endpoint`, `token`, `repos`, `requests` (method, path, Authorization header),
    `files(repo_id, repo_type)`, `commits(repo_id, repo_type)`, `errors` (tracebacks of server bugs).
    """

    def __init__(self, token: str = TOKEN, users: set[str] | frozenset[str] | list[str] = frozenset({USER}),
                 lfs: bool | str = "auto", lfs_chunk_size: int = 8 * 1024 * 1024, root: str | Path | None = None):
        if lfs not in (True, False, "auto"):
            raise ValueError(f"lfs must be True, False or 'auto', got {lfs!r}")
        self.token = token
        self.users = sorted(users)
        if not self.users:
            raise ValueError("LocalHub needs at least one user")
        self.username = self.users[0]
        self.lfs = lfs
        self.lfs_chunk_size = lfs_chunk_size
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="localhub-")) if root is None else Path(root)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        (self.root / "lfs-tmp").mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str, str | None]] = []
        self.errors: list[str] = []
        self._repos: dict[tuple[str, str], dict] = {}
        self._uploads: dict[str, dict] = {}  # oid -> {"sig", "size"} for LFS uploads in flight
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ----------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> "LocalHub":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="LocalHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- test API

    @staticmethod
    def key(repo_id: str, repo_type: str = "model") -> str:
        """The key of `repos`: the repo's path in Hub URLs ("alice/m", "spaces/alice/demo", "datasets/alice/d")."""
        return URL_PREFIXES[repo_type] + repo_id

    @property
    def repos(self) -> dict[str, dict]:
        """Snapshot: key (see `key`) -> {"id", "type", "private", "sdk", "sha"}."""
        with self._lock:
            return {self.key(rid, rtype): {"id": rid, "type": rtype, "private": r["private"], "sdk": r["sdk"],
                                           "sha": r["commits"][-1]["oid"]}
                    for (rtype, rid), r in self._repos.items()}

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """Every file at the head of "main": path in repo -> content."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return {path: (repo["dir"] / path).read_bytes() for path in sorted(repo["files"])}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """Commits on "main", oldest first: {"oid", "title", "description", "date"}."""
        with self._lock:
            return [dict(c) for c in self._get_repo(repo_type, repo_id)["commits"]]

    def _record(self, method: str, path: str, authorization: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, authorization))

    # -------------------------------------------------------------------------------------------------- auth

    def _user(self, req: _Request) -> str | None:
        """The authenticated user, None if anonymous; a wrong token is a 401 on every route, as on the Hub."""
        if req.authorization is None:
            return None
        scheme, _, credential = req.authorization.partition(" ")
        if scheme.lower() != "bearer" or credential != self.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.username

    def _require_write(self, req: _Request, namespace: str, repo_type: str = "model") -> str:
        user = self._user(req)
        if user is None:
            raise HubError(401, "Invalid username or password.")
        if namespace not in self.users:
            raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
        return user

    def _readable_repo(self, req: _Request, repo_type: str, repo_id: str) -> dict:
        user = self._user(req)
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and (user is None or repo_id.split("/")[0] not in self.users)):
            raise HubError(404 if user else 401, "Repository not found", code="RepoNotFound")
        return repo

    def _writable_repo(self, req: _Request, repo_type: str, repo_id: str) -> dict:
        self._require_write(req, repo_id.split("/")[0], repo_type)
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _get_repo(self, repo_type: str, repo_id: str) -> dict:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on this LocalHub; have {sorted(self.repos)}") from None

    @staticmethod
    def _check_revision(repo: dict, revision: str) -> None:
        revision = unquote(revision)
        if revision not in ("main", repo["commits"][-1]["oid"]):
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    # ------------------------------------------------------------------------------------------------ routing

    def _routes(self):
        return [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("DELETE", r"/api/repos/delete", self._delete_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", rf"/api/{_RT}/{_RID}(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("GET", rf"/api/{_RT}/{_RID}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self._tree),
            ("POST", rf"/api/{_RT}/{_RID}/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("POST", rf"/api/{_RT}/{_RID}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{_RT}/{_RID}/commit/(?P<rev>[^/]+)", self._commit),
            (None, rf"/api/{_RT}/{_RID}/xet-(?P<kind>read|write)-token(?:/.*)?", self._xet_token),
            ("POST", rf"/{_GIT_RID}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", rf"/{_GIT_RID}\.git/info/lfs/objects/verify", self._lfs_verify),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})(?:/(?P<part>\d+))?", self._lfs_put),
            ("POST", r"/lfs-upload/(?P<oid>[0-9a-f]{64})/complete", self._lfs_complete),
            ("GET", rf"/{_GIT_RID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
        ]

    def _route(self, req: _Request):
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, req.path)
            if match is None:
                continue
            if method is not None and req.method != method and not (method == "GET" and req.method == "HEAD"):
                continue
            groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
            if "prefix" in groups:
                groups["type"] = PREFIX_TO_TYPE[groups.pop("prefix")]
            result = handler(req, **groups)
            return result if isinstance(result, tuple) else (200, result, {})
        raise HubError(404, f"LocalHub does not implement {req.method} {req.path}")

    # --------------------------------------------------------------------------------------------- API routes

    def _whoami(self, req: _Request):
        user = self._user(req)
        if user is None:
            raise HubError(401, "Invalid username or password.")
        return {
            "type": "user", "id": hashlib.md5(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
            "email": f"{user}@localhub.test", "emailVerified": True, "canPay": False, "isPro": False,
            "periodEnd": None, "avatarUrl": "", "orgs": [{"type": "org", "name": org} for org in self.users[1:]],
            "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write",
                                                             "createdAt": _now()}},
        }

    def _create_repo(self, req: _Request):
        payload = req.json() or {}
        user = self._user(req)
        if user is None:
            raise HubError(401, "Invalid username or password.")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name, namespace = payload.get("name"), payload.get("organization") or user
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise HubError(400, f"Invalid repo name {name!r}")
        self._require_write(req, namespace, repo_type)
        repo_id = f"{namespace}/{name}"
        url = f"{self.endpoint}/{self.key(repo_id, repo_type)}"
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in ("gradio", "streamlit", "docker", "static"):
            raise HubError(400, f"Invalid space sdk {sdk!r}")
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return 409, {"error": f"You already created this {repo_type} repo", "url": url}, {
                    "X-Error-Message": f"You already created this {repo_type} repo"}
            directory = self.root / "repos" / f"{repo_type}s" / repo_id
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            self._repos[(repo_type, repo_id)] = {
                "id": repo_id, "type": repo_type, "private": payload.get("visibility") == "private",
                "visibility": payload.get("visibility") or "public", "sdk": sdk if repo_type == "space" else None,
                "created_at": _now(), "dir": directory, "files": {},
                "commits": [{"oid": self._new_oid(repo_id, "initial commit"), "title": "initial commit",
                             "description": "", "date": _now()}],
            }
        return {"url": url, "name": repo_id, "id": repo_id}

    def _delete_repo(self, req: _Request):
        payload = req.json() or {}
        user = self._user(req)
        namespace = payload.get("organization") or user or ""
        repo_type = payload.get("type") or "model"
        repo = self._writable_repo(req, repo_type, f"{namespace}/{payload.get('name')}")
        with self._lock:
            del self._repos[(repo_type, repo["id"])]
            shutil.rmtree(repo["dir"], ignore_errors=True)
        return None

    def _validate_yaml(self, req: _Request):
        req.body()
        self._user(req)
        return {"errors": [], "warnings": []}

    def _repo_info(self, req: _Request, type: str, repo: str, rev: str | None = None):  # noqa: A002
        with self._lock:
            record = self._readable_repo(req, type, repo)
            if rev is not None:
                self._check_revision(record, rev)
            head = record["commits"][-1]
            info = {
                "_id": hashlib.md5(f"{type}/{repo}".encode()).hexdigest()[:24], "id": repo,
                "author": repo.split("/")[0], "sha": head["oid"], "lastModified": head["date"],
                "createdAt": record["created_at"], "private": record["private"], "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "cardData": None,
                "siblings": [self._sibling(path, meta) for path, meta in sorted(record["files"].items())],
            }
            if type == "space":
                info.update(sdk=record["sdk"], runtime=None, subdomain=repo.replace("/", "-"))
            return 200, info, {"X-Repo-Commit": head["oid"]}

    @staticmethod
    def _sibling(path: str, meta: dict) -> dict:
        sibling = {"rfilename": path, "size": meta["size"], "blobId": meta["oid"]}
        if meta["lfs"]:
            sibling["lfs"] = {"size": meta["size"], "sha256": meta["sha256"], "pointerSize": meta["pointer_size"]}
        return sibling

    def _tree_entries(self, record: dict) -> dict[str, dict]:
        """path -> Hub tree entry ({"type": "file"|"directory", "oid", "path", "size", "lfs"}), folders included."""
        entries: dict[str, dict] = {}
        for path, meta in record["files"].items():
            entry = {"type": "file", "oid": meta["oid"], "size": meta["size"], "path": path}
            if meta["lfs"]:
                entry["lfs"] = {"oid": meta["sha256"], "size": meta["size"], "pointerSize": meta["pointer_size"]}
            entries[path] = entry
            for parent in PurePosixPath(path).parents:
                if str(parent) != ".":
                    entries.setdefault(str(parent), {"type": "directory", "path": str(parent), "size": 0,
                                                     "oid": hashlib.sha1(f"tree {parent}".encode()).hexdigest()})
        return entries

    def _tree(self, req: _Request, type: str, repo: str, rev: str, path: str | None = None):  # noqa: A002
        with self._lock:
            record = self._readable_repo(req, type, repo)
            self._check_revision(record, rev)
            entries = self._tree_entries(record)
        base = (path or "").strip("/")
        if base and entries.get(base, {}).get("type") != "directory":
            raise HubError(404, f"{base} does not exist on \"main\"", code="EntryNotFound")
        recursive = req.query.get("recursive", "false").lower() in ("1", "true")
        out = []
        for entry_path, entry in sorted(entries.items()):
            parent = str(PurePosixPath(entry_path).parent)
            parent = "" if parent == "." else parent
            inside = parent == base or (recursive and (not base or entry_path.startswith(base + "/")))
            if inside:
                out.append(entry)
        return out

    def _paths_info(self, req: _Request, type: str, repo: str, rev: str):  # noqa: A002
        content_type = req.headers.get("Content-Type", "")
        raw = req.body().decode()
        paths = json.loads(raw).get("paths", []) if "json" in content_type else parse_qs(raw).get("paths", [])
        with self._lock:
            record = self._readable_repo(req, type, repo)
            self._check_revision(record, rev)
            entries = self._tree_entries(record)
        return [entries[p.strip("/")] for p in paths if p.strip("/") in entries]

    def _upload_mode(self, path: str, size: int, sample: bytes) -> str:
        if self.lfs is False:
            return "regular"
        if self.lfs == "auto":
            from huggingface_hub.utils._runtime import is_xet_available

            if is_xet_available():  # the client would send every "lfs" file to Xet, which LocalHub cannot take
                return "regular"
        name = PurePosixPath(path).name
        if size >= LFS_SIZE_THRESHOLD or b"\x00" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS):
            return "lfs"
        return "regular"

    def _preupload(self, req: _Request, type: str, repo: str, rev: str):  # noqa: A002
        payload = req.json() or {}
        with self._lock:
            record = self._writable_repo(req, type, repo)
            self._check_revision(record, rev)
            if req.query.get("create_pr"):
                raise HubError(400, "LocalHub does not support create_pr")
            files = []
            for item in payload.get("files", []):
                path = _safe_repo_path(item["path"])
                mode = self._upload_mode(path, int(item.get("size", 0)), base64.b64decode(item.get("sample", "")))
                existing = record["files"].get(path)
                # The client skips files whose oid matches its local one: sha256 for LFS files, git sha1 otherwise.
                oid = None if existing is None else (existing["sha256"] if mode == "lfs" else existing["oid"])
                files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": files, "commitOid": record["commits"][-1]["oid"]}

    def _xet_token(self, req: _Request, type: str, repo: str, kind: str):  # noqa: A002
        raise HubError(501, "LocalHub does not implement Xet storage: set HF_HUB_DISABLE_XET=1 (the local_hub "
                            "fixture does) or use LocalHub(lfs='auto'/False) so uploads go through LFS or inline.")

    # ---------------------------------------------------------------------------------------------------- LFS

    def _lfs_object(self, oid: str) -> Path:
        return self.root / "lfs" / oid

    def _lfs_batch(self, req: _Request, type: str, repo: str):  # noqa: A002
        payload = req.json() or {}
        self._writable_repo(req, type, repo)
        if payload.get("operation") != "upload":
            raise HubError(400, "LocalHub's LFS batch endpoint only supports operation=upload")
        transfers = payload.get("transfers") or ["basic"]
        git_url = f"{self.endpoint}/{self.key(repo, type)}.git/info/lfs/objects"
        objects, used_multipart = [], False
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid", ""), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid object"}})
                continue
            entry = {"oid": oid, "size": size, "authenticated": True}
            stored = self._lfs_object(oid)
            if not (stored.exists() and stored.stat().st_size == size):  # else: already uploaded, no "actions"
                with self._lock:  # the same content under two paths shares one upload (and one signature)
                    sig = self._uploads.setdefault(oid, {"sig": secrets.token_hex(16), "size": size})["sig"]
                upload_url = f"{self.endpoint}/lfs-upload/{oid}"
                if "multipart" in transfers and size > self.lfs_chunk_size:
                    used_multipart = True
                    nparts = -(-size // self.lfs_chunk_size)
                    header = {"chunk_size": str(self.lfs_chunk_size)}
                    header.update({f"{i:05d}": f"{upload_url}/{i}?sig={sig}" for i in range(1, nparts + 1)})
                    upload = {"href": f"{upload_url}/complete?sig={sig}", "header": header}
                else:
                    upload = {"href": f"{upload_url}?sig={sig}"}
                entry["actions"] = {
                    "upload": upload,
                    "verify": {"href": f"{git_url}/verify"},
                }
            objects.append(entry)
        body = {"transfer": "multipart" if used_multipart else "basic", "objects": objects, "hash_algo": "sha256"}
        return 200, json.dumps(body).encode(), {"Content-Type": "application/vnd.git-lfs+json"}

    def _check_sig(self, req: _Request, oid: str) -> dict:
        with self._lock:
            upload = self._uploads.get(oid)
        if upload is None or not secrets.compare_digest(req.query.get("sig", ""), upload["sig"]):
            raise HubError(403, "Invalid or expired upload signature")
        return upload

    def _store_verified(self, tmp: Path, oid: str, size: int) -> None:
        sha256, _, actual = _hash_file(tmp)
        if sha256 != oid or actual != size:
            tmp.unlink(missing_ok=True)
            raise HubError(400, f"Uploaded content does not match: expected sha256 {oid} size {size}, "
                                f"got sha256 {sha256} size {actual}")
        os.replace(tmp, self._lfs_object(oid))

    def _lfs_put(self, req: _Request, oid: str, part: str | None = None):
        upload = self._check_sig(req, oid)
        tmp_dir = self.root / "lfs-tmp" / oid
        tmp_dir.mkdir(parents=True, exist_ok=True)
        target = tmp_dir / (f"part-{int(part):05d}" if part else f"whole-{next(self._counter)}")
        md5 = hashlib.md5()
        with open(target, "wb") as f:
            for chunk in req.iter_body():
                md5.update(chunk)
                f.write(chunk)
        if part is None:
            self._store_verified(target, oid, upload["size"])
        return 200, None, {"ETag": f'"{md5.hexdigest()}"'}

    def _lfs_complete(self, req: _Request, oid: str):
        upload = self._check_sig(req, oid)
        payload = req.json() or {}
        tmp_dir = self.root / "lfs-tmp" / oid
        parts = sorted(payload.get("parts", []), key=lambda p: p["partNumber"])
        expected = list(range(1, -(-upload["size"] // self.lfs_chunk_size) + 1))
        if [p["partNumber"] for p in parts] != expected:
            raise HubError(400, f"Expected parts {expected}, got {[p['partNumber'] for p in parts]}")
        assembled = tmp_dir / f"assembled-{next(self._counter)}"
        with open(assembled, "wb") as out:
            for p in parts:
                part_file = tmp_dir / f"part-{p['partNumber']:05d}"
                if not part_file.exists():
                    raise HubError(400, f"Part {p['partNumber']} was never uploaded")
                with open(part_file, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        self._store_verified(assembled, oid, upload["size"])
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return {"success": True}

    def _lfs_verify(self, req: _Request, type: str, repo: str):  # noqa: A002
        payload = req.json() or {}
        self._writable_repo(req, type, repo)
        stored = self._lfs_object(str(payload.get("oid", "")))
        if not stored.exists() or stored.stat().st_size != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} not found")
        return {"success": True}

    # ------------------------------------------------------------------------------------------------- commit

    def _new_oid(self, repo_id: str, title: str) -> str:
        return hashlib.sha1(f"{repo_id}\0{title}\0{time.time_ns()}\0{next(self._counter)}".encode()).hexdigest()

    def _commit(self, req: _Request, type: str, repo: str, rev: str):  # noqa: A002
        body = req.body()
        self._writable_repo(req, type, repo)
        if req.query.get("create_pr"):
            raise HubError(400, "LocalHub does not support create_pr")
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError as e:
            raise HubError(400, f"Invalid NDJSON commit payload: {e}") from None
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "Commit payload needs a header with a summary")
        with self._lock:
            record = self._writable_repo(req, type, repo)
            self._check_revision(record, rev)
            head = record["commits"][-1]["oid"]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubError(412, f"A commit has happened since. Please refresh and try again. (head is {head})")
            # Validate everything before touching the tree, so a bad commit leaves the repo unchanged.
            ops = []
            for line in lines:
                key, value = line.get("key"), line.get("value") or {}
                if key == "header":
                    continue
                path = _safe_repo_path(str(value.get("path", "")).rstrip("/") if key == "deletedFolder"
                                       else str(value.get("path", "")))
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    ops.append(("file", path, base64.b64decode(value.get("content", ""))))
                elif key == "lfsFile":
                    oid = str(value.get("oid", ""))
                    stored = self._lfs_object(oid)
                    if not re.fullmatch(r"[0-9a-f]{64}", oid) or not stored.exists():
                        raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that "
                                            f"does not exist. For instance: {path} (oid {oid})")
                    ops.append(("lfs", path, oid))
                elif key == "deletedFile":
                    if path not in record["files"]:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                    ops.append(("delete", path, None))
                elif key == "deletedFolder":
                    ops.append(("rmdir", path, None))
                else:
                    raise HubError(400, f"LocalHub does not support commit operation {key!r}")
            directory: Path = record["dir"]
            for kind, path, data in ops:
                target = directory / path
                if kind in ("file", "lfs"):
                    if path in record["files"] or target.is_dir():
                        self._remove(record, path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if kind == "file":
                        target.write_bytes(data)
                        sha256, oid, size = hashlib.sha256(data).hexdigest(), git_blob_oid(data), len(data)
                        record["files"][path] = {"size": size, "oid": oid, "sha256": sha256, "lfs": False,
                                                 "pointer_size": None}
                    else:
                        shutil.copyfile(self._lfs_object(data), target)
                        size = target.stat().st_size
                        pointer = lfs_pointer(data, size)
                        record["files"][path] = {"size": size, "oid": git_blob_oid(pointer), "sha256": data,
                                                 "lfs": True, "pointer_size": len(pointer)}
                else:
                    self._remove(record, path)
            oid = self._new_oid(repo, header["summary"])
            record["commits"].append({"oid": oid, "title": header["summary"],
                                      "description": header.get("description", ""), "date": _now()})
        url = f"{self.endpoint}/{self.key(repo, type)}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None}

    @staticmethod
    def _remove(record: dict, path: str) -> None:
        """Remove a file or a folder from the head tree, pruning emptied folders."""
        directory: Path = record["dir"]
        for existing in [p for p in record["files"] if p == path or p.startswith(path + "/")]:
            del record["files"][existing]
        target = directory / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        parent = target.parent
        while parent != directory and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    # ------------------------------------------------------------------------------------------------ resolve

    def _resolve(self, req: _Request, type: str, repo: str, rev: str, path: str):  # noqa: A002
        with self._lock:
            record = self._readable_repo(req, type, repo)
            self._check_revision(record, rev)
            head = record["commits"][-1]["oid"]
            meta = record["files"].get(path)
            if meta is None:
                raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": head})
            file_path = record["dir"] / path
        headers = {"X-Repo-Commit": head, "Content-Type": "application/octet-stream",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(PurePosixPath(path).name)}"}
        if meta["lfs"]:  # the Hub would 302 to a CDN; serving directly with the linked headers is equivalent
            headers.update({"ETag": f'"{meta["sha256"]}"', "X-Linked-Etag": f'"{meta["sha256"]}"',
                            "X-Linked-Size": str(meta["size"])})
        else:
            headers["ETag"] = f'"{meta["oid"]}"'
        return 200, file_path, headers


def point_hf_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, disable_xet: bool = True) -> None:
    """Make huggingface_hub (and datasets, if imported) talk to `endpoint` for the rest of the test.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, at import, into
    `huggingface_hub.constants`; `HUGGINGFACE_CO_URL_TEMPLATE` (used by `hf_hub_url` / `hf_hub_download`) and
    `HF_URL_HOSTS` are derived from it, and the module-level functions (`huggingface_hub.create_repo`, `whoami`...)
    are bound methods of `huggingface_hub.hf_api.api`, an `HfApi()` whose `endpoint` was fixed at import. The
    tests' conftest sets HF_HUB_OFFLINE=1, which blocks every request in `get_session()`, so offline mode is
    switched off here too.
    """
    import sys
    from urllib.parse import urlsplit as _urlsplit

    import huggingface_hub
    from huggingface_hub import constants, hf_api

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # never send a real token from the environment to the test server
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, ",".join(filter(None, [os.environ.get(var), "127.0.0.1", "localhost"])))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {_urlsplit(endpoint).hostname})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    # Building the User-Agent fetches {ENDPOINT}/api/agent-harnesses once per process and, on success, caches it in
    # HF_HOME; pin the in-process registry to "empty" so no such request (nor file) comes from the test.
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}}, raising=False)
    if hasattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE"):
        monkeypatch.setattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", constants.HUGGINGFACE_CO_URL_TEMPLATE)
    if disable_xet:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        # transformers caches one HfApi (endpoint fixed when first built) for push_to_hub: rebuild it in the test.
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", endpoint)
        monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL",
                            endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)


def upload(folder: Path, name: str, repo_type: str = "model") -> str:
    """Create `USER/name` on the endpoint huggingface_hub points at (`local_hub`) and upload `folder` to it."""
    from huggingface_hub import HfApi

    api, repo_id = HfApi(token=TOKEN), f"{USER}/{name}"
    api.create_repo(repo_id, repo_type=repo_type)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type)
    return repo_id


@pytest.fixture
def local_hub(monkeypatch):
    """A started `LocalHub(token=TOKEN, users={USER})`, with huggingface_hub pointed at it (see `point_hf_hub_at`).

    Xet is disabled for the test, so LFS-worthy files go through the LFS batch + PUT path.
    """
    with LocalHub(token=TOKEN, users={USER}) as hub:
        point_hf_hub_at(monkeypatch, hub.endpoint)
        yield hub
        assert not hub.errors, "LocalHub internal errors:\n" + "\n".join(hub.errors)
