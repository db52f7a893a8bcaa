"""The books of a chat, read from the store, and the lore fed with its opening and its replies."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.prompt import CharacterContext, Message
from core.roleplay.lore.activation import Book, activate
from core.roleplay.lore.entries import MAX_ENTRIES
from core.roleplay.lore.formats import character_book_size, from_character_book
from core.roleplay.macros import expand
from core.store import Character, Conversation, Lorebook, Store

# --- the books of a chat --------------------------------------------------------------------

# a card's book converted (from_character_book) once per version of the character's row, not on
# every reply: up to CONVERTED books, the most recently used kept
CONVERTED = 8
_converted: OrderedDict[
    tuple[Any, ...], tuple[str, list[dict[str, Any]], dict[str, Any], list[str]]
]
_converted = OrderedDict()
_converted_lock = threading.Lock()


def _convert(character: Character) -> tuple[str, list[dict[str, Any]], dict[str, Any], list[str]]:
    """(name, entries, settings, notes) of a character's card book, converted now."""
    cb = character.character_book
    assert isinstance(cb, dict)
    entries, settings = from_character_book(cb)
    name = str(cb.get("name") or "").strip() or f"{character.name}"
    notes = []
    size = character_book_size(cb)
    if size > MAX_ENTRIES:  # stored before imports were held to the limit
        notes.append(
            f"{name}: the book has {size:,} entries; only the first {MAX_ENTRIES:,} are read."
        )
    return name, entries, settings, notes


def character_book(character: Character) -> Book | None:
    """A character's own book (the card's V2 character_book), or None. Converted once for each
    version of the character's row (its id and times), so a reply does not convert it again;
    the Book's entries are shared: read them, never change them."""
    if not isinstance(character.character_book, dict):
        return None
    key = (character.id, character.created_at, character.updated_at)
    with _converted_lock:
        hit = _converted.get(key) if character.id is not None else None
        if hit is not None:
            _converted.move_to_end(key)
    if hit is None:
        hit = _convert(character)
        if character.id is not None:
            with _converted_lock:
                _converted[key] = hit
                while len(_converted) > CONVERTED:
                    _converted.popitem(last=False)
    name, entries, settings, notes = hit
    if not entries:
        return None
    return Book(
        name, list(entries), dict(settings), "character", normalized=True, notes=list(notes)
    )


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
