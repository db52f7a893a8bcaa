"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the tests of the model catalog and
downloads: the real `huggingface_hub` client talks to it through the endpoint setting (or
`endpoint=`), and nothing leaves the machine.

It answers the routes the client uses, as the Hub does (huggingface_hub 2.5):
- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: the model's info, with
  `siblings` (and, with `?blobs=true`, each file's size and LFS `sha256`);
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: for an LFS file a 302 to its "CDN" address (on
  `localhost` instead of `127.0.0.1`, another host, as the Hub's CDN is), carrying
  `X-Repo-Commit`, `X-Linked-Etag` (the SHA-256) and `X-Linked-Size`; a small file in git is
  served directly with its git blob hash as ETag; 404 with `X-Error-Code` (`RepoNotFound`,
  `EntryNotFound`) otherwise. No Xet headers: a client must download over plain HTTP;
- `GET`/`HEAD /lfs/{sha256}`: the bytes, with `Range` (206, `Content-Range`).

Tests steer it: `hold_after` (send that many bytes of the next file transfer, then wait for
`release` and send the rest; `reached` is set when it waits), `stall_after` (send that many
bytes, then nothing until the server closes), `corrupt_at` (flip the byte at that offset of
what is served), `ignore_range` (answer a range with the whole file), `fail` (path -> HTTP
status). It records every request (`requests`: method,
path, Range) and the bytes it sent of each file transfer (`sent`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_BLOCK = 256 * 1024


@dataclass
class HubFileSpec:
    data: bytes | None  # None: listed (with `size`) but not served
    size: int = 0
    sha256: str = ""
    lfs: bool = True

    @classmethod
    def of(cls, data: bytes, lfs: bool = True) -> HubFileSpec:
        return cls(data, len(data), hashlib.sha256(data).hexdigest(), lfs)

    @classmethod
    def listed(cls, size: int, sha256: str = "") -> HubFileSpec:
        return cls(None, size, sha256 or hashlib.sha256(str(size).encode()).hexdigest())

    @property
    def git_sha(self) -> str:
        return hashlib.sha1(b"blob %d\0" % self.size + (self.data or b"")).hexdigest()


@dataclass
class Served:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0


@dataclass
class LocalHub:
    """The server's state; `url` is its endpoint (http://127.0.0.1:PORT)."""

    repos: dict[str, dict[str, HubFileSpec]] = field(default_factory=dict)
    url: str = ""
    port: int = 0
    fail: dict[str, int] = field(default_factory=dict)  # a request path's start -> status
    hold_after: int | None = None
    stall_after: int | None = None
    corrupt_at: int | None = None
    ignore_range: bool = False  # answer 200 with the whole file, as some CDNs do
    requests: list[Served] = field(default_factory=list)
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    closing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: str, path: str, spec: HubFileSpec) -> HubFileSpec:
        self.repos.setdefault(repo, {})[path] = spec
        return spec

    def add_file(self, repo: str, path: str, source: Path | bytes) -> HubFileSpec:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        return self.add(repo, path, HubFileSpec.of(data))

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def transfers(self) -> list[Served]:
        """The file transfers (GET of /lfs/...), in order."""
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path.startswith("/lfs/")]

    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.transfers())

    def by_sha(self, sha: str) -> HubFileSpec | None:
        for files in self.repos.values():
            for spec in files.values():
                if spec.sha256 == sha and spec.data is not None:
                    return spec
        return None


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _record(self, status: int) -> Served:
        rec = Served(self.command, urlsplit(self.path).path, self.headers.get("Range"), status)
        with self.hub.lock:
            self.hub.requests.append(rec)
        return rec

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._record(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None = None, message: str = "") -> None:
        headers = {"X-Error-Code": code} if code else {}
        self._json(status, {"error": message or f"{status}"}, headers)

    def _failed(self) -> bool:
        path = urlsplit(self.path).path
        for prefix, status in self.hub.fail.items():
            if path.startswith(prefix):
                self._error(status, message="the stand-in hub was told to fail")
                return True
        return False

    # ------------------------------------------------------------------ routes
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        if self._failed():
            return
        parts = urlsplit(self.path)
        segs = [unquote(s) for s in parts.path.split("/") if s]
        if len(segs) >= 4 and segs[:2] == ["api", "models"]:
            rev = segs[5] if len(segs) >= 6 and segs[4] == "revision" else "main"
            return self._model_info(f"{segs[2]}/{segs[3]}", rev, parse_qs(parts.query))
        if len(segs) >= 5 and segs[2] == "resolve":
            return self._resolve(f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        if len(segs) == 2 and segs[0] == "lfs":
            return self._lfs(segs[1])
        self._error(404, message="no such route on the stand-in hub")

    def _model_info(self, repo: str, rev: str, query: dict[str, list[str]]) -> None:
        files = self.hub.repos.get(repo)
        if files is None:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, spec in sorted(files.items()):
            s: dict[str, object] = {"rfilename": path}
            if blobs:
                s["size"] = spec.size if not spec.lfs else 135
                s["blobId"] = spec.git_sha
                if spec.lfs:
                    s["lfs"] = {"size": spec.size, "sha256": spec.sha256, "pointerSize": 135}
            siblings.append(s)
        self._json(
            200,
            {
                "_id": "x",
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": self.hub.commit(repo),
                "private": False,
                "disabled": False,
                "tags": ["rwkv"],
                "siblings": siblings,
            },
        )

    def _resolve(self, repo: str, rev: str, path: str) -> None:
        files = self.hub.repos.get(repo)
        if files is None:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        spec = files.get(path)
        if spec is None or spec.data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        commit = self.hub.commit(repo)
        if spec.lfs:
            # the Hub redirects an LFS file to its CDN: another host (here "localhost")
            cdn = f"http://localhost:{self.hub.port}/lfs/{spec.sha256}"
            return self._send(
                302,
                b"",
                {
                    "Location": cdn,
                    "X-Repo-Commit": commit,
                    "ETag": f'"{spec.git_sha}"',
                    "X-Linked-Etag": f'"{spec.sha256}"',
                    "X-Linked-Size": str(spec.size),
                },
            )
        self._send(
            200,
            spec.data,
            {"X-Repo-Commit": commit, "ETag": f'"{spec.git_sha}"', "Accept-Ranges": "bytes"},
        )

    def _lfs(self, sha: str) -> None:
        spec = self.hub.by_sha(sha)
        if spec is None or spec.data is None:
            return self._error(404, message="no such object")
        data = spec.data
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes=") and not self.hub.ignore_range:
            a, _, b = rng[len("bytes=") :].partition("-")
            start = int(a) if a else 0
            end = int(b) if b else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
        rec = self._record(status)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{sha}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        hub = self.hub
        pos = start
        try:
            while pos <= end:
                chunk = bytearray(data[pos : min(pos + _BLOCK, end + 1)])
                if hub.corrupt_at is not None and pos <= hub.corrupt_at < pos + len(chunk):
                    chunk[hub.corrupt_at - pos] ^= 0xFF
                hold = hub.hold_after
                if hold is not None and rec.sent + len(chunk) > hold:
                    head = bytes(chunk[: max(0, hold - rec.sent)])
                    self.wfile.write(head)
                    self.wfile.flush()
                    rec.sent += len(head)
                    pos += len(head)
                    chunk = chunk[len(head) :]
                    hub.hold_after = None  # once; then the rest, as if nothing happened
                    hub.reached.set()
                    hub.release.wait(120)
                stall = hub.stall_after
                if stall is not None and rec.sent + len(chunk) > stall:
                    head = bytes(chunk[: max(0, stall - rec.sent)])
                    self.wfile.write(head)
                    self.wfile.flush()
                    rec.sent += len(head)
                    hub.reached.set()
                    hub.closing.wait(300)  # a stalled connection: nothing more, ever
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                rec.sent += len(chunk)
                pos += len(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def go_online(monkeypatch: Any) -> None:
    """The tests' conftest sets HF_HUB_OFFLINE=1 so that nothing reaches the network by mistake;
    a test that talks to a LocalHub on 127.0.0.1 turns it off (for its subprocesses too)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@contextmanager
def local_hub() -> Iterator[LocalHub]:
    """A LocalHub serving on a free port of 127.0.0.1 until the block ends."""
    hub = LocalHub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.port = server.server_address[1]
    hub.url = f"http://127.0.0.1:{hub.port}"
    thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        from core.models.download import DownloadJob

        DownloadJob.reset()  # a job of the test's must not outlive its server
        hub.closing.set()
        hub.release.set()
        server.shutdown()
        server.server_close()
