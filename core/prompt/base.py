"""What a prompt is made of: the messages of a transcript, the character they are spoken with,
and the protocol of a prompt format (how a transcript becomes text chunks).

The transcript's tokens are the concatenation of each chunk's tokens, so the tokens of a prefix
never change when messages are added after it: that is what lets the prefix state cache match
(docs/ARCHITECTURE.md, "The state invariant").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.contracts import Role
from core.text import DEFAULT_CHAR, DEFAULT_USER, NARRATOR_NAME, bare_name


@dataclass
class Message:
    role: Role  # who speaks: the user, the character, or a narrator line
    text: str = ""  # what was said, as stored
    name: str = ""  # display name; empty means the default for the role
    # text fed just before this message's header (lorebook entries that fired for it, the
    # card's post-history instructions), evaluated once and stored with the message
    before: str = ""
    # text fed after `before`, just before the header of the message being generated (or
    # continued), and not kept with it: the next turn's transcript does not have it (an API
    # client's note at a depth, moved next to the reply: core/api/mapping.py)
    note: str = ""

    def __post_init__(self) -> None:
        self.name = _speaker(self.name, "")


@dataclass(frozen=True)
class StartState:
    """A character's own starting state: an RWKV state file (the `time_state` tensors of RWKV
    state tuning, core/roleplay/state_files.py). The chat is fed from it instead of the
    model's initial state (its WKV matrices from the file, every other part zero), and its
    sha256 is part of every cache key of such a chat (core/engine/engine.py)."""

    name: str  # the file's name, for messages
    sha256: str  # of the file's bytes
    # the WKV state of each layer, [heads, head size, head size] float32 in the file's layout;
    # called only when a chat needs the state (its cached checkpoints never do)
    load: Callable[[], list[Any]] = field(compare=False)
    # why the file cannot be used (missing from the data folder, damaged): the chat then runs
    # without it, and says so
    problem: str = ""


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
    # replaces the opening's own text when set; "{{original}}" in it stands for that text
    # (a card's system_prompt; an API request's leading system messages)
    system_prompt: str = ""
    start_state: StartState | None = None  # the character's RWKV state file, if it has one

    def __post_init__(self) -> None:
        self.name = _speaker(self.name, DEFAULT_CHAR)
        self.user_name = _speaker(self.user_name, DEFAULT_USER)


def _speaker(name: str, default: str) -> str:
    """A name as the transcript uses it (core.text.bare_name: "Bob:" is "Bob"); `default` when
    nothing but colons was left of it."""
    bare = bare_name(name)
    return bare or (default if name.strip() else name)


def speaker_name(msg: Message, ctx: CharacterContext) -> str:
    if msg.name:
        return msg.name
    return {"user": ctx.user_name, "char": ctx.name, "narrator": NARRATOR_NAME}[msg.role]


def stop_names(msg: Message, ctx: CharacterContext, names: list[str]) -> list[str]:
    """The speakers whose `Name:` line ends a reply by `msg`'s speaker: every other one, and the
    other side's (the user's, or the character's for the user's own line) even when it is the
    speaker's name too: a user named like the character must not get their lines written."""
    me = speaker_name(msg, ctx)
    other = ctx.name if msg.role == "user" else ctx.user_name
    found = dict.fromkeys(bare_name(n) for n in [ctx.user_name, ctx.name, *names])
    return [n for n in found if n and (n != me or n == other)]


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

    def note(self, text: str, ctx: CharacterContext) -> str:
        """Text fed before a message's header (Message.before), as the model should read it."""
        ...

    def stop_strings(self, msg: Message, ctx: CharacterContext, names: list[str]) -> list[str]:
        """Strings that end a reply by `msg`'s speaker; `names` are all speakers of the chat."""
        ...


def transcript_texts(
    fmt: PromptFormat,
    ctx: CharacterContext,
    history: list[Message],
    speaker: Message | None,
    open_last: bool = False,
) -> list[str]:
    """The transcript as the chunks of text a model reads, in order: the opening, each
    message's note (what was fed before it), header and body, then the speaker's note and
    header; with `open_last` the last message is left open (for "continue") and no header
    follows. Their concatenation is the prompt (`Engine.prompt_text`; the engine also cuts it
    here, in `Engine._build`, to tokenize and key each chunk). A model served elsewhere
    (core.engine.remote) is sent this text."""
    texts: list[str] = []
    opening = fmt.opening(ctx)
    if opening:
        texts.append(opening)
    for i, msg in enumerate(history):
        last_open = open_last and i == len(history) - 1
        if msg.before:
            texts.append(fmt.note(msg.before, ctx))
        texts.append(fmt.header(msg, ctx))
        body = fmt.open_body if last_open else fmt.body
        texts.append(body(msg.text, msg, ctx))
    if speaker is not None and not open_last:
        if speaker.before:
            texts.append(fmt.note(speaker.before, ctx))
        texts.append(fmt.header(speaker, ctx))
    return texts
