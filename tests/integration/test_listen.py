"""The real server, started the way the README says (`streamlit run Home.py`, here from another
directory), listens on 127.0.0.1 only: read from the kernel's table of listening sockets. Started
to listen on every interface with no password, its API asks for a key (the rule of
core/api/config.py, as Home.py builds it for the server it runs in)."""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.server import running_app

pytestmark = pytest.mark.timeout(300)


def _listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (/proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)  # the kernel writes each 32-bit word in host order
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            found.add(socket.inet_ntop(family, b"".join(words)))
    return found


@pytest.mark.skipif(sys.byteorder != "little", reason="reads /proc/net as little-endian")
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net")
def test_the_server_listens_on_this_machine_only(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    # started from another folder: the config beside Home.py must still apply
    with running_app(data, log, cwd=tmp_path) as app:
        assert _listening(app.port) == {"127.0.0.1"}


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    """GET `url` (with `Authorization: Bearer key` when given): the status and the JSON body."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:  # /v1/models may wait for the load
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_listening_on_every_interface_without_a_password_the_api_needs_a_key(
    tmp_path: Path,
) -> None:
    """`streamlit run Home.py --server.address 0.0.0.0` with no password: /v1 and /api answer 401
    without a key (Home.py gives the API the address it listens on; without it the API would
    take the server for a local one and serve everyone). A key made beforehand opens both, so
    the 401 is the rule's, not a broken server's. Asked on 127.0.0.1: nothing leaves the
    machine."""
    from core.auth import new_api_key
    from core.store import open_store

    data, log = tmp_path / "server-data", tmp_path / "server.log"
    data.mkdir()
    key, record = new_api_key("test")
    store = open_store(f"sqlite:///{data / 'app.db'}")
    store.set_setting("api_keys", [record])
    store.close()
    with running_app(data, log, args=["--server.address", "0.0.0.0"]) as app:
        for path in ("/api/characters", "/v1/models"):
            status, body = _get(app.url + path)
            assert status == 401, (path, status, body)
            assert body["error"]["code"] == "missing_api_key", body
            status, body = _get(app.url + path, key)
            assert status == 200, (path, status, body)
