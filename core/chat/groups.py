"""Group chats on top of the store: who speaks next (core/group.py on the stored chat), the auto
mode's turns (`AutoTalk`: when it goes on, when it ends), and the card of a member who joined
late, fed once before the next reply.

A member who joins a running chat does not change its opening (that would make the next reply
feed the whole chat again): its card is fed as a note just before the next reply, stored with
that reply (meta "before", like lorebook entries) and marked in its meta ("joined"), so every
later turn feeds it again in the same place and the state cache keeps working.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
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
    if out:  # only the last message's names can choose (natural order)
        out[-1] = replace(out[-1], repeat=repeats_recent(messages))
    return out


def repeats_recent(messages: list[ChatMessage]) -> bool:
    """The last of `messages` repeats one of the REPEAT_RECENT before it (core.roleplay.group
    `repeats`: word for word, or nearly)."""
    if not messages:
        return False
    earlier = messages[-1 - group.REPEAT_RECENT : -1]
    return group.repeats(messages[-1].text, [m.text for m in earlier])


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


@dataclass(frozen=True)
class AutoTalk:
    """The auto mode of one group chat ("Let them talk"): the members speak one after another
    for a number of turns. A front end keeps it between turns (the pages in the session's
    state) and asks `next_auto_turn` before each one.

    `left`: turns still to start. `expect`: how many messages the chat must hold for the next
    turn to start, that is the count when the last turn began plus its reply. `stopped`: the
    user stopped it (the reply's Stop or "Stop auto mode", at any turn)."""

    conversation_id: int
    left: int
    expect: int
    stopped: bool = False

    def stop(self) -> AutoTalk:
        return replace(self, stopped=True)


def start_auto(store: Store, conv: Conversation) -> AutoTalk:
    """The auto mode, about to start: the chat's number of turns, from its messages now."""
    turns = int((conv.group or {}).get("auto_turns") or group.DEFAULT_AUTO_TURNS)
    turns = max(1, min(group.MAX_AUTO_TURNS, turns))
    assert conv.id is not None
    return AutoTalk(conv.id, turns, len(store.list_messages(conv.id)))


def next_auto_turn(
    store: Store, conv: Conversation, auto: AutoTalk, rng: random.Random | None = None
) -> tuple[AutoTalk | None, int | None]:
    """The auto mode's next turn: (its state after this turn starts, the member who speaks),
    or (None, None) when it is over. It ends when it was stopped, when its turns are done, when
    the chat did not grow by the last turn's reply (nothing said, an error, a message deleted
    or added meanwhile) and when nobody may speak (everyone muted...)."""
    if auto.stopped or auto.left <= 0 or auto.conversation_id != conv.id:
        return None, None
    n = len(store.list_messages(conv.id))  # type: ignore[arg-type]
    if n != auto.expect:
        return None, None
    who = pick_speaker(store, conv, rng, auto=True)
    if who is None:
        return None, None
    return replace(auto, left=auto.left - 1, expect=n + 1), who


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
