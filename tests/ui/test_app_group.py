"""AppTest of group chats with the tiny RWKV-7: start a group chat of three on Home, send a
message and see the reply under the chosen member's name, the manual pick, mute, the auto mode,
and a character added mid-chat. A one-character chat's page keeps its own controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.ui import (
    SMALL_REPLY,
    check,
    click_during_reply,
    errors,
    follow,
    open_app,
    store,
)

CHAT = "pages/chat.py"
NAMES = ("Ada", "Ben", "Cyra")


def _cast() -> list[int]:
    """Ada, Ben and Cyra with a picture each, and Dee (who joins later)."""
    from core.roleplay.avatars import placeholder_png, save_avatar

    s = store()
    ids = []
    for name in (*NAMES, "Dee"):
        fields = {"name": name, "description": f"{{{{char}}}} is {name}."}
        fields |= {"greetings": [f"I am {name}."], "avatar": save_avatar(placeholder_png(name))}
        ids.append(s.create_character(fields).id)
    s.close()
    return ids


def _start_group(at: Any, ids: list[int]) -> int:
    at.multiselect(key="group_new_pick").set_value(ids).run()
    at.button(key="group_new_start").click().run()
    check(at)
    follow(at, CHAT)
    conv = store().list_conversations(ids[0])[0]
    at.number_input(key=f"samp_{conv.id}_max_tokens").set_value(SMALL_REPLY).run()
    return check(at) and conv.id


def _say(at: Any, text: str) -> None:
    at.chat_input(key="chat_input").set_value(text).run()
    check(at)
    assert not errors(at), errors(at)


def _shown_names(at: Any) -> list[str]:
    """The speaker of each message on the page (its chat_message's caption)."""
    return [m.caption[0].value for m in at.chat_message]


def test_a_group_of_three_talks_in_the_page(app_env: Path) -> None:
    ada, ben, cyra, dee = _cast()
    at = open_app()
    # fewer than two: a message, no chat
    at.multiselect(key="group_new_pick").set_value([ada]).run()
    at.button(key="group_new_start").click().run()
    assert "Choose at least two characters." in [w.value for w in at.warning]
    cid = _start_group(at, [ada, ben, cyra])

    conv = store().get_conversation(cid)
    assert conv.members == [ada, ben, cyra]
    # every member's avatar and name in the header, and each greeting under its member's name
    header = [c.value for c in at.get("caption") if c.value in NAMES]
    assert header[:3] == list(NAMES)
    assert _shown_names(at) == list(NAMES)
    # each greeting shows its own member's picture (served as media: three different files)
    pictures = [m.avatar for m in at.chat_message]
    assert len(set(pictures)) == 3 and all(p.startswith("/") for p in pictures)

    # in turn: after Cyra's greeting the turn goes to Ada
    at.selectbox(key=f"group_mode_{cid}").set_value("list").run()
    assert store().get_conversation(cid).group["activation"] == "list"
    _say(at, "Hello, everyone.")
    last = store().list_messages(cid)[-1]
    assert (last.role, last.name, last.character_id) == ("char", "Ada", ada)
    assert _shown_names(at)[-2:] == ["User", "Ada"]

    # manual: nobody answers on their own; the user picks Cyra
    at.selectbox(key=f"group_mode_{cid}").set_value("manual").run()
    _say(at, "Who wants to go next?")
    assert store().list_messages(cid)[-1].role == "user"
    at.radio(key="group_next").set_value(cyra).run()
    at.button(key="generate_next").click().run()
    check(at)
    last = store().list_messages(cid)[-1]
    assert (last.name, last.character_id) == ("Cyra", cyra)
    assert _shown_names(at)[-1] == "Cyra"

    # mute Ada: named, she still does not answer; the header says she is muted
    at.selectbox(key=f"group_mode_{cid}").set_value("natural").run()
    at.button(key=f"group_mute_{ada}").click().run()
    assert store().get_conversation(cid).group["muted"] == [ada]
    assert "Ada (muted)" in [c.value.replace("\\", "") for c in at.get("caption")]
    for i in range(3):
        _say(at, f"Ada, are you there? ({i})")
        assert store().list_messages(cid)[-1].name in ("Ben", "Cyra")
    at.button(key=f"group_mute_{ada}").click().run()  # unmute
    assert store().get_conversation(cid).group["muted"] == []

    # without a picture, each member still has its own avatar (its initials)
    s = store()
    for c in (ada, ben, cyra):
        s.update_character(c, {"avatar": ""})
    s.close()
    at.run()
    pictures = [m.avatar for m in at.chat_message[:3]]
    assert len(set(pictures)) == 3, pictures

    # the auto mode: two turns by members, then it ends by itself
    at.number_input(key=f"group_turns_{cid}").set_value(2).run()
    n = len(store().list_messages(cid))
    at.button(key="group_auto").click().run()
    check(at)
    msgs = store().list_messages(cid)
    assert len(msgs) == n + 2 and {m.role for m in msgs[n:]} == {"char"}
    assert all(m.character_id in (ada, ben, cyra) for m in msgs[n:])
    assert at.button(key="group_auto").label == "Let them talk (2 turns)"  # over

    # a fourth character joins mid-chat; the next reply is hers when picked
    at.selectbox(key=f"group_add_{cid}").set_value(dee).run()
    at.button(key=f"group_add_btn_{cid}").click().run()
    check(at)
    assert store().get_conversation(cid).members == [ada, ben, cyra, dee]
    at.selectbox(key=f"group_mode_{cid}").set_value("manual").run()
    at.radio(key="group_next").set_value(dee).run()
    at.button(key="generate_next").click().run()
    check(at)
    last = store().list_messages(cid)[-1]
    assert last.name == "Dee" and last.meta["joined"] == [dee]

    # regenerate keeps the speaker
    at.button(key=f"regen_{last.id}").click().run()
    check(at)
    again = store().get_message(last.id)
    assert len(again.alternatives) == 2 and again.name == "Dee"


def test_the_auto_mode_ends_when_nobody_may_speak(app_env: Path) -> None:
    ada, ben, cyra, _ = _cast()
    at = open_app()
    cid = _start_group(at, [ada, ben, cyra])
    for member in (ada, ben, cyra):
        at.button(key=f"group_mute_{member}").click().run()
    n = len(store().list_messages(cid))
    at.button(key="group_auto").click().run()
    check(at)
    assert len(store().list_messages(cid)) == n
    assert at.button(key="group_auto").label.startswith("Let them talk")
    # a muted member still speaks when the user picks it
    at.radio(key="group_next").set_value(ben).run()
    at.button(key="generate_next").click().run()
    assert store().list_messages(cid)[-1].name == "Ben"


@pytest.mark.parametrize(
    ("turn", "button"),
    [(1, "stop_gen"), (2, "stop_gen"), (3, "stop_gen"), (2, "group_auto")],
    ids=["stop-turn-1", "stop-turn-2", "stop-last-turn", "stop-auto-mode-turn-2"],
)
def test_stop_ends_the_auto_mode_at_any_turn(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, turn: int, button: str
) -> None:
    """Issue 23: Stop clicked during the auto mode's second turn was ignored. A click on the
    reply's Stop, or on "Stop auto mode" (shown while a member speaks), during turn 1, 2 or the
    last of 3 stops that reply (kept as far as it went, marked stopped) and the auto mode."""
    ada, ben, cyra, _ = _cast()
    at = open_app()
    cid = _start_group(at, [ada, ben, cyra])
    at.number_input(key=f"group_turns_{cid}").set_value(3).run()
    at.number_input(key=f"samp_{cid}_seed").set_value(1).run()  # the same replies every run
    n = len(store().list_messages(cid))
    shown = click_during_reply(monkeypatch, button, reply=turn)
    at.button(key="group_auto").click().run()
    check(at)
    assert shown, "no reply streamed"
    msgs = store().list_messages(cid)[n:]
    # the turns before the click ended by themselves; the one clicked is the last, stopped
    assert len(msgs) == turn, [(m.name, m.meta.get("stop")) for m in msgs]
    assert all(m.meta["stop"] not in ("closed", "cancel") for m in msgs[:-1])
    assert msgs[-1].meta["stop"] in ("closed", "cancel"), msgs[-1].meta
    assert msgs[-1].character_id in (ada, ben, cyra)
    assert any("stopped" in c.value for c in at.caption)
    # over: the button says "Let them talk" again, and nothing runs on a later run
    assert at.button(key="group_auto").label == "Let them talk (3 turns)"
    at.run()
    check(at)
    assert len(store().list_messages(cid)) == n + turn


def test_a_group_reply_that_repeats_a_message_is_made_again_in_its_place(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page streams what the chat service's guard returns (`Turn.retry`) in the reply's
    place: here every reply counts as a repeat (the rule itself: test_group_chat.py), so each
    member's reply is made once more, as a second version, and no more; the auto mode goes on
    after it."""
    import core.chat.groups

    monkeypatch.setattr(core.chat.groups, "repeats_recent", lambda messages: True)
    ada, ben, cyra, _ = _cast()
    at = open_app()
    cid = _start_group(at, [ada, ben, cyra])
    at.selectbox(key=f"group_mode_{cid}").set_value("list").run()
    _say(at, "Hello, everyone.")
    last = store().list_messages(cid)[-1]
    assert (last.name, len(last.alternatives), last.chosen) == ("Ada", 2, 1)
    assert _shown_names(at)[-2:] == ["User", "Ada"]
    # the auto mode: each turn's reply made again, and the turns still counted by messages
    at.number_input(key=f"group_turns_{cid}").set_value(2).run()
    n = len(store().list_messages(cid))
    at.button(key="group_auto").click().run()
    check(at)
    msgs = store().list_messages(cid)
    assert len(msgs) == n + 2 and [len(m.alternatives) for m in msgs[n:]] == [2, 2]
