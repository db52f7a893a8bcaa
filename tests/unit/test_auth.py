"""The password limiter (a fake clock, no sleeping) and which server addresses count as
reachable from this machine only."""

from __future__ import annotations

import pytest

from core.auth import MAX_WAIT, LoginLimiter, Tries, Verdict, hash_password, is_loopback


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
