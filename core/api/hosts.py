"""Which names the server answers to: the defence against DNS rebinding.

A web page of another site can make its own name resolve to 127.0.0.1 and then reach this
server through the user's browser, as its own origin: every request then says
`Host: evil.example:PORT`. Without a password the app would serve it everything (the pages,
their websocket, the API). So, until a password is set, a request is served only when its Host
is a loopback name (`localhost`, `127.0.0.1`, `[::1]`, any 127.x address), the configured server
address (Streamlit's `server.address`), or, when that address is every interface (0.0.0.0, ::,
unset), an IP address: a rebinding page always comes by a name, never by an address, and from
another machine the first-password page is reached by the machine's address. Anything else gets
a 403 that names the settings to change.

With a password in force ($RP_PASSWORD or the one saved in Settings) any name is served: the
password gate stands before every page and the API needs a key (core.auth.password_policy), so
a page of another site reaches nothing without them; a server behind a reverse proxy, or
reached by its network name, then works.

`HostGuard` is the pure ASGI middleware that Home.py puts in front of everything st.App serves
(and core.api.app in front of the API served alone). Light on purpose: Home.py imports it before
the server answers; the password rule is read (on a thread) only for a Host that is not already
allowed, so a page load on this machine reads nothing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from core.api.paths import is_api_path
from core.auth import is_loopback

log = logging.getLogger(__name__)

WILDCARDS = ("", "0.0.0.0", "::")  # a server.address that means every interface


def host_name(host: str) -> str:
    """The name of a Host header, without its port and an IPv6 address's brackets, lowercase:
    "Evil.Example:8501" -> "evil.example", "[::1]:8501" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.split(":", 1)[0]
    return host


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def loopback_name(name: str) -> bool:
    """`localhost` or a loopback address: a name that only this machine can be reached by."""
    ip = _ip(name)
    return name == "localhost" or (ip is not None and ip.is_loopback)


def host_allowed(host: str | None, listen_address: str | None) -> bool:
    """Whether a request with Host `host` may be served without a password, on a server
    listening on `listen_address` (server.address). No Host at all (HTTP/1.0) is no browser's
    request, so it is served."""
    if not host:
        return True
    name = host_name(host)
    if loopback_name(name):
        return True
    address = host_name(listen_address or "")
    if address in WILDCARDS:
        return _ip(name) is not None  # one of the machine's addresses, not a name
    return name == address


def local_request(host: str | None, client_ip: str | None) -> bool:
    """A request made on this machine, by a loopback name: the client is a loopback address and
    the Host a loopback name (a rebinding page has a loopback client too, but its own Host)."""
    return bool(host) and loopback_name(host_name(host or "")) and is_loopback(client_ip)


def refusal(host: str, listen_address: str | None) -> str:
    """What a refused request is told: the name it came by and the settings to change."""
    shown = _printable(host)
    address = (listen_address or "").strip()
    if host_name(address) in WILDCARDS:
        names = "localhost, 127.0.0.1, [::1] and this machine's IP addresses"
    elif loopback_name(host_name(address)):
        names = "localhost, 127.0.0.1 and [::1]"
    else:
        names = f"localhost, 127.0.0.1, [::1] and {_printable(address)}"
    return (
        f"This server answers to {shown} only once a password is set; until then it answers "
        f"only to {names}, so that a web page of another site cannot reach it through your "
        f"browser (DNS rebinding). To use the name {shown}: start the app with "
        f"`--server.address {_printable(host_name(host))}` (Streamlit's server.address "
        "setting), or set a password (the RP_PASSWORD environment variable, or Settings, Password)."
    )


def _printable(text: str) -> str:
    """Text from a request, safe to show: visible ASCII only, at most 100 characters."""
    return re.sub(r"[^\x21-\x7e]", "?", text)[:100]


class HostGuard:
    """Pure ASGI middleware: a request (HTTP or a websocket's upgrade) whose Host is not
    allowed is refused with a 403, unless a password is in force. `listen_address` gives the
    server.address option; `password_set` whether a password is in force (called on a
    thread; an exception is taken for no password: the request is refused)."""

    def __init__(
        self,
        app: ASGIApp,
        listen_address: Callable[[], str | None],
        password_set: Callable[[], bool],
    ) -> None:
        self.app = app
        self.listen_address = listen_address
        self.password_set = password_set

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"),
            None,
        )
        address = self.listen_address()
        if host_allowed(host, address) or await run_in_threadpool(self._password_set):
            await self.app(scope, receive, send)
            return
        await _refuse(scope, send, refusal(host or "", address))

    def _password_set(self) -> bool:
        try:
            return bool(self.password_set())
        except Exception:  # the password setting cannot be read: no password to rely on
            log.warning("the password rule cannot be read: a foreign Host refused", exc_info=True)
            return False


async def _refuse(scope: Scope, send: Send, message: str) -> None:
    path = scope.get("path", "")
    if scope["type"] == "http" and is_api_path(path):  # the API's refusal in its own shape
        body = {
            "error": {
                "message": message,
                "type": "permission_error",  # OpenAI's shape (core/api/errors.py)
                "param": None,
                "code": "host_not_allowed",
            }
        }
        await _respond(send, "http.response", json.dumps(body).encode(), "application/json")
    elif scope["type"] == "http":
        await _respond(send, "http.response", message.encode(), "text/plain; charset=utf-8")
    elif "websocket.http.response" in scope.get("extensions", {}):  # a 403 with the reason
        await _respond(send, "websocket.http.response", message.encode(), "text/plain")
    else:  # closed before it is accepted: the server answers the upgrade with a 403
        await send({"type": "websocket.close", "code": 1008})


async def _respond(send: Send, kind: str, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": f"{kind}.start", "status": 403, "headers": headers})
    await send({"type": f"{kind}.body", "body": body})
