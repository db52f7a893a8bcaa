"""The OpenAI-compatible API served for real (uvicorn on a free port, the routes and guard that
Home.py mounts) on the tiny RWKV-7: the official `openai` client, raw SSE read with httpx, the
request bodies SillyTavern sends (Chat Completion "Custom (OpenAI-compatible)" and Text
Completion), every refusal, keys and origins, a client that goes away, and the state cache
serving a chat resent whole every turn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest

from core import runtime
from core.api.mapping import map_messages
from core.auth import new_api_key
from core.backends.model_thread import submit
from core.chat import model_name
from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.prompt import Message
from core.text import normalize
from tests.support.api_server import api_server
from tests.support.required import unavailable

WAIT_S = 120  # an upper bound for things that happen "soon" on a loaded machine; never asserted


@pytest.fixture
def api(tiny_models, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RP_MODEL", str(tiny_models(7)))
    for name in ("RP_PASSWORD", "RP_DB_URL", "RP_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    with api_server() as base:
        yield base


def client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=WAIT_S)


def engine() -> Engine:
    e = runtime.current().engine()
    assert e is not None, "the model should be loaded by the request before"
    return e


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an event stream, checking its framing (one line, a blank one)."""
    assert text.endswith("\n\n"), text[-50:]
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


CHAT = [
    {"role": "system", "content": "Rex is a fox who lives in the snow."},
    {"role": "user", "content": "Hello, Rex!"},
]


# ---------------------------------------------------------------------------- the openai client
def test_models_names_the_loaded_model_with_a_large_context(api: str) -> None:
    c = client(api)
    c.completions.create(model="any", prompt="Hi", max_tokens=1)  # loads the model
    models = c.models.list().data
    assert [m.id for m in models] == [tiny_name()]
    raw = httpx.get(api + "/v1/models").json()
    assert raw["object"] == "list" and raw["data"][0]["context_length"] >= 1_000_000
    assert c.models.retrieve(tiny_name()).id == tiny_name()
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")


def tiny_name() -> str:
    return "v7-L2-D128.pth"


def test_chat_streaming_and_not_give_the_same_reply(api: str) -> None:
    c = client(api)
    whole = c.chat.completions.create(model="rwkv", messages=CHAT, max_tokens=12, seed=3)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and whole.model == tiny_name()
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        c.chat.completions.create(
            model="rwkv",
            messages=CHAT,
            max_tokens=12,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    # the same request again starts from the cache: the whole prompt was restored
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens


def test_n_alternatives_each_with_its_own_seed(api: str) -> None:
    c = client(api)

    def one(seed: int) -> str:
        r = c.chat.completions.create(model="m", messages=CHAT, max_tokens=10, seed=seed)
        return r.choices[0].message.content or ""

    both = c.chat.completions.create(model="m", messages=CHAT, max_tokens=10, seed=5, n=2)
    assert [ch.index for ch in both.choices] == [0, 1]
    assert [ch.message.content for ch in both.choices] == [one(5), one(6)]
    assert both.usage.completion_tokens >= 2

    stream = c.chat.completions.create(
        model="m", messages=CHAT, max_tokens=10, seed=5, n=2, stream=True
    )
    texts = ["", ""]
    ends = [None, None]
    for ch in stream:
        for x in ch.choices:
            texts[x.index] += x.delta.content or ""
            ends[x.index] = x.finish_reason or ends[x.index]
    assert texts == [ch.message.content for ch in both.choices]
    assert all(e in ("stop", "length") for e in ends)


def test_completions_streaming_and_not_and_n(api: str) -> None:
    c = client(api)
    prompt = "Once upon a time, a fox"
    whole = c.completions.create(model="m", prompt=prompt, max_tokens=8, seed=2, temperature=1)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 8
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="m", prompt=prompt, max_tokens=8, seed=2, temperature=1, stream=True
        )
    )
    assert streamed == whole.choices[0].text
    two = c.completions.create(model="m", prompt=prompt, max_tokens=8, seed=2, n=2, temperature=1)
    assert two.choices[0].text == whole.choices[0].text
    third = c.completions.create(model="m", prompt=prompt, max_tokens=8, seed=3, temperature=1)
    assert two.choices[1].text == third.choices[0].text


