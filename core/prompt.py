"""Prompt text for role play, cut into chunks that are tokenized one at a time.

The transcript's tokens are the concatenation of each chunk's tokens, so the tokens of a prefix
never change when messages are added after it: that is what lets the prefix state cache match.

RWKV role-play format (DESIGN.md "Prompt format"):
    opening  = example dialogue, persona (each followed by a blank line)
    message  = header "Name:" + body " text\n\n"
    prompt   = opening + messages + header of who speaks next, "Name:" with no space after it
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["user", "char", "narrator"]

NARRATOR_NAME = "Narrator"
DEFAULT_USER = "User"
DEFAULT_CHAR = "Assistant"

_NEWLINES = re.compile(r"\n\s*\n+")


@dataclass
class Message:
    role: Role  # who speaks: the user, the character, or a narrator line
    text: str = ""  # what was said, as stored
    name: str = ""  # display name; empty means the default for the role


@dataclass
class CharacterContext:
    """What the engine needs to know of a character to open a chat."""

    name: str = DEFAULT_CHAR  # the character's name, used as its speaker name
    user_name: str = DEFAULT_USER  # the user's name in this role play
    persona: str = ""  # description / persona
    personality: str = ""  # short personality summary (SillyTavern field)
    scenario: str = ""  # the situation the chat starts in
    example_dialogue: str = ""  # example lines, "{{user}}: ..." / "{{char}}: ..."
    user_persona: str = ""  # what the user says about themselves
    stop_strings: list[str] = field(default_factory=list)  # custom stops of this character


def normalize(text: str) -> str:
    """One message's text as fed: CRLF to LF, no blank lines inside, no outer whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _NEWLINES.sub("\n", text).strip()


def substitute(text: str, char: str, user: str) -> str:
    """Replace {{char}} / {{user}} (any case, SillyTavern's <BOT>/<USER> too)."""
    for pat, value in (
        (r"\{\{\s*char\s*\}\}", char),
        (r"\{\{\s*user\s*\}\}", user),
        (r"<BOT>", char),
        (r"<USER>", user),
    ):
        text = re.sub(pat, lambda _m, v=value: v, text, flags=re.IGNORECASE)
    return text


def speaker_name(msg: Message, ctx: CharacterContext) -> str:
    if msg.name:
        return msg.name
    return {"user": ctx.user_name, "char": ctx.name, "narrator": NARRATOR_NAME}[msg.role]


class PromptFormat(Protocol):
    """How a transcript becomes text chunks. Implemented per model family."""

    def opening(self, ctx: CharacterContext) -> str:
        """Text before the first message (may be empty)."""
        ...

    def header(self, msg: Message, ctx: CharacterContext) -> str:
        """Text that opens a message, ending where the model starts writing."""
        ...

    def body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        """A finished message's text after its header, with the separator that ends it."""
        ...

    def open_body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        """An unfinished message's text (for "continue"), without the separator."""
        ...

    def stop_strings(self, msg: Message, ctx: CharacterContext, names: list[str]) -> list[str]:
        """Strings that end a reply by `msg`'s speaker; `names` are all speakers of the chat."""
        ...


class RoleplayFormat:
    """`Name: text` lines separated by blank lines, as RWKV World / RWKV-7 models expect."""

    def opening(self, ctx: CharacterContext) -> str:
        parts: list[str] = []
        examples = _example_lines(ctx)
        if examples:
            parts.append(examples)
        persona = "\n".join(
            normalize(substitute(p, ctx.name, ctx.user_name))
            for p in (ctx.persona, ctx.personality, ctx.scenario, ctx.user_persona)
            if p.strip()
        )
        if persona:
            parts.append(normalize(persona))
        return "".join(p + "\n\n" for p in parts)

    def header(self, msg: Message, ctx: CharacterContext) -> str:
        return f"{speaker_name(msg, ctx)}:"

    def body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        return self.open_body(text, msg, ctx) + "\n\n"

    def open_body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        return " " + normalize(substitute(text, ctx.name, ctx.user_name))

    def stop_strings(self, msg: Message, ctx: CharacterContext, names: list[str]) -> list[str]:
        me = speaker_name(msg, ctx)
        stops = ["\n\n"]
        for name in dict.fromkeys([ctx.user_name, ctx.name, NARRATOR_NAME, *names]):
            if name and name != me:
                stops += [f"\n{name}:", f"\n{name}\uff1a"]
        stops += [s for s in ctx.stop_strings if s]
        return stops


def _example_lines(ctx: CharacterContext) -> str:
    """Example dialogue as transcript lines: `<START>` markers dropped, names substituted."""
    text = substitute(ctx.example_dialogue, ctx.name, ctx.user_name)
    text = re.sub(r"<START>", "", text, flags=re.IGNORECASE)
    speakers = tuple(f"{n}{c}" for n in (ctx.name, ctx.user_name) for c in (":", "："))
    out: list[str] = []
    for line in normalize(text).split("\n"):
        if out and not line.startswith(speakers):
            out[-1] += "\n" + line  # a continuation line of the same turn
        else:
            out.append(line)
    return "\n\n".join(out)
