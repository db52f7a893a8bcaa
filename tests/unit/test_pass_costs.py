"""How many sequences a pass carries: `PassCosts` learns what a pass of g one-token steps costs
and picks the size with the most tokens a second (the seconds here are given, not measured)."""

from __future__ import annotations

import pytest

from core.engine.batch import PassCosts

pytestmark = pytest.mark.unit


def _measured(costs: dict[int, float], passes: int = 6) -> PassCosts:
    pc = PassCosts()
    for size, seconds in costs.items():
        for _ in range(passes):
            pc.record(size, seconds)
    return pc


def test_one_sequence_is_measured_before_anything_is_judged() -> None:
    pc = PassCosts()
    assert pc.best(1) == 1 and pc.best(4) == 1  # nothing known: one alone first
    for _ in range(PassCosts.TRUST):
        pc.record(1, 0.01)
    assert pc.cost(1) is None and pc.best(4) == 1  # the first pass of a size is not believed
    pc.record(1, 0.01)
    assert pc.cost(1) == pytest.approx(0.01)
    assert pc.best(4) == 4  # a size not measured yet is tried
    for _ in range(PassCosts.TRUST + 1):
        pc.record(4, 0.08)  # twice the time of four alone
    assert pc.best(4) == 1 and pc.best(3) == 3  # 3 is tried in turn


def test_batches_that_pay_are_kept_whole() -> None:
    pc = _measured({1: 0.010, 2: 0.012, 4: 0.016, 8: 0.030})
    assert pc.best(2) == 2 and pc.best(4) == 4 and pc.best(8) == 8


def test_a_size_slower_than_taking_turns_is_split() -> None:
    # llama.cpp on the 2-core machine, RWKV-7 q8_0: 2 sequences in one pass took 4x one
    pc = _measured({1: 0.009, 2: 0.037, 3: 0.052, 4: 0.035, 8: 0.048})
    assert pc.best(2) == 1  # two chats take turns
    assert pc.best(3) == 1
    assert pc.best(4) == 4  # as fast as turns: kept whole (within the slack)
    assert pc.best(8) == 8  # 167 tokens a second against 111 alone


def test_a_larger_size_within_the_slack_wins() -> None:
    pc = _measured({1: 0.010, 2: 0.021})  # 2 in one pass: 95 % of the rate of turns
    assert pc.best(2) == 2
    pc = _measured({1: 0.010, 2: 0.025})  # 80 %: turns
    assert pc.best(2) == 1


def test_the_average_follows_new_measurements() -> None:
    pc = _measured({1: 0.010, 2: 0.040})
    assert pc.best(2) == 1
    for _ in range(20):  # the machine got quieter (or the first figures were a bad moment)
        pc.record(2, 0.012)
    assert pc.best(2) == 2
