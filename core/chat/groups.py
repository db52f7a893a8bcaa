"""Group chats on top of the store: who speaks next (core/group.py on the stored chat), and the
card of a member who joined late, fed once before the next reply.

A member who joins a running chat does not change its opening (that would make the next reply
feed the whole chat again): its card is fed as a note just before the next reply, stored with
that reply (meta "before", like lorebook entries) and marked in its meta ("joined"), so every
later turn feeds it again in the same place and the state cache keeps working.
"""

from __future__ import annotations

import random
from typing import Any

from core.chat.context import group_join_note, group_members
from core.errors import StoreError
from core.roleplay import group
from core.store import ChatMessage, Conversation, Store


def members(store: Store, conv: Conversation) -> list[group.Member]:
    """The chat's members as core.roleplay.group reads them (talkativeness from their cards)."""
    muted = set((conv.group or {}).get("muted", []))
    return [
        group.Member(c.id, c.name, group.talkativeness(c.extensions), c.id in muted)
        for c in group_members(store, conv)
        if c.id is not None
    ]


def said(
    conv: Conversation, messages: list[ChatMessage], people: list[group.Member]
) -> list[group.Said]:
    """The messages as core.roleplay.group reads them: text and which member wrote each."""
    by_name = {m.name: m.id for m in people}
    out: list[group.Said] = []
    for m in messages:
        who: int | None = None
        if m.role == "char":
            default = conv.character_id if not m.name else None  # the chat's own character
            who = m.character_id or by_name.get(m.name) or default
        out.append(group.Said(m.text, who))
    return out


def pick_speaker(
    store: Store, conv: Conversation, rng: random.Random | None = None, auto: bool = False
) -> int | None:
    """The member who speaks next by the chat's setting (None: nobody, or the user picks).
    In the auto mode "manual" picks as "natural" does."""
    settings = conv.group or {}
    mode = settings.get("activation", "natural")
    if auto and mode == "manual":
        mode = "natural"
    people = members(store, conv)
    history = said(conv, store.list_messages(conv.id), people)
    return group.next_speaker(
        mode, people, history, rng or random.Random(), bool(settings.get("allow_self"))
    )


def member(store: Store, conv: Conversation, character_id: int) -> group.Member:
    for m in members(store, conv):
        if m.id == character_id:
            return m
    raise StoreError("That character is not in this chat.")


def join_before(
    store: Store,
    conv: Conversation,
    prior: list[ChatMessage],
    before: str,
    extra: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """`before` and `extra` of a new reply, with the cards of members who joined late and were
    not fed yet (no message of `prior` carries them) put first."""
    joined = [i for i in (conv.group or {}).get("joined", []) if i in (conv.members or [])]
    if not joined:
        return before, extra
    done: set[int] = set()
    for m in prior:
        ids = (m.meta or {}).get("joined")
        if isinstance(ids, list):
            done.update(i for i in ids if isinstance(i, int))
    user = store.user_name(conv.user_name or None)
    chars = [store.get_character(i) for i in joined if i not in done]
    chars = [c for c in chars if c is not None]
    if not chars:
        return before, extra
    notes = [group_join_note(c, user) for c in chars]
    text = "\n".join([*notes, before] if before else notes)
    return text, {**extra, "joined": [c.id for c in chars]}
