"""HAProxy in front of several app servers: its configuration, and running it.

    servers = [("app1", "127.0.0.1:8601"), ("app2", "127.0.0.1:8602")]
    cfg = haproxy_config(servers, bind="127.0.0.1:8500")
    with running_haproxy(cfg, Path("/tmp/rp")) as proc: ...

Routing (deploy/haproxy.cfg is this configuration for two servers, and deploy/README.md says
why each part is there):
- **Browser sessions are sticky by cookie** (`cookie RPSERVER insert`): a Streamlit session lives
  in one server's websocket, and its media and uploads are that server's.
- **`/api/...` by consistent hashing on the path's first three parts** (`balance uri depth 3` with
  `hash-type consistent`): every request of `/api/chats/{id}/...` lands on the server that holds
  the chat's checkpoints in memory; when a server goes, only its chats move.
- **`/v1/...` by the API key** (`balance hdr(Authorization)`, consistent): a client (SillyTavern)
  keeps its server; without a key, round robin.
- **Health checks** (`GET /_stcore/health` every second; down after 2 failures, up after 2
  successes); a request that cannot connect is sent to another server (`option redispatch`,
  `retries`). Each answer says which server made it (`X-RP-Server`).
Long time-outs: a reply streams for minutes, a browser's websocket lives for hours.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HEALTH = "/_stcore/health"  # Streamlit's own health route, served by every app server


class HaproxyMissing(RuntimeError):
    """HAProxy is not installed."""


def haproxy_program() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )
    if found is None:
        raise HaproxyMissing("HAProxy is not installed: apt-get install haproxy")
    return found


def haproxy_config(
    servers: Sequence[tuple[str, str]],
    bind: str = "127.0.0.1:8500",
    affinity: bool = True,
    check_ms: int = 1000,
) -> str:
    """The configuration for `servers` ((name, "host:port"), in order) behind `bind`. With
    `affinity` False, /api and /v1 go round robin (bench/cluster.py's comparison; the pages
    stay sticky, which Streamlit needs)."""
    if not servers:
        raise ValueError("at least one app server")

    def lines(cookie: bool) -> str:
        out = []
        for name, address in servers:
            extra = f" cookie {name}" if cookie else ""
            out.append(f"    server {name} {address} check inter {check_ms} fall 2 rise 2{extra}")
        return "\n".join(out)

    check = (
        "    option httpchk\n"
        f"    http-check send meth GET uri {HEALTH} ver HTTP/1.1 hdr Host localhost\n"
        "    http-check expect status 200\n"
    )
    api_balance = (
        "    balance uri depth 3\n    hash-type consistent\n"
        if affinity
        else "    balance roundrobin\n"
    )
    v1_balance = (
        "    balance hdr(Authorization)\n    hash-type consistent\n"
        if affinity
        else "    balance roundrobin\n"
    )
    return f"""\
# HAProxy in front of the RWKV role-play app servers (written by deploy/haproxy.py).
global
    maxconn 4096

defaults
    mode http
    option httplog
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 12h
    timeout http-request 30s
    timeout queue 30s
    # a request that cannot reach its server goes to another one
    option redispatch
    retries 3

frontend rp
    bind {bind}
    # which server made the answer
    http-response set-header X-RP-Server %s
    acl is_api path_beg /api/
    acl is_v1 path_beg /v1/ /v1
    use_backend api if is_api
    use_backend v1 if is_v1
    default_backend pages

# the pages: a browser session stays on one server (Streamlit's websocket, media, uploads)
backend pages
    balance roundrobin
    cookie RPSERVER insert indirect nocache httponly
{check}{lines(cookie=True)}

# /api/chats/{{id}}/...: the chat's server, by consistent hashing on /api/chats/{{id}}
backend api
{api_balance}{check}{lines(cookie=False)}

# /v1: a client's server, by consistent hashing on its API key (round robin without one)
backend v1
{v1_balance}{check}{lines(cookie=False)}
"""


def check_config(path: Path) -> None:
    """`haproxy -c`: ValueError with HAProxy's words when the configuration is refused."""
    res = subprocess.run([haproxy_program(), "-c", "-f", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise ValueError(f"HAProxy refuses {path}: {res.stderr.strip() or res.stdout.strip()}")


@contextmanager
def running_haproxy(
    config: str, folder: Path, url: str | None = None, timeout: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy with `config` (written to folder/haproxy.cfg), in the foreground as a child
    process, until the block ends; with `url`, waits until it answers there."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "haproxy.cfg"
    cfg.write_text(config)
    check_config(cfg)
    log = open(folder / "haproxy.log", "w")  # noqa: SIM115 (open while it runs)
    proc = subprocess.Popen(
        [haproxy_program(), "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        if url is not None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(url + HEALTH, timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            "HAProxy did not start:\n" + (folder / "haproxy.log").read_text()
                        ) from None
                    time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
