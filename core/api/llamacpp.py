"""llama.cpp's own server routes, for clients that speak to llama.cpp directly: SillyTavern's
Text Completion type "llama.cpp" (which many RWKV users pick, since llama.cpp runs RWKV)
generates through `POST /completion` and counts tokens with `POST /tokenize`.

- `POST /completion` (also `/completions`): a raw `prompt` continued, streamed (`data:` events
  of `{"content": piece, "stop": false}`, then one with `"stop": true` and the counts) or not
  (`{"content", "stop", "tokens_predicted", "tokens_evaluated", "tokens_cached", "timings",
  "stopped_eos", "stopped_word", "stopped_limit", "stopping_word", ...}`). The same engine,
  state cache and admission as `/v1/completions` (`Engine.complete`: a client that resends
  its whole transcript feeds only the new tokens; `cache_prompt` is always on); the sampling
  fields are read by core/api/mapping.py (`n_predict`, `repeat_penalty`, `ignore_eos`, DRY...),
  with llama.cpp's `logit_bias` as a list of `[token, bias]` pairs (`false`: banned) or of
  `[text, bias]` (each token of the text).
- `POST /tokenize` `{"content"}` -> `{"tokens"}` (`with_pieces`: each token's text too);
  vLLM's and Aphrodite's form `{"prompt"}` is read too (also at `/v1/tokenize`).
- `POST /detokenize` `{"tokens"}` -> `{"content"}`.
- `GET /props`: the model, its context and the default generation settings; `GET /health`.

Behind the same guard as the rest of the API (core/api/app.py: origins, API keys).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.api.admission import MAX_ACTIVE, admission_for
from core.api.config import ApiConfig
from core.api.errors import ApiError, read_json
from core.api.mapping import Generation, parse_generation, refuse_unsupported
from core.api.openai import context_length
from core.api.stream import EventStream, ThreadedPieces, run_unless_disconnected
from core.chat.service import model_name

if TYPE_CHECKING:
    from core.engine import Engine, Reply, ReplyResult
    from core.engine.sampler import SamplingParams

# paths of this module outside /v1/ and /api/ (core/api/paths.py lists them for the guard)
PATHS = ("/completion", "/completions", "/tokenize", "/detokenize", "/props", "/health")
MAX_TOKENIZE_IDS = 1_000_000  # token ids in one /detokenize request


def routes(config: ApiConfig) -> list[Route]:
    api = LlamaCppApi(config)
    return [
        Route("/completion", api.completion, methods=["POST"]),
        Route("/completions", api.completion, methods=["POST"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/v1/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
        Route("/props", api.props, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
    ]


def prompt_text(body: dict[str, Any], engine: Engine) -> str:
    """llama.cpp's `prompt`: a string, a list of token ids, or both mixed (one prompt), or such
    a prompt alone in a list; several prompts in one request are refused."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list):
        strings = sum(isinstance(p, str) for p in prompt)
        if (
            not prompt
            or not all(isinstance(p, str) or _is_id(p) for p in prompt)
            or strings == len(prompt)  # several strings: several prompts
        ):
            raise ApiError(
                400, "`prompt` must be one prompt: a string or a list of token ids.", "prompt"
            )
        parts: list[str] = []
        run: list[int] = []
        for p in [*prompt, ""]:  # runs of ids are decoded together (a character over tokens)
            if isinstance(p, str):
                if run:
                    parts.append(_text_of(run, engine))
                    run = []
                parts.append(p)
            else:
                run.append(p)
        prompt = "".join(parts)
    if not isinstance(prompt, str):
        raise ApiError(400, "`prompt` must be a string.", param="prompt", code="invalid_type")
    if not prompt:
        raise ApiError(400, "`prompt` is empty.", param="prompt")
    return prompt


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_of(ids: list[int], engine: Engine) -> str:
    n = engine.info.n_vocab
    if any(not 0 <= t < n for t in ids):
        raise ApiError(400, f"A token id is outside the vocabulary (0..{n - 1}).", "prompt")
    return engine.backend.detokenize(ids).decode("utf-8", errors="replace")


