"""TabbyAPI's model and token routes, for SillyTavern's Text Completion type "TabbyAPI": its
status check reads `GET /v1/model/list` (then `GET /v1/model`), and its token counts come from
`POST /v1/token/encode`. It generates through `/v1/completions` (core/api/openai.py).

Without these, the status check got a 404, which SillyTavern 1.12.6's server never answers
its page for (a `response.status(400)` without a body): the check hung until it timed out
(issue 23).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.api.config import ApiConfig
from core.api.errors import ApiError, read_json
from core.api.openai import OWNED_BY, context_length
from core.chat.service import model_name

MAX_IDS = 1_000_000  # token ids in one /v1/token/decode request


def routes(config: ApiConfig) -> list[Route]:
    api = TabbyApi(config)
    return [
        Route("/v1/model/list", api.model_list, methods=["GET"]),
        Route("/v1/model", api.model, methods=["GET"]),
        Route("/v1/token/encode", api.encode, methods=["POST"]),
        Route("/v1/token/decode", api.decode, methods=["POST"]),
    ]


class TabbyApi:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config

    def _card(self) -> dict[str, Any]:
        rt = self.config.runtime()
        engine = rt.engine()
        if engine is None:  # a client connecting is about to ask for replies
            rt.start_loading()
        label = model_name(engine) if engine is not None else rt.choice().label()
        n = context_length(engine)
        return {
            "id": label,
            "object": "model",
            "created": int(time.time()),
            "owned_by": OWNED_BY,
            "parameters": {"max_seq_len": n, "cache_size": n},
        }

    async def model_list(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [await run_in_threadpool(self._card)]})

    async def model(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self._card))

    async def encode(self, request: Request) -> Response:
        body = await read_json(request)
        text = body.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "`text` must be a string.", param="text")
        engine = await run_in_threadpool(lambda: self.config.runtime().require_engine())
        tokens = await run_in_threadpool(engine.backend.tokenize, text)
        return JSONResponse({"tokens": tokens, "length": len(tokens)})

    async def decode(self, request: Request) -> Response:
        body = await read_json(request)
        ids = body.get("tokens")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_IDS
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
        ):
            raise ApiError(400, "`tokens` must be a list of token ids.", param="tokens")
        engine = await run_in_threadpool(lambda: self.config.runtime().require_engine())
        n = engine.info.n_vocab
        if any(not 0 <= t < n for t in ids):
            raise ApiError(400, f"A token id is outside the vocabulary (0..{n - 1}).", "tokens")
        data = await run_in_threadpool(engine.backend.detokenize, ids)
        return JSONResponse({"text": data.decode("utf-8", errors="replace")})
