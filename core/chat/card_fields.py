"""The card fields that reach the prompt besides the character's columns (description,
personality, scenario, example dialogue): SillyTavern's `system_prompt`,
`post_history_instructions` and the depth prompt of `extensions.depth_prompt`, and the macros of
all of them (core/macros.py).

Where each goes, for a recurrent state that cannot take text inserted before what it has read:
- `system_prompt` replaces the opening (`CharacterContext.system_prompt`; `{{original}}` in it
  stands for the opening the app would write).
- `post_history_instructions` and the depth prompt are fed just before each of the character's
  replies, after the history (`ChatService.before_reply`), and stored with the reply (its meta
  "before"), so every later turn feeds them again in the same place and reuses the checkpoints.
  SillyTavern puts the depth prompt `depth` messages above the end of the chat, a place that
  moves every turn: on a recurrent state that re-feeds `depth` messages at every reply. Here it
  is fed at depth 0, with the post-history instructions (depth prompt first), and its `depth` is
  recorded in the reply's meta.
- Macros in the opening's fields are expanded with the chat's own clock and dice (its creation
  time, a random stream seeded by its id), so the opening never changes under the cache; text fed
  before a reply is expanded when the reply is made and stored as fed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from core.prompt import CharacterContext, Message
from core.roleplay.macros import chat_rng, expand
from core.store import Character, Conversation, Store


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def system_prompt(character: Character) -> str:
    """The card's `system_prompt` (kept in card_extra by core/cards.py; extensions as a
    fallback for cards that put it there)."""
    return _text((character.card_extra or {}).get("system_prompt")) or _text(
        (character.extensions or {}).get("system_prompt")
    )


def post_history(character: Character) -> str:
    """The card's `post_history_instructions`."""
    return _text((character.card_extra or {}).get("post_history_instructions")) or _text(
        (character.extensions or {}).get("post_history_instructions")
    )


def depth_prompt(character: Character) -> tuple[str, int]:
    """SillyTavern's `extensions.depth_prompt` {prompt, depth}: (text, depth)."""
    dp = (character.extensions or {}).get("depth_prompt")
    if not isinstance(dp, dict):
        return "", 0
    depth = dp.get("depth", 4)
    return _text(dp.get("prompt")), depth if isinstance(depth, int) else 4


def chat_clock(conv: Conversation) -> datetime:
    """The chat's creation time in local time (stored as UTC)."""
    created = conv.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created.astimezone().replace(tzinfo=None)


_OPENING_FIELDS = (
    "system_prompt",
    "persona",
    "personality",
    "scenario",
    "example_dialogue",
    "user_persona",
)


def expand_opening(ctx: CharacterContext, conv: Conversation) -> CharacterContext:
    """`ctx` with the macros of its opening's fields expanded the same way every time the chat
    is rendered: the chat's creation time, dice seeded by the chat's id, fields in a fixed
    order. {{char}} / {{user}} and {{original}} are left to the prompt format."""
    rng = chat_rng(conv.id)
    now = chat_clock(conv)
    values = {}
    for name in _OPENING_FIELDS:
        text = getattr(ctx, name)
        if "{{" in text:
            values[name] = expand(text, "{{char}}", "{{user}}", now, rng)
    return replace(ctx, **values) if values else ctx


def speaking_character(store: Store, conv: Conversation, speaker: Message) -> Character | None:
    """The character whose card speaks a reply: the chat's character, or in a group chat the
    member named by the speaker."""
    if conv.members:
        for cid in conv.members:
            c = store.get_character(cid)
            if c is not None and c.name == speaker.name:
                return c
        return None
    return store.get_character(conv.character_id)


def before_text(
    store: Store,
    conv: Conversation,
    ctx: CharacterContext,
    speaker: Message,
    now: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """What the card asks to be fed just before a character's reply (the depth prompt, then the
    post-history instructions), macros expanded now, and what to record of it. Narrator and user
    replies get none of it: they are not the character speaking."""
    if speaker.role != "char":
        return "", {}
    character = speaking_character(store, conv, speaker)
    if character is None:
        return "", {}
    name = speaker.name or ctx.name
    depth_text, depth = depth_prompt(character)
    parts: list[str] = []
    meta: dict[str, Any] = {}
    if depth_text.strip():
        parts.append(expand(depth_text, name, ctx.user_name, now))
        meta["depth_prompt"] = depth
    post = post_history(character)
    if post.strip():
        parts.append(expand(post, name, ctx.user_name, now))
        meta["post_history"] = True
    return "\n".join(p.strip() for p in parts if p.strip()), meta


def expand_greetings(store: Store, conv: Conversation) -> None:
    """Expand the macros of a new chat's greetings (message 0 and its versions) once, as the
    chat is created, and store them expanded."""
    messages = store.list_messages(conv.id)
    if not messages or messages[0].position != 0:
        return
    first = messages[0]
    alts = list(first.alternatives) or [first.text]
    now = datetime.now()
    for i, text in enumerate(alts):
        if "{{" in text:
            metas = list(first.alt_meta or [])
            meta = metas[i] if i < len(metas) and isinstance(metas[i], dict) else {}
            text = expand(text, conv.character_name, conv.user_name, now)
            store.set_version(first.id, i, text, meta)
