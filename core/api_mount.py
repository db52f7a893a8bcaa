"""The HTTP API (core/api/) as one route of the app's server (Home.py's st.App), built when it is
first needed instead of before the server answers.

Importing the API imports the store (SQLAlchemy, SQLModel) and the engine (numpy): 0.4 to 0.5 s
that `streamlit run` spent before serving the first page. Mounted through `ApiMount`, the server
answers first; the API is built on the loading thread once the model has loaded (`build`), or by
the first API request if that comes sooner. Once built it is exactly the app that the API's own
tests serve (`core.api.app.build_app`), the guard (origin, key) in front of every /v1/ and
/api/ request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import ASGIApp, Receive, Scope, Send

from core.api.paths import is_api_path

if TYPE_CHECKING:
    from starlette.datastructures import URLPath

    from core.api.config import ApiConfig


class ApiMount(BaseRoute):
    """Every HTTP request under /v1/ and /api/, handed to the API app (built once)."""

    def __init__(self, config: Callable[[], ApiConfig]) -> None:
        self._config = config
        self._app: ASGIApp | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._app is not None

    def build(self) -> ASGIApp:
        """The API app, imported and built on the first call (thread-safe)."""
        with self._lock:
            if self._app is None:
                from core.api.app import build_app

                self._app = build_app(self._config())
            return self._app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and is_api_path(scope["path"]):
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await run_in_threadpool(self.build)  # never an import on the loop
        await app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        raise NoMatchFound(name, path_params)
