"""Who speaks next in a group chat (core/group.py): each mode, mentions, muted members,
self-replies and talkativeness, on a seeded random source; and a repeated line naming nobody."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from core.roleplay.group import (
    DEFAULT_TALKATIVENESS,
    Member,
    Said,
    mentioned,
    next_speaker,
    repeats,
    talkativeness,
    words,
)

ADA = Member(1, "Captain Ada Reyes")
BEN = Member(2, "Ben")
CY = Member(3, "小雪")
TRIO = [ADA, BEN, CY]


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def test_words_are_lowercased_in_any_script() -> None:
    assert words("Hi, ADA! 小雪 is here_now.") == ["hi", "ada", "小雪", "is", "here_now"]


def test_a_member_named_by_any_word_of_its_name_answers() -> None:
    history = [Said("What do you think, ada?", None)]
    assert next_speaker("natural", TRIO, history, rng()) == ADA.id
    # the first name in the message wins, whatever the members' order
    history = [Said("Ben, and you 小雪?", None)]
    assert next_speaker("natural", TRIO, history, rng()) == BEN.id
    assert mentioned("小雪 and Reyes", TRIO) == [CY.id, ADA.id]
    # a part of a word is not the name
    assert mentioned("Bengal tigers", TRIO) == []


def test_a_muted_member_is_not_chosen_even_when_named() -> None:
    trio = [ADA, Member(2, "Ben", muted=True), CY]
    for seed in range(50):
        assert next_speaker("natural", trio, [Said("Ben?", None)], rng(seed)) != BEN.id
        assert next_speaker("list", trio, [Said("x", ADA.id)], rng(seed)) == CY.id


def test_the_last_speaker_does_not_answer_itself_unless_allowed() -> None:
    history = [Said("I, Ben, say so.", BEN.id)]
    picks = {next_speaker("natural", TRIO, history, rng(s)) for s in range(50)}
    assert BEN.id not in picks and picks <= {ADA.id, CY.id}
    assert next_speaker("natural", TRIO, history, rng(), allow_self=True) == BEN.id
    # after the user's message, nobody is banned
    assert next_speaker("natural", TRIO, [Said("Ben?", None)], rng()) == BEN.id


def test_talkativeness_decides_when_nobody_is_named() -> None:
    quiet, chatty = Member(1, "Quiet", 0.0), Member(2, "Chatty", 1.0)
    picks = Counter(
        next_speaker("natural", [quiet, chatty], [Said("hello", None)], rng(s)) for s in range(200)
    )
    assert picks == {chatty.id: 200}
    # equal talkativeness: each gets a fair share (seeded: the same counts every run)
    a, b = Member(1, "A", 0.3), Member(2, "B", 0.3)
    picks = Counter(
        next_speaker("natural", [a, b], [Said("hello", None)], rng(s)) for s in range(400)
    )
    assert set(picks) == {1, 2} and min(picks.values()) > 120


def test_when_nobody_passes_the_roll_a_random_talkative_member_speaks() -> None:
    # talkativeness 0.001 almost never passes its roll: the fallback chooses among those > 0
    members = [Member(1, "A", 0.001), Member(2, "B", 0.0), Member(3, "C", 0.001)]
    picks = {next_speaker("natural", members, [], rng(s)) for s in range(100)}
    assert picks == {1, 3}
    assert next_speaker("natural", [Member(1, "A", 0.0)], [], rng()) is None


def test_the_same_seed_makes_the_same_choices() -> None:
    history = [Said("hello there", None)]
    a = [next_speaker("natural", TRIO, history, rng(s)) for s in range(30)]
    b = [next_speaker("natural", TRIO, history, rng(s)) for s in range(30)]
    assert a == b and len(set(a)) > 1


def test_the_list_mode_goes_round_in_order() -> None:
    history: list[Said] = [Said("hello", None)]
    order = []
    for _ in range(6):
        who = next_speaker("list", TRIO, history, rng())
        order.append(who)
        history.append(Said("...", who))
    assert order == [1, 2, 3, 1, 2, 3]
    # a user's message in between: the turn goes on after the last member who spoke
    history.append(Said("me again", None))
    assert next_speaker("list", TRIO, history, rng()) == 1


def test_list_mode_with_one_member_needs_self_replies() -> None:
    solo = [ADA, Member(2, "Ben", muted=True)]
    history = [Said("hi", ADA.id)]
    assert next_speaker("list", solo, history, rng()) is None
    assert next_speaker("list", solo, history, rng(), allow_self=True) == ADA.id


def test_manual_mode_chooses_nobody_and_unknown_modes_are_refused() -> None:
    assert next_speaker("manual", TRIO, [Said("Ada?", None)], rng()) is None
    with pytest.raises(ValueError, match="natural, list, manual"):
        next_speaker("pooled", TRIO, [], rng())


def test_everyone_muted_means_nobody_speaks() -> None:
    muted = [Member(m.id, m.name, muted=True) for m in TRIO]
    assert next_speaker("natural", muted, [Said("Ada?", None)], rng()) is None
    assert next_speaker("list", muted, [], rng()) is None


@pytest.mark.parametrize(
    ("ext", "want"),
    [
        ({}, DEFAULT_TALKATIVENESS),
        ({"talkativeness": "0.8"}, 0.8),
        ({"talkativeness": 0.1}, 0.1),
        ({"talkativeness": "loud"}, DEFAULT_TALKATIVENESS),
        ({"talkativeness": "nan"}, DEFAULT_TALKATIVENESS),
        ({"talkativeness": 7}, 1.0),
        ({"talkativeness": -1}, 0.0),
        (None, DEFAULT_TALKATIVENESS),
    ],
)
def test_talkativeness_is_read_from_the_card(ext, want) -> None:
    assert talkativeness(ext) == want


def test_the_store_accepts_exactly_the_modes_core_group_knows() -> None:
    from core.roleplay.group import ACTIVATIONS, DEFAULT_AUTO_TURNS, MAX_AUTO_TURNS
    from core.store.groups import GROUP_ACTIVATIONS, GROUP_DEFAULTS

    assert GROUP_ACTIVATIONS == ACTIVATIONS
    assert GROUP_DEFAULTS["auto_turns"] == DEFAULT_AUTO_TURNS and MAX_AUTO_TURNS == 50


LINE = "Ben, check the reactor before the storm hits us, and bring the spare coils from the hold."


def test_a_repeat_is_the_same_words_or_nearly() -> None:
    assert repeats(LINE, ["hello", LINE])
    # case, spacing and punctuation aside, word for word
    assert repeats(
        LINE,
        ["ben check the REACTOR before the storm hits us and bring the spare coils from the hold"],
    )
    # nearly: a word changed, a word added (0.9 of the words in order)
    assert repeats(LINE, [LINE.replace("spare", "extra")])
    assert repeats(LINE, [LINE + " Now!"])
    # a different line on the same subject, or half of the line, is not a repeat
    assert not repeats(LINE, ["Ben, the reactor is fine; the storm is still far away from us."])
    assert not repeats(LINE, [LINE[: len(LINE) // 2]])
    # short lines are said again naturally
    assert not repeats("Yes, Captain.", ["Yes, Captain."])
    assert not repeats(LINE, [])


def test_a_repeated_line_names_nobody_in_natural_order() -> None:
    """Issue 23: the same line naming one member, posted again and again, made natural order
    pick that member every time. A repeated last message's names choose nobody: the members'
    talkativeness decides, as when nobody is named."""
    ben = Member(2, "Ben", talkativeness=0.0)  # would never speak unless named
    ada, cy = Member(1, "Captain Ada Reyes", 1.0), Member(3, "小雪", 1.0)
    fresh = [Said(LINE, ADA.id)]
    assert next_speaker("natural", [ada, ben, cy], fresh, rng()) == ben.id
    repeated = [Said(LINE, ADA.id), Said(LINE, CY.id, repeat=True)]
    picks = {next_speaker("natural", [ada, ben, cy], repeated, rng(s)) for s in range(50)}
    assert picks == {ada.id}  # 小雪 spoke last; Ben is named but quiet: Ada, by her roll
