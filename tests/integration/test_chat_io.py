"""Chats to Markdown and SillyTavern JSONL, and JSONL back in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.chat import conversation_context
from core.roleplay.chat_io import ChatIOError, export_jsonl, export_markdown, import_jsonl
from core.store import Store, StoreError
from core.store.models import Conversation


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


def chat(store: Store) -> Conversation:
    cid = store.create_character(
        {"name": "Mira", "greetings": ["Hello {{user}}.", "Evening, {{user}}."]}
    ).id
    conv = store.create_conversation(cid, user_name="Sam", model="tiny.pth", sampling={"t": 1})
    store.add_message(conv.id, "user", "Hi!\nIt's <b>cold</b>.")
    reply = store.add_message(conv.id, "char", "Tea?", meta={"tokens": 2, "stop": "\n\n"})
    store.add_alternative(reply.id, "Come in.", meta={"tokens": 3})
    store.add_message(conv.id, "narrator", "The fog lifts.")
    store.add_message(conv.id, "char", "Look!", name="Gull")
    return store.get_conversation(conv.id)


def test_markdown(store: Store):
    conv = chat(store)
    md = export_markdown(store, conv.id)
    assert md.startswith(f"# {conv.title}\n")
    assert "Character: Mira" in md and "User: Sam" in md and "Model: tiny.pth" in md
    blocks = md.split("\n\n")
    assert "**Mira:**" in blocks and "Hello Sam." in blocks
    assert "**Sam:**" in blocks and "Hi!\nIt's <b>cold</b>." in blocks
    assert "Come in." in blocks and "Tea?" not in md  # the chosen version only
    assert "*Narrator:*" in blocks and "**Gull:**" in blocks
    assert md.index("Hello Sam.") < md.index("Hi!") < md.index("Come in.") < md.index("Look!")
    with pytest.raises(StoreError):
        export_markdown(store, 999)


def test_jsonl_export_is_sillytavern_shaped(store: Store):
    conv = chat(store)
    lines = [json.loads(line) for line in export_jsonl(store, conv.id).splitlines()]
    header, *msgs = lines
    assert header["user_name"] == "Sam" and header["character_name"] == "Mira"
    assert "create_date" in header and "chat_metadata" in header
    assert len(msgs) == 5
    greeting, user, reply, narrator, gull = msgs
    assert greeting["name"] == "Mira" and greeting["is_user"] is False
    assert greeting["swipes"] == ["Hello Sam.", "Evening, Sam."] and greeting["swipe_id"] == 0
    assert user == {**user, "name": "Sam", "is_user": True, "mes": "Hi!\nIt's <b>cold</b>."}
    assert reply["mes"] == "Come in." and reply["swipes"] == ["Tea?", "Come in."]
    assert reply["swipe_id"] == 1
    assert narrator["extra"]["type"] == "narrator" and gull["name"] == "Gull"
    for m in msgs:
        assert isinstance(m["send_date"], str) and m["is_system"] is False


def test_jsonl_round_trip(store: Store):
    conv = chat(store)
    new = import_jsonl(store, export_jsonl(store, conv.id), None)
    assert new.id != conv.id
    assert new.character_id == conv.character_id and new.character_name == "Mira"
    assert (new.title, new.user_name, new.model, new.sampling) == (
        f"{conv.title} (imported)",  # told apart from the chat it came from
        "Sam",
        "tiny.pth",
        {"t": 1},
    )
    keys = ("position", "role", "name", "text", "alternatives", "chosen", "alt_meta", "meta")
    before = [{k: getattr(m, k) for k in keys} for m in store.list_messages(conv.id)]
    after = [{k: getattr(m, k) for k in keys} for m in store.list_messages(new.id)]
    assert after == before
    assert after[2]["meta"] == {"tokens": 3} and after[2]["alt_meta"][0]["stop"] == "\n\n"


def test_import_a_sillytavern_chat(store: Store):
    alice = store.create_character({"name": "Alice"}).id
    lines = [
        {"user_name": "You", "character_name": "Alice", "create_date": "2023-7-20 @02h 00m"},
        {
            "name": "Alice",
            "is_user": False,
            "is_system": False,
            "send_date": "July 20, 2023",
            "mes": "*waves* Hi!",
            "swipes": ["Hello.", "*waves* Hi!"],
            "swipe_id": 1,
            "extra": {},
        },
        {
            "name": "You",
            "is_user": True,
            "is_system": False,
            "send_date": 1689818400000,
            "mes": "Hey",
            "extra": {"bias": ""},
        },
        {
            "name": "Alice",
            "is_user": False,
            "send_date": "2023-07-20T02:01:00.000Z",
            "mes": "Mismatch",
            "swipes": ["a", "b"],
            "swipe_id": 7,
        },
        {"name": "System", "is_user": False, "is_system": True, "mes": "A hidden note."},
    ]
    text = "\ufeff" + "\n".join(json.dumps(x) for x in lines) + "\n\n"
    conv = import_jsonl(store, text.encode("utf-8"), None)
    assert conv.character_id == alice and conv.user_name == "You"
    msgs = store.list_messages(conv.id)
    assert [(m.role, m.text) for m in msgs] == [
        ("char", "*waves* Hi!"),
        ("user", "Hey"),
        ("char", "Mismatch"),
        ("narrator", "A hidden note."),
    ]
    assert msgs[0].alternatives == ["Hello.", "*waves* Hi!"] and msgs[0].chosen == 1
    assert msgs[2].alternatives == ["a", "b", "Mismatch"] and msgs[2].chosen == 2
    assert msgs[0].name == "" and msgs[1].name == "" and msgs[3].name == "System"
    assert msgs[1].created_at.year == 2023
    assert [m.position for m in msgs] == [0, 1, 2, 3]


def test_import_into_a_chosen_or_missing_character(store: Store):
    bob = store.create_character({"name": "Bob"}).id
    data = "\n".join(
        json.dumps(x)
        for x in [
            {"user_name": "U", "character_name": "Nobody Here"},
            {"name": "Nobody Here", "is_user": False, "mes": "hi"},
        ]
    )
    orphan = import_jsonl(store, data, None)
    assert orphan.character_id is None and orphan.character_name == "Nobody Here"
    assert conversation_context(store, orphan.id).name == "Nobody Here"
    mine = import_jsonl(store, data, bob)
    assert mine.character_id == bob and mine.character_name == "Bob"
    with pytest.raises(StoreError):
        import_jsonl(store, data, 9999)


@pytest.mark.parametrize(
    "data, message",
    [
        ("", "empty"),
        ("   \n\n", "empty"),
        ('{"user_name": "U"}\n{not json}', "Line 2.*not valid JSON"),
        ('{"user_name": "U"}\n[1, 2]', "Line 2.*not a JSON object"),
        ('{"user_name": "U"}\n{"name": "x", "is_user": true}', "Line 2.*no message"),
        ('{"name": "x", "mes": 5}', "Line 1.*not text"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        ('{"name": "x", "mes": "' + "y" * 100_001 + '"}', "limit"),
    ],
)
def test_bad_chat_files_are_refused_and_nothing_is_written(
    store: Store, data: str | bytes, message: str
):
    with pytest.raises(ChatIOError, match=message):
        import_jsonl(store, data, None)
    assert store.list_conversations() == []


def test_a_bad_line_late_in_the_file_writes_nothing(store: Store):
    good = [json.dumps({"name": "A", "is_user": True, "mes": f"m{i}"}) for i in range(50)]
    with pytest.raises(ChatIOError, match="Line 51"):
        import_jsonl(store, "\n".join([*good, "{broken"]), None)
    assert store.list_conversations() == []


# --- broken input: only ChatIOError, in a sentence ----------------------------------------------

_BIG_INT = "9" * 5000  # json refuses integers of over 4300 digits with a bare ValueError
_NASTY = (_BIG_INT, "[" * 3000, "\\ud800", "NaN", "1e999", "{", '"', "\x00", "\n")
_HEADER = '{"user_name": "Sam", "character_name": "Mira"}'


@st.composite
def broken_chat(draw: st.DrawFn) -> str:
    """A good export with a few characters replaced, inserted or cut, some of them nasty."""
    lines = [
        _HEADER,
        '{"name": "Sam", "is_user": true, "mes": "Hi", "send_date": "2024-01-01T10:00:00Z"}',
        '{"name": "Mira", "mes": "Tea?", "swipes": ["Tea?", "Coffee?"], "swipe_id": 1,'
        ' "extra": {"rwkv_roleplay": {"role": "char", "name": "", "alt_meta": [{}, {}]}}}',
    ]
    text = "\n".join(lines)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = i + draw(st.integers(0, 8))
        text = text[:i] + draw(st.sampled_from(_NASTY) | st.text(max_size=6)) + text[j:]
    return text


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=broken_chat())
@example(text=_HEADER + '\n{"mes": "a", "swipe_id": ' + _BIG_INT + "}")
@example(text='{"user_name": "u", "chat_metadata": [1]}\n{"mes": "a"}')
@example(text='{"user_name": "u", "chat_metadata": 5}\n{"mes": "a"}')
@example(text=_HEADER + '\n{"mes": "half \\ud83d", "swipes": ["\\udc00"]}')
def test_broken_chat_files_raise_only_chat_errors(store: Store, text: str):
    try:
        conv = import_jsonl(store, text, None)
    except ChatIOError as e:
        assert str(e) and "\n" not in str(e) and "sys." not in str(e)
    else:
        store.delete_conversation(conv.id)


def test_a_huge_number_or_a_lone_surrogate_in_a_chat(store: Store):
    with pytest.raises(ChatIOError, match="Line 2 of the chat file has a number too long"):
        import_jsonl(store, _HEADER + '\n{"mes": "a", "swipe_id": ' + _BIG_INT + "}", None)
    conv = import_jsonl(store, _HEADER + '\n{"mes": "half \\ud83d!"}', None)
    assert [m.text for m in store.list_messages(conv.id)] == ["half \ufffd!"]


def test_an_imported_chat_has_a_title_of_its_own_even_a_long_one(store: Store):
    conv = chat(store)
    store.rename_conversation(conv.id, "A" * 200)  # the longest title there is
    new = import_jsonl(store, export_jsonl(store, conv.id), None)
    assert new.title.endswith("A (imported)") and len(new.title) == 200
