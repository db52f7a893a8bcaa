"""Who may use the API, as Settings manages it: API keys (the "api_keys" setting: records made
by core.auth.new_api_key, the key itself is shown once and never stored) and the origins of web
pages allowed to call the API from a browser (the "api_cors_origins" setting). Pages reach them
through core.settings.AppSettings; the guard that applies them is core/api/app.py (through
ApiConfig), and when a key is needed is core.auth.password_policy's to say. Here, and not in
the API package, because these write settings: the API only reads them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from core.auth import new_api_key

if TYPE_CHECKING:  # named in hints only: Settings imports this module with the page
    from core.store import Store

KEYS = "api_keys"
ORIGINS = "api_cors_origins"
MAX_KEYS = 100
MAX_ORIGINS = 100

# scheme://host[:port]: a host name, an IPv4 address or a bracketed IPv6 address
_ORIGIN = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


class AccessError(ValueError):
    """A key or origin that cannot be saved; the message says why (in English; pages may
    translate by `code`)."""

    def __init__(self, message: str, code: str = "", value: str = "") -> None:
        super().__init__(message)
        self.code, self.value = code, value


# ------------------------------------------------------------------------------ keys
def _records(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [r for r in value if isinstance(r, dict) and isinstance(r.get("hash"), str)]


def list_keys(store: Store) -> list[dict[str, Any]]:
    """The saved key records (id, name, shown prefix, created), oldest first."""
    return _records(store.get_setting(KEYS, []))


def create_key(store: Store, name: str) -> tuple[str, dict[str, Any]]:
    """A new key named `name`: its record is saved, the key itself is returned (to be shown
    once: only its hash is kept). The list is read and written in one transaction: a key
    revoked meanwhile in another session stays revoked."""
    name = " ".join((name or "").split())
    if not name:
        raise AccessError("Give the key a name, to tell it apart later.", "empty_name")
    key, record = new_api_key(name)

    def add(value: Any) -> list[dict[str, Any]]:
        keys = _records(value)
        if len(keys) >= MAX_KEYS:
            raise AccessError(f"There are already {MAX_KEYS} keys: revoke one first.", "too_many")
        return [*keys, record]

    store.update_setting(KEYS, add, [])
    return key, record


def revoke_key(store: Store, key_id: str) -> bool:
    """Remove a key: requests that present it are refused from now on. False if it was not
    there (already revoked)."""
    found: list[bool] = []

    def drop(value: Any) -> list[dict[str, Any]]:
        keys = _records(value)
        kept = [r for r in keys if r.get("id") != key_id]
        found.append(len(kept) != len(keys))
        return kept

    store.update_setting(KEYS, drop, [])
    return found[-1]


# ------------------------------------------------------------------------------ origins
def parse_origin(text: str) -> str:
    """One origin as the guard compares it (`scheme://host[:port]`, lower case, no trailing
    slash), or "*"; AccessError when `text` is anything else (a path, a query, a bare host)."""
    value = text.strip()
    if value == "*":
        return "*"
    cleaned = value.rstrip("/").lower() if value.count("/") == 3 else value.lower()
    m = _ORIGIN.match(cleaned)
    if m is None or (m.group("port") is not None and not 0 < int(m.group("port")) < 65536):
        raise AccessError(
            f"{value!r} is not an origin: write scheme://host[:port], like "
            "http://localhost:8000, without a path.",
            "bad_origin",
            value,
        )
    return cleaned


def parse_origins(text: str) -> list[str]:
    """Origins given one a line (or separated by commas or spaces), checked and without
    duplicates; AccessError on the first that is not one."""
    out: list[str] = []
    for item in re.split(r"[\s,]+", text or ""):
        if item and (origin := parse_origin(item)) not in out:
            out.append(origin)
    if len(out) > MAX_ORIGINS:
        raise AccessError(f"At most {MAX_ORIGINS} origins can be allowed.", "too_many")
    return out


def allowed_origins(store: Store) -> list[str]:
    value = store.get_setting(ORIGINS, [])
    return [str(v) for v in value] if isinstance(value, list) else []


def save_origins(store: Store, text: str) -> list[str]:
    """Check and save the allowed origins; returns them as saved."""
    origins = parse_origins(text)
    store.set_setting(ORIGINS, origins)
    return origins
