"""Group chats through the chat service on the tiny RWKV-7 (real engine, real store): each reply
by the chosen member with its name stored, one opening for all members so that each turn feeds
only its new tokens, replies that stop at another member's line, regenerate / continue keeping
the speaker, a member joining mid-chat without re-feeding it, mute, export."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from core.chat import ChatService, conversation_context, prompt_messages
from core.chat.groups import members, pick_speaker, said
from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.errors import StoreError
from core.prompt import Message
from core.roleplay.chat_io import export_jsonl, export_markdown, import_jsonl
from tests.support.forced import ForcedBackend
from tests.support.invariant import Counted, check_invariant


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


P = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=6)


@pytest.fixture
def cast(store):
    """Three characters (Ada talks a lot and has a stop string; Cy has no greeting) and a
    fourth who joins later."""
    ada = store.create_character(
        {
            "name": "Captain Ada Reyes",
            "description": "{{char}} commands the ship.",
            "personality": "bold",
            "greetings": ["Welcome aboard, {{user}}.", "Hello, {{user}}."],
            "extensions": {"talkativeness": "0.9"},
            "stop_strings": ["END"],
        }
    )
    ben = store.create_character(
        {
            "name": "Ben",
            "description": "{{char}} is the engineer.",
            "example_dialogue": "{{user}}: hi\n{{char}}: The engines hum.",
            "greetings": ["*wipes hands* Hi."],
        }
    )
    cy = store.create_character({"name": "小雪", "description": "{{char}}是一只雪狐。"})
    dee = store.create_character({"name": "Dee", "description": "{{char}} is a stowaway."})
    return ada, ben, cy, dee


def service(store, backend, tmp_path):
    eng = Engine(backend, cache_dir=tmp_path / "states")
    return ChatService(lambda: store, lambda: eng), eng


def fed_for(eng: Engine, texts: list[str]) -> int:
    return sum(len(eng.backend.tokenize(t)) for t in texts)


def test_a_group_chat_starts_with_each_members_greeting(store, cast) -> None:
    ada, ben, cy, _ = cast
    svc = ChatService(lambda: store, lambda: None)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    assert conv.members == [ada.id, ben.id, cy.id] and conv.character_id == ada.id
    assert conv.group["activation"] == "natural" and conv.group["muted"] == []
    msgs = store.list_messages(conv.id)
    assert [(m.name, m.character_id, m.text) for m in msgs] == [
        ("Captain Ada Reyes", ada.id, "Welcome aboard, User."),
        ("Ben", ben.id, "*wipes hands* Hi."),
    ]
    assert msgs[0].alternatives == ["Welcome aboard, User.", "Hello, User."]
    with pytest.raises(StoreError, match="at least two characters"):
        svc.new_group_chat([ada.id, ada.id])
    with pytest.raises(StoreError, match="no character"):
        svc.new_group_chat([ada.id, 9999])


def test_three_members_take_turns_and_only_new_tokens_are_fed(
    store, cast, rwkv7_backend, tmp_path
) -> None:
    ada, ben, cy, _ = cast
    counted = Counted(rwkv7_backend)
    svc, eng = service(store, counted, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    store.update_group_settings(conv.id, activation="list")

    # one opening for all: the same text whoever speaks, with every member's card in it
    openings = {
        eng.format.opening(conversation_context(store, conv.id, speaker=c.name))
        for c in (ada, ben, cy)
    }
    assert len(openings) == 1
    opening = openings.pop()
    cards = ("Captain Ada Reyes commands the ship.", "Ben is the engineer.", "小雪是一只雪狐。")
    assert all(text in opening for text in cards)
    assert "Ben: The engines hum." in opening

    spoken = []
    for turn_no, words in enumerate(["Status report?", "And the engines?", "Anything else?"]):
        svc.send(conv.id, words)
        who = svc.pick_speaker(conv.id)
        turn = svc.reply_as(conv.id, who, params=P).consume()
        res = turn.result
        assert turn.message is not None and res is not None
        name = store.get_character(who).name
        assert turn.message.name == name and turn.message.character_id == who
        spoken.append(who)
        if turn_no > 0:  # the chat so far came from the cache: only the new lines were fed
            ctx = conversation_context(store, conv.id, speaker=name)
            user = Message("user", words)
            new = [
                eng.format.header(user, ctx),
                eng.format.body(words, user, ctx),
                eng.format.header(Message("char", name=name), ctx),
            ]
            assert res.fed_tokens == fed_for(eng, new) < res.prompt_tokens / 4
    # round robin after the last greeting (Ben's): 小雪, Ada, Ben
    assert spoken == [cy.id, ada.id, ben.id]
    names = [m.name for m in store.list_messages(conv.id) if m.role == "char"]
    assert names == ["Captain Ada Reyes", "Ben", "小雪", "Captain Ada Reyes", "Ben"]

    # the state the next reply starts from is the stored transcript's, fed from scratch
    ctx = conversation_context(store, conv.id)
    hist = prompt_messages(store, conv.id)
    cached, _ = eng.state_for(ctx, hist, Message("char", name="小雪"))
    fresh, _ = eng.reference_state(ctx, hist, Message("char", name="小雪"))
    assert float(np.abs(cached - fresh).max()) <= 1e-4


def test_a_reply_stops_where_it_starts_another_members_line(
    store, cast, rwkv7_backend, tmp_path
) -> None:
    ada, ben, cy, _ = cast
    fb = ForcedBackend(rwkv7_backend)
    svc, _eng = service(store, fb, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    svc.send(conv.id, "Who is on watch?")
    # 小雪 never spoke: her name still ends Ada's reply, from the group's members
    fb.say(" I am.\n小雪: and I write her line too")
    turn = svc.reply_as(conv.id, ada.id, params=P.__class__(seed=1, max_tokens=40)).consume()
    assert turn.message.text == "I am." and turn.result.stop_string == "\n小雪:"
    # the speaker's own card stop string applies to it
    fb.say(" Aye END of story")
    turn = svc.reply_as(conv.id, ada.id, params=SamplingParams(seed=1, max_tokens=40)).consume()
    assert turn.message.text == "Aye" and turn.result.stop_string == "END"
    # and the user's line ends a member's reply
    fb.say(" Fine.\nUser: I say this")
    turn = svc.reply_as(conv.id, ben.id, params=SamplingParams(seed=1, max_tokens=40)).consume()
    assert turn.message.text == "Fine." and turn.message.name == "Ben"


def test_regenerate_and_continue_keep_the_speaker(store, cast, rwkv7_backend, tmp_path) -> None:
    ada, ben, cy, _ = cast
    svc, _eng = service(store, rwkv7_backend, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    svc.send(conv.id, "Hello all")
    first = svc.reply_as(conv.id, cy.id, params=P).consume().message
    regen = svc.reply(conv.id, "regen", target_id=first.id, params=P.__class__(seed=8)).consume()
    msg = store.get_message(first.id)
    assert len(msg.alternatives) == 2 and regen.message.id == first.id
    assert (msg.name, msg.character_id) == ("小雪", cy.id)
    svc.reply(conv.id, "continue", target_id=first.id, params=P).consume()
    msg = store.get_message(first.id)
    assert (msg.name, msg.character_id, len(msg.alternatives)) == ("小雪", cy.id, 2)
    svc.edit(first.id, "edited by hand")
    svc.choose_version(first.id, 0)
    assert store.get_message(first.id).name == "小雪"


def test_a_member_joins_mid_chat_without_changing_the_opening(
    store, cast, rwkv7_backend, tmp_path
) -> None:
    ada, ben, cy, dee = cast
    counted = Counted(rwkv7_backend)
    svc, eng = service(store, counted, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    svc.send(conv.id, "Hi")
    svc.reply_as(conv.id, ben.id, params=P).consume()
    opening = eng.format.opening(conversation_context(store, conv.id))

    store.add_group_member(conv.id, dee.id)
    assert eng.format.opening(conversation_context(store, conv.id)) == opening
    with pytest.raises(StoreError, match="already in this chat"):
        store.add_group_member(conv.id, dee.id)

    # the next reply carries Dee's card just before it, and feeds only that and its header
    turn = svc.reply_as(conv.id, dee.id, params=P).consume()
    meta = turn.message.meta
    assert meta["joined"] == [dee.id] and meta["before"].startswith("Dee joins the scene.")
    assert "Dee is a stowaway." in meta["before"]
    ctx = conversation_context(store, conv.id, speaker="Dee")
    speaker = Message("char", name="Dee")
    assert turn.result.fed_tokens == fed_for(
        eng, [eng.format.note(meta["before"], ctx), eng.format.header(speaker, ctx)]
    )
    # a regenerated version of that reply carries it again; a later reply does not
    regen = svc.reply(conv.id, "regen", params=P.__class__(seed=3)).consume()
    assert regen.message.meta["joined"] == [dee.id]
    svc.send(conv.id, "Welcome, Dee")
    later = svc.reply_as(conv.id, ada.id, params=P).consume()
    assert "joined" not in later.message.meta and "before" not in later.message.meta

    # the stored transcript (with the note) is what the state holds
    hist = prompt_messages(store, conv.id)
    cached, _ = eng.state_for(ctx, hist, speaker)
    fresh, _ = eng.reference_state(ctx, hist, speaker)
    assert float(np.abs(cached - fresh).max()) <= 1e-4


def test_a_one_character_chat_becomes_a_group_and_keeps_its_opening(
    store, cast, rwkv7_backend, tmp_path
) -> None:
    ada, ben, _, _ = cast
    svc, eng = service(store, rwkv7_backend, tmp_path)
    conv = svc.new_chat(ada.id)
    before = eng.format.opening(conversation_context(store, conv.id))
    store.add_group_member(conv.id, ben.id)
    assert store.get_conversation(conv.id).members == [ada.id, ben.id]
    assert eng.format.opening(conversation_context(store, conv.id)) == before
    svc.send(conv.id, "Ben, are you there?")
    assert svc.pick_speaker(conv.id, random.Random(1)) == ben.id


def test_muted_members_do_not_speak_on_their_own(store, cast) -> None:
    ada, ben, cy, _ = cast
    svc = ChatService(lambda: store, lambda: None)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    store.set_member_muted(conv.id, ada.id, True)
    svc.send(conv.id, "Captain, your orders?")  # Ada is named, but muted
    picks = {svc.pick_speaker(conv.id, random.Random(s)) for s in range(40)}
    assert picks <= {ben.id, cy.id} and len(picks) == 2
    store.set_member_muted(conv.id, ada.id, False)
    assert svc.pick_speaker(conv.id, random.Random(0)) == ada.id
    store.update_group_settings(conv.id, activation="manual")
    assert svc.pick_speaker(conv.id) is None
    # the auto mode picks even in manual mode
    assert svc.pick_speaker(conv.id, random.Random(0), auto=True) == ada.id
    with pytest.raises(StoreError, match="natural, list, manual"):
        store.update_group_settings(conv.id, activation="pooled")
    with pytest.raises(StoreError, match="1 to 50"):
        store.update_group_settings(conv.id, auto_turns=0)


def test_remove_a_member(store, cast) -> None:
    ada, ben, cy, _ = cast
    svc = ChatService(lambda: store, lambda: None)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    store.set_member_muted(conv.id, ada.id, True)
    conv = store.remove_group_member(conv.id, ada.id)
    assert conv.members == [ben.id, cy.id] and conv.character_id == ben.id
    assert conv.group["muted"] == [] and conv.character_name == "Ben"
    # the greeting of the member who left stays, with its name
    assert store.list_messages(conv.id)[0].name == "Captain Ada Reyes"
    store.remove_group_member(conv.id, cy.id)
    with pytest.raises(StoreError, match="at least one character"):
        store.remove_group_member(conv.id, ben.id)


def test_export_names_every_speaker(store, cast, rwkv7_backend, tmp_path) -> None:
    ada, ben, cy, _ = cast
    svc, _eng = service(store, rwkv7_backend, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    svc.send(conv.id, "Hello")
    svc.reply_as(conv.id, cy.id, params=P).consume()
    md = export_markdown(store, conv.id)
    assert "Characters: Captain Ada Reyes, Ben, 小雪" in md
    for speaker in ("**Captain Ada Reyes:**", "**Ben:**", "**User:**", "**小雪:**"):
        assert speaker in md
    lines = [json.loads(x) for x in export_jsonl(store, conv.id).splitlines()]
    assert lines[0]["chat_metadata"]["rwkv_roleplay"]["members"] == [
        "Captain Ada Reyes",
        "Ben",
        "小雪",
    ]
    assert [x["name"] for x in lines[1:]] == ["Captain Ada Reyes", "Ben", "User", "小雪"]


def test_a_group_chat_imports_back_as_a_group_chat(store, cast) -> None:
    """Its JSONL export names the members; imported, the chat has them again (found by name),
    each message is its member's, and the next speaker is picked among them. A member this app
    no longer has is left out; with fewer than two left it imports as a one-character chat."""
    ada, ben, cy, dee = cast
    conv = store.create_group_conversation([ada.id, ben.id, cy.id])
    store.add_message(conv.id, "user", "Hello all")
    store.add_message(conv.id, "char", "Hi from Ben", name="Ben", character_id=ben.id)
    store.add_message(conv.id, "char", "小雪 here", name="小雪", character_id=cy.id)
    data = export_jsonl(store, conv.id)
    new = import_jsonl(store, data, None)
    assert new.id != conv.id and new.members == [ada.id, ben.id, cy.id]
    assert new.character_id == ada.id and new.group["activation"] == "natural"
    keys = ("role", "name", "text", "alternatives")
    before = [{k: getattr(m, k) for k in keys} for m in store.list_messages(conv.id)]
    after = [{k: getattr(m, k) for k in keys} for m in store.list_messages(new.id)]
    assert after == before
    who = [x.member_id for x in said(new, store.list_messages(new.id), members(store, new))]
    assert who == [ada.id, ben.id, None, ben.id, cy.id]  # greetings: Ada, Ben (Cy has none)
    assert pick_speaker(store, new) in (ada.id, ben.id, cy.id)
    # imported for a character that is one of them: that character leads the group
    led = import_jsonl(store, data, cy.id)
    assert led.members == [cy.id, ada.id, ben.id] and led.character_id == cy.id
    # for a character that is not: that character's one-character chat, as before
    other = import_jsonl(store, data, dee.id)
    assert other.members == [] and other.character_id == dee.id
    # members this app lacks are left out; one left is not a group
    store.delete_character(ben.id, "keep")
    store.delete_character(cy.id, "keep")
    alone = import_jsonl(store, data, None)
    assert alone.members == [] and alone.character_id == ada.id


def test_the_state_invariant_holds_in_a_group_chat(rwkv7_backend) -> None:
    """Members answering in turn, a late member's card fed before a reply, regenerate,
    continue, delete and a restart: the state is always the stored transcript's, reached
    feeding only what the cache lacks (tests/support/invariant.py; its random sequences draw
    the same "group" step)."""
    ops = [
        ("group", "Ada", 1, False),
        ("group", "小雪", 2, False),
        ("group", "Dee", 3, True),
        ("regenerate", 4),
        ("continue", 5),
        ("group", "Ada", 6, False),
        ("delete", 2),
        ("reopen",),
        ("group", "小雪", 7, False),
    ]
    check_invariant(rwkv7_backend, ops)


def test_deleting_a_member_keeps_the_group_chat(store, cast) -> None:
    ada, ben, cy, _ = cast
    svc = ChatService(lambda: store, lambda: None)
    group = svc.new_group_chat([ada.id, ben.id, cy.id])
    alone = svc.new_chat(ada.id)
    store.delete_character(ada.id, chats="delete")
    assert store.get_conversation(alone.id) is None  # Ada's own chat went, as asked
    conv = store.get_conversation(group.id)
    assert conv.members == [ben.id, cy.id] and conv.character_id == ben.id
    assert [m.name for m in store.list_messages(group.id)] == ["Captain Ada Reyes", "Ben"]


PARROT = "Ben, check the reactor before the storm hits us and bring the spare coils from the hold."


def test_a_reply_that_repeats_a_recent_message_is_made_again_once(
    store, cast, rwkv7_backend, tmp_path
) -> None:
    """Issue 23's parroting: a member's reply that copies a recent message word for word is
    made again, once, as a new version with another seed; the copy stays as version 0."""
    ada, ben, cy, _ = cast
    fb = ForcedBackend(rwkv7_backend)
    svc, _eng = service(store, fb, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    svc.send(conv.id, "Orders, Captain?")
    fb.say(" " + PARROT + "\n\n")
    first = svc.reply_as(conv.id, ada.id, params=P.__class__(seed=3, max_tokens=40)).consume()
    assert first.message.text == PARROT and first.retry() is None  # said for the first time
    fb.say(" " + PARROT + "\n\n")  # 小雪 says it again, word for word
    copy = svc.reply_as(conv.id, cy.id, params=P.__class__(seed=3, max_tokens=40)).consume()
    assert copy.message.text == PARROT
    again = copy.retry()
    assert again is not None and again.replaces_repeat
    again.consume()  # the script is spent: the model's own words this time
    msg = store.get_message(copy.message.id)
    assert msg.alternatives[0] == PARROT and len(msg.alternatives) == 2
    assert msg.text == msg.alternatives[1] != PARROT and msg.chosen == 1
    assert (msg.name, msg.character_id) == ("小雪", cy.id)
    assert again.retry() is None  # once
    # without the guard (bench/roleplay.py's "before"), the copy stays as it is
    fb.say(" " + PARROT + "\n\n")
    plain = svc.reply_as(conv.id, ben.id, guard=False, params=P.__class__(seed=3, max_tokens=40))
    assert plain.consume().message.text == PARROT and plain.retry() is None
    # a reply the user stopped is not made again
    fb.say(" " + PARROT + "\n\n")
    stopped = svc.reply_as(conv.id, ada.id, params=P.__class__(seed=3, max_tokens=40))
    next(iter(stopped))
    stopped.close()
    assert stopped.result.stop_reason in ("cancel", "closed") and stopped.retry() is None


def test_a_repeated_line_does_not_pick_the_member_it_names(
    store, cast, rwkv7_backend, tmp_path
) -> None:
    """A copy that survives its one retry stays, but the name in it does not choose the next
    speaker: natural order then goes by talkativeness, as when nobody is named."""
    ada, ben, cy, _ = cast
    fb = ForcedBackend(rwkv7_backend)
    svc, _eng = service(store, fb, tmp_path)
    conv = svc.new_group_chat([ada.id, ben.id, cy.id])
    fb.say(" " + PARROT + "\n\n")
    svc.reply_as(conv.id, ada.id, params=P.__class__(seed=3, max_tokens=40)).consume()
    # said once: Ben is named, so Ben answers, whatever the rolls
    assert {svc.pick_speaker(conv.id, random.Random(s)) for s in range(30)} == {ben.id}
    fb.say(" " + PARROT + "\n\n")
    copy = svc.reply_as(conv.id, cy.id, params=P.__class__(seed=3, max_tokens=40)).consume()
    fb.say(" " + PARROT + "\n\n")  # and the retry copies it too
    again = copy.retry()
    assert again is not None and again.consume().message.text == PARROT
    assert said(conv, store.list_messages(conv.id), members(store, conv))[-1].repeat
    picks = {svc.pick_speaker(conv.id, random.Random(s)) for s in range(30)}
    assert ada.id in picks and cy.id not in picks  # rolls (Ada talks most); 小雪 spoke last
