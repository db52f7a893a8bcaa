"""KoboldCpp's routes (the KoboldAI API and KoboldCpp's extras), for SillyTavern's "KoboldAI
Classic" API, which generates through `POST /api/v1/generate` (streamed: `POST
/api/extra/generate/stream`) after checking `/api/v1/info/version`, `/api/extra/version` and
`/api/v1/model`, and for its Text Completion type "KoboldCpp", which generates through
`/v1/completions` but counts tokens with `POST /api/extra/tokencount` and stops a generation
with `POST /api/extra/abort`.

- `POST /api/v1/generate`: `{"prompt", "max_length", "temperature", "top_p", "top_k", "min_p",
  "rep_pen", "stop_sequence", "sampler_seed", "dry_*"...}` (read by core/api/mapping.py) ->
  `{"results": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}]}`.
- `POST /api/extra/generate/stream`: the same, as `event: message` / `data: {"token": piece}`
  events, the last with its `finish_reason`.
- `POST /api/extra/abort` (`{"genkey"?}`): stops the generations started here (the one of that
  key); `POST /api/extra/tokencount` `{"prompt"}` -> `{"value", "ids"}`.
- `GET /api/v1/model`, `/api/v1/info/version`, `/api/extra/version`,
  `/api/v1/config/max_context_length`, `/api/v1/config/max_length`.

The same engine, state cache (`Engine.complete`: a transcript resent whole feeds only its new
tokens), admission count and guard (origins, API keys) as the rest of the API. None of these
paths is one of the app's own /api/ routes (characters, chats, messages).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.api.admission import admission_for
from core.api.config import ApiConfig
from core.api.errors import ApiError, read_json
from core.api.mapping import parse_generation, refuse_unsupported
from core.api.openai import context_length
from core.api.stream import EventStream, ThreadedPieces, run_unless_disconnected
from core.chat.service import model_name

if TYPE_CHECKING:
    from core.engine import Engine, Reply, ReplyResult

# what the version checks answer: a KoboldAI API recent enough for stop sequences, and a
# KoboldCpp recent enough for streaming, token counts, min-p (SillyTavern's kai_flags)
KOBOLD_API_VERSION = "1.2.5"
KOBOLDCPP_VERSION = "1.76"


def routes(config: ApiConfig) -> list[Route]:
    api = KoboldApi(config)
    return [
        Route("/api/v1/generate", api.generate, methods=["POST"]),
        Route("/api/extra/generate/stream", api.generate_stream, methods=["POST"]),
        Route("/api/extra/abort", api.abort, methods=["POST"]),
        Route("/api/extra/tokencount", api.tokencount, methods=["POST"]),
        Route("/api/v1/model", api.model, methods=["GET"]),
        Route("/api/v1/info/version", api.api_version, methods=["GET"]),
        Route("/api/extra/version", api.version, methods=["GET"]),
        Route("/api/v1/config/max_context_length", api.max_context, methods=["GET"]),
        Route("/api/v1/config/max_length", api.max_length, methods=["GET"]),
    ]


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "`prompt` must be a string.", param="prompt", code="invalid_type")
    if not prompt:
        raise ApiError(400, "`prompt` is empty.", param="prompt")
    return prompt


def _finish_reason(res: ReplyResult | None) -> str:
    return "length" if res is not None and res.stop_reason == "length" else "stop"


class KoboldApi:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.admission = admission_for(config)  # one count with /v1 and the app's /api
        # the cancel events of generations running here, by their genkey ("" when none given)
        self._running: dict[int, tuple[str, threading.Event]] = {}
        self._lock = threading.Lock()

    def _track(self, genkey: str, cancel: threading.Event) -> int:
        with self._lock:
            token = id(cancel)
            self._running[token] = (genkey, cancel)
            return token

    def _untrack(self, token: int) -> None:
        with self._lock:
            self._running.pop(token, None)

    async def _start(self, request: Request) -> tuple[Reply, threading.Event, Callable[[], None]]:
        """Read the request and start its generation: the reply, its cancel event, and what
        to call once it is over (it is counted in until then)."""
        body = await read_json(request)
        refuse_unsupported(body, chat=False)  # grammars (an empty one passes)
        prompt = _prompt(body)
        engine, base = await run_in_threadpool(self.config.ready)
        body = {k: v for k, v in body.items() if k not in ("n", "best_of")}  # one answer
        if body.get("max_length") is not None:  # the KoboldAI API's own field wins
            body["max_tokens"] = body["max_length"]
        gen = parse_generation(body, base, engine.info.n_vocab, engine.backend.eos_token())
        genkey = body.get("genkey") if isinstance(body.get("genkey"), str) else ""
        release = self.admission.admit(1)
        cancel = threading.Event()
        token = self._track(genkey, cancel)
        try:
            reply = engine.complete(prompt, gen.params, gen.stops, cancel=cancel)
        except BaseException:
            self._untrack(token)
            release()
            raise

        def done() -> None:
            self._untrack(token)
            release()

        return reply, cancel, done

    async def generate(self, request: Request) -> Response:
        reply, cancel, done = await self._start(request)
        try:
            await run_unless_disconnected(request.receive, reply.consume, cancel.set)
        finally:
            done()
        res = reply.result
        return JSONResponse(
            {
                "results": [
                    {
                        "text": res.text,
                        "finish_reason": _finish_reason(res),
                        "logprobs": None,
                        "prompt_tokens": res.prompt_tokens,
                        "completion_tokens": res.new_tokens,
                    }
                ]
            },
            headers={"cache-control": "no-store"},
        )

    async def generate_stream(self, request: Request) -> Response:
        reply, cancel, done = await self._start(request)
        pieces = ThreadedPieces(reply, cancel, name="api-kobold")

        def close() -> None:
            pieces.stop()
            done()

        return EventStream(self._events(reply, pieces), on_close=close, done=False)

    async def _events(self, reply: Reply, pieces: ThreadedPieces) -> AsyncIterator[bytes]:
        streamed = ""
        async for piece in pieces:
            streamed += piece
            yield _event({"token": piece, "finish_reason": None})
        await pieces.wait_done(30.0)
        try:
            res = reply.result
        except RuntimeError:  # stopped before it began
            return
        tail = res.text[len(streamed) :] if res.text.startswith(streamed) else ""
        yield _event({"token": tail, "finish_reason": _finish_reason(res)})

    async def abort(self, request: Request) -> Response:
        """Stop the generations started here: the one of `genkey` when given, else all."""
        try:
            body = await read_json(request)
        except ApiError:
            body = {}  # SillyTavern posts no body
        genkey = body.get("genkey") if isinstance(body.get("genkey"), str) else ""
        with self._lock:
            hits = [c for key, c in self._running.values() if not genkey or key == genkey]
        for cancel in hits:
            cancel.set()
        return JSONResponse({"success": "true", "done": "true" if hits else "false"})

    async def tokencount(self, request: Request) -> Response:
        body = await read_json(request)
        text = body.get("prompt")
        if not isinstance(text, str):
            raise ApiError(400, "`prompt` must be a string.", param="prompt")
        engine = await run_in_threadpool(lambda: self.config.runtime().require_engine())
        ids = await run_in_threadpool(engine.backend.tokenize, text)
        return JSONResponse({"value": len(ids), "ids": ids})

    def _label(self) -> tuple[str, Engine | None]:
        rt = self.config.runtime()
        engine = rt.engine()
        if engine is None:  # a client connecting is about to ask for replies
            rt.start_loading()
            return rt.choice().label(), None
        return model_name(engine), engine

    async def model(self, request: Request) -> Response:
        label, _ = await run_in_threadpool(self._label)
        return JSONResponse({"result": f"koboldcpp/{label}"})

    async def api_version(self, request: Request) -> Response:
        return JSONResponse({"result": KOBOLD_API_VERSION})

    async def version(self, request: Request) -> Response:
        return JSONResponse(
            {
                "result": "KoboldCpp",
                "version": KOBOLDCPP_VERSION,
                "protected": False,
                "txt2img": False,
                "vision": False,
                "transcribe": False,
                "multiplayer": False,
                "websearch": False,
                "tts": False,
                "embeddings": False,
            }
        )

    async def max_context(self, request: Request) -> Response:
        _, engine = await run_in_threadpool(self._label)
        return JSONResponse({"value": context_length(engine)})

    async def max_length(self, request: Request) -> Response:
        params = await run_in_threadpool(lambda: self.config.runtime().chat.params(None))
        return JSONResponse({"value": params.max_tokens})


def _event(data: dict[str, Any]) -> bytes:
    """One event as KoboldCpp frames it."""
    return f"event: message\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
