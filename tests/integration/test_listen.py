"""The real server, started the way the README says (`streamlit run Home.py`, here from another
directory), listens on 127.0.0.1 only: read from the kernel's table of listening sockets."""

from __future__ import annotations

import socket
import sys
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
