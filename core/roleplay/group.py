"""Who speaks next in a group chat: pure functions, the random source injected.

Modes (a group chat's setting "activation"), as SillyTavern's groups have them:
- "natural": a member named in the last message answers (a word of its name matches a word of
  the message, case-insensitively); otherwise each member, in shuffled order, rolls against its
  talkativeness (card extension `talkativeness`, default 0.5) and the first that passes speaks;
  when nobody passes, a random member with a talkativeness above 0 does.
- "list": the members take turns in their fixed order (round robin after the last one who spoke).
- "manual": nobody is chosen; the user picks who speaks.

Muted members never speak on their own. Unless self-replies are allowed, the member who wrote
the last message does not answer it (a user's or narrator's message bans nobody). One speaker is
chosen per turn; the auto mode (pages/chat.py) asks again after each reply, for a set number of
turns, with "manual" falling back to "natural" there.

A message that repeats a recent one word for word, or nearly (`repeats`), names nobody: natural
order does not let the names in it choose who speaks (issue 23: three members posted the same
36-token line 13 times in a row, and the member it named was picked each time).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

ACTIVATIONS: tuple[str, ...] = ("natural", "list", "manual")
DEFAULT_TALKATIVENESS = 0.5
DEFAULT_AUTO_TURNS = 3
MAX_AUTO_TURNS = 50

_WORD = re.compile(r"\w+", re.UNICODE)
# a message repeats an earlier one when their words are the same (case, spaces and punctuation
# aside) or nearly: a similarity of REPEAT_SIMILARITY or more (difflib's ratio over the words;
# 0.9 lets 4 words in 40 differ). Lines of fewer than REPEAT_MIN_WORDS words are left alone
# ("Yes.", "Thank you!" are said again naturally); REPEAT_RECENT messages back are compared.
REPEAT_SIMILARITY = 0.9
REPEAT_MIN_WORDS = 5
REPEAT_RECENT = 10


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    talkativeness: float = DEFAULT_TALKATIVENESS
    muted: bool = False


@dataclass(frozen=True)
class Said:
    """A message as the choice reads it: its text, which member wrote it (None: the user, the
    narrator or anyone who is not a member), and whether it repeats a recent message
    (`repeats`: then the names in it choose nobody)."""

    text: str
    member_id: int | None = None
    repeat: bool = False


def words(text: str) -> list[str]:
    """The words of `text`, lowercased (letters, digits, underscores; any script)."""
    return [w.casefold() for w in _WORD.findall(text or "")]


def repeats(text: str, earlier: Sequence[str]) -> bool:
    """`text` repeats one of `earlier` word for word, or nearly (see REPEAT_SIMILARITY); short
    lines never count."""
    mine = words(text)
    if len(mine) < REPEAT_MIN_WORDS:
        return False
    for other in earlier:
        theirs = words(other)
        if theirs == mine:
            return True
        # the ratio is 2 * matches / (both lengths): lengths too far apart cannot reach it
        if min(len(mine), len(theirs)) * 2 < REPEAT_SIMILARITY * (len(mine) + len(theirs)):
            continue
        if SequenceMatcher(None, mine, theirs, autojunk=False).ratio() >= REPEAT_SIMILARITY:
            return True
    return False


def talkativeness(extensions: dict[str, Any] | None) -> float:
    """A card's talkativeness (SillyTavern keeps it as text, "0.5"), in [0, 1]; the default
    when missing or unreadable."""
    value = (extensions or {}).get("talkativeness")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TALKATIVENESS
    if x != x:  # NaN
        return DEFAULT_TALKATIVENESS
    return min(1.0, max(0.0, x))


def mentioned(text: str, members: Sequence[Member]) -> list[int]:
    """Members named in `text`, in the order their names first appear: a member is named when
    a word of its name is a word of the text ("Ada" names "Captain Ada Reyes")."""
    out: list[int] = []
    for word in words(text):
        for m in members:
            if m.id not in out and word in words(m.name):
                out.append(m.id)
                break
    return out


def _banned(history: Sequence[Said], allow_self: bool) -> int | None:
    if allow_self or not history:
        return None
    return history[-1].member_id


def natural_order(
    members: Sequence[Member], history: Sequence[Said], rng: random.Random, allow_self: bool = False
) -> int | None:
    banned = _banned(history, allow_self)
    able = [m for m in members if not m.muted and m.id != banned]
    if not able:
        return None
    if history and not history[-1].repeat:  # a repeated line's names choose nobody
        named = mentioned(history[-1].text, able)
        if named:
            return named[0]
    shuffled = list(able)
    rng.shuffle(shuffled)
    for m in shuffled:
        if m.talkativeness >= rng.random():
            return m.id
    chatty = [m for m in able if m.talkativeness > 0]
    return rng.choice(chatty).id if chatty else None


def round_robin(
    members: Sequence[Member], history: Sequence[Said], allow_self: bool = False
) -> int | None:
    ids = [m.id for m in members]
    last = next((h.member_id for h in reversed(history) if h.member_id in ids), None)
    start = ids.index(last) + 1 if last is not None else 0
    banned = _banned(history, allow_self)
    for k in range(len(ids)):
        m = members[(start + k) % len(ids)]
        if not m.muted and m.id != banned:
            return m.id
    return None


def next_speaker(
    mode: str,
    members: Sequence[Member],
    history: Sequence[Said],
    rng: random.Random,
    allow_self: bool = False,
) -> int | None:
    """The member who speaks next in `mode` (see the module's docstring); None when nobody
    does (manual mode, everyone muted, or only the last speaker left without self-replies)."""
    if mode == "natural":
        return natural_order(members, history, rng, allow_self)
    if mode == "list":
        return round_robin(members, history, allow_self)
    if mode == "manual":
        return None
    raise ValueError(f"unknown activation mode {mode!r}; use one of {', '.join(ACTIVATIONS)}")
