"""AppTest of the Chat page's "×3": three versions of the last reply at once (decoded as one
batch on llama.cpp; one after the other on the tiny rwkv model these page tests load), each
saved as a version of the message, the first of them shown."""

from __future__ import annotations

from pathlib import Path

from tests.support.ui import SMALL_REPLY, check, create_character, errors, follow, open_app, store

CHAT = "pages/chat.py"


def test_three_versions_at_once_are_saved_as_versions_of_the_last_reply(app_env: Path) -> None:
    at = open_app()
    at.switch_page("pages/characters.py").run()
    create_character(at, "Vera", greeting="Hello, {{user}}.")
    cid = store().get_character_by_name("Vera").id
    at.button(key=f"chat_{cid}").click().run()
    check(at)
    follow(at, CHAT)
    conv = store().list_conversations(cid)[0]
    at.number_input(key=f"samp_{conv.id}_max_tokens").set_value(SMALL_REPLY).run()
    at.chat_input(key="chat_input").set_value("Tell me something.").run()
    check(at)
    last = store().list_messages(conv.id)[-1]
    assert last.role == "char" and len(last.alternatives or [last.text]) == 1
    at.button(key=f"regen3_{last.id}").click().run()
    check(at)
    assert not errors(at), errors(at)
    msgs = store().list_messages(conv.id)
    assert [m.id for m in msgs][-1] == last.id and len(msgs) == 3  # versions, not messages
    msg = msgs[-1]
    assert len(msg.alternatives) == 4
    assert all(a.strip() for a in msg.alternatives)
    assert all(1 <= (m or {}).get("tokens", 0) <= SMALL_REPLY for m in msg.alt_meta[1:])
    assert any("4/4" in c.value or "/4" in c.value for c in at.caption)  # the pager shows them
