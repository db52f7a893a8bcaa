"""The API as Home.py mounts it (core/api_mount.py): one route for /v1/ and /api/, built by its
first request when the model's load has not built it yet; the pages' paths pass by untouched,
and the guard still stands in front of every API request. Served for real by uvicorn."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from core import runtime
from core.api.config import ApiConfig
from core.api.paths import is_api_path
from core.api_mount import ApiMount
from core.runtime import Runtime
from tests.support.server import free_port


def _page(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("a page")


@contextmanager
def serve(mount: ApiMount) -> Iterator[str]:
    """Home.py's shape: the API's mount first, then the pages' routes (here a stand-in)."""
    runtime.reset()
    app = Starlette(routes=[mount, Route("/", _page), Route("/chat", _page)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="mount-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        runtime.reset()


def get(url: str, **headers: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def test_the_apis_paths() -> None:
    for path in ("/v1", "/api", "/v1/models", "/api/characters"):
        assert is_api_path(path), path
    for path in ("/", "/chat", "/v2/x", "/apix", "/v1x"):
        assert not is_api_path(path), path


def test_the_first_api_request_builds_the_api_and_pages_pass_by(rt: Runtime) -> None:
    mount = ApiMount(ApiConfig)
    with serve(mount) as base:
        assert get(base + "/") == (200, "a page")
        assert get(base + "/chat") == (200, "a page")
        assert not mount.built  # a page's request never builds the API
        status, body = get(base + "/api/characters")
        assert status == 200 and [c["name"] for c in body["data"]]  # the bundled characters
        assert mount.built
        status, body = get(base + "/v1/models")
        assert status == 200 and body["object"] == "list" and body["data"]
        # the guard: a web page of another site is refused, in OpenAI's error shape
        status, body = get(base + "/v1/models", Origin="http://elsewhere.example")
        assert status == 403 and body["error"]["code"] == "origin_not_allowed"
        status, _ = get(base + "/v1/no-such-thing")
        assert status == 404


def test_build_once_from_any_thread(rt: Runtime) -> None:
    mount = ApiMount(ApiConfig)
    apps: list[object] = []
    threads = [threading.Thread(target=lambda: apps.append(mount.build())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(apps) == 4 and all(a is apps[0] for a in apps)
