"""The OpenAI-compatible endpoints: GET /v1/models, POST /v1/chat/completions and
POST /v1/completions, on the process's one model and state cache (README, "API").

- Chat completions map the messages onto the app's prompt chunks (core/api/mapping.py), so a
  chat resent whole every turn feeds only its new tokens, and the same request again (a
  regenerate) starts from the cache. Nothing is stored: the client keeps the chat.
- Completions continue a raw prompt (`Engine.complete`), from the longest cached token prefix.
- `model` in a request is not used to choose: the API serves the model loaded in the app
  (chosen in Settings); answers name it. A model not loaded yet is loaded first, unless the
  user unloaded it on purpose (503) or it failed to load (503 with the reason).
- `n` alternatives run as concurrent generations; the first feeds the prompt, the others start
  once it has (from the cache) and each has its own seed stream (seed + index).
- A client that goes away (streaming or not) stops its generations before their next token.
- `usage.prompt_tokens_details.cached_tokens`: prompt tokens restored from the state cache.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.api.admission import admission_for
from core.api.config import ApiConfig
from core.api.errors import ApiError, read_json
from core.api.mapping import (
    ChatInput,
    Generation,
    map_messages,
    parse_generation,
    refuse_unsupported,
)
from core.api.stream import EventStream, ThreadedPieces, error_body, merge, until_disconnect
from core.chat.service import model_name
from core.errors import AppError, ModelError
from core.prompt import normalize

if TYPE_CHECKING:
    from core.engine import Engine, Reply, ReplyResult
    from core.runtime import Runtime

log = logging.getLogger(__name__)

OWNED_BY = "rwkv-roleplay"
# what a recurrent model's "context length" is: its state carries the whole chat. Reported
# large so that clients (SillyTavern) do not cut the oldest messages, which would change the
# prompt's start every turn and make every turn a full re-feed.
RECURRENT_CONTEXT = 1_048_576


def routes(config: ApiConfig) -> list[Route]:
    api = OpenAIApi(config)
    return [
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]


# ---------------------------------------------------------------------------- the model
def context_length(engine: Engine | None) -> int:
    """The context a client may use: unbounded for RWKV (recurrent), llama.cpp's n_ctx for a
    transformer GGUF."""
    if engine is None or engine.info.version is not None:
        return RECURRENT_CONTEXT
    return engine.raw_backend.context_limit() or RECURRENT_CONTEXT


def _model_entry(model_id: str, engine: Engine | None, created: int) -> dict[str, Any]:
    n = context_length(engine)
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        # read by different clients under different names
        "context_length": n,
        "max_model_len": n,
        "max_context_length": n,
    }


def _notes_at_reply(rt: Runtime, engine: Engine) -> bool:
    """The setting `api_notes_at_reply` for the loaded model (core/api/mapping.py). Blocking."""
    return rt.settings.api_notes_at_reply(engine.info.arch)


# ---------------------------------------------------------------------------- alternatives
@dataclass
class _Alt:
    """One alternative (choice) of a request: its generation, what was streamed, its result."""

    index: int
    cancel: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None
    streamed: str = ""
    pieces: ThreadedPieces | None = None

    @property
    def result(self) -> ReplyResult | None:
        try:
            return self.reply.result if self.reply is not None else None
        except RuntimeError:  # not finished (stopped before it began)
            return None


class _Run:
    """The n alternatives of one request, as concurrent generations in worker threads. The
    first starts at once; the others wait until it has fed the prompt (its first piece, or its
    end), so they restore the prompt's state from the cache instead of feeding it again."""

    def __init__(
        self,
        n: int,
        start: Callable[[int, threading.Event], Reply],
        final_text: Callable[[ReplyResult], str],
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.release = release  # called once the request is over (core/api/admission.py)
        self.alts = [_Alt(i) for i in range(n)]
        self._start = start
        self._final_text = final_text
        self._first = threading.Event()
        for alt in self.alts:
            alt.pieces = ThreadedPieces(self._source(alt), alt.cancel, name=f"api-gen-{alt.index}")

    def _source(self, alt: _Alt) -> Iterator[str]:
        if alt.index > 0:
            while not self._first.wait(0.05):
                if alt.cancel.is_set():
                    return
            if alt.cancel.is_set():
                return
        reply = alt.reply = self._start(alt.index, alt.cancel)
        try:
            for piece in reply:
                self._first.set()
                yield piece
        finally:
            self._first.set()
            reply.close()

    @property
    def streams(self) -> list[ThreadedPieces]:
        return [a.pieces for a in self.alts if a.pieces is not None]

    def stop(self) -> None:
        """End every alternative now (the client went away, or the answer is complete)."""
        for s in self.streams:
            s.stop()
        self.release()

    async def wait_done(self) -> None:
        for s in self.streams:
            await s.wait_done(30)

    def tail(self, alt: _Alt) -> str:
        """What the result keeps beyond what was streamed (text the stop scanner held back
        until the end); "" when the kept text is not a continuation of the streamed one."""
        res = alt.result
        if res is None:
            return ""
        final = self._final_text(res)
        return final[len(alt.streamed) :] if final.startswith(alt.streamed) else ""

    def text(self, alt: _Alt) -> str:
        res = alt.result
        return self._final_text(res) if res is not None else alt.streamed

    def usage(self) -> dict[str, Any]:
        results = [a.result for a in self.alts]
        first = next((r for r in results if r is not None), None)
        prompt = first.prompt_tokens if first else 0
        cached = first.prompt_tokens - first.fed_tokens if first else 0
        completion = sum(r.new_tokens for r in results if r is not None)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": max(cached, 0)},
        }