def llama_logit_bias(body: dict[str, Any], engine: Engine) -> dict[str, Any]:
    """`body` with llama.cpp's list form of `logit_bias` (`[[token, bias]]`, `[[token, false]]`
    to ban, `[["text", bias]]` for each token of a text) made OpenAI's object form, which
    core/api/mapping.py reads."""
    bias = body.get("logit_bias")
    if not isinstance(bias, list):
        return body
    out: dict[str, float] = {}
    for item in bias:
        if not isinstance(item, list) or len(item) != 2:
            raise ApiError(
                400, "`logit_bias` must be a list of [token, bias] pairs.", param="logit_bias"
            )
        tok, value = item
        if value is False:
            value = -100.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(400, "A `logit_bias` bias must be a number or false.", "logit_bias")
        ids = engine.backend.tokenize(tok) if isinstance(tok, str) else [tok]
        for t in ids:
            out[str(t)] = max(-100.0, min(100.0, float(value)))
    return {**body, "logit_bias": out}


def _timings(res: ReplyResult | None) -> dict[str, Any]:
    if res is None:
        return {}
    prompt_ms = res.ttft_s * 1000.0
    predicted_ms = res.gen_s * 1000.0
    return {
        "prompt_n": res.fed_tokens,
        "prompt_ms": round(prompt_ms, 3),
        "prompt_per_token_ms": round(prompt_ms / res.fed_tokens, 3) if res.fed_tokens else 0.0,
        "prompt_per_second": round(res.fed_tokens / res.ttft_s, 3) if res.ttft_s else 0.0,
        "predicted_n": res.new_tokens,
        "predicted_ms": round(predicted_ms, 3),
        "predicted_per_token_ms": (
            round(predicted_ms / res.new_tokens, 3) if res.new_tokens else 0.0
        ),
        "predicted_per_second": round(res.tok_s, 3),
    }


def generation_settings(engine: Engine, params: SamplingParams, label: str) -> dict[str, Any]:
    """What llama.cpp calls a slot's generation settings, from the app's sampling."""
    return {
        "n_ctx": context_length(engine),
        "model": label,
        "n_predict": params.max_tokens,
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "dry_multiplier": params.dry_multiplier,
        "dry_base": params.dry_base,
        "dry_allowed_length": params.dry_allowed_length,
        "dry_penalty_last_n": params.dry_range or -1,
        "dry_sequence_breakers": list(params.dry_sequence_breakers),
        "seed": params.seed if params.seed is not None else -1,
        "stream": False,
        "cache_prompt": True,
    }


