"""How many sequences a pass carries: `PassCosts` learns what a pass of g one-token steps costs,
with the model's own thread count (narrow) and with the back end's wide one, and picks the size
and setting with the most tokens a second (the seconds here are given, not measured)."""

from __future__ import annotations

import pytest

from core.engine.batch import PassCosts

pytestmark = pytest.mark.unit


def _measured(
    costs: dict[int, float], passes: int = 6, wide: dict[int, float] | None = None
) -> PassCosts:
    pc = PassCosts()
    for setting, table in ((False, costs), (True, wide or {})):
        for size, seconds in table.items():
            for _ in range(passes):
                pc.record(size, seconds, setting)
    return pc


def _size(pc: PassCosts, n: int) -> int:
    size, wide = pc.best(n)
    assert not wide  # never wide unless the back end has a wide setting
    return size


def test_one_sequence_is_measured_before_anything_is_judged() -> None:
    pc = PassCosts()
    assert _size(pc, 1) == 1 and _size(pc, 4) == 1  # nothing known: one alone first
    for _ in range(PassCosts.TRUST):
        pc.record(1, 0.01)
    assert pc.cost(1) is None and _size(pc, 4) == 1  # the first pass of a size is not believed
    pc.record(1, 0.01)
    assert pc.cost(1) == pytest.approx(0.01)
    assert _size(pc, 4) == 4  # a size not measured yet is tried
    for _ in range(PassCosts.TRUST + 1):
        pc.record(4, 0.08)  # twice the time of four alone
    assert _size(pc, 4) == 1 and _size(pc, 3) == 3  # 3 is tried in turn


def test_batches_that_pay_are_kept_whole() -> None:
    pc = _measured({1: 0.010, 2: 0.012, 4: 0.016, 8: 0.030})
    assert _size(pc, 2) == 2 and _size(pc, 4) == 4 and _size(pc, 8) == 8


def test_a_size_slower_than_taking_turns_is_split() -> None:
    # llama.cpp on the 2-core machine, RWKV-7 q8_0: 2 sequences in one pass took 4x one
    pc = _measured({1: 0.009, 2: 0.037, 3: 0.052, 4: 0.035, 8: 0.048})
    assert _size(pc, 2) == 1  # two chats take turns
    assert _size(pc, 3) == 1
    assert _size(pc, 4) == 4  # as fast as turns: kept whole (within the slack)
    assert _size(pc, 8) == 8  # 167 tokens a second against 111 alone


def test_a_larger_size_within_the_slack_wins() -> None:
    pc = _measured({1: 0.010, 2: 0.021})  # 2 in one pass: 95 % of the rate of turns
    assert _size(pc, 2) == 2
    pc = _measured({1: 0.010, 2: 0.025})  # 80 %: turns
    assert _size(pc, 2) == 1


def test_the_average_follows_new_measurements() -> None:
    pc = _measured({1: 0.010, 2: 0.040})
    assert _size(pc, 2) == 1
    for _ in range(20):  # the machine got quieter (or the first figures were a bad moment)
        pc.record(2, 0.012)
    assert _size(pc, 2) == 2


def test_the_wide_setting_is_measured_after_the_narrow_one_and_kept_where_it_pays() -> None:
    pc = _measured({1: 0.014})
    assert pc.best(4, widen=True) == (4, False)  # the narrow pass of 4 first
    for _ in range(PassCosts.TRUST + 1):
        pc.record(4, 0.040)  # llama.cpp f16, one thread: 4 steps in 2.9 times one
    assert pc.best(4, widen=True) == (4, True)  # then the wide one
    for _ in range(PassCosts.TRUST + 1):
        pc.record(4, 0.023, wide=True)  # two threads on an idle machine
    assert pc.best(4, widen=True) == (4, True)
    assert pc.best(4) == (4, False)  # a back end without a wide setting: narrow


def test_a_wide_pass_slower_than_the_narrow_one_is_dropped() -> None:
    # beside a busy program, the second thread waits for its core
    pc = _measured({1: 0.014, 4: 0.040}, wide={4: 0.080})
    assert pc.best(4, widen=True) == (4, False)
    # and where even the narrow batch does not pay, turns on the narrow setting
    pc = _measured({1: 0.014, 2: 0.036}, wide={2: 0.060})
    assert pc.best(2, widen=True) == (1, False)


def test_the_narrow_setting_wins_when_the_wide_one_gains_little() -> None:
    pc = _measured({1: 0.014, 4: 0.040}, wide={4: 0.038})  # 5 % more tokens a second
    assert pc.best(4, widen=True) == (4, False)
    pc = _measured({1: 0.014, 4: 0.040}, wide={4: 0.030})  # 33 % more
    assert pc.best(4, widen=True) == (4, True)
