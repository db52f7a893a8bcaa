"""The API's routes and its guard, mounted beside the pages by Home.py (`st.App`): one process,
one model, one state cache, one database for the UI and every API client.

The guard runs before every /v1/ and /api/ request, after the Host check (core/api/hosts.py):
- a cross-origin request (a web page of another site, through the user's browser) is refused
  unless its Origin is in the "api_cors_origins" setting;
- when a password is set, or the server listens beyond this machine, the request needs
  `Authorization: Bearer KEY` with a key made in Settings (stored hashed, shown once);
- errors are said in OpenAI's JSON error shape (core/api/errors.py): a route raises ApiError,
  or lets the core's errors through (NotFound, Conflict, ModelError, AppError), and one
  handler says them with their status (`api_error`); anything else is a 500 whose traceback
  goes to the log;
- it fails closed: when what it checks against cannot be read (the password setting, the keys,
  the origins: a damaged database), the request is refused with a 503 saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.api.config import ApiConfig
from core.api.errors import ApiError, api_error
from core.api.hosts import HostGuard
from core.api.kobold import routes as kobold_routes
from core.api.llamacpp import routes as llamacpp_routes
from core.api.native import routes as native_routes
from core.api.openai import routes as openai_routes
from core.api.paths import is_api_path
from core.api.stream import sse
from core.api.tabby import routes as tabby_routes
from core.errors import AppError

__all__ = ["ApiGuard", "api_middleware", "api_routes", "build_app", "sse"]  # sse: stream.py

log = logging.getLogger(__name__)


def build_app(config: ApiConfig) -> Starlette:
    """The API as one ASGI app: its routes, the guard, and the one error handler."""
    return Starlette(
        routes=api_routes(config),
        middleware=api_middleware(config),
        exception_handlers={ApiError: _said, AppError: _said},
    )


async def _said(_request: Request, exc: Exception) -> Response:
    """The one place where an error becomes an HTTP status (core/api/errors.py, api_error)."""
    return api_error(exc).response()


class ApiGuard:
    """Pure ASGI middleware: origin, key and errors for API paths; everything else (the pages,
    their websocket) passes through untouched."""

    def __init__(self, app: ASGIApp, config: ApiConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin", "").rstrip("/")
        cors: dict[str, str] = {}
        try:
            if origin and not _same_origin(origin, headers.get("host", "")):
                allowed = await run_in_threadpool(self.config.allowed_origins)
                if origin not in allowed and "*" not in allowed:
                    raise ApiError(
                        403,
                        f"Requests from {origin} are refused: add it to the allowed origins "
                        "in Settings, API.",
                        code="origin_not_allowed",
                    )
                cors = {
                    "access-control-allow-origin": origin,
                    "access-control-allow-headers": "authorization, content-type",
                    "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                    "vary": "Origin",
                }
                if scope["method"] == "OPTIONS":  # a preflight: answered here, no key needed
                    await _send_empty(send, 204, cors)
                    return
            if await run_in_threadpool(self.config.key_required):
                auth = headers.get("authorization", "")
                scheme, _, presented = auth.partition(" ")
                if scheme.lower() != "bearer" or not presented.strip():
                    raise ApiError(
                        401,
                        "This server needs an API key: send `Authorization: Bearer KEY` with a "
                        "key made in Settings, API.",
                        code="missing_api_key",
                    )
                if not await run_in_threadpool(self.config.key_ok, presented.strip()):
                    raise ApiError(401, "The API key is wrong or was revoked.", code="bad_api_key")
        except ApiError as e:
            await e.response(headers=cors)(scope, receive, send)
            return
        except Exception:  # the checks themselves failed: nothing passes unchecked
            log.exception("API %s %s: the guard's checks failed", scope["method"], scope["path"])
            error = ApiError(
                503,
                "The server cannot check this request now, so the API stays locked; its log "
                "has details.",
                code="guard_failed",
            )
            await error.response()(scope, receive, send)
            return

        started = False

        async def send_with_cors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors:
                    message["headers"] = [
                        *message.get("headers", []),
                        *[(k.encode(), v.encode()) for k, v in cors.items()],
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_cors)
        except Exception:  # a bug: a 500 in the API's shape, the traceback to the log
            log.exception("API %s %s failed", scope["method"], scope["path"])
            if started:
                raise
            error = ApiError(500, "The server failed; its log has details.")
            await error.response(headers=cors)(scope, receive, send)


def _same_origin(origin: str, host: str) -> bool:
    return bool(host) and origin.split("://", 1)[-1] == host


async def _send_empty(send: Send, status: int, headers: dict[str, str]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def api_routes(config: ApiConfig) -> list[BaseRoute]:
    """Every route of the API: the OpenAI-compatible ones, the app's own, and those of the
    servers SillyTavern's other back-end types expect (llama.cpp, KoboldCpp, TabbyAPI);
    another method on one of their paths is a 405 that says which it takes (not the API's
    404)."""

    async def not_found(request: Request) -> Response:
        return ApiError(404, f"There is no API endpoint {request.url.path}.").response()

    ours = [
        *openai_routes(config),
        *tabby_routes(config),
        *llamacpp_routes(config),
        *kobold_routes(config),
        *native_routes(config),
    ]
    return [
        *ours,
        *wrong_method_routes(ours),
        # last: any other /v1/ or /api/ path is an API 404, not the pages' index.html
        Route("/v1/{rest:path}", not_found, methods=METHODS),
        Route("/api/{rest:path}", not_found, methods=METHODS),
    ]


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def wrong_method_routes(routes: list[Route]) -> list[Route]:
    """For each path of `routes`, a route of the methods it does not take, answering 405 with
    the methods it does take (in `Allow` and in the message)."""
    allowed: dict[str, list[str]] = {}
    for r in routes:
        allowed.setdefault(r.path, []).extend(m for m in METHODS if m in (r.methods or ()))
    return [
        Route(path, _wrong_method(methods), methods=[m for m in METHODS if m not in methods])
        for path, methods in allowed.items()
    ]


def _wrong_method(methods: list[str]) -> Callable[[Request], Awaitable[Response]]:
    allow = ", ".join(methods)

    async def refuse(request: Request) -> Response:
        message = f"{request.url.path} takes {allow}, not {request.method}."
        return ApiError(405, message, code="method_not_allowed").response({"allow": allow})

    return refuse


def api_middleware(config: ApiConfig) -> list[Middleware]:
    """The Host check (core/api/hosts.py: DNS rebinding), then the guard. Home.py puts the same
    Host check before everything it serves; here it keeps the API safe when served alone."""
    hosts = Middleware(
        HostGuard, listen_address=config.listen_address, password_set=config.password_set
    )
    return [hosts, Middleware(ApiGuard, config=config)]