class LlamaCppApi:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.admission = admission_for(config)  # one count with /v1 and /api

    async def completion(self, request: Request) -> Response:
        body = await read_json(request)
        refuse_unsupported(body, chat=False)  # n_probs, grammars, JSON schemas
        engine, base = await run_in_threadpool(self.config.ready)
        body = await run_in_threadpool(llama_logit_bias, body, engine)
        prompt = await run_in_threadpool(prompt_text, body, engine)
        body = {k: v for k, v in body.items() if k not in ("n", "best_of")}  # one completion
        if body.get("n_predict") is not None:  # llama.cpp's own field wins over the aliases
            body["max_tokens"] = body["n_predict"]
        gen = parse_generation(body, base, engine.info.n_vocab, engine.backend.eos_token())
        label = model_name(engine)
        release = self.admission.admit(1)
        cancel = threading.Event()
        try:
            reply = engine.complete(prompt, gen.params, gen.stops, cancel=cancel)
        except BaseException:
            release()
            raise
        if gen.stream:
            pieces = ThreadedPieces(reply, cancel, name="api-llamacpp")

            def close() -> None:
                pieces.stop()
                release()

            events = self._events(reply, pieces, gen, engine, label)
            return EventStream(events, on_close=close, done=False)
        try:
            await run_unless_disconnected(request.receive, reply.consume, cancel.set)
        finally:
            release()
        res = reply.result
        return JSONResponse(
            {"content": res.text, **_final(res, gen, engine, label)},
            headers={"cache-control": "no-store"},
        )

    async def _events(
        self,
        reply: Reply,
        pieces: ThreadedPieces,
        gen: Generation,
        engine: Engine,
        label: str,
    ) -> AsyncIterator[dict[str, Any]]:
        streamed = ""
        async for piece in pieces:
            streamed += piece
            yield {"content": piece, "stop": False, "id_slot": 0, "index": 0}
        await pieces.wait_done(30.0)
        try:
            res = reply.result
        except RuntimeError:  # stopped before it began
            return
        # what the stop scanner held back until the end (trailing text that was kept)
        tail = res.text[len(streamed) :] if res.text.startswith(streamed) else ""
        yield {"content": tail, **_final(res, gen, engine, label)}

    async def tokenize(self, request: Request) -> Response:
        body = await read_json(request)
        text = body.get("content", body.get("prompt"))
        if not isinstance(text, str):
            raise ApiError(400, "`content` must be a string.", param="content")
        with_pieces = body.get("with_pieces") is True
        engine = await run_in_threadpool(lambda: self.config.runtime().require_engine())
        tokens = await run_in_threadpool(engine.backend.tokenize, text)
        out: dict[str, Any] = {"count": len(tokens)}
        if with_pieces:
            out["tokens"] = [{"id": t, "piece": _piece(engine, t)} for t in tokens]
        else:
            out["tokens"] = tokens
        return JSONResponse(out)

    async def detokenize(self, request: Request) -> Response:
        body = await read_json(request)
        tokens = body.get("tokens")
        if (
            not isinstance(tokens, list)
            or len(tokens) > MAX_TOKENIZE_IDS
            or not all(_is_id(t) for t in tokens)
        ):
            raise ApiError(400, "`tokens` must be a list of token ids.", param="tokens")
        engine = await run_in_threadpool(lambda: self.config.runtime().require_engine())
        n = engine.info.n_vocab
        if any(not 0 <= t < n for t in tokens):
            raise ApiError(400, f"A token id is outside the vocabulary (0..{n - 1}).", "tokens")
        data = await run_in_threadpool(engine.backend.detokenize, tokens)
        return JSONResponse({"content": data.decode("utf-8", errors="replace")})

    async def props(self, request: Request) -> Response:
        def look() -> dict[str, Any]:
            rt = self.config.runtime()
            engine = rt.engine()
            if engine is None:  # a client connecting is about to ask for replies
                rt.start_loading()
                label = rt.choice().label()
                return {
                    "default_generation_settings": {"model": label},
                    "total_slots": MAX_ACTIVE,
                    "model_path": label,
                    "chat_template": "",
                    "modalities": {"vision": False, "audio": False},
                    "build_info": "rwkv-roleplay",
                }
            label = model_name(engine)
            params = rt.chat.params(None)
            return {
                "default_generation_settings": generation_settings(engine, params, label),
                "total_slots": MAX_ACTIVE,
                "model_path": label,
                "chat_template": engine.info.chat_template or "",
                "modalities": {"vision": False, "audio": False},
                "build_info": "rwkv-roleplay",
            }

        return JSONResponse(await run_in_threadpool(look))

    async def health(self, request: Request) -> Response:
        def look() -> bool:
            rt = self.config.runtime()
            if rt.engine() is not None:
                return True
            rt.start_loading()
            return False

        if await run_in_threadpool(look):
            return JSONResponse({"status": "ok"})
        return ApiError(503, "Loading model", code="unavailable_error").response()


def _piece(engine: Engine, token: int) -> str | list[int]:
    """A token's text, as llama.cpp gives it: a string when its bytes are whole UTF-8, else
    the list of its bytes."""
    data = engine.backend.detokenize([token])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


def _final(res: ReplyResult, gen: Generation, engine: Engine, label: str) -> dict[str, Any]:
    """The fields of llama.cpp's last answer (whole, or the last event of a stream)."""
    stopped_word = res.stop_reason == "stop" and res.stop_string is not None
    return {
        "stop": True,
        "id_slot": 0,
        "index": 0,
        "model": label,
        "tokens_predicted": res.new_tokens,
        "tokens_evaluated": res.prompt_tokens,
        "tokens_cached": max(res.prompt_tokens - res.fed_tokens, 0),
        "has_new_line": "\n" in res.text,
        "truncated": False,
        "stopped_eos": res.stop_reason == "eos",
        "stopped_word": stopped_word,
        "stopped_limit": res.stop_reason == "length",
        "stopping_word": (res.stop_string or "") if stopped_word else "",
        "stop_type": _stop_type(res),
        "generation_settings": generation_settings(engine, gen.params, label),
        "timings": _timings(res),
    }


def _stop_type(res: ReplyResult) -> str:
    if res.stop_reason == "eos":
        return "eos"
    if res.stop_reason == "stop":
        return "word"
    if res.stop_reason == "length":
        return "limit"
    return "none"
