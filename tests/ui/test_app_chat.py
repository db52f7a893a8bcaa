"""AppTest of the Chat page with a real (tiny, random-weight) RWKV-7 model.

Covers: start a chat from a character made in the form, three turns, regenerate and page through
versions, edit and continue, stop mid-reply, who speaks next, delete and rewind, rename and
delete a chat, per-chat sampling presets, a 1,000-message chat, two sessions, reopening the chat
in a new session on the same data directory.

Stop: AppTest cannot click while a script runs, so the test does what a Stop click does to the
page: a rerun request lands while st.write_stream is streaming (here raised from inside the
stream after three pieces with st.rerun()). The page must close the reply, the engine's on_finish
must save what was streamed, and the next run shows it marked "stopped". tests/e2e/test_e2e.py
clicks the real Stop button in Chromium.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.prompt import Message, normalize
from tests.support.ui import (
    SMALL_REPLY,
    chat_texts,
    check,
    create_character,
    errors,
    follow,
    open_app,
    store,
)

CHAT = "pages/chat.py"


def _start(at: Any, name: str = "Aria", **fields: str) -> int:
    """Create a character in the form, click its Chat button; returns the new chat's id."""
    at.switch_page("pages/characters.py").run()
    create_character(at, name, greeting=fields.pop("greeting", "Hello there, {{user}}."), **fields)
    cid = store().get_character_by_name(name).id
    at.button(key=f"chat_{cid}").click().run()
    check(at)
    assert at.chat_input, "the Chat page did not open"
    follow(at, CHAT)
    conv = store().list_conversations(cid)[0]
    at.number_input(key=f"samp_{conv.id}_max_tokens").set_value(SMALL_REPLY).run()
    check(at)
    return conv.id


def _say(at: Any, text: str) -> None:
    at.chat_input(key="chat_input").set_value(text).run()
    check(at)
    assert not errors(at), errors(at)


def _msgs(conv_id: int) -> list[Any]:
    return store().list_messages(conv_id)


