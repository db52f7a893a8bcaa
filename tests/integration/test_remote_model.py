"""A model server (OpenAI-compatible) as the app's model: llama-cpp-python's own server on a tiny
RWKV-7 GGUF, and a second copy of this app (`streamlit run Home.py`) on the tiny RWKV-7 .pth. The
chat service drives it as it drives a local model: the prompt goes as text to /v1/completions
with the app's stops, replies stream and are saved; when the server is this app, its state cache
serves the chat's prefix. Stop, errors, time-outs and an unreachable server each give a clear
message, and what was said is kept. Small HTTP servers of the test's own stand for a server that
misbehaves (goes silent, sends an error, dies in the middle of an answer)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core import runtime
from core.contracts import Role
from core.engine.remote import RemoteEngine, base_url
from core.engine.sampler import SamplingParams
from core.errors import ModelError
from core.prompt import CharacterContext, Message
from core.settings import ModelChoice
from tests.support.server import free_port, running_app

CTX = CharacterContext(
    name="Rex", user_name="Bob", persona="{{char}} is a fox who lives in the snow."
)
HISTORY = [Message("char", "Hello {{user}}!"), Message("user", "Hi Rex, what do you eat?")]
PARAMS = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=3)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.3)


@pytest.fixture(scope="module")
def llama_server(tiny_models, tmp_path_factory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on the tiny RWKV-7 as an f32 GGUF."""
    pytest.importorskip("llama_cpp.server")
    from core.models.convert import convert

    root = tmp_path_factory.mktemp("llama-server")
    gguf = convert(tiny_models(7), root / "v7-f32.gguf", "f32", models_dir=root)
    port = free_port()
    log = root / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def app_server(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A second copy of this app on the tiny RWKV-7 .pth, with a password (so its API wants a
    key): (its /v1 address, a key made for it)."""
    from core.access import create_key
    from core.store import open_store

    root = tmp_path_factory.mktemp("app-server")
    data = root / "data"
    data.mkdir()
    store = open_store(f"sqlite:///{data / 'app.db'}")
    key, _ = create_key(store, "the other app")
    store.close()
    env = {"RP_MODEL": str(tiny_models(7)), "RP_PASSWORD": "a long password 42"}
    with running_app(data, root / "server.log", extra_env=env) as app:
        yield f"{app.url}/v1", key


@pytest.fixture
def remote_rt(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """This process's runtime with RP_MODEL set to a model server (remote_rt(url, key))."""
    for var in ("RP_DB_URL", "RP_BACKEND", "RP_PASSWORD", "RP_MODEL_NAME", "RP_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)

    def make(url: str, key: str = "") -> runtime.Runtime:
        monkeypatch.setenv("RP_MODEL", url)
        monkeypatch.setenv("RP_MODEL_KEY", key)
        runtime.reset()
        return runtime.current()

    yield make
    runtime.reset()


def _chat(rt: runtime.Runtime) -> int:
    rt.require_engine()  # as a page or the API does before a reply: the server is reached
    ch = rt.store.create_character(
        {"name": "Rex", "description": "{{char}} is a fox.", "greetings": ["Hello {{user}}!"]}
    )
    conv = rt.chat.new_chat(ch.id)
    assert conv.id is not None
    return conv.id


def test_base_url_adds_v1_and_refuses_what_is_not_an_address() -> None:
    assert base_url("http://h:8080") == "http://h:8080/v1"
    assert base_url("http://h:8080/v1/") == "http://h:8080/v1"
    assert base_url("https://h/x/v1/completions") == "https://h/x/v1"
    with pytest.raises(ModelError, match="not the address"):
        base_url("h:8080")
    choice = ModelChoice.server("http://h:1/v1", "k", "m", 5)
    assert ModelChoice.from_dict(choice.to_dict()) == choice
    assert choice.label() == "m @ h:1" and choice.key != ModelChoice.server("http://h:1/v1").key


def test_llama_cpp_server_as_the_model_of_a_chat(llama_server: str, remote_rt) -> None:
    """The chat service replies through llama-cpp-python's server: streamed, stopped by the
    app's stops (no second turn in the reply), saved with the server's name."""
    rt = remote_rt(llama_server)
    engine = rt.require_engine()
    assert engine.info.backend == "remote" and engine.info.extra["model"]  # named by /v1/models
    conv = _chat(rt)
    rt.chat.send(conv, "Hi Rex, what do you eat?")
    turn = rt.chat.reply(conv, params=PARAMS)
    pieces = list(turn)
    turn.done.wait(10)
    msg = turn.message
    assert msg is not None and msg.role == Role.CHAR
    assert msg.text == "".join(pieces).strip() or msg.text.startswith("".join(pieces).strip())
    assert "\n\n" not in msg.text and "Bob:" not in msg.text
    assert msg.meta["model"].endswith(f"@ {llama_server.split('//')[1].split('/')[0]}")
    assert msg.meta["stop"] in ("stop", "length")
    assert turn.result is not None and turn.result.prompt_tokens > 0


def test_this_app_as_the_model_server_serves_from_its_state_cache(app_server, remote_rt) -> None:
    """When the server is this app, its state cache does the work: the second turn of a chat
    is fed only its new tokens there (the server's usage says how many it restored)."""
    url, key = app_server
    rt = remote_rt(url, key)
    conv = _chat(rt)
    firsts = []
    for text in ("Hi Rex, what do you eat?", "And where do you sleep?", "Do you like the snow?"):
        rt.chat.send(conv, text)
        turn = rt.chat.reply(conv, params=PARAMS).consume()
        assert turn.error is None and turn.result is not None
        firsts.append(turn.result)
    last = firsts[-1]
    assert last.prompt_tokens > 30
    assert last.fed_tokens < last.prompt_tokens // 2, (last.fed_tokens, last.prompt_tokens)
    msgs = rt.store.list_messages(conv)
    assert [m.role for m in msgs] == ["char", "user", "char", "user", "char", "user", "char"]


def test_stop_mid_reply_ends_the_request_and_keeps_what_was_said(llama_server, remote_rt) -> None:
    rt = remote_rt(llama_server)
    conv = _chat(rt)
    rt.chat.send(conv, "Tell me a long story.")
    turn = rt.chat.reply(conv, params=SamplingParams(temperature=1.0, max_tokens=2000, seed=1))
    it = iter(turn)
    got = next(it)
    t0 = time.monotonic()
    turn.close()
    assert time.monotonic() - t0 < 5
    assert turn.result is not None and turn.result.stop_reason in ("cancel", "closed")
    msg = rt.store.list_messages(conv)[-1]
    assert msg.role == Role.CHAR and got.strip() and msg.text.startswith(got.strip()[:3])
    assert rt.engine().busy is False


def test_an_unreachable_server_says_so(remote_rt) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once it is closed
    rt = remote_rt(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ModelError, match="cannot be reached"):
        rt.load()
    assert "cannot be reached" in (rt.failure() or "")


def test_a_wrong_key_is_refused_in_words(app_server, remote_rt) -> None:
    url, _ = app_server
    rt = remote_rt(url, "rp-not-a-key")
    with pytest.raises(ModelError, match="refused the API key"):
        rt.load()


# --- servers that misbehave ----------------------------------------------------------------


class _Misbehaving(BaseHTTPRequestHandler):
    mode = "silent"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "odd"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.mode == "refuse":
            body = json.dumps({"error": {"message": "model 'odd' is overloaded"}}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if self.mode == "silent":
            time.sleep(5)
            return
        for word in (" I", " eat", " fish"):
            event = {"choices": [{"index": 0, "text": word, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        if self.mode == "error":
            self.wfile.write(b'data: {"error": {"message": "out of memory"}}\n\n')
        # "dies": the connection ends here, without a finish reason or [DONE]
        self.wfile.flush()


@pytest.fixture
def odd_server():
    servers = []

    def make(mode: str) -> str:
        handler = type("H", (_Misbehaving,), {"mode": mode})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}/v1"

    yield make
    for srv in servers:
        srv.shutdown()


@pytest.mark.parametrize(
    "mode, said",
    [
        ("silent", "said nothing for 1 s"),
        ("error", "stopped: out of memory"),
        ("dies", "closed the connection in the middle"),
        ("refuse", "HTTP 503.*overloaded"),
    ],
)
def test_a_server_that_fails_mid_reply_is_named_and_what_was_said_is_kept(
    odd_server, remote_rt, mode: str, said: str
) -> None:
    rt = remote_rt(odd_server(mode))
    rt.choose(ModelChoice.server(odd_server(mode), timeout_s=1))
    conv = _chat(rt)
    rt.chat.send(conv, "What do you eat?")
    turn = rt.chat.reply(conv, params=PARAMS)
    with pytest.raises(ModelError, match=said):
        for _ in turn:
            pass
    turn.done.wait(10)
    msgs = rt.store.list_messages(conv)
    if mode in ("error", "dies"):  # what was said before the failure is saved
        assert msgs[-1].role == Role.CHAR and msgs[-1].text == "I eat fish"
        assert msgs[-1].meta["stop"] == "error"
    else:
        assert msgs[-1].role == Role.USER  # nothing was said: no empty reply
    assert rt.engine().busy is False


def test_a_remote_engine_streams_a_raw_completion(llama_server) -> None:
    engine = RemoteEngine(llama_server).connect()
    pieces = list(engine.complete("Bob: hello\n\nRex:", PARAMS, ["\n\n"]))
    res = engine.complete("Bob: hello\n\nRex:", PARAMS, ["\n\n"]).consume()
    assert res.text == "".join(pieces).strip() or res.text
    assert "\n\n" not in res.text
    engine.close()


def test_settings_env_names_a_model_server(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("RP_MODEL", "http://10.1.2.3:8080/v1")
    monkeypatch.setenv("RP_MODEL_KEY", "sk-1")
    monkeypatch.setenv("RP_MODEL_NAME", "rwkv7-g1")
    monkeypatch.delenv("RP_DB_URL", raising=False)
    runtime.reset()
    try:
        choice = runtime.current().choice()
        assert choice.remote and choice.url == "http://10.1.2.3:8080/v1"
        assert (choice.api_key, choice.remote_model) == ("sk-1", "rwkv7-g1")
    finally:
        runtime.reset()
    assert os.environ["RP_MODEL_KEY"] == "sk-1"


def test_the_text_sent_is_the_prompt_the_engine_feeds(rwkv7_backend) -> None:
    """The prompt a model server gets is the text a local model is fed (opening, notes fed
    before messages, headers, bodies), also for a continue (core.prompt.transcript_texts)."""
    from core.engine import Engine
    from core.prompt import transcript_texts

    engine = Engine(rwkv7_backend)
    remote = RemoteEngine("http://127.0.0.1:9/v1")
    history = [*HISTORY, Message("char", "Fish, mostly.", before="[Rex is hungry.]")]
    speaker = Message("user", before="[It snows.]")
    assert remote.prompt_text(CTX, history, speaker) == engine.prompt_text(CTX, history, speaker)
    built = engine._build(CTX, history, None, open_last=True)
    texts = transcript_texts(engine.format, CTX, history, None, open_last=True)
    assert texts == [c.text for c in built.chunks]


DRY = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=3, dry_range=64)


def test_dry_is_sent_as_this_apps_own_api_reads_it() -> None:
    """DRY on: the request names it in llama.cpp's fields, and this app's own /v1 (a second
    copy as the model server) reads back the same settings; DRY off: nothing is sent."""
    from core.api.mapping import dry

    remote = RemoteEngine("http://127.0.0.1:9/v1")
    params = SamplingParams(**DRY, dry_sequence_breakers=("\n", "*"))
    body = remote._body("Hi", params, [])
    assert dry(body) == {**DRY, "dry_sequence_breakers": ("\n", "*")}
    assert not [k for k in remote._body("Hi", SamplingParams(), []) if k.startswith("dry")]


def test_llama_cpp_server_takes_a_reply_with_dry_on(llama_server: str, remote_rt) -> None:
    """llama-cpp-python's server is sent the DRY fields too; the reply still comes."""
    from dataclasses import replace

    rt = remote_rt(llama_server)
    conv = _chat(rt)
    rt.chat.send(conv, "Hi Rex, what do you eat?")
    turn = rt.chat.reply(conv, params=replace(PARAMS, **DRY)).consume()
    assert turn.error is None and turn.message is not None and turn.message.text
    assert turn.result is not None and turn.result.stop_reason in ("stop", "length")
