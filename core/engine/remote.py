"""A model served by another program: an OpenAI-compatible server (llama.cpp's or
llama-cpp-python's server, vLLM, another copy of this app...) reached over HTTP.

    engine = RemoteEngine("http://10.0.0.5:8501/v1", api_key="rp-...", model="")
    engine.connect()                       # GET /v1/models: reachable, key accepted, model named
    reply = engine.reply(ctx, history, Message("char"), params)
    for piece in reply: ...                # streamed as the server sends it

It stands where an `Engine` stands, for the chat service, the pages and the API: the same
`reply`, `complete`, `prompt_text`, `start_notice`, `busy`, `info`, `format`, `backend`. The app
renders its prompt as it always does (core.prompt, RWKV role play: `Name: text` turns) and sends
it as text to `/v1/completions`, streaming, with the app's stop strings and sampling values; the
server's own prefix cache then works, and when the server is this app, its state cache does
(`/v1/completions` restores the longest cached prefix of the prompt's tokens). The stop strings
are also applied here, on the text as it arrives (`StopScanner`), so a server that honours only
some of them (OpenAI's limit is 4) still never shows a user's line.

What does not apply to a model served elsewhere: logits and states (no state files, no state
cache here: Settings' cache figures, `warm` and the checkpoints are the server's business);
several versions in one batch (each version is a request of its own, sent at once); exact token
counts ("what the model saw" counts with the RWKV World tokenizer, exact for an RWKV model, an
estimate for others; a reply's `prompt_tokens` and cached tokens are the server's `usage` when it
sends one); `penalty_decay` (RWKV's decaying penalties: the server applies its own).

Every failure is a `ModelError` that says what happened and where: the server cannot be reached,
refused the key, has no such route or model, answered with an error (its message), sent an error
in the middle of a stream, or said nothing for `timeout_s`. A reply cut by one is saved as far as
it got (its `on_finish` runs, stop reason "error"), as a reply stopped by the user is.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.backends.base import ModelInfo
from core.engine.engine import DecodeSpeed, Reply, ReplyResult
from core.engine.sampler import SamplingParams
from core.engine.stops import StopScanner
from core.errors import ModelError
from core.prompt import (
    CharacterContext,
    Message,
    PromptFormat,
    RoleplayFormat,
    normalize,
    speaker_name,
    transcript_texts,
)

CONNECT_S = 10.0  # to open a connection to the server
DEFAULT_TIMEOUT_S = 300.0  # the longest silence of the server (a long prompt fed on a CPU)
MAX_STOPS = 16  # stop strings sent to the server (all of them are applied here)
VOCAB = 65536  # the RWKV World vocabulary (token counts here; logit_bias ids pass through)


def base_url(url: str) -> str:
    """`url` as the API's base ("http://host:port/v1"): "/v1" is added when it is not there; a
    trailing "/" and a trailing "/completions" or "/chat/completions" are dropped. ModelError
    when it is not an http(s) address."""
    text = (url or "").strip().rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if text.endswith(tail):
            text = text[: -len(tail)]
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelError(
            f"{url!r} is not the address of a model server: give one such as "
            "http://127.0.0.1:8080/v1 (an OpenAI-compatible server)."
        )
    return text if text.endswith("/v1") else text + "/v1"


class _Tokens:
    """What the front ends read of `engine.backend` for a model served elsewhere: token counts
    with the RWKV World tokenizer (exact for an RWKV model, an estimate for others), no end
    token of its own (the server stops at its own), no context limit known here."""

    def __init__(self) -> None:
        self._tok: Any = None

    def tokenize(self, text: str) -> list[int]:
        if self._tok is None:
            from core.backends.tokenizer import world_tokenizer

            self._tok = world_tokenizer()
        return list(self._tok.encode(text))

    def eos_token(self) -> int | None:
        return None

    def context_limit(self) -> int | None:
        return None


@dataclass
class _Stream:
    """One streamed request: its text events, and the socket a cancel shuts."""

    response: Any
    sock: socket.socket | None


class RemoteEngine:
    """An OpenAI-compatible model server, used as the app uses its own model (see the module)."""

    def __init__(
        self,
        url: str,
        api_key: str = "",
        model: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fmt: PromptFormat | None = None,
    ) -> None:
        import httpx2

        self.base = base_url(url)
        self.api_key = api_key or ""
        self.model = (model or "").strip()
        self.timeout_s = float(timeout_s) if timeout_s and timeout_s > 0 else DEFAULT_TIMEOUT_S
        self.format: PromptFormat = fmt or RoleplayFormat()
        self.backend = _Tokens()
        self.raw_backend = self.backend
        self.last_speed: DecodeSpeed | None = None  # the server's decode speed is not seen here
        self._http = httpx2
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(self.timeout_s, connect=CONNECT_S),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment has no business on this line
        )
        self._active = 0
        self._active_lock = threading.Lock()
        self.info = self._info(0.0)

    def _info(self, load_s: float) -> ModelInfo:
        host = urlsplit(self.base).netloc
        label = f"{self.model or 'model'} @ {host}"
        identity = hashlib.sha256(f"remote\0{self.base}\0{self.model}".encode()).hexdigest()[:32]
        return ModelInfo(
            path="",
            backend="remote",
            arch="remote",
            n_layer=0,
            n_embd=0,
            n_vocab=VOCAB,
            n_params=0,
            strategy=self.base,
            load_s=load_s,
            identity=identity,
            extra={"url": self.base, "model": self.model, "label": label},
        )

    # ------------------------------------------------------------------ the connection
    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _where(self, path: str = "") -> str:
        return f"The model server at {self.base}{path}"

    def _failure(self, e: Exception, path: str, replying: bool = True) -> ModelError:
        """A transport failure said in words (`replying`: in the middle of a reply)."""
        h = self._http
        if isinstance(e, h.ConnectTimeout):
            why = f"did not answer within {CONNECT_S:.0f} s (is the address right?)"
        elif isinstance(e, h.ConnectError):
            why = "cannot be reached (is it running, and is the address right?)"
        elif isinstance(e, h.TimeoutException):
            why = f"said nothing for {self.timeout_s:.0f} s (the time-out; raise it in Settings)"
        elif isinstance(e, h.RemoteProtocolError | h.ReadError):
            why = "closed the connection in the middle of its answer"
        else:
            why = f"could not be used ({e.__class__.__name__}: {e})"
        kept = " What was said so far is kept." if replying else ""
        return ModelError(f"{self._where(path)} {why}.{kept}")

    def _refusal(self, status: int, body: bytes, path: str) -> ModelError:
        """An HTTP error answer said in words, with the server's own message when it sends one
        (OpenAI's shape: {"error": {"message": ...}}, or llama.cpp's)."""
        message = ""
        try:
            data = json.loads(body)
            err = data.get("error", data) if isinstance(data, dict) else data
            message = err.get("message", "") if isinstance(err, dict) else str(err)
            message = message or (data.get("detail", "") if isinstance(data, dict) else "")
        except (ValueError, AttributeError):
            message = body[:300].decode("utf-8", "replace").strip()
        if status in (401, 403):
            what = "refused the API key (set the right one in Settings → Model)"
        elif status == 404:
            what = "has no such route or model (is it OpenAI-compatible, and the model named?)"
        elif status == 429:
            what = "is busy (too many requests)"
        else:
            what = f"answered with an error (HTTP {status})"
        said = f": {message}" if message else ""
        return ModelError(f"{self._where(path)} {what}{said}")

    def connect(self) -> RemoteEngine:
        """Check that the server answers `/v1/models` with this key, and take the model's name
        from it when none was given; ModelError otherwise."""
        t0 = time.perf_counter()
        try:
            r = self._client.get(self.base + "/models", headers=self._headers())
        except self._http.HTTPError as e:
            raise self._failure(e, "/models", replying=False) from e
        if r.status_code != 200:
            raise self._refusal(r.status_code, r.content, "/models")
        try:
            data = r.json().get("data") or []
            names = [m.get("id") for m in data if isinstance(m, dict) and m.get("id")]
        except (ValueError, AttributeError):
            names = []
        if not self.model:
            if not names:
                raise ModelError(f"{self._where('/models')} names no model: name one in Settings.")
            self.model = str(names[0])
        self.info = self._info(time.perf_counter() - t0)
        return self

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ an Engine's surface
    @property
    def busy(self) -> bool:
        return self._active > 0

    def start_notice(self, ctx: CharacterContext) -> str:
        """A character's RWKV state file cannot be given to a model served elsewhere."""
        st = ctx.start_state
        if st is None:
            return ""
        return (
            f"The model server at {self.base} runs its own model's state, so {ctx.name}'s state "
            f"file {st.name} is not used. This chat runs without it."
        )

    def state_file_fit(self, name: str, shape: tuple[int, int, int]) -> str:
        return f"The model server at {self.base} cannot start from the state file {name}."

    def prompt_text(self, ctx: CharacterContext, history: list[Message], speaker: Message) -> str:
        return "".join(transcript_texts(self.format, ctx, history, speaker))

    def warm(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to prefill here: the server feeds the prompt when the reply is asked for."""

    def settle(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def share_checkpoints(self) -> None:
        pass

    def cache_stats(self) -> dict[str, Any]:
        return {}

    def clear_cache(self) -> None:
        pass

    def set_cache_budget(self, mem_mb: float, disk_mb: float) -> None:
        pass

    # ------------------------------------------------------------------ generation
    def reply(
        self,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message,
        params: SamplingParams,
        cancel: threading.Event | None = None,
        continue_last: bool = False,
        on_finish: Callable[[ReplyResult], None] | None = None,
    ) -> Reply:
        """The next message by `speaker`, or with `continue_last` the last message made longer,
        as Engine.reply; nothing is sent until the reply is iterated."""
        history = list(history)
        if continue_last:
            if not history:
                raise ValueError("nothing to continue: the chat is empty")
            speaker = history[-1]
        names = [m.name for m in history if m.name]
        scanner = StopScanner(
            self.format.stop_strings(speaker, ctx, names),
            strip_leading=not continue_last,
            strip_prefixes=StopScanner.name_prefixes(speaker_name(speaker, ctx)),
        )
        prompt = "".join(transcript_texts(self.format, ctx, history, speaker, continue_last))
        base = history[-1].text if continue_last else None
        holder: list[ReplyResult] = []
        gen = self._generate(prompt, params, scanner, cancel, on_finish, holder, base)
        return Reply(gen, holder)

    def complete(
        self,
        prompt: str,
        params: SamplingParams,
        stop_strings: list[str] | None = None,
        cancel: threading.Event | None = None,
        on_finish: Callable[[ReplyResult], None] | None = None,
    ) -> Reply:
        """A raw prompt continued (an API "text completion" passed on to the server)."""
        if not prompt:
            raise ValueError("the prompt is empty")
        scanner = StopScanner(stop_strings or [], strip_leading=False)
        holder: list[ReplyResult] = []
        return Reply(self._generate(prompt, params, scanner, cancel, on_finish, holder), holder)

    def _body(self, prompt: str, params: SamplingParams, stops: list[str]) -> dict[str, Any]:
        p = params.validated()
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.model:
            body["model"] = self.model
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.min_p > 0:
            body["min_p"] = p.min_p
        if p.seed is not None:
            body["seed"] = p.seed
        if p.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in p.logit_bias}
        if stops:
            body["stop"] = stops[:MAX_STOPS]
        if p.dry_multiplier > 0:  # in llama.cpp's names, which this app's own /v1 reads too
            body["dry_multiplier"] = p.dry_multiplier
            body["dry_base"] = p.dry_base
            body["dry_allowed_length"] = p.dry_allowed_length
            body["dry_penalty_last_n"] = p.dry_range or -1
            body["dry_sequence_breakers"] = list(p.dry_sequence_breakers)
        return body

    def _open(self, body: dict[str, Any]) -> _Stream:
        """POST /completions, streaming; ModelError when the server refuses or is not there."""
        request = self._client.build_request(
            "POST", self.base + "/completions", json=body, headers=self._headers()
        )
        try:
            response = self._client.send(request, stream=True)
        except self._http.HTTPError as e:
            raise self._failure(e, "/completions") from e
        if response.status_code != 200:
            try:
                content = response.read()
            except self._http.HTTPError:
                content = b""
            response.close()
            raise self._refusal(response.status_code, content, "/completions")
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        return _Stream(response, sock)

    def _generate(
        self,
        prompt: str,
        params: SamplingParams,
        scanner: StopScanner,
        cancel: threading.Event | None,
        on_finish: Callable[[ReplyResult], None] | None,
        holder: list[ReplyResult],
        continued: str | None = None,
    ) -> Iterator[str]:
        t0 = time.perf_counter()
        res = ReplyResult(stop_reason="closed")
        res.prompt_tokens = res.fed_tokens = len(self.backend.tokenize(prompt))
        cancel = cancel or threading.Event()
        done = threading.Event()
        failure: ModelError | None = None
        t_first = 0.0
        counted = False  # the server's usage gave the tokens generated
        with self._active_lock:
            self._active += 1
        try:
            stream = self._open(self._body(prompt, params, scanner.stops))
            _watch(cancel, done, stream.sock)  # a Stop, a client gone: the read ends at once
            try:
                for event in _events(stream.response):
                    if cancel.is_set():
                        break
                    if "error" in event:
                        err = event["error"]
                        said = err.get("message") if isinstance(err, dict) else err
                        raise ModelError(f"{self._where('/completions')} stopped: {said}")
                    counted = _usage(event, res) or counted
                    for choice in event.get("choices") or ():
                        text = choice.get("text") or ""
                        if text:
                            t_first = t_first or time.perf_counter()
                            if not counted:
                                res.new_tokens += 1  # a piece a token, until `usage` says
                            piece = scanner.push(text.encode("utf-8"))
                            if piece:
                                res.ttft_s = res.ttft_s or time.perf_counter() - t0
                                yield piece
                        if scanner.stopped:
                            res.stop_reason = "stop"
                            break
                        finish = choice.get("finish_reason")
                        if finish:
                            res.stop_reason = "length" if finish == "length" else "stop"
                    if scanner.stopped:
                        break
                else:
                    if res.stop_reason == "closed" and not cancel.is_set():
                        # the stream ended without [DONE] or a finish reason: cut short
                        raise ModelError(
                            f"{self._where('/completions')} closed the connection in the "
                            "middle of its answer. What was said so far is kept."
                        )
                if cancel.is_set() and res.stop_reason == "closed":
                    res.stop_reason = "cancel"
            except self._http.HTTPError as e:
                if not cancel.is_set():
                    raise self._failure(e, "/completions") from e
                res.stop_reason = "cancel"
            finally:
                done.set()
                stream.response.close()
        except GeneratorExit:
            res.stop_reason = "closed"  # the consumer went away: keep what was shown
        except ModelError as e:
            res.stop_reason = "error"
            failure = e
        finally:
            with self._active_lock:
                self._active -= 1
            res.gen_s = time.perf_counter() - t_first if t_first else 0.0
            res.tok_s = res.new_tokens / res.gen_s if res.gen_s > 0 else 0.0
            res.stop_string = scanner.stop_string
            res.text = scanner.final_text()
            if continued is not None:
                res.text = normalize(continued + res.text)
            res.ttft_s = res.ttft_s or time.perf_counter() - t0
            holder.append(res)
            if on_finish is not None:
                on_finish(res)
        if failure is not None:
            raise failure


def _watch(cancel: threading.Event, done: threading.Event, sock: socket.socket | None) -> None:
    """When `cancel` is set before `done`, shut the request's socket: a read waiting for the
    server's next piece ends at once, and the server sees the client leave (and stops)."""
    if sock is None:
        return

    def run() -> None:
        while not done.is_set():
            if cancel.wait(0.1):
                if not done.is_set():
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    threading.Thread(target=run, name="remote-cancel", daemon=True).start()


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream, until `data: [DONE]`. A server that
    answers a stream with one JSON body (it ignored `stream`) gives that body as one event."""
    kind = response.headers.get("content-type", "")
    if "text/event-stream" not in kind:
        body = response.read()
        try:
            yield json.loads(body)
        except ValueError as e:
            raise ModelError(f"The model server's answer is not JSON: {body[:200]!r}") from e
        return
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _usage(event: dict[str, Any], res: ReplyResult) -> bool:
    """The server's token counts, when it sends them: prompt tokens, those its cache served
    (OpenAI's `prompt_tokens_details.cached_tokens`), tokens generated (True: it gave those)."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return False
    prompt = usage.get("prompt_tokens")
    if isinstance(prompt, int):
        res.prompt_tokens = prompt
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        res.fed_tokens = prompt - cached if isinstance(cached, int) else prompt
    done = usage.get("completion_tokens")
    if isinstance(done, int):
        res.new_tokens = done
        return True
    return False