def finish_reason(res: ReplyResult | None) -> str:
    return "length" if res is not None and res.stop_reason == "length" else "stop"


# ---------------------------------------------------------------------------- the endpoints
class OpenAIApi:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.admission = admission_for(config)  # one count with /api (core/api/admission.py)

    def _admit(self, n: int) -> Callable[[], None]:
        """Count `n` generations in, or refuse them (429); returns their release (once)."""
        return self.admission.admit(n)

    async def models(self, request: Request) -> Response:
        def look() -> tuple[str, Engine | None]:
            rt = self.config.runtime()
            engine = rt.engine()
            if engine is None:  # a client connecting is about to ask for replies
                rt.start_loading()  # (not when unloaded on purpose, nor failed)
            label = model_name(engine) if engine is not None else rt.choice().label()
            return label, engine

        label, engine = await run_in_threadpool(look)
        created = int(time.time())
        return JSONResponse({"object": "list", "data": [_model_entry(label, engine, created)]})

    async def model(self, request: Request) -> Response:
        def look() -> tuple[str, Engine | None]:
            rt = self.config.runtime()
            engine = rt.engine()
            return (model_name(engine) if engine else rt.choice().label()), engine

        label, engine = await run_in_threadpool(look)
        if request.path_params["model_id"] != label:
            raise_404 = ApiError(
                404,
                f"There is no model {request.path_params['model_id']!r}; this server serves "
                f"{label!r}.",
                param="model",
                code="model_not_found",
            )
            return raise_404.response()
        return JSONResponse(_model_entry(label, engine, int(time.time())))

    async def _prepare(self, request: Request, chat: bool) -> tuple[dict[str, Any], Engine, Any]:
        body = await read_json(request)
        if body.get("model") is not None and not isinstance(body.get("model"), str):
            raise ApiError(400, "`model` must be a string.", param="model", code="invalid_type")
        refuse_unsupported(body, chat)
        engine, base = await run_in_threadpool(self.config.ready)
        return body, engine, base

    async def chat_completions(self, request: Request) -> Response:
        body, engine, base = await self._prepare(request, chat=True)
        gen = parse_generation(body, base, engine.info.n_vocab, engine.backend.eos_token())
        notes = await run_in_threadpool(_notes_at_reply, self.config.runtime(), engine)
        chat = map_messages(body, gen.stops, notes_at_reply=notes)
        release = self._admit(gen.n)

        def start(i: int, cancel: threading.Event) -> Reply:
            return engine.reply(
                chat.ctx,
                chat.history,
                chat.speaker,
                gen.params_for(i),
                cancel=cancel,
                continue_last=chat.continue_last,
            )

        run = _Run(gen.n, start, _chat_text(chat), release)
        shape = _Shape("chat.completion", "chatcmpl-", model_name(engine))
        return await _answer(request, run, gen, shape)

    async def completions(self, request: Request) -> Response:
        body, engine, base = await self._prepare(request, chat=False)
        gen = parse_generation(body, base, engine.info.n_vocab, engine.backend.eos_token())
        prompt = _prompt(body)
        release = self._admit(gen.n)

        def start(i: int, cancel: threading.Event) -> Reply:
            return engine.complete(prompt, gen.params_for(i), gen.stops, cancel=cancel)

        run = _Run(gen.n, start, lambda res: res.text, release)
        shape = _Shape("text_completion", "cmpl-", model_name(engine))
        return await _answer(request, run, gen, shape)


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise ApiError(400, "`prompt` must be one string (one prompt a request).", param="prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "`prompt` must be a string.", param="prompt", code="invalid_type")
    if not prompt:
        raise ApiError(400, "`prompt` is empty.", param="prompt")
    return prompt


def _chat_text(chat: ChatInput) -> Callable[[ReplyResult], str]:
    """The reply's text as the client should get it: for a continued (prefilled) message only
    what was added, with its leading space."""
    if not chat.continue_last:
        return lambda res: res.text
    base = normalize(chat.history[-1].text)

    def added(res: ReplyResult) -> str:
        return res.text[len(base) :] if res.text.startswith(base) else res.text

    return added


@dataclass
class _Shape:
    """The response objects of one endpoint."""

    kind: str  # "chat.completion" or "text_completion"
    prefix: str  # of the response id
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = self.prefix + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    @property
    def chat(self) -> bool:
        return self.kind == "chat.completion"

    def head(self, chunk: bool) -> dict[str, Any]:
        kind = self.kind + ".chunk" if chunk and self.chat else self.kind
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def choice(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "finish_reason": reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}

    def delta(self, index: int, text: str | None, reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
        return {**self.head(chunk=True), "choices": [choice]}


async def _answer(request: Request, run: _Run, gen: Generation, shape: _Shape) -> Response:
    if gen.stream:
        return EventStream(_events(run, gen, shape), on_close=run.stop)
    return await _whole(request, run, shape)


async def _events(run: _Run, gen: Generation, shape: _Shape) -> AsyncIterator[dict[str, Any]]:
    if shape.chat:
        for alt in run.alts:
            first = shape.delta(alt.index, "")
            first["choices"][0]["delta"]["role"] = "assistant"
            yield first
    async for i, piece in merge(run.streams, ends=True):
        alt = run.alts[i]
        if piece is None:  # this alternative ended: what was held back, then why it ended
            tail = run.tail(alt)
            if tail:
                alt.streamed += tail
                yield shape.delta(i, tail)
            yield shape.delta(i, None, finish_reason(alt.result))
            continue
        alt.streamed += piece
        yield shape.delta(i, piece)
    if gen.include_usage:
        yield {**shape.head(chunk=True), "choices": [], "usage": run.usage()}


async def _whole(request: Request, run: _Run, shape: _Shape) -> Response:
    """A whole (non-streamed) answer; a client that disconnects meanwhile stops it."""

    async def collect() -> None:
        async for i, piece in merge(run.streams):
            run.alts[i].streamed += piece

    work = asyncio.ensure_future(collect())
    watch = asyncio.ensure_future(until_disconnect(request.receive))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the client went away: stop now, nobody reads the answer
            run.stop()
            work.cancel()
            return Response(status_code=499)
        try:
            work.result()
        except ApiError as e:
            return e.response()
        except Exception as e:
            if not isinstance(e, AppError):
                log.exception("an API generation failed")
            status = 503 if isinstance(e, ModelError) else 500
            return JSONResponse(error_body(e), status_code=status)
        await run.wait_done()
    finally:
        watch.cancel()
        run.stop()
    choices = [shape.choice(a.index, run.text(a), finish_reason(a.result)) for a in run.alts]
    return JSONResponse(
        {**shape.head(chunk=False), "choices": choices, "usage": run.usage()},
        headers={"cache-control": "no-store"},
    )
