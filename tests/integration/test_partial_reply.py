"""A reply is saved while it is generated (core.chat.ReplySaver): a process killed with SIGKILL
mid-reply leaves the text so far in the database, marked interrupted."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from core.chat import ReplySaver
from core.store import Store, open_store
from tests.support.crash import kill_mid_reply


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def chat(data_dir: Path) -> tuple[Store, int]:
    store = open_store()
    character = store.create_character({"name": "Aria", "greetings": ["Hello."]})
    conv = store.create_conversation(character.id)
    store.add_message(conv.id, "user", "Tell me a story.")
    return store, conv.id


def stream(saver: ReplySaver, clock: Clock, timed: list[tuple[float, str]]) -> Any:
    """Feed pieces through saver.track, each at its time; yields after each piece."""
    pieces = iter(timed)
    gen = saver.track(p for _, p in timed)
    for t, _ in pieces:
        clock.now = t
        next(gen)
        yield


def test_a_new_reply_is_saved_every_interval_then_finished(chat: tuple[Store, int]) -> None:
    store, conv_id = chat
    clock = Clock()
    saver = ReplySaver(store, conv_id, "new", meta={"model": "m"}, every_s=2.0, clock=clock)
    steps = stream(saver, clock, [(0.5, "Once"), (2.0, " upon"), (3.0, " a"), (4.5, " time ")])

    def last() -> Any:
        return store.list_messages(conv_id)[-1]

    next(steps)
    assert last().role == "user"  # half a second in: nothing saved yet
    next(steps)
    first = last()
    assert (first.role, first.text) == ("char", "Once upon")
    assert first.meta == {"model": "m", "stop": "interrupted"}
    next(steps)
    assert last().text == "Once upon"  # one second after the last save: not yet
    next(steps)
    assert (last().id, last().text) == (first.id, "Once upon a time")  # in place, trimmed
    saver.finish("Once upon a time.", {"tokens": 5, "stop": "stop"})
    done = last()
    assert done.id == first.id and done.text == "Once upon a time."
    assert done.meta == {"model": "m", "tokens": 5, "stop": "stop"}  # not marked edited
    assert done.alternatives == ["Once upon a time."]
    assert len(store.list_messages(conv_id)) == 3


def test_regenerate_and_continue_write_one_new_version_in_place(chat: tuple[Store, int]) -> None:
    store, conv_id = chat
    old = store.add_message(conv_id, "char", "The old reply", meta={"tokens": 3, "stop": "stop"})
    clock = Clock()
    regen = ReplySaver(store, conv_id, "regen", target=old, every_s=1.0, clock=clock)
    steps = stream(regen, clock, [(1.0, "A new"), (2.0, " one")])
    next(steps)
    partial = store.get_message(old.id)
    assert partial.alternatives == ["The old reply", "A new"] and partial.chosen == 1
    assert partial.meta["stop"] == "interrupted"
    next(steps)
    regen.finish("A new one", {"tokens": 2, "stop": "eos"})
    msg = store.get_message(old.id)
    assert msg.alternatives == ["The old reply", "A new one"] and msg.text == "A new one"
    assert [m["stop"] for m in msg.alt_meta] == ["stop", "eos"]

    # continue makes the version shown longer, in place (as SillyTavern's continue does)
    cont = ReplySaver(store, conv_id, "continue", target=msg, every_s=0.0, clock=clock)
    list(cont.track([" and", " more"]))
    partial = store.get_message(old.id)
    assert partial.text == "A new one and more" and len(partial.alternatives) == 2
    assert partial.meta == {"continued": True, "stop": "interrupted"}
    cont.finish("A new one and more.", {"tokens": 3, "stop": "stop"})
    msg = store.get_message(old.id)
    assert msg.alternatives == ["The old reply", "A new one and more."] and msg.chosen == 1
    assert msg.meta == {"continued": True, "tokens": 2 + 3, "stop": "stop"}
    assert msg.alt_meta[0]["stop"] == "stop"  # the other version is untouched

    # the old way, a setting: a new version holds the longer text, the one continued stays
    cont = ReplySaver(
        store, conv_id, "continue", target=msg, every_s=0.0, clock=clock, new_version=True
    )
    list(cont.track([" Again"]))
    partial = store.get_message(old.id)
    assert partial.text == "A new one and more. Again" and len(partial.alternatives) == 3
    cont.finish("A new one and more. Again", {"tokens": 1, "stop": "stop"})
    msg = store.get_message(old.id)
    assert msg.alternatives[1:] == ["A new one and more.", "A new one and more. Again"]
    assert msg.chosen == 2 and msg.meta["tokens"] == 5 + 1


def test_nothing_is_saved_before_something_is_said(chat: tuple[Store, int]) -> None:
    store, conv_id = chat
    saver = ReplySaver(store, conv_id, "new", every_s=0.0)
    list(saver.track([" ", "\n"]))
    assert saver.finish("", {"stop": "eos"}) is None
    assert [m.role for m in store.list_messages(conv_id)] == ["char", "user"]


def test_a_reply_killed_mid_generation_keeps_its_text(
    chat: tuple[Store, int], tiny_models: Any, data_dir: Path
) -> None:
    store, conv_id = chat
    store.close()
    seen = kill_mid_reply(tiny_models(7), conv_id, data_dir, hold=40)
    # every token said before the kill is saved: the 40 fed back, and the one sampled after them
    assert seen == " ".join(["la"] * 41)

    con = sqlite3.connect(data_dir / "app.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    store = open_store()
    msgs = store.list_messages(conv_id)
    assert [m.role for m in msgs] == ["char", "user", "char"]
    assert msgs[-1].text == seen and msgs[-1].meta == {"model": "tiny", "stop": "interrupted"}
    store.close()
