"""AppTest of the lorebooks: the editor on the Characters page (create a book, add entries,
search, book settings, attach to a character, the card's own book) and, on the Chat page, a
book attached to the chat and the entries that fired for a reply, listed under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.ui import (
    SMALL_REPLY,
    check,
    create_character,
    errors,
    follow,
    open_app,
    store,
)

PAGE = "pages/characters.py"
CHAT = "pages/chat.py"


def _submit(at: Any, form: str, label: str) -> None:
    for b in at.button:
        if b.key and b.key.startswith(f"FormSubmitter:{form}") and b.label == label:
            b.click().run()
            check(at)
            return
    raise AssertionError(f"no {label!r} button in the form {form}")


def _add_entry(at: Any, key: str, keys: str, content: str, comment: str = "") -> None:
    at.text_input(key=f"lore_add_keys_{key}").input(keys)
    at.text_area(key=f"lore_add_content_{key}").input(content)
    at.text_input(key=f"lore_add_comment_{key}").input(comment)
    _submit(at, f"lore_add_{key}", "Add an entry")


def _table_rows(at: Any) -> list[dict[str, Any]]:
    """The rows the entries table shows (the first table with a content column)."""
    for table in at.data_editor:
        if "content" in table.value.columns:
            return table.value.to_dict("records")
    raise AssertionError("no entries table on the page")


def _make_book(at: Any, name: str) -> int:
    at.text_input(key="lore_new_name").input(name)
    at.button(key="lore_create").click().run()
    check(at)
    assert any(f"Created the lorebook {name}" in s.value for s in at.success)
    book = store().get_lorebook_by_name(name)
    assert book is not None
    return book.id


def test_editor_add_search_settings_attach(app_env: Path) -> None:
    at = open_app(PAGE)
    assert any(i.value.startswith("No lorebook yet") for i in at.info)
    book_id = _make_book(at, "Harbour")
    k = f"book{book_id}"
    _add_entry(at, k, "lighthouse, tower", "The lighthouse was built in 1887.", "Lighthouse")
    _add_entry(at, k, "/fish(ing)?/i", "Fishing boats leave at dawn.")
    assert not errors(at)
    entries = store().get_lorebook(book_id).entries
    assert [(e["key"], e["comment"]) for e in entries] == [
        (["lighthouse", "tower"], "Lighthouse"),
        (["/fish(ing)?/i"], ""),
    ]
    assert [r["content"] for r in _table_rows(at)] == [
        "The lighthouse was built in 1887.",
        "Fishing boats leave at dawn.",
    ]
    # search: only the matching entry is in the table
    at.text_input(key=f"lore_q_{k}").input("boats").run()
    check(at)
    assert [r["key"] for r in _table_rows(at)] == ["/fish(ing)?/i"]
    assert any("1 of 2 entries shown" in c.value for c in at.caption)
    # saving the table while searching keeps the entries the search hid
    at.button(key=f"lore_save_{k}").click().run()
    check(at)
    assert len(store().get_lorebook(book_id).entries) == 2
    # book settings
    form = f"lore_meta_{k}_"
    gen_key = next(n.key for n in at.number_input if n.key.startswith(f"lore_depth_{k}"))
    at.number_input(key=gen_key).set_value(4)
    at.checkbox(key=next(c.key for c in at.checkbox if c.key.startswith("lore_global_"))).check()
    _submit(at, form, "Save")
    book = store().get_lorebook(book_id)
    assert book.settings["scan_depth"] == 4 and book.is_global
    # attach the book to a character
    create_character(at, "Ada", description="A keeper.")
    ch = store().get_character_by_name("Ada")
    at.button(key=f"edit_{ch.id}").click().run()
    check(at)
    at.multiselect(key=f"lore_char_books_{ch.id}").select(book_id).run()
    check(at)
    assert store().get_character(ch.id).lorebook_ids == [book_id]
    # the card's own book: add an entry, stored as a V2 character_book
    _add_entry(at, f"char{ch.id}", "glade", "A quiet glade.", "Glade")
    own = store().get_character(ch.id).character_book
    assert [(e["keys"], e["content"], e["enabled"]) for e in own["entries"]] == [
        (["glade"], "A quiet glade.", True)
    ]
    # and copied out as a lorebook of its own
    at.button(key=f"lore_copy_{ch.id}").click().run()
    check(at)
    copy = store().get_lorebook_by_name("Ada")
    assert copy is not None and copy.entries[0]["key"] == ["glade"]


def test_a_refused_book_name_says_why(app_env: Path) -> None:
    at = open_app(PAGE)
    _make_book(at, "Harbour")
    at.text_input(key="lore_new_name").input("Harbour")
    at.button(key="lore_create").click().run()
    check(at)
    assert any("already exists" in e for e in errors(at))
    assert len(store().list_lorebooks()) == 1


def test_fired_entries_are_listed_under_the_reply(app_env: Path) -> None:
    s = store()
    ch = s.create_character({"name": "Ada", "greetings": ["Hello."]})
    from core.roleplay.lore import new_entry

    book = s.create_lorebook(
        "Harbour", [new_entry(0, key=["lighthouse"], content="Built in 1887.", comment="Tower")]
    )
    at = open_app(PAGE)
    at.button(key=f"chat_{ch.id}").click().run()
    check(at)
    follow(at, CHAT)
    conv = s.list_conversations(ch.id)[0]
    at.number_input(key=f"samp_{conv.id}_max_tokens").set_value(SMALL_REPLY).run()
    # the chat's own books, in the chat's menu
    at.multiselect(key=f"lore_chat_books_{conv.id}").select(book.id).run()
    check(at)
    assert s.get_conversation(conv.id).lorebook_ids == [book.id]
    at.chat_input(key="chat_input").set_value("Is the lighthouse old?").run()
    check(at)
    reply = s.list_messages(conv.id)[-1]
    assert reply.role == "char" and reply.meta["before"] == "Built in 1887."
    labels = [e.label for e in at.expander]
    assert "Lore: 1 entry" in labels
    assert any("Tower — Harbour" in m.value for m in at.markdown)
