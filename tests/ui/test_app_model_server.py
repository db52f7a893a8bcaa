"""Settings → Model → "A model server (OpenAI-compatible)": address, key, model name and
time-out; the server is reached when it is loaded (an unreachable one is said in words), the
page names it, and the choice is saved like a model file's. The server here is a small real HTTP
server of the test's own that lists one model (the replies themselves are tested in
tests/integration/test_remote_model.py, against llama-cpp-python's server and this app)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.ui import check, errors, open_app, store

PAGE = "pages/settings.py"


class _Models(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer sk-right":
            body, status = b'{"error": {"message": "bad key"}}', 401
        else:
            body, status = json.dumps({"data": [{"id": "rwkv7-g1"}]}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def models_server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def _plain(texts: list[str]) -> str:
    """Messages as read (Markdown's escapes dropped)."""
    return " | ".join(texts).replace("\\", "")


def _load_server(at, url: str, key: str = "", model: str = ""):
    at.selectbox(key="set_model_src").set_value("__server__").run()
    check(at)
    at.text_input(key="set_server_url").input(url)
    at.text_input(key="set_server_key").input(key)
    at.text_input(key="set_server_model").input(model)
    at.button(key="load_model").click().run()
    return check(at)


def test_a_model_server_is_chosen_reached_and_named(app_env: Path, models_server: str) -> None:
    at = open_app(PAGE)
    _load_server(at, models_server, key="sk-right")
    assert not errors(at), errors(at)
    port = models_server.rsplit(":", 1)[1]
    assert f"rwkv7-g1 @ 127.0.0.1:{port}" in _plain([s.value for s in at.success])
    assert not [s for s in at.selectbox if s.key in ("set_backend", "set_strategy")]
    saved = store().get_setting("model")
    assert saved["backend"] == "remote" and saved["url"] == models_server
    assert saved["api_key"] == "sk-right" and saved["remote_model"] == ""
    assert any("keeps its own cache" in c.value for c in at.caption)
    home = open_app()  # Home does not offer an RWKV download over a model server
    assert not [m for m in home.markdown if "embedded" in m.value.lower()]


def test_an_unreachable_server_or_a_wrong_key_is_said_in_words(
    app_env: Path, models_server: str
) -> None:
    at = open_app(PAGE)
    _load_server(at, models_server, key="sk-wrong")
    assert "refused the API key" in _plain(errors(at))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _load_server(at, f"http://127.0.0.1:{port}/v1", key="sk-right")
    assert "cannot be reached (is it running" in _plain(errors(at))
    _load_server(at, "not an address")
    assert "not the address of a model server" in _plain(errors(at))
