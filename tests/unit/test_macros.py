"""Macros (core/macros.py): each one, and that a chat's opening expands the same way every time
(its own clock and dice), so the prompt never changes under the state cache."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from core.roleplay.macros import chat_rng, expand, has_macros

NOW = datetime(2026, 12, 2, 14, 5)  # a Wednesday


def test_names_time_date_weekday() -> None:
    text = "{{char}} greets {{USER}} at {{ time }} on {{weekday}}, {{date}}. <BOT>/<USER>"
    assert expand(text, "Ada", "Ben", NOW) == (
        "Ada greets Ben at 14:05 on Wednesday, December 2, 2026. Ada/Ben"
    )


@pytest.mark.parametrize("text", ["{{random::tea::coffee::milk}}", "{{random:tea, coffee,milk}}"])
def test_random_picks_one_of_the_items(text: str) -> None:
    seen = {expand(text, "A", "B", NOW, random.Random(i)) for i in range(60)}
    assert seen == {"tea", "coffee", "milk"}


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("{{roll:d6}}", 1, 6),
        ("{{roll:20}}", 1, 20),
        ("{{roll:2d6+3}}", 5, 15),
        ("{{roll:1d4-1}}", 0, 3),
    ],
)
def test_roll_stays_in_its_range_and_reaches_both_ends(text: str, low: int, high: int) -> None:
    values = {int(expand(text, "A", "B", NOW, random.Random(i))) for i in range(400)}
    assert min(values) == low and max(values) == high


def test_unknown_and_malformed_macros_are_kept() -> None:
    text = "{{original}} {{roll:dx}} {{roll:500d6}} {{nope}} {{random}}"
    assert expand(text, "A", "B", NOW) == text
    assert not has_macros("{{char}} and {{user}} and {{original}}")
    assert has_macros("at {{time}}") and has_macros("{{roll:d6}}")


def test_the_same_dice_give_the_same_text() -> None:
    text = "{{random::a::b::c::d::e::f}} {{roll:d1000}} {{roll:d1000}}"
    first = expand(text, "A", "B", NOW, chat_rng(7))
    assert expand(text, "A", "B", NOW, chat_rng(7)) == first  # a chat's opening: stable
    others = {expand(text, "A", "B", NOW, chat_rng(i)) for i in range(8, 14)}
    assert len(others | {first}) > 1  # another chat rolls its own


def test_a_macros_argument_stops_at_the_next_braces() -> None:
    """Hostile text (issue 21): thousands of "{{a:" without an end. An argument that could run
    to the end of the text made each one scan the rest (8,000 took 8 s): an argument never
    holds "{{" or "}}", so a scan stops at the next one and the whole text costs linear time."""
    from core.roleplay.macros import _MACRO

    m = _MACRO.search("{{random:a,b " + "x" * 50 + " {{time}}")
    assert m is not None and m.group(1) == "time"  # not one macro spanning both
    text = "{{a:" * 8000
    assert expand(text, "Ada", "Bob") == text
    assert expand("{{random::x{y}z::x{y}z}}", "Ada", "Bob") == "x{y}z"  # single braces are text