def test_three_turns_regenerate_pick_edit_continue_and_reopen(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    conv = store().get_conversation(conv_id)
    assert conv.sampling["max_tokens"] == SMALL_REPLY and conv.sampling["preset"] == "custom"
    assert [m.role for m in _msgs(conv_id)] == ["char"]  # the greeting
    assert _msgs(conv_id)[0].text == "Hello there, User."

    for i in range(3):
        _say(at, f"Turn number {i}")
    msgs = _msgs(conv_id)
    assert [m.role for m in msgs] == ["char", "user", "char", "user", "char", "user", "char"]
    assert [m.text for m in msgs if m.role == "user"] == [f"Turn number {i}" for i in range(3)]
    for reply in msgs[2::2]:
        assert reply.text.strip()
        assert 1 <= reply.meta["tokens"] <= SMALL_REPLY
        assert reply.meta["stop"] in ("stop", "eos", "length")
    texts = chat_texts(at)
    assert "Turn number 2" in texts
    assert any("tokens" in c.value and "tokens/s" in c.value for c in at.caption)

    # regenerate the last reply: a second version, chosen, the first one kept
    last = msgs[-1]
    at.button(key=f"regen_{last.id}").click().run()
    check(at)
    m = store().get_message(last.id)
    assert len(m.alternatives) == 2 and m.chosen == 1
    assert m.alternatives[0] == last.text
    assert any(c.value == "2/2" for c in at.caption)
    assert len(_msgs(conv_id)) == 7  # regenerate adds a version, not a message

    # page back to version 1 and pick it
    at.button(key=f"prev_{last.id}").click().run()
    check(at)
    m = store().get_message(last.id)
    assert m.chosen == 0 and m.text == last.text
    assert any(c.value == "1/2" for c in at.caption)

    # edit the reply, then continue it
    at.button(key=f"edit_{last.id}").click().run()
    at.text_area(key=f"edit_text_{last.id}").input("Edited reply, and then")
    at.button(key=f"FormSubmitter:editform_{last.id}-Save").click().run()
    check(at)
    assert store().get_message(last.id).text == "Edited reply, and then"
    at.button(key=f"cont_{last.id}").click().run()
    check(at)
    m = store().get_message(last.id)
    assert m.text.startswith("Edited reply, and then")
    # the version shown is made longer in place (as in SillyTavern): no version is added
    versions = store().get_message(last.id).alternatives
    assert m.alternatives[m.chosen] == m.text and len(m.alternatives) == len(versions)
    assert "Edited reply, and then" not in m.alternatives
    assert m.meta.get("continued") is True
    assert len(_msgs(conv_id)) == 7

    # a new browser session on the same data directory resumes the chat from Home
    before = [x.text for x in _msgs(conv_id)]
    at2 = open_app()
    at2.button(key=f"home_resume_{conv_id}").click().run()
    check(at2)
    follow(at2, CHAT)
    texts2 = chat_texts(at2)
    assert "Turn number 0" in texts2 and "Turn number 2" in texts2
    assert any(t.startswith("Edited reply, and then") for t in texts2)
    # and it can go on chatting there
    _say(at2, "Back again")
    after = [x.text for x in _msgs(conv_id)]
    assert after[: len(before)] == before and after[len(before)] == "Back again"
    assert len(after) == len(before) + 2


def test_reopen_by_url_in_a_new_session(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    _say(at, "Remember me")
    at2 = open_app(CHAT, chat=str(conv_id))
    assert "Remember me" in chat_texts(at2)


def test_stop_mid_reply_keeps_what_was_streamed(app_env: Path, monkeypatch: Any) -> None:
    import streamlit as st

    from core.engine import Engine
    from pages.ui_common import md_text

    at = open_app()
    conv_id = _start(at)
    at.number_input(key=f"samp_{conv_id}_max_tokens").set_value(60).run()
    at.number_input(key=f"samp_{conv_id}_seed").set_value(1).run()  # the same replies every run
    shown: list[str] = []
    real_reply = Engine.reply

    def reply_then_stop_click(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = real_reply(self, *args, **kwargs)

        class Interrupted:
            def __iter__(self) -> Any:
                it = iter(reply)
                try:
                    for piece in it:
                        shown.append(piece)
                        yield piece
                        if len(shown) == 3:
                            st.rerun()  # the Stop click's rerun request, mid-stream
                finally:
                    it.close()

        return Interrupted()

    monkeypatch.setattr(Engine, "reply", reply_then_stop_click)
    _say(at, "Tell me a long story")
    monkeypatch.setattr(Engine, "reply", real_reply)
    msgs = _msgs(conv_id)
    assert [m.role for m in msgs][-2:] == ["user", "char"]
    saved = msgs[-1]
    streamed = "".join(shown)
    assert len(shown) == 3 and streamed.strip()
    assert saved.text == normalize(streamed)  # all that was streamed, and nothing else
    assert saved.meta["stop"] in ("closed", "cancel")
    assert saved.meta["tokens"] < 60
    assert any("stopped" in c.value for c in at.caption)
    assert chat_texts(at)[-1] == md_text(saved.text)  # and the page shows it
    # continue the stopped reply: the same text, then more
    at.button(key=f"cont_{saved.id}").click().run()
    check(at)
    continued = store().get_message(saved.id).text
    assert continued.startswith(saved.text) and len(continued) > len(saved.text), continued


def test_token_cap_stops_a_reply_and_says_so(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    # a fixed seed: this reply runs into the cap every time (the first token can never end it)
    at.number_input(key=f"samp_{conv_id}_seed").set_value(1).run()
    at.number_input(key=f"samp_{conv_id}_max_tokens").set_value(2).run()
    _say(at, "Hi")
    last = _msgs(conv_id)[-1]
    assert (last.role, last.meta["stop"], last.meta["tokens"]) == ("char", "length", 2)
    assert any("cut at the token limit" in c.value for c in at.caption)


def test_who_speaks_next(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    # the narrator speaks when asked
    at.radio(key="next_speaker").set_value("narrator").run()
    at.button(key="generate_next").click().run()
    check(at)
    assert _msgs(conv_id)[-1].role == "narrator"
    # with "you" as next speaker, typing only adds your line
    at.radio(key="next_speaker").set_value("user").run()
    _say(at, "I say two things.")
    _say(at, "And a second one.")
    assert [m.role for m in _msgs(conv_id)][-2:] == ["user", "user"]
    # and Generate lets the model write your line
    at.button(key="generate_next").click().run()
    check(at)
    last = _msgs(conv_id)[-1]
    assert last.role == "user" and "tokens" in last.meta
    # back to the character: typing gets a reply again
    at.radio(key="next_speaker").set_value("char").run()
    _say(at, "Your turn.")
    assert [m.role for m in _msgs(conv_id)][-2:] == ["user", "char"]


def test_delete_and_rewind(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    _say(at, "one")
    _say(at, "two")
    msgs = _msgs(conv_id)
    assert len(msgs) == 5
    # delete the first user message: the later ones move up
    at.button(key=f"del_{msgs[1].id}").click().run()
    check(at)
    assert [m.id for m in _msgs(conv_id)] == [msgs[0].id, *[m.id for m in msgs[2:]]]
    # rewind to the greeting: everything after it goes
    at.button(key=f"rewind_{msgs[0].id}").click().run()
    check(at)
    assert [m.id for m in _msgs(conv_id)] == [msgs[0].id]


def _undo_shown(at: Any) -> str:
    return " ".join(s.value for s in at.success)


def test_delete_rewind_and_a_version_come_back_with_undo(app_env: Path) -> None:
    """Issue 23, "one click destroys": each removal says what it did and offers Undo, which
    puts back the messages with all their versions."""
    at = open_app()
    conv_id = _start(at)
    _say(at, "one")
    reply = _msgs(conv_id)[-1]
    for _ in range(2):  # the reply gets three versions
        at.button(key=f"regen_{reply.id}").click().run()
        check(at)
    _say(at, "two")
    before = [(m.id, m.position, m.text, m.alternatives, m.chosen) for m in _msgs(conv_id)]
    assert len(before[2][3]) == 3

    def now() -> list[Any]:
        return [(m.id, m.position, m.text, m.alternatives, m.chosen) for m in _msgs(conv_id)]

    # delete the reply with its three versions: gone, said, and back with Undo
    at.button(key=f"del_{reply.id}").click().run()
    check(at)
    assert reply.id not in [m[0] for m in now()]
    assert "Deleted a message." in _undo_shown(at)
    at.button(key="undo_btn").click().run()
    check(at)
    assert now() == before
    assert "The message is back." in _undo_shown(at) and at.button(key="undo_btn").disabled
    # rewind to the greeting, then Undo
    first = before[0][0]
    at.button(key=f"rewind_{first}").click().run()
    check(at)
    assert [m[0] for m in now()] == [first]
    assert "Rewound: removed 4 messages." in _undo_shown(at)
    at.button(key="undo_btn").click().run()
    assert now() == before and "4 messages are back." in _undo_shown(at)
    # one version of the reply: the one shown goes, the others stay; Undo puts it back
    shown = store().get_message(reply.id)
    at.button(key=f"delver_{reply.id}").click().run()
    check(at)
    left = store().get_message(reply.id)
    assert len(left.alternatives) == 2 and shown.text not in left.alternatives
    assert "Deleted a version of the message." in _undo_shown(at)
    at.button(key="undo_btn").click().run()
    assert now() == before
    # a message sent: the offer goes (what was removed is still kept until compaction)
    at.button(key=f"del_{before[-1][0]}").click().run()
    _say(at, "three")
    assert not at.get("button") or "undo_btn" not in [b.key for b in at.button]
    assert _undo_shown(at) == ""


def test_rename_delete_and_switch_chats(app_env: Path) -> None:
    at = open_app()
    first = _start(at)
    _say(at, "in the first chat")
    at.button(key="new_chat").click().run()
    check(at)
    convs = store().list_conversations()
    second = next(c.id for c in convs if c.id != first)
    assert "in the first chat" not in chat_texts(at)
    at.text_input(key=f"title_{second}").input("Second chat")
    at.button(key=f"FormSubmitter:rename_{second}-Rename").click().run()
    check(at)
    assert store().get_conversation(second).title == "Second chat"
    # switch back to the first chat
    at.selectbox(key="chat_conv_sel").set_value(first).run()
    check(at)
    assert "in the first chat" in chat_texts(at)
    # delete it
    at.button(key=f"del_chat_{first}").click().run()
    check(at)
    assert store().get_conversation(first) is None
    assert store().get_conversation(second) is not None


def test_sampling_presets_are_saved_per_chat(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    at.selectbox(key=f"samp_{conv_id}_preset").set_value("precise").run()
    check(at)
    sampling = store().get_conversation(conv_id).sampling
    assert sampling["preset"] == "precise" and sampling["top_k"] == 40
    assert at.number_input(key=f"samp_{conv_id}_top_k").value == 40
    at.slider(key=f"samp_{conv_id}_temperature").set_value(0.5).run()
    sampling = store().get_conversation(conv_id).sampling
    assert sampling["preset"] == "custom" and sampling["temperature"] == 0.5
    # DRY: off in "precise", on in "roleplay", and set by hand like the other fields
    assert sampling["dry_multiplier"] == 0.0
    at.selectbox(key=f"samp_{conv_id}_preset").set_value("roleplay").run()
    assert at.slider(key=f"samp_{conv_id}_dry_multiplier").value == 0.8
    at.slider(key=f"samp_{conv_id}_dry_multiplier").set_value(1.5).run()
    at.number_input(key=f"samp_{conv_id}_dry_allowed_length").set_value(3).run()
    sampling = store().get_conversation(conv_id).sampling
    assert (sampling["dry_multiplier"], sampling["dry_allowed_length"]) == (1.5, 3)
    assert sampling["dry_base"] == 1.75 and sampling["preset"] == "custom"


def test_a_long_chat_opens_with_only_its_last_messages_drawn(app_env: Path) -> None:
    """A 1,000-message chat opens drawing its last 30 messages, and more on request: what keeps
    its opening fast (the time itself is the machine's, not this test's to assert)."""
    s = store()
    ch = s.create_character({"name": "Longa", "greetings": ["Hi."]})
    rows = [{"role": "user" if i % 2 else "char", "text": f"message {i}"} for i in range(1000)]
    conv = s.import_conversation(
        character_id=ch.id, character_name="Longa", title="Long", messages=rows
    )
    at = open_app()
    at.switch_page(CHAT)
    at.query_params["chat"] = str(conv.id)
    at.run()
    check(at)
    texts = chat_texts(at)
    assert texts[-1] == "message 999" and "message 900" not in texts
    assert len(at.chat_message) == 30
    more = at.button(key="show_earlier")
    assert "970" in more.label
    more.click().run()
    check(at)
    assert len(at.chat_message) == 80


def test_two_sessions_each_see_their_own_chat(app_env: Path) -> None:
    a = open_app()
    conv_a = _start(a, "Ann")
    b = open_app()
    conv_b = _start(b, "Ben")
    _say(a, "secret of A")
    _say(b, "secret of B")
    a.run()
    assert "secret of A" in chat_texts(a) and "secret of B" not in chat_texts(a)
    assert "secret of B" in chat_texts(b) and "secret of A" not in chat_texts(b)
    assert a.session_state["conv_id"] == conv_a and b.session_state["conv_id"] == conv_b


def test_html_in_messages_is_not_rendered(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    at.radio(key="next_speaker").set_value("user").run()
    _say(at, "<script>alert(1)</script><b>x</b> ![img](http://127.0.0.1:9/x.png) $x$")
    body = [t for t in chat_texts(at) if "alert" in t][0]
    # Streamlit shows raw HTML in markdown as text; images and math are escaped by the page
    assert "<script>alert(1)</script><b>x</b>" in body
    assert "!\\[img]" in body and "\\$x\\$" in body
    assert store().list_messages(conv_id)[-1].text.startswith("<script>")


@pytest.mark.parametrize("bad", ["/nonexistent/model.pth", "relative-missing.gguf"])
def test_a_missing_model_is_an_error_not_a_traceback(
    app_env: Path, monkeypatch: Any, bad: str
) -> None:
    monkeypatch.setenv("RP_MODEL", bad)
    s = store()
    ch = s.create_character({"name": "Nomo", "greetings": ["Hi."]})
    conv = s.create_conversation(ch.id)
    at = open_app(CHAT, chat=str(conv.id))
    errs = errors(at)
    assert errs and errs[0].startswith("Could not load the model:")
    _say_unchecked = at.chat_input(key="chat_input").set_value("still here")
    _say_unchecked.run()
    check(at)
    assert s.list_messages(conv.id)[-1].text == "still here"
    assert any("No model is loaded" in w.value for w in at.warning)


def test_a_second_session_is_told_that_the_model_is_busy(app_env: Path, monkeypatch: Any) -> None:
    """While another session's reply is under way (engine.busy), the page says it waits.

    The note goes away when the first piece arrives, so AppTest's final page cannot show it:
    the test records what the page wrote into its placeholder. The other session is a reply
    started on the same shared engine and left suspended (it holds the engine busy)."""
    from streamlit.delta_generator import DeltaGenerator

    from core import runtime
    from core.engine.sampler import SamplingParams
    from core.prompt import CharacterContext

    at = open_app()
    conv_id = _start(at)
    engine = runtime.current().engine()  # the engine the app shares between sessions
    assert engine is not None
    shown: list[str] = []
    real_info = DeltaGenerator.info

    def recording_info(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        shown.append(str(body))
        return real_info(self, body, *args, **kwargs)

    for seed in range(10):  # a reply that has started and not ended (it may end at once)
        it = iter(
            engine.reply(
                CharacterContext(),
                [Message("user", "hi")],
                Message("char"),
                SamplingParams(max_tokens=500, temperature=1.0, seed=seed),
            )
        )
        if next(it, None) is not None:
            break
    try:
        assert engine.busy
        monkeypatch.setattr(DeltaGenerator, "info", recording_info)
        _say(at, "Are you there?")
    finally:
        it.close()
    assert any("Waiting for the model" in x for x in shown), shown
    assert _msgs(conv_id)[-1].role == "char"  # and it answered all the same
    assert not engine.busy


def test_export_and_import_a_chat(app_env: Path) -> None:
    from core.roleplay.chat_io import export_jsonl
    from pages.ui_common import md_inline

    at = open_app()
    conv_id = _start(at)
    _say(at, "remember the blue door")
    data = export_jsonl(store(), conv_id)
    dl = [d.proto.id for d in at.get("download_button")]
    assert any(f"dl_md_{conv_id}" in i for i in dl) and any(f"dl_jsonl_{conv_id}" in i for i in dl)
    at.file_uploader(key="import_chat_up_0").set_value(
        ("chat.jsonl", data.encode(), "application/jsonl")
    )
    at.run()
    at.button(key="import_chat_btn").click().run()
    check(at)
    convs = store().list_conversations()
    assert len(convs) == 2
    new = next(c for c in convs if c.id != conv_id)
    assert at.session_state["conv_id"] == new.id
    assert "remember the blue door" in chat_texts(at)
    # said, under a title of its own, and the uploader is empty again
    old_title = store().get_conversation(conv_id).title
    assert new.title == f"{old_title} (imported)"
    n = len(store().list_messages(new.id))
    assert [t.value for t in at.toast] == [
        f"Imported the chat {md_inline(new.title)} ({n} messages)."
    ]
    assert not at.get("file_uploader") or all(
        u.key != "import_chat_up_0" for u in at.get("file_uploader")
    )
    assert at.file_uploader(key="import_chat_up_1").value is None
    # a broken file is refused with a message
    at.file_uploader(key="import_chat_up_1").set_value(("bad.jsonl", b"{oops", "application/jsonl"))
    at.run()
    at.button(key="import_chat_btn").click().run()
    check(at)
    assert errors(at) and errors(at)[0].startswith("Could not do that:")


def test_continue_extends_the_version_unless_settings_say_add_one(app_env: Path) -> None:
    at = open_app()
    conv_id = _start(at)
    _say(at, "Tell me more")
    last = _msgs(conv_id)[-1]
    at.button(key=f"cont_{last.id}").click().run()
    check(at)
    longer = store().get_message(last.id)
    assert longer.alternatives == [longer.text] and longer.text.startswith(last.text)
    # Settings: continue adds a new version (the old way)
    at.switch_page("pages/settings.py").run()
    at.checkbox(key="set_continue_new_version").check().run()
    check(at)
    at.switch_page(CHAT).run()
    at.button(key=f"cont_{last.id}").click().run()
    check(at)
    again = store().get_message(last.id)
    assert again.alternatives[0] == longer.text and len(again.alternatives) == 2
    assert again.chosen == 1 and again.text.startswith(longer.text)