def test_stop_strings_end_the_completion(api: str) -> None:
    """A stop string cuts the text before it, and ends the reply with finish_reason "stop"."""
    c = client(api)
    free = c.completions.create(model="m", prompt="A", max_tokens=12, seed=9, temperature=1)
    text = free.choices[0].text
    assert len(text) > 4
    stop = text[3:5]
    cut = c.completions.create(
        model="m", prompt="A", max_tokens=12, seed=9, temperature=1, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)].rstrip()


def test_a_clients_stop_strings_end_a_chat_reply(api: str) -> None:
    """Chat completions honour the client's `stop` as completions do: a string from the middle
    of the free reply cuts the reply there, with finish_reason "stop". The user messages have no
    name, so the app's own stops are those of "User" and none of them is the client's."""
    chat = [
        {"role": "system", "content": "Rex is a fox who lives in the snow."},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Hello, Rex! Tell me about the snow."},
    ]
    body = {"messages": chat, "max_tokens": 16, "seed": 5, "temperature": 1}
    url = api + "/v1/chat/completions"
    free = httpx.post(url, json=body, timeout=WAIT_S).json()["choices"][0]
    text = free["message"]["content"]
    assert free["finish_reason"] == "length" and len(text) > 6, free
    # a stop from the middle of the reply, with no space in it (the reply is normalised)
    at = next(i for i in range(3, len(text) - 1) if not text[i : i + 2].isspace())
    stop = text[at : at + 2].strip() or text[at]
    for stream in (False, True):
        r = httpx.post(url, json={**body, "stop": [stop], "stream": stream}, timeout=WAIT_S)
        if stream:
            events = [json.loads(e) for e in sse_events(r.text)[:-1]]
            cut = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
            finish = events[-1]["choices"][0]["finish_reason"]
        else:
            cut, finish = (r.json()["choices"][0][k] for k in ("message", "finish_reason"))
            cut = cut["content"]
        assert finish == "stop", (stream, stop, text, cut)
        assert cut == normalize(text[: text.index(stop)]), (stream, stop, text, cut)


def test_logit_bias_steers_the_reply(api: str) -> None:
    c = client(api)
    c.completions.create(model="m", prompt="A", max_tokens=1)
    tok = engine().backend.tokenize(" snow")
    assert len(tok) == 1
    r = c.completions.create(
        model="m", prompt="A", max_tokens=3, seed=1, logit_bias={str(tok[0]): 100}
    )
    assert r.choices[0].text == " snow snow snow"


