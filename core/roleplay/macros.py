"""SillyTavern's macros in card fields, greetings and instructions, evaluated ONCE.

    expand("It is {{weekday}}, {{user}}. {{random::tea::coffee}}? {{roll:d20}}", char, user)

Supported (any case, spaces inside the braces allowed): `{{char}}`, `{{user}}` (and `<BOT>` /
`<USER>`), `{{time}}` (14:05), `{{date}}` (December 2, 2026), `{{weekday}}` (Wednesday),
`{{random::a::b}}` and `{{random:a,b}}` (one of the items), `{{roll:dN}}` / `{{roll:N}}` (1..N;
also `XdN` and `XdN+M`). Anything else, `{{original}}` included, is left as it is.

A chat never changes under the state cache, so a macro's value is fixed the first time its text
is fed, and what is stored is the text as fed:
- a greeting is expanded when the chat is created and stored expanded (ChatService.new_chat);
- text fed before a reply (post-history instructions, the depth prompt) is expanded when the
  reply is made and stored in the reply's meta "before";
- the opening's card fields are not stored per chat, so they are expanded with the chat's own
  clock and dice: `now` = the chat's creation time and a random stream seeded by the chat's id
  (`chat_rng`), which gives the same text every time the opening is rendered.
"""

from __future__ import annotations

import random
import re
from datetime import datetime

from core.text import substitute

# a macro's argument never runs past the next "{{" or "}}": with any text allowed there, every
# unclosed "{{name:" scanned to the end of the text (8,000 of them took 8 s)
_MACRO = re.compile(
    r"\{\{\s*([a-zA-Z]+)\s*(?:(::?)((?:[^{}]|\{(?!\{)|\}(?!\}))*?))?\s*\}\}", re.DOTALL
)
_ROLL = re.compile(r"^\s*(?:(\d*)\s*[dD])?\s*(\d+)\s*(?:([+-])\s*(\d+))?\s*$")
_MAX_DICE = 100


def has_macros(text: str) -> bool:
    """Whether `text` holds a macro other than {{char}} / {{user}} (one that can vary)."""
    return any(m.group(1).lower() in _VARYING for m in _MACRO.finditer(text))


_VARYING = {"time", "date", "weekday", "random", "roll"}


def chat_rng(conversation_id: int | None) -> random.Random:
    """The dice of one chat's opening: the same numbers every time it is rendered."""
    return random.Random(f"rwkv-rp-chat-{conversation_id}")


def _roll(spec: str, rng: random.Random) -> str | None:
    m = _ROLL.match(spec)
    if m is None:
        return None
    count = int(m.group(1)) if m.group(1) else 1
    sides = int(m.group(2))
    if not 1 <= count <= _MAX_DICE or sides < 1:
        return None
    total = sum(rng.randint(1, sides) for _ in range(count))
    if m.group(3):
        total += int(m.group(4)) * (1 if m.group(3) == "+" else -1)
    return str(total)


def _choices(sep: str, rest: str) -> list[str]:
    if sep == "::":
        return rest.split("::")
    return [c.strip() for c in rest.split(",")]


def expand(
    text: str,
    char: str,
    user: str,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> str:
    """`text` with every macro replaced (see the module docstring). `now` defaults to the local
    time, `rng` to a fresh random stream."""
    if "{{" not in text and "<" not in text:
        return text
    text = substitute(text, char, user)
    if "{{" not in text:
        return text
    clock = now or datetime.now()
    dice = rng or random.Random()

    def one(m: re.Match[str]) -> str:
        name, sep, rest = m.group(1).lower(), m.group(2) or "", m.group(3) or ""
        if name == "time" and not sep:
            return f"{clock:%H:%M}"
        if name == "date" and not sep:
            return f"{clock:%B} {clock.day}, {clock.year}"
        if name == "weekday" and not sep:
            return f"{clock:%A}"
        if name == "random" and sep:
            items = _choices(sep, rest)
            return dice.choice(items) if items else ""
        if name == "roll" and sep == ":":
            rolled = _roll(rest, dice)
            return m.group(0) if rolled is None else rolled
        return m.group(0)

    return _MACRO.sub(one, text)
