"""AppTest of imports with bad files: a batch of cards goes on past a file that cannot be read and
names it in a sentence; a chat file that cannot be read is refused in the page. Never a
traceback, nothing saved is lost."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.ui import check, errors, open_app, store

HUGE = b"9" * 5000  # json refuses integers of over 4300 digits with a bare ValueError


def test_a_batch_of_cards_goes_on_past_a_bad_one(app_env: Path) -> None:
    at = open_app("pages/characters.py")
    js = "application/json"
    at.file_uploader(key="card_upload_0").set_value(
        [
            ("first.json", json.dumps({"name": "First"}).encode(), js),
            ("huge.json", b'{"name": "Huge", "x": ' + HUGE + b"}", js),
            ("half.json", b'{"name": "Half\\ud83d"}', js),  # half an emoji: U+FFFD
            ("last.json", json.dumps({"name": "Last"}).encode(), js),
        ]
    )
    at.run()
    at.button(key="import_cards_btn").click().run()
    check(at)
    names = {c.name for c in store().list_characters()}
    assert {"First", "Half\ufffd", "Last"} <= names and "Huge" not in names
    errs = errors(at)
    assert len(errs) == 1 and errs[0].startswith("Could not import huge")
    assert "a number in it has too many digits" in errs[0]


def test_a_chat_file_that_cannot_be_read_is_refused_in_the_page(app_env: Path) -> None:
    s = store()
    ch = s.create_character({"name": "Lin", "greetings": ["Hi."]})
    conv = s.create_conversation(ch.id)
    at = open_app("pages/chat.py", chat=str(conv.id))
    bad = b'{"user_name": "u"}\n{"mes": "a", "swipe_id": ' + HUGE + b"}"
    at.file_uploader(key="import_chat_up_0").set_value(("big.jsonl", bad, "application/jsonl"))
    at.run()
    at.button(key="import_chat_btn").click().run()
    check(at)
    assert any("Line 2 of the chat file has a number too long" in e for e in errors(at))
    assert [c.id for c in store().list_conversations()] == [conv.id]