# ---------------------------------------------------------------------------- raw SSE
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_raw_event_stream(api: str, path: str) -> None:
    body: dict[str, Any] = {"max_tokens": 6, "seed": 1, "stream": True}
    body.update({"messages": CHAT} if "chat" in path else {"prompt": "Snow"})
    r = httpx.post(api + path, json=body, timeout=WAIT_S)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    kind = "chat.completion.chunk" if "chat" in path else "text_completion"
    assert {ch["object"] for ch in chunks} == {kind}
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------------------- SillyTavern
def sillytavern_chat(stream: bool, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The body SillyTavern's Chat Completion source "Custom (OpenAI-compatible)" posts to
    {custom_url}/chat/completions (src/endpoints/backends/chat-completions.js): its prompt
    manager's messages (main prompt, card, example dialogue as system messages named
    example_user / example_assistant, "[Start a new Chat]", the chat with "Completion object"
    names), its sampler fields, `logit_bias: {}` always, `stop` and `seed` only when set."""
    return {
        "messages": [
            {
                "role": "system",
                "content": "Write Rex's next reply in a fictional chat between Rex and Bob.",
            },
            {"role": "system", "content": "Rex is a fox who lives in the snow."},
            {"role": "system", "content": "[Example Chat]"},
            {"role": "system", "name": "example_user", "content": "Do you like snow?"},
            {"role": "system", "name": "example_assistant", "content": "*wags tail* I love it."},
            {"role": "system", "content": "[Start a new Chat]"},
            {"role": "assistant", "name": "Rex", "content": "*Rex looks up.* Oh, hello!"},
            *history,
        ],
        "model": "rwkv",
        "temperature": 1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "top_p": 1,
        "max_tokens": 10,
        "stream": stream,
        "logit_bias": {},
        "stop": ["\nBob:"],
        "seed": 4,
    }


def read_sillytavern(r: httpx.Response, stream: bool) -> str:
    """The reply as SillyTavern reads it: choices[0].delta.content of each event, or
    choices[0].message.content."""
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()["choices"][0]["message"]["content"]
    text = ""
    for e in sse_events(r.text):
        if e == "[DONE]":
            break
        data = json.loads(e)
        assert "error" not in data, data
        text += data["choices"][0]["delta"].get("content") or ""
    return text


def test_sillytavern_chat_completion_bodies(api: str) -> None:
    user = [{"role": "user", "name": "Bob", "content": "Hi Rex, is it cold?"}]
    url = api + "/v1/chat/completions"
    whole = read_sillytavern(httpx.post(url, json=sillytavern_chat(False, user)), False)
    streamed = read_sillytavern(
        httpx.post(url, json=sillytavern_chat(True, user), timeout=WAIT_S), True
    )
    assert whole == streamed
    # the prompt the model saw: the app's role-play format with the card's names
    chat = sillytavern_chat(False, user)
    mapped = map_messages(chat, ["\nBob:"])
    prompt = engine().prompt_text(mapped.ctx, mapped.history, mapped.speaker)
    assert prompt.endswith("Rex: *Rex looks up.* Oh, hello!\n\nBob: Hi Rex, is it cold?\n\nRex:")
    assert "Bob: Do you like snow?\nRex: *wags tail* I love it." in prompt

    # "continue": SillyTavern sends the message so far as a trailing assistant message
    cont = [*user, {"role": "assistant", "name": "Rex", "content": "Brr, it is"}]
    r = httpx.post(url, json=sillytavern_chat(False, cont), timeout=WAIT_S)
    more = read_sillytavern(r, False)
    assert isinstance(more, str) and r.json()["usage"]["completion_tokens"] >= 1


def sillytavern_text(prompt: str, stream: bool, kind: str) -> dict[str, Any]:
    """The body SillyTavern's Text Completion posts to {server}/v1/completions for the ooba
    and koboldcpp types (public/scripts/textgen-settings.js getTextGenGenerationData): the
    prompt, both max-token fields, every sampler of its panel under its servers' names."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "model": "rwkv",
        "max_new_tokens": 10,
        "max_tokens": 10,
        "temperature": 0.7,
        "top_p": 0.5,
        "typical_p": 1,
        "typical": 1,
        "sampler_seed": 4,
        "min_p": 0,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "top_k": 40,
        "skew": 0,
        "min_tokens": 0,
        "add_bos_token": True,
        "smoothing_factor": 0,
        "smoothing_curve": 1,
        "dry_allowed_length": 2,
        "dry_multiplier": 0,
        "dry_base": 1.75,
        "dry_sequence_breakers": '["\\n", ":", "\\"", "*"]',
        "dry_penalty_last_n": 0,
        "max_tokens_second": 0,
        "stopping_strings": ["\nBob:", "\nRex:"],
        "stop": ["\nBob:", "\nRex:"],
        "truncation_length": 8192,
        "ban_eos_token": False,
        "skip_special_tokens": True,
        "top_a": 0,
        "tfs": 1,
        "mirostat_mode": 0,
        "mirostat_tau": 5,
        "mirostat_eta": 0.1,
        "custom_token_bans": "",
        "banned_strings": [],
        "api_type": kind,
        "api_server": "http://127.0.0.1:8501",
        "xtc_threshold": 0.1,
        "xtc_probability": 0,
        "rep_pen": 1.1,
        "rep_pen_range": 0,
        "repetition_penalty_range": 0,
        "seed": 4,
        "guidance_scale": 1,
        "negative_prompt": "",
        "grammar_string": "",
        "repeat_penalty": 1.1,
        "tfs_z": 1,
        "repeat_last_n": 0,
        "n_predict": 10,
        "num_predict": 10,
        "num_ctx": 8192,
        "mirostat": 0,
        "ignore_eos": False,
        "rep_pen_slope": 1,
        "stream": stream,
    }
    if kind == "ooba":
        body |= {"min_length": 0, "num_beams": 1, "length_penalty": 1, "early_stopping": False}
        body |= {"sampler_priority": ["temperature", "top_k"], "legacy_api": False}
        body |= {"encoder_repetition_penalty": 1, "no_repeat_ngram_size": 0, "do_sample": True}
        body |= {"penalty_alpha": 0, "temperature_last": True}
    else:  # koboldcpp
        body |= {"sampler_order": [6, 0, 1, 3, 4, 2, 5]}
    return body


