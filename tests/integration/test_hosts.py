"""DNS rebinding: a web page of another site whose name is made to resolve to 127.0.0.1 reaches
the app through the user's own browser, with `Host: evil.example:PORT`. Without a password the
real server (`streamlit run Home.py`, on loopback) answers such a request with a 403 that names
the setting to change: the pages, their websocket and the API alike. Loopback names and the
configured server address pass; once a password is set, the password gate and the API keys
guard the server, and another name may be used. Sent raw, with the Host header forged."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.auth import hash_password
from core.store import open_store
from tests.support.server import running_app

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("hosts")
    data, log = root / "data", root / "server.log"
    data.mkdir()
    with running_app(data, log) as served:
        yield SimpleNamespace(port=served.port, data=data)


def request(
    port: int, host: str, method: str = "GET", path: str = "/", body: object = None
) -> tuple[int, str, str]:
    """(status, content type, body) of a request to the server with the Host header `host`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("Origin", f"http://{host}")  # what the rebinding page's browser sends
        data = json.dumps(body).encode() if body is not None else b""
        if body is not None:
            conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def upgrade(port: int, host: str) -> int:
    """The status of a websocket upgrade of the pages' stream with the Host header `host`."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(
            (
                "GET /_stcore/stream HTTP/1.1\r\n"
                f"Host: {host}\r\nOrigin: http://{host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: streamlit\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(1024)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


EVIL = "evil.example:{port}"


def test_a_foreign_host_gets_nothing_without_a_password(app: SimpleNamespace) -> None:
    evil = EVIL.format(port=app.port)
    status, kind, text = request(app.port, evil)  # the page
    assert status == 403 and "server.address" in text and "password" in text.lower()
    assert "evil.example" in text
    for method, path, body in (
        ("GET", "/api/characters", None),
        ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
        ("GET", "/v1/models", None),
    ):
        status, kind, text = request(app.port, evil, method, path, body)
        assert status == 403 and kind.startswith("application/json"), (path, status, text)
        error = json.loads(text)["error"]
        assert error["code"] == "host_not_allowed" and "server.address" in error["message"]
    assert upgrade(app.port, evil) == 403  # the pages' websocket: no session for it
    # a name made of a loopback one is not one
    assert request(app.port, f"localhost.evil.example:{app.port}")[0] == 403
    assert request(app.port, f"127.0.0.1.evil.example:{app.port}")[0] == 403


def test_loopback_names_are_served(app: SimpleNamespace) -> None:
    for host in (
        f"127.0.0.1:{app.port}",
        f"localhost:{app.port}",
        f"[::1]:{app.port}",
        "localhost",
    ):
        assert request(app.port, host)[0] == 200, host
        assert request(app.port, host, path="/api/characters")[0] == 200, host
        assert upgrade(app.port, host) == 101, host


def test_with_a_password_another_name_may_be_used(app: SimpleNamespace) -> None:
    store = open_store(f"sqlite:///{app.data / 'app.db'}")
    store.set_setting("password", hash_password("open sesame"))
    store.close()
    try:
        evil = EVIL.format(port=app.port)
        assert request(app.port, evil)[0] == 200  # the password gate is in the page
        status, _, text = request(app.port, evil, path="/api/characters")
        assert status == 401 and json.loads(text)["error"]["code"] == "missing_api_key"
        assert upgrade(app.port, evil) == 101
    finally:
        store = open_store(f"sqlite:///{app.data / 'app.db'}")
        store.set_setting("password", "")
        store.close()
    assert request(app.port, evil)[0] == 403  # removed: refused again


def test_the_page_is_still_the_app(app: SimpleNamespace) -> None:
    status, kind, text = request(app.port, f"127.0.0.1:{app.port}")
    assert status == 200 and kind.startswith("text/html") and "<script" in text
    assert Path(app.data, "app.db").exists()
