"""The books of a chat, read from the store, and the lore fed with its opening and its replies."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.prompt import CharacterContext, Message
from core.roleplay.lore.activation import Book, activate
from core.roleplay.lore.formats import from_character_book
from core.roleplay.macros import expand
from core.store import Character, Conversation, Lorebook, Store

# --- the books of a chat --------------------------------------------------------------------


def character_book(character: Character) -> Book | None:
    """A character's own book (the card's V2 character_book), or None."""
    cb = character.character_book
    if not isinstance(cb, dict):
        return None
    entries, settings = from_character_book(cb)
    if not entries:
        return None
    name = str(cb.get("name") or "").strip() or f"{character.name}"
    return Book(name, entries, settings, source="character")


def _as_book(lb: Lorebook, source: str) -> Book:
    return Book(lb.name, list(lb.entries or []), dict(lb.settings or {}), source, lb.id)


def books_for_conversation(store: Store, conv: Conversation) -> list[Book]:
    """Every book a chat uses: its characters' own books and attached books, the chat's books,
    the global books; each lorebook once."""
    out: list[Book] = []
    seen: set[int] = set()

    def add_ids(ids: Iterable[Any], source: str) -> None:
        for i in ids or []:
            if not isinstance(i, int) or i in seen:
                continue
            lb = store.get_lorebook(i)
            if lb is not None:
                seen.add(i)
                out.append(_as_book(lb, source))

    char_ids = [conv.character_id, *(conv.members or [])]
    for cid in dict.fromkeys(c for c in char_ids if isinstance(c, int)):
        ch = store.get_character(cid)
        if ch is None:
            continue
        own = character_book(ch)
        if own is not None:
            out.append(own)
        add_ids(ch.lorebook_ids, "attached")
    add_ids(conv.lorebook_ids or [], "chat")
    add_ids([lb.id for lb in store.list_lorebooks() if lb.is_global], "global")
    return out


def constant_lore(store: Store, conv: Conversation | None, ctx: CharacterContext) -> str:
    """The text of the constant entries of a chat's books, for its opening."""
    if conv is None:
        return ""
    books = books_for_conversation(store, conv)
    if not any(e.get("constant") for b in books for e in b.entries if isinstance(e, dict)):
        return ""
    only_constant = [
        Book(
            b.name, [e for e in b.entries if isinstance(e, dict) and e.get("constant")], b.settings
        )
        for b in books
    ]
    return activate(only_constant, [], char=ctx.name, user=ctx.user_name).text(constant=True)


def with_constant_lore(store: Store, conv: Conversation | None, ctx: CharacterContext) -> None:
    """Put a chat's constant entries in its opening: after the persona (description)."""
    text = constant_lore(store, conv, ctx)
    if text:
        ctx.persona = f"{ctx.persona.rstrip()}\n{text}" if ctx.persona.strip() else text


def reply_seed(conv: Conversation, position: int) -> int:
    """The seed of a reply's probability rolls: the chat's sampling seed (if any), its id and
    the reply's place, so a reply's lore is reproducible and two replies roll differently."""
    base = (conv.sampling or {}).get("seed")
    raw = f"{base if isinstance(base, int) else ''}:{conv.id}:{position}".encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


def fire_lore(
    store: Store,
    conv: Conversation,
    ctx: CharacterContext,
    history: Sequence[Message],
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The lore fed before a new reply, and what the reply's meta records of it ("lore": the
    entries that fired, "lore_errors": keys skipped). Constant entries are not here: they are
    in the opening. Never raises for a book's content."""
    books = books_for_conversation(store, conv)
    if not books:
        return "", {}
    texts = [m.text for m in history]
    seed = reply_seed(conv, len(history))
    res = activate(
        books,
        texts,
        char=ctx.name,
        user=ctx.user_name,
        count_tokens=count_tokens,
        seed=seed,
    )
    fired = [f for f in res.fired if not f.constant]
    # macros ({{time}}, {{random::a::b}}, {{roll:d6}}...) evaluated now: the text is stored as fed
    text = expand(res.text(constant=False), ctx.name, ctx.user_name, rng=random.Random(seed))
    meta: dict[str, Any] = {}
    if fired:
        meta["lore"] = [f.meta() for f in fired]
    if res.errors:
        meta["lore_errors"] = res.errors[:20]
    return text, meta