@pytest.mark.parametrize("kind", ["ooba", "koboldcpp"])
def test_sillytavern_text_completion_bodies(api: str, kind: str) -> None:
    prompt = "Rex is a fox who lives in the snow.\nRex: Oh, hello!\nBob: Is it cold?\nRex:"
    url = api + "/v1/completions"
    r = httpx.post(url, json=sillytavern_text(prompt, False, kind), timeout=WAIT_S)
    assert r.status_code == 200, r.text
    whole = r.json()["choices"][0]["text"]
    r = httpx.post(url, json=sillytavern_text(prompt, True, kind), timeout=WAIT_S)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert streamed == whole
    assert "\nBob:" not in whole and "\nRex:" not in whole


# ---------------------------------------------------------------------------- refusals
def _error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 9000}, "max_tokens"),
        ("/v1/chat/completions", {"messages": CHAT, "n": 9}, "n"),
        ("/v1/chat/completions", {"messages": CHAT, "stop": 5}, "stop"),
        ("/v1/chat/completions", {"messages": CHAT, "model": 5}, "model"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
        ),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "response_format": {"type": "json_schema"}},
            "response_format",
        ),
        ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}, "logprobs"),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "x"}}],
                    }
                ]
            },
            "messages[0].content",
        ),
        ("/v1/completions", {"prompt": "x", "echo": True}, "echo"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"prompt": "x", "n_predict": 100000}, "n_predict"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"999999": 1}}, "logit_bias"),
    ],
)
def test_bad_requests_are_refused_in_openais_shape(api: str, path, body, param) -> None:
    _error(httpx.post(api + path, json=body, timeout=WAIT_S), 400, param)


def test_malformed_json_and_huge_bodies(api: str) -> None:
    url = api + "/v1/chat/completions"
    bad = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert "not valid JSON" in _error(bad, 400)["message"]
    _error(httpx.post(url, content=b"[1, 2]"), 400)
    huge = b'{"prompt": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    _error(httpx.post(api + "/v1/completions", content=huge, timeout=WAIT_S), 413)
    _error(httpx.get(api + "/v1/nothing"), 404)


def test_the_openai_client_sees_the_errors(api: str) -> None:
    c = client(api)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=CHAT, max_tokens=100000)
    assert "8192" in str(e.value)


