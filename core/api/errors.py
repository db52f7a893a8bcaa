"""Errors in OpenAI's JSON shape, and the request body read with a size limit.

{"error": {"message": "...", "type": "invalid_request_error", "param": "...", "code": ...}}
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from core.errors import (
    AppError,
    Conflict,
    ModelError,
    ModelUnavailable,
    NotFound,
    StoreUnavailable,
)
from core.text import loads_json

MAX_BODY = 4 * 1024 * 1024  # bytes: a request body beyond this is refused (413)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """A refusal with its HTTP status, said in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def api_error(e: Exception) -> ApiError:
    """The core's errors with their HTTP status: NotFound 404, Conflict 409 (with its code),
    ModelError 503 (the model is not there), StoreUnavailable 503 (the database cannot be used
    now), any other AppError 400; anything else 500."""
    if isinstance(e, ApiError):
        return e
    text = str(e)
    if isinstance(e, ModelUnavailable):
        return ApiError(503, text, code=e.code)
    if isinstance(e, ModelError):
        return ApiError(503, text, code="model_not_available")
    if isinstance(e, StoreUnavailable):
        return ApiError(503, text, code="database_unavailable")
    if isinstance(e, NotFound):
        return ApiError(404, text)
    if isinstance(e, Conflict):
        return ApiError(409, text, code=e.code)
    if isinstance(e, AppError):
        return ApiError(400, text)
    return ApiError(500, "The server failed; its log has details.")


async def read_json(request: Request, max_bytes: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object; ApiError 413 past `max_bytes` (counted as it arrives, so a
    body without Content-Length cannot grow memory either), 400 when it is not a JSON object,
    is nested too deeply or has a number of too many digits (issue 21: a RecursionError and a
    ValueError were 500s). A lone UTF-16 surrogate (an escape like \\ud800 without its pair)
    becomes U+FFFD: nothing downstream (the tokenizer, SQLite, the answer) can encode it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise ApiError(413, f"The request body is larger than {max_bytes} bytes.")
        except ValueError:
            raise ApiError(400, "Content-Length is not a number.") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"The request body is larger than {max_bytes} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = loads_json(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"The request body is not valid JSON: {e}.") from None
    except RecursionError:
        raise ApiError(
            400, "The request body is not valid JSON: it is nested too deeply."
        ) from None
    except ValueError:  # json's other refusal: an integer of over 4300 digits
        raise ApiError(400, "The request body has a number with too many digits.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data
