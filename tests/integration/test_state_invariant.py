"""The state invariant as a property (docs/ARCHITECTURE.md, "The state invariant"): after any
sequence of send, regenerate, edit, delete the last k messages, stop mid-reply and reopen, the
state the engine would use for the next reply gives the same logits as feeding the stored
transcript from scratch."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.engine import Engine
from tests.support.invariant import check_invariant, op


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=1, max_size=8))
def test_state_invariant_on_the_rwkv_backend(rwkv7_backend, ops) -> None:
    check_invariant(lambda d: Engine(rwkv7_backend, cache_dir=d), ops)