def test_keys_when_a_password_is_set(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RP_PASSWORD", "secret")
    url = api + "/v1/models"
    assert _error(httpx.get(url), 401)["code"] == "missing_api_key"
    bad = httpx.get(url, headers={"authorization": "Bearer sk-wrong"})
    assert _error(bad, 401)["code"] == "bad_api_key"
    key, record = new_api_key("SillyTavern")
    runtime.current().store.set_setting("api_keys", [record])
    assert httpx.get(url, headers={"authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(url, headers={"authorization": f"bearer  {key}"}).status_code == 200
    # the right key under another scheme, or under none, is refused
    for auth in (f"Basic {key}", f"Token {key}", f"Bearerx {key}", key, f"{key} Bearer"):
        r = httpx.get(url, headers={"authorization": auth})
        assert r.status_code == 401, (auth[:12], r.status_code)
        assert _error(r, 401)["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(api, "sk-wrong").models.list()
    r = client(api, key).completions.create(model="m", prompt="Hi", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_a_foreign_origin_is_refused(api: str) -> None:
    r = httpx.get(api + "/v1/models", headers={"origin": "http://evil.example"})
    assert _error(r, 403)["code"] == "origin_not_allowed"
    runtime.current().store.set_setting("api_cors_origins", ["http://localhost:8000"])
    ok = httpx.get(api + "/v1/models", headers={"origin": "http://localhost:8000"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://localhost:8000"


def test_an_unloaded_model_is_said_not_loaded_again(api: str) -> None:
    c = client(api)
    c.completions.create(model="m", prompt="Hi", max_tokens=1)
    runtime.current().unload()
    r = httpx.post(api + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert "unloaded" in _error(r, 503)["message"]
    assert runtime.current().engine() is None


# ---------------------------------------------------------------------------- going away
class Spy:
    """Records the replies and cancel events the API starts on the engine."""

    def __init__(self, eng: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replies: list[Any] = []
        self.cancels: list[threading.Event] = []
        for name in ("reply", "complete"):
            real = getattr(eng, name)

            def spy(*a: Any, _real=real, **k: Any) -> Any:
                self.cancels.append(k["cancel"])
                r = _real(*a, **k)
                self.replies.append(r)
                return r

            monkeypatch.setattr(eng, name, spy)

    def result(self) -> Any:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                return self.replies[0].result
            except (RuntimeError, IndexError):
                time.sleep(0.02)
        raise AssertionError("the generation never ended")


class ModelHeld:
    """Holds the model thread busy (a job that waits), so no generation can make a step."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.job: Any = None

    def hold(self) -> None:
        started = threading.Event()
        self.job = submit(lambda: (started.set(), self.gate.wait(WAIT_S)))
        assert started.wait(WAIT_S)

    def release(self) -> None:
        self.gate.set()
        if self.job is not None:
            self.job.result(WAIT_S)


def no_stop_bias(eng: Engine) -> dict[str, int]:
    """logit_bias that bans every token with a newline and the end-of-text token, so that a
    chat reply cannot end before the test ends it."""
    banned = [t for t in range(eng.info.n_vocab) if b"\n" in eng.raw_backend.token_bytes(t)]
    eos = eng.backend.eos_token()
    return {str(t): -100 for t in [*banned, *([eos] if eos is not None else [])]}


def test_a_client_that_leaves_a_stream_stops_its_generation(api, monkeypatch) -> None:
    client(api).completions.create(model="m", prompt="Hi", max_tokens=1)
    eng = engine()
    spy = Spy(eng, monkeypatch)
    body = {"messages": CHAT, "max_tokens": 8000, "stream": True, "logit_bias": no_stop_bias(eng)}
    held = ModelHeld()
    try:
        with httpx.Client(timeout=WAIT_S) as http:
            with http.stream("POST", api + "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if '"content":' in line and '"content": ""' not in line:
                        break  # the first piece of text
                held.hold()  # the generation cannot take another step now
        # the client has gone: the server stops the generation without waiting for the model
        assert spy.cancels[0].wait(WAIT_S)
    finally:
        held.release()
    res = spy.result()
    # "cancel": the loop saw the event before its next token; "closed": the worker closed the
    # generator between two pieces (when a piece computed before the hold came as it left)
    assert res.stop_reason in ("cancel", "closed") and 0 < res.new_tokens < 8000


def test_a_client_that_leaves_before_the_answer_stops_its_generation(api, monkeypatch) -> None:
    client(api).completions.create(model="m", prompt="Hi", max_tokens=1)
    spy = Spy(engine(), monkeypatch)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 8000}).encode()
    port = int(api.rsplit(":", 1)[1])
    held = ModelHeld()
    held.hold()  # the prompt cannot even be fed while the client leaves
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.monotonic() + WAIT_S
            while not spy.cancels and time.monotonic() < deadline:
                time.sleep(0.02)
            assert spy.cancels, "the generation never started"
        assert spy.cancels[0].wait(WAIT_S)
    finally:
        held.release()
    res = spy.result()
    assert res.stop_reason == "cancel" and res.new_tokens == 0


# ---------------------------------------------------------------------------- the state cache
def _two_turns(base: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], int]:
    """A SillyTavern chat of one turn, then resent whole with the reply and one more user
    message: (first answer, second answer, the second request's messages, the tokens that are
    new in it: the user's message and the reply's header)."""
    url = base + "/v1/chat/completions"
    user1 = [{"role": "user", "name": "Bob", "content": "Hi Rex, is it cold?"}]
    first = httpx.post(url, json=sillytavern_chat(False, user1), timeout=WAIT_S).json()
    reply = first["choices"][0]["message"]["content"]
    assert reply, "the seed should give a reply with text"
    user2 = [
        *user1,
        {"role": "assistant", "name": "Rex", "content": reply},
        {"role": "user", "name": "Bob", "content": "Shall we go out?"},
    ]
    second = httpx.post(url, json=sillytavern_chat(False, user2), timeout=WAIT_S).json()
    eng = engine()
    fmt, tok = eng.format, eng.backend.tokenize
    ctx = map_messages(sillytavern_chat(False, user2)).ctx
    new = Message("user", "Shall we go out?")
    parts = (fmt.header(new, ctx), fmt.body(new.text, new, ctx), fmt.header(Message("char"), ctx))
    return first, second, user2, sum(len(tok(t)) for t in parts)


def test_a_chat_resent_whole_feeds_only_its_new_tokens(api: str) -> None:
    """SillyTavern resends the whole chat every turn: the next turn feeds only the new user
    message (and the reply's header); the same request again (a regenerate) feeds nothing."""
    c = client(api)
    first, second, user2, fed_new = _two_turns(api)
    reply = first["choices"][0]["message"]["content"]
    eng = engine()
    ctx = map_messages(sillytavern_chat(False, user2)).ctx
    kept_reply = len(eng.backend.tokenize(eng.format.body(reply, Message("char"), ctx)))
    usage1, usage2 = first["usage"], second["usage"]
    cached = usage2["prompt_tokens_details"]["cached_tokens"]
    assert cached == usage1["prompt_tokens"] + kept_reply  # up to the end of the reply
    assert usage2["prompt_tokens"] - cached == fed_new  # fed: only what is new
    # a regenerate: the same request again
    again = c.chat.completions.create(**sillytavern_chat(False, user2))
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens


def test_raw_completions_reuse_the_longest_cached_prefix(api: str) -> None:
    c = client(api)
    prompt = "Rex: Hello there.\nBob: Hi."
    first = c.completions.create(model="m", prompt=prompt, max_tokens=6, seed=1, temperature=1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    tok = engine().backend.tokenize
    longer = prompt + "\nRex: How are you?"
    assert tok(longer)[: len(tok(prompt))] == tok(prompt)  # the prompt's tokens start it
    second = c.completions.create(model="m", prompt=longer, max_tokens=2)
    assert second.usage.prompt_tokens_details.cached_tokens == len(tok(prompt))
    # prompt + the reply, as a client resending its transcript: at least the prompt is cached
    third = c.completions.create(model="m", prompt=prompt + first.choices[0].text, max_tokens=2)
    assert third.usage.prompt_tokens_details.cached_tokens >= len(tok(prompt))
    # the same prompt again starts from its own end
    again = c.completions.create(model="m", prompt=longer, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens


def test_an_api_chat_and_an_app_chat_at_once_do_not_mix(api, monkeypatch) -> None:
    """A chat in the app (the chat service, as the pages use it) and an API chat completion
    generating at the same time, step by step on the one model thread: each says what it says
    alone, the app's chat keeps its reply, and the API stores nothing."""
    c = client(api)
    c.completions.create(model="m", prompt="Hi", max_tokens=1)
    rt = runtime.current()
    rex = rt.store.create_character({"name": "Rex", "description": "A fox of the snow."})
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_tokens=16)
    chats: list[int] = []

    def app_reply() -> str:
        conv = rt.chat.new_chat(rex.id)
        chats.append(conv.id)
        rt.chat.send(conv.id, "Hello, Rex!")
        turn = rt.chat.reply(conv.id, params=params)
        for _ in turn:
            pass
        turn.done.wait(WAIT_S)
        return turn.message.text if turn.message else ""

    def api_reply() -> str:
        r = c.chat.completions.create(model="m", messages=CHAT, max_tokens=16, seed=8)
        return r.choices[0].message.content or ""

    alone = {"app": app_reply(), "api": api_reply()}
    assert all(alone.values())
    spy = Spy(engine(), monkeypatch)
    together: dict[str, str] = {}
    workers = [
        threading.Thread(target=lambda: together.__setitem__("app", app_reply())),
        threading.Thread(target=lambda: together.__setitem__("api", api_reply())),
    ]
    held = ModelHeld()
    held.hold()  # both start and wait for the model: then they take turns, step by step
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + WAIT_S
        while len(spy.replies) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(spy.replies) == 2, "both generations should have started"
    finally:
        held.release()
    for w in workers:
        w.join(WAIT_S)
    assert together == alone
    for conv_id in chats:
        texts = [m.text for m in rt.store.list_messages(conv_id)]
        assert texts[-2:] == ["Hello, Rex!", alone["app"]]
    assert len(rt.store.list_conversations()) == 2  # the API made no chat


def test_a_model_failing_mid_reply_is_said_in_the_stream(api, monkeypatch) -> None:
    """The back end fails after the first token (its decode steps raise, as an out-of-memory
    would): the stream ends with an error event that SillyTavern shows, then [DONE]; without
    streaming, a 503 in OpenAI's shape."""
    from core.errors import ModelError

    client(api).completions.create(model="m", prompt="Hi", max_tokens=1)
    backend = engine().raw_backend

    def broken(real):
        def step(tokens, state):
            if len(tokens) == 1:
                raise ModelError("The model failed: out of memory.")
            return real(tokens, state)

        return step

    monkeypatch.setattr(backend, "forward", broken(backend.forward))
    monkeypatch.setattr(backend, "advance", broken(backend.advance))
    body = {"prompt": "Once upon a time", "max_tokens": 20, "stream": True}
    r = httpx.post(api + "/v1/completions", json=body, timeout=WAIT_S)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == "The model failed: out of memory." and error["type"]
    assert "text" in json.loads(events[0])["choices"][0]  # what came before it was sent
    r = httpx.post(api + "/v1/completions", json={**body, "stream": False}, timeout=WAIT_S)
    assert _error(r, 503)["message"] == "The model failed: out of memory."


def test_too_many_generations_at_once_are_refused(api, monkeypatch) -> None:
    import core.api.admission as admission

    client(api).completions.create(model="m", prompt="Hi", max_tokens=1)
    monkeypatch.setattr(admission, "MAX_ACTIVE", 2)
    spy = Spy(engine(), monkeypatch)
    url = api + "/v1/completions"
    two = {"prompt": "Hi", "max_tokens": 3, "n": 2}
    out: dict[str, httpx.Response] = {}
    first = threading.Thread(
        target=lambda: out.setdefault("r", httpx.post(url, json=two, timeout=WAIT_S))
    )
    held = ModelHeld()
    held.hold()  # the first request's two generations stay running
    try:
        first.start()
        deadline = time.monotonic() + WAIT_S
        while not spy.replies and time.monotonic() < deadline:
            time.sleep(0.02)
        assert spy.replies, "the first request should have started"
        r = httpx.post(url, json={"prompt": "Hi", "max_tokens": 3}, timeout=WAIT_S)
        assert _error(r, 429)["code"] == "too_many_generations"
    finally:
        held.release()
    first.join(WAIT_S)
    assert out["r"].status_code == 200 and len(out["r"].json()["choices"]) == 2
    assert httpx.post(url, json=two, timeout=WAIT_S).status_code == 200  # released again


def test_the_embedded_chat_model_serves_a_resent_chat_from_its_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default model (SmolLM2, a transformer GGUF in ChatML through llama.cpp): its context
    is llama.cpp's, and a SillyTavern chat resent with one more message feeds only that message
    and the reply's header, the reply itself restored from its checkpoint."""
    from core.backends.embedded import embedded_model_path, missing_message

    if embedded_model_path() is None:
        unavailable(missing_message())
    for name in ("RP_MODEL", "RP_PASSWORD", "RP_DB_URL", "RP_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    with api_server() as base:
        first, second, _, fed_new = _two_turns(base)
        model = httpx.get(base + "/v1/models").json()["data"][0]
        assert model["id"] == model_name(engine()) == first["model"]
        assert model["context_length"] == engine().raw_backend.n_ctx < 1_000_000
        usage = second["usage"]
        assert usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"] == fed_new


def test_a_model_that_cannot_load_is_said(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a model")
    monkeypatch.setenv("RP_MODEL", str(bad))
    for name in ("RP_PASSWORD", "RP_DB_URL", "RP_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    with api_server() as base:
        body = {"prompt": "Hi", "max_tokens": 2}
        err = _error(httpx.post(base + "/v1/completions", json=body, timeout=WAIT_S), 503)
        assert err["code"] == "model_not_loaded" and "could not be loaded" in err["message"]
        # said again at once (not loaded again on every request), and the list still answers
        again = _error(httpx.post(base + "/v1/completions", json=body, timeout=WAIT_S), 503)
        assert again["message"] == err["message"]
        assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == "broken.pth"


def test_a_wrong_method_is_said(api: str) -> None:
    r = httpx.get(api + "/v1/chat/completions")
    err = _error(r, 405)
    assert err["code"] == "method_not_allowed" and "POST" in err["message"]
    assert r.headers["allow"] == "POST"
    assert _error(httpx.post(api + "/v1/models"), 405)["code"] == "method_not_allowed"


# ---------------------------------------------------------------------------- hostile bodies
def test_ten_thousand_messages_are_refused_saying_the_limit(api: str) -> None:
    """Issue 21: 10,000 messages got no answer in 300 s; now a 400 that says why, at once."""
    messages = [{"role": "user", "content": f"m{i}"} for i in range(10_000)]
    r = httpx.post(
        api + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}, timeout=WAIT_S
    )
    err = _error(r, 400, "messages")
    assert "10,000 messages" in err["message"] and "at most" in err["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_deeply_nested_json_is_a_400_not_a_500(api: str, path: str) -> None:
    """Issue 21: 100,000 nested `[` gave a plain-text 500 (RecursionError)."""
    r = httpx.post(api + path, content=b"[" * 100_000, timeout=WAIT_S)
    assert "not valid JSON" in _error(r, 400)["message"]
    r = httpx.post(api + path, content=b'{"n": 1' + b"1" * 5000 + b"}", timeout=WAIT_S)
    assert "digits" in _error(r, 400)["message"]


def test_a_lone_surrogate_in_a_request_becomes_a_replacement_character(api: str) -> None:
    """Issue 21: `\\ud800` alone in a JSON string gave a 500 (UnicodeEncodeError)."""
    body = (
        b'{"messages": [{"role": "user", "name": "B\\ud800b", "content": "Hi \\udfff there"}],'
        b' "max_tokens": 2, "stop": ["\\ud83d"]}'
    )
    r = httpx.post(api + "/v1/chat/completions", content=body, timeout=WAIT_S)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    raw = b'{"prompt": "Once \\ud83d upon", "max_tokens": 2}'
    r = httpx.post(api + "/v1/completions", content=raw, timeout=WAIT_S)
    assert r.status_code == 200, r.text


def test_an_authors_note_at_depth_4_costs_only_the_new_tokens_on_rwkv(api: str) -> None:
    """SillyTavern's Author's Note at depth 4 (a system message 4 messages above the end: a
    place that moves every turn). By default (`api_notes_at_reply` "auto", an RWKV model) the
    server feeds it next to the reply and out of the chat's state, so the next turn feeds only
    the new user message, the note and the reply's header; with the setting at "depth" (where
    the client put it) the messages after the note's old place are fed again."""
    url = api + "/v1/chat/completions"
    note = "[Author's note: Rex is sleepy.]"

    def with_note(history: list[dict[str, Any]]) -> dict[str, Any]:
        at = len(history) - 4
        return sillytavern_chat(
            False, [*history[:at], {"role": "system", "content": note}, *history[at:]]
        )

    def turn(history: list[dict[str, Any]]) -> tuple[str, int]:
        """The reply and the prompt tokens that were not cached."""
        r = httpx.post(url, json=with_note(history), timeout=WAIT_S).json()
        usage = r["usage"]
        return (
            r["choices"][0]["message"]["content"],
            usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"],
        )

    def new_tokens(text: str) -> int:
        eng = engine()
        fmt, tok = eng.format, eng.backend.tokenize
        ctx = map_messages(sillytavern_chat(False, [])).ctx
        msg = Message("user", text)
        parts = (fmt.header(msg, ctx), fmt.body(text, msg, ctx), fmt.note(note, ctx))
        return sum(len(tok(t)) for t in (*parts, fmt.header(Message("char"), ctx)))

    def said(who: str, text: str) -> dict[str, Any]:
        name = {"user": "Bob", "assistant": "Rex"}[who]
        return {"role": who, "name": name, "content": text}

    chat = [said("user", "Hi Rex."), said("assistant", "Hi."), said("user", "Is it cold?")]
    chat += [said("assistant", "Very."), said("user", "Shall we go out?")]
    reply, _ = turn(chat)
    chat += [said("assistant", reply), said("user", "Where to?")]
    reply, fed = turn(chat)
    assert fed == new_tokens("Where to?")

    runtime.current().settings.set_api_notes("depth")
    chat += [said("assistant", reply), said("user", "Now?")]
    reply, _ = turn(chat)  # the note goes into the transcript here
    chat += [said("assistant", reply), said("user", "Then go.")]
    _, fed_depth = turn(chat)
    assert fed_depth > new_tokens("Then go.")  # and the messages after its old place, again
