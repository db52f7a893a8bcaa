"""The API served for real in this process: a Starlette app made of core.api's routes and guard
(what Home.py's st.App mounts beside the pages), run by uvicorn in a thread on a free port.

    with api_server() as base:               # "http://127.0.0.1:PORT"
        httpx2.get(base + "/v1/models")

The model and the store are the process's runtime (core.runtime) of $RP_DATA_DIR, with the
model of $RP_MODEL: set both before (the test's private data directory is set by the root
conftest). The runtime is reset before and after, so each server starts without a model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from core import runtime
from core.api.app import build_app
from core.api.config import ApiConfig
from tests.support.server import free_port


@contextmanager
def api_server(config: ApiConfig | None = None, timeout: float = 30.0) -> Iterator[str]:
    """The API on 127.0.0.1:<free port>; yields its base URL (without /v1)."""
    runtime.reset()
    config = config or ApiConfig()
    app = build_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        runtime.reset()
