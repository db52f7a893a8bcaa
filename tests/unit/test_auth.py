"""The password limiter (a fake clock, no sleeping), which server addresses count as reachable
from this machine only, and the password rule (which password is in force, what it guards)."""

from __future__ import annotations

import pytest

from core.auth import (
    MAX_WAIT,
    LoginLimiter,
    Tries,
    Verdict,
    hash_password,
    is_loopback,
    password_policy,
)


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_wrong_try_in_a_row_makes_the_next_one_wait_longer() -> None:
    clock = Clock()
    limiter, tries = LoginLimiter(per_minute=1000, clock=clock), Tries()
    waits = []
    for _ in range(7):
        verdict = limiter.attempt(tries, "guess", "right")
        assert not verdict.ok and verdict.checked
        waits.append(verdict.wait)
        clock.now += verdict.wait
    assert waits == [0, 0, 1, 2, 4, 8, 16]
    clock.now -= 16
    # too early: not looked at, even the right password
    assert limiter.attempt(tries, "right", "right") == Verdict(False, 16.0, checked=False)
    clock.now += 10
    assert limiter.attempt(tries, "right", "right") == Verdict(False, 6.0, checked=False)
    clock.now += 6
    assert limiter.attempt(tries, "right", "right") == Verdict(True)
    # the right password starts the count again
    assert limiter.attempt(tries, "guess", "right") == Verdict(False, 0.0)


def test_the_wait_stops_growing_at_the_maximum() -> None:
    clock = Clock()
    limiter, tries = LoginLimiter(per_minute=1000, clock=clock), Tries()
    for _ in range(30):
        verdict = limiter.attempt(tries, "guess", "right")
        clock.now += verdict.wait
    assert verdict.wait == MAX_WAIT


def test_new_sessions_share_a_limit_of_tries_a_minute() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_minute=10, clock=clock)
    stored = hash_password("right")
    for _ in range(10):  # ten fresh sessions, one try each: all checked
        clock.now += 1
        verdict = limiter.attempt(Tries(), "guess", stored)
        assert verdict.checked and not verdict.ok
    # the eleventh is refused unhashed until the first of the ten is a minute old
    late = Tries()
    assert limiter.attempt(late, "right", stored) == Verdict(False, 51.0, checked=False)
    clock.now += 50
    assert limiter.attempt(late, "right", stored) == Verdict(False, 1.0, checked=False)
    clock.now += 1
    assert limiter.attempt(late, "right", stored).ok


def _fill(limiter: LoginLimiter, clock: Clock, stored: str) -> None:
    """A guesser's fresh sessions use up the tries of the minute."""
    for _ in range(limiter.per_minute):
        clock.now += 1
        assert limiter.attempt(Tries(), "guess", stored).checked
    assert not limiter.attempt(Tries(), "right", stored).checked  # the others now wait


def test_the_owner_is_not_locked_out_by_the_limit_of_all_sessions() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_minute=10, clock=clock)
    stored = hash_password("right")
    _fill(limiter, clock, stored)
    # a session on this machine (by a loopback name, core.api.hosts.local_request) is checked
    assert limiter.attempt(Tries(), "right", stored, local=True) == Verdict(True)
    # and so is a session that once logged in, when it is asked again
    owner = Tries()
    clock.now += 60
    assert limiter.attempt(owner, "right", stored).ok
    clock.now += 60
    _fill(limiter, clock, stored)
    assert limiter.attempt(owner, "right", stored) == Verdict(True)
    # their tries still wait after wrong ones in a row: only the shared limit is skipped
    local = Tries()
    waits = [limiter.attempt(local, "guess", stored, local=True).wait for _ in range(3)]
    assert waits == [0, 0, 1]
    assert not limiter.attempt(local, "right", stored, local=True).checked


def test_exempt_tries_leave_the_shared_limit_to_the_others() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_minute=10, clock=clock)
    stored = hash_password("right")
    for _ in range(12):  # the owner mistyping on this machine, each in a new session
        limiter.attempt(Tries(), "guess", stored, local=True)
    assert limiter.attempt(Tries(), "right", stored).ok  # not counted against anyone else


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("", False),
        (None, False),
        ("myhost.lan", False),
    ],
)
def test_only_loopback_addresses_keep_the_server_on_this_machine(
    address: str | None, loopback: bool
) -> None:
    assert is_loopback(address) is loopback


HASH = "pbkdf2_sha256$200000$c2FsdA==$ZGlnZXN0"  # a saved hash (its form is all that matters)


@pytest.mark.parametrize(
    ("env", "saved", "address", "password", "source", "reasons", "is_open", "first"),
    [
        # nothing set: open on this machine, shut until a first password beyond it
        ("", "", "127.0.0.1", "", "", (), True, False),
        (None, None, "localhost", "", "", (), True, False),
        ("", "", "0.0.0.0", "", "", ("listen",), False, True),
        ("", "", None, "", "", ("listen",), False, True),  # unset: every interface
        # a saved password guards both, wherever the server listens
        ("", HASH, "127.0.0.1", HASH, "setting", ("password",), False, False),
        ("", HASH, "0.0.0.0", HASH, "setting", ("password", "listen"), False, False),
        # RP_PASSWORD wins over the saved hash
        ("env-pass", HASH, "127.0.0.1", "env-pass", "env", ("env_password",), False, False),
        ("env-pass", "", "::", "env-pass", "env", ("env_password", "listen"), False, False),
        # a setting that is not text (written by hand) is no password
        ("", 1234, "127.0.0.1", "", "", (), True, False),
        ("", ["x"], "192.168.1.5", "", "", ("listen",), False, True),
    ],
)
def test_the_password_rule(
    env: str | None,
    saved: object,
    address: str | None,
    password: str,
    source: str,
    reasons: tuple[str, ...],
    is_open: bool,
    first: bool,
) -> None:
    policy = password_policy(env, saved, address)
    assert policy.password == password and policy.source == source
    assert policy.key_reasons == reasons and policy.keys_required is bool(reasons)
    assert policy.local is is_loopback(address)
    assert policy.open is is_open and policy.needs_first_password is first
    assert not (policy.open and policy.keys_required)  # open means open to API calls too


def test_the_password_in_force_is_never_in_the_policy_repr() -> None:
    assert "env-pass" not in repr(password_policy("env-pass", "", "127.0.0.1"))
