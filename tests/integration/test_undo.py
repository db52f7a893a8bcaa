"""Undo, not loss (issue 23): a delete, a rewind and "delete this version" keep what they removed
in the database (a real SQLite file) until the next compaction, and an undo puts back the
messages, their versions and their places. Every read of a chat skips what is removed."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from core import runtime
from core.errors import Conflict, NotFound
from core.store import UNDO_KEEP, Store
from core.store.models import utcnow


def _chat(store: Store, n: int = 5) -> int:
    name = f"Ada {len(store.list_characters())}"
    c = store.create_character({"name": name, "greetings": ["Hello.", "Hi!"]})
    conv = store.create_conversation(c.id)
    for i in range(n):
        store.add_message(conv.id, "user" if i % 2 == 0 else "char", f"m{i}", meta={"i": i})
    return conv.id  # type: ignore[return-value]


def _snapshot(store: Store, cid: int) -> list[tuple[Any, ...]]:
    """Everything a message is, as the chat reads it."""
    return [
        (m.id, m.position, m.role, m.text, m.alternatives, m.chosen, m.alt_meta, m.meta)
        for m in store.list_messages(cid)
    ]


def _rows(store: Store) -> int:
    """Messages in the database, removed ones included."""
    with store.engine.connect() as con:
        return con.execute(sa.text("SELECT count(*) FROM messages")).scalar_one()


def test_a_deleted_message_stays_in_the_database_and_comes_back(
    store: Store, data_dir: Path
) -> None:
    cid = _chat(store)
    msgs = store.list_messages(cid)
    store.add_alternative(msgs[2].id, "m1 again")  # a message with versions
    before = _snapshot(store, cid)
    rows = _rows(store)
    removed = store.delete_message(msgs[2].id)
    assert removed.messages == 1 and removed.token and removed.kind == "delete"
    # gone from every read: the list, the message, its positions; an edit does not find it
    assert [m.id for m in store.list_messages(cid)] == [m.id for m in msgs if m.id != msgs[2].id]
    assert [m.position for m in store.list_messages(cid)] == list(range(len(msgs) - 1))
    assert store.get_message(msgs[2].id) is None
    with pytest.raises(NotFound):
        store.edit_message(msgs[2].id, "x")
    assert store.add_message(cid, "user", "new").position == len(msgs) - 1
    assert _rows(store) == rows + 1  # still in the file
    # the undo: the message, its two versions and its meta, back at its place
    back = store.undo_removal(removed.token)
    assert (back.conversation_id, back.messages) == (cid, 1)
    after = _snapshot(store, cid)
    assert after[:-1] == before
    assert after[-1][3] == "new" and after[-1][1] == len(msgs)
    with pytest.raises(NotFound, match="nothing to undo"):
        store.undo_removal(removed.token)  # once


def test_a_rewind_comes_back_before_what_was_said_since(store: Store) -> None:
    cid = _chat(store)
    before = _snapshot(store, cid)
    removed = store.rewind(cid, 3)
    assert removed.messages == 3 and [m.text for m in store.list_messages(cid)][-1] == "m1"
    assert store.rewind(cid, 99) == type(removed)("", cid, "rewind", 0)  # nothing to remove
    store.add_message(cid, "user", "a new turn")
    store.undo_removal(removed.token)
    after = _snapshot(store, cid)
    assert after[: len(before)] == before
    assert [m[3] for m in after[len(before) :]] == ["a new turn"]
    assert [m[1] for m in after] == list(range(len(after)))


@pytest.mark.parametrize(
    ("index", "chosen", "shown"),
    [(0, 1, "B"), (1, 1, "C"), (2, 1, "B"), (2, 2, "B"), (1, 0, "A")],
)
def test_one_version_is_removed_and_comes_back(
    store: Store, index: int, chosen: int, shown: str
) -> None:
    cid = _chat(store, 1)
    msg = store.list_messages(cid)[-1]
    store.edit_message(msg.id, "A")
    for text in ("B", "C"):
        store.add_alternative(msg.id, text, meta={"v": text})
    store.select_alternative(msg.id, chosen)
    before = _snapshot(store, cid)
    removed = store.remove_version(msg.id, index)
    assert (removed.kind, removed.messages) == ("version", 0)
    now = store.get_message(msg.id)
    assert now.alternatives == [t for i, t in enumerate("ABC") if i != index]
    assert now.text == shown == now.alternatives[now.chosen]
    assert len(now.alt_meta) == 2 and now.tokens is None
    store.undo_removal(removed.token)
    assert _snapshot(store, cid) == before


def test_what_cannot_be_removed_or_put_back_says_why(store: Store) -> None:
    cid = _chat(store, 1)
    msg = store.list_messages(cid)[-1]
    with pytest.raises(Conflict) as e:
        store.remove_version(msg.id, 0)
    assert e.value.code == "only_version"
    with pytest.raises(NotFound):
        store.remove_version(msg.id, 3)
    store.add_alternative(msg.id, "second")
    version = store.remove_version(msg.id, 0)
    message = store.delete_message(msg.id)
    with pytest.raises(Conflict) as e:  # its message is removed: put that back first
        store.undo_removal(version.token)
    assert e.value.code == "message_gone"
    store.undo_removal(message.token)
    store.undo_removal(version.token)
    assert store.get_message(msg.id).alternatives == ["m0", "second"]
    with pytest.raises(NotFound):
        store.undo_removal("no-such-token")


def test_undone_latest_first_any_mix_gives_back_the_chat_exactly(store: Store) -> None:
    rng = random.Random(7)
    for _ in range(20):
        cid = _chat(store, 8)
        for m in store.list_messages(cid)[::3]:
            store.add_alternative(m.id, f"{m.text}'")
        before = _snapshot(store, cid)
        tokens = []
        for _ in range(rng.randint(1, 4)):
            msgs = store.list_messages(cid)
            if len(msgs) < 2:
                break
            pick = rng.choice(msgs)
            kind = rng.choice(["delete", "rewind", "version"])
            if kind == "delete":
                tokens.append(store.delete_message(pick.id).token)
            elif kind == "rewind":
                tokens.append(store.rewind(cid, pick.position).token)
            elif len(pick.alternatives) > 1:
                tokens.append(store.remove_version(pick.id, rng.randrange(2)).token)
        for token in reversed(tokens):
            store.undo_removal(token)
        assert _snapshot(store, cid) == before


def test_undone_oldest_first_nothing_is_lost(store: Store) -> None:
    cid = _chat(store, 6)
    before = _snapshot(store, cid)
    msgs = store.list_messages(cid)
    first = store.delete_message(msgs[2].id)
    second = store.delete_message(msgs[4].id)
    store.undo_removal(first.token)
    store.undo_removal(second.token)
    after = _snapshot(store, cid)
    assert {m[0] for m in after} == {m[0] for m in before}  # every message, once
    assert [m[1] for m in after] == list(range(len(before)))


def test_compaction_deletes_old_removals_for_good(store: Store, data_dir: Path) -> None:
    cid = _chat(store)
    rows = _rows(store)
    old = store.rewind(cid, 4)
    new = store.delete_message(store.list_messages(cid)[1].id)
    # both were made an instant ago: the app's compaction (over a day old) keeps them
    assert store.compact_removals(UNDO_KEEP) == 0
    assert store.compact_removals(timedelta(hours=1)) == 0
    assert _rows(store) == rows
    assert store.compact_removals(timedelta(0)) == 2  # all
    assert _rows(store) == rows - old.messages - new.messages
    with pytest.raises(NotFound):
        store.undo_removal(old.token)


def test_the_app_compacts_at_start_what_was_removed_over_a_day_ago(db_url: str) -> None:
    runtime.reset()
    store = runtime.current().store
    cid = _chat(store)
    old = store.delete_message(store.list_messages(cid)[1].id)
    young = store.delete_message(store.list_messages(cid)[1].id)
    with store.engine.begin() as con:
        con.execute(
            sa.text("UPDATE removals SET created_at = :t WHERE token = :token").bindparams(
                sa.bindparam("t", type_=sa.DateTime())
            ),
            {"t": utcnow() - timedelta(hours=25), "token": old.token},
        )
    rows = _rows(store)
    runtime.reset()  # a restart
    store = runtime.current().store
    assert _rows(store) == rows - 1
    with pytest.raises(NotFound):
        store.undo_removal(old.token)
    store.undo_removal(young.token)  # removed an instant ago: still there
    runtime.reset()


def test_deleting_a_chat_or_its_character_takes_its_removals_along(store: Store) -> None:
    cid = _chat(store)
    removed = store.delete_message(store.list_messages(cid)[1].id)
    store.delete_conversation(cid)
    with pytest.raises(NotFound):
        store.undo_removal(removed.token)
    c = store.create_character({"name": "Ben"})
    conv = store.create_conversation(c.id)
    store.add_message(conv.id, "user", "x")
    removed = store.rewind(conv.id, 0)
    store.delete_character(c.id, chats="delete")
    with pytest.raises(NotFound):
        store.undo_removal(removed.token)
