"""Passwords: the stored hash, the constant-time check of a try, the limit on guessing, whether
the server can be reached from beyond this machine, and the one rule that says which password is
in force and what it guards (`password_policy`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

_PBKDF2 = "pbkdf2_sha256"
_ITERATIONS = 200_000

FREE_TRIES = 2  # wrong tries in a row that cost no wait: a typo or two
MAX_WAIT = 300.0  # seconds: the longest wait between two tries of one session
PER_MINUTE = 10  # tries checked a minute, all sessions together


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    b64 = base64.b64encode
    return f"{_PBKDF2}${_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(entered: str, stored: str) -> bool:
    """Compare in constant time; `stored` is a hash_password() string or a plain password
    (the RP_PASSWORD environment variable, or a setting written by hand)."""
    if stored.startswith(_PBKDF2 + "$"):
        try:
            _, iters, salt, digest = stored.split("$")
            got = hashlib.pbkdf2_hmac(
                "sha256", entered.encode(), base64.b64decode(salt), int(iters)
            )
            return hmac.compare_digest(got, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    return hmac.compare_digest(entered.encode(), stored.encode())


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to `address` (Streamlit's server.address) is reachable only from
    this machine. Unset means every interface; a host name other than localhost may resolve to
    anything, so it counts as reachable."""
    host = (address or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PasswordSource = Literal["env", "setting", ""]
KeyReason = Literal["env_password", "password", "listen"]


@dataclass(frozen=True)
class PasswordPolicy:
    """Which password is in force and what it guards, decided by `password_policy` alone: the
    pages' password gate, the API's key check and what Settings says of both read it here."""

    # the password in force: $RP_PASSWORD as written, else the saved hash; "" (never in repr)
    password: str = field(repr=False)
    source: PasswordSource  # where it comes from: "env" ($RP_PASSWORD), "setting", "" (none)
    local: bool  # the server listens on this machine only (is_loopback)
    # why API requests need a key (empty: they do not): "env_password" ($RP_PASSWORD is set) or
    # "password" (a password is saved in Settings), and "listen" (reachable from elsewhere)
    key_reasons: tuple[KeyReason, ...]

    @property
    def keys_required(self) -> bool:
        """API requests need `Authorization: Bearer KEY`."""
        return bool(self.key_reasons)

    @property
    def open(self) -> bool:
        """No password is asked: none is set and the server listens on this machine only."""
        return not self.password and self.local

    @property
    def needs_first_password(self) -> bool:
        """Nothing is set while the server listens beyond this machine: the gate stays shut
        (it offers only to set a first password, with the setup code) until one is set."""
        return not self.password and not self.local


def password_policy(
    env_password: str | None, saved_hash: object, listen_address: str | None
) -> PasswordPolicy:
    """The rule: $RP_PASSWORD (`env_password`) wins over the hash saved in Settings
    (`saved_hash`, anything but non-empty text meaning none); API requests need a key when
    either is set or when the server listens beyond this machine (`listen_address`,
    Streamlit's server.address: see is_loopback). Pure: the caller reads the environment and
    the setting (core.runtime.Runtime.password_policy), and stays shut when the setting cannot
    be read."""
    local = is_loopback(listen_address)
    reasons: list[KeyReason] = []
    password: str = ""
    source: PasswordSource = ""
    if env_password:
        password, source = env_password, "env"
        reasons.append("env_password")
    elif isinstance(saved_hash, str) and saved_hash:
        password, source = saved_hash, "setting"
        reasons.append("password")
    if not local:
        reasons.append("listen")
    return PasswordPolicy(password, source, local, tuple(reasons))


@dataclass
class Tries:
    """One browser session's wrong tries in a row, and when (on the limiter's clock) it may
    try again."""

    wrong: int = 0
    not_before: float = 0.0
    logged_in: bool = False  # this session once gave the right password


@dataclass(frozen=True)
class Verdict:
    ok: bool  # the password was right
    wait: float = 0.0  # seconds before the next try of this session is taken
    checked: bool = True  # False: refused unseen, the try came too early


class LoginLimiter:
    """Slows password guessing down. After FREE_TRIES wrong tries in a row a browser session
    waits 1 s before its next try is looked at, then 2, 4, ... up to MAX_WAIT; and over all
    sessions together (a new session starts with no wait) at most `per_minute` tries a minute
    are checked. A try that comes too early is refused without hashing, so guessing can
    neither go fast nor keep the CPU busy with PBKDF2. Thread-safe; `clock` is injectable.

    The shared limit would let anyone lock the owner out by using it up, so the owner's tries
    skip it (and are not counted in it): those of a session on this machine (`local`: a
    loopback client by a loopback name, core.api.hosts.local_request) and of a session that once
    logged in. Their own wait after wrong tries in a row still applies."""

    def __init__(
        self, per_minute: int = PER_MINUTE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._checked: deque[float] = deque()  # when the tries of the last minute were taken
        self._lock = threading.Lock()

    def attempt(self, tries: Tries, entered: str, stored: str, local: bool = False) -> Verdict:
        shared = not (local or tries.logged_in)  # the owner's tries skip the shared limit
        with self._lock:
            now = self.clock()
            while self._checked and now - self._checked[0] >= 60:
                self._checked.popleft()
            wait = tries.not_before - now
            if shared and len(self._checked) >= self.per_minute:
                wait = max(wait, self._checked[0] + 60 - now)
            if wait > 0:
                return Verdict(False, wait, checked=False)
            if shared:
                self._checked.append(now)
        if check_password(entered, stored):  # outside the lock: it takes a quarter second
            with self._lock:
                tries.wrong, tries.not_before, tries.logged_in = 0, 0.0, True
            return Verdict(True)
        with self._lock:
            tries.wrong += 1
            over = tries.wrong - FREE_TRIES
            delay = min(2.0 ** (over - 1), MAX_WAIT) if over > 0 else 0.0
            tries.not_before = self.clock() + delay
        return Verdict(False, delay)


# --- API keys ----------------------------------------------------------------------------------
# A key is shown once, when it is created; the settings keep its sha256 (a key is 32 random
# bytes: a slow hash would add nothing but time to every request), its name and its first
# characters, so the user can tell keys apart in Settings.

API_KEY_PREFIX = "rp-"


def new_api_key(name: str) -> tuple[str, dict[str, str]]:
    """A new key: (the key, its record for the settings)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    record = {
        "id": secrets.token_hex(6),
        "name": name.strip()[:100] or "key",
        "hash": hashlib.sha256(key.encode()).hexdigest(),
        "shown": key[: len(API_KEY_PREFIX) + 4] + "…",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return key, record


def check_api_key(presented: str, records: object) -> bool:
    """Whether `presented` is one of the keys in `records` (the "api_keys" setting)."""
    if not presented or not isinstance(records, list):
        return False
    digest = hashlib.sha256(presented.encode()).hexdigest()
    ok = False
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("hash"), str):
            ok |= hmac.compare_digest(digest, r["hash"])  # every record compared: no early out
    return ok
