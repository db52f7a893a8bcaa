"""LoreService on a real store in the test's data directory: each change a front end makes to
lorebooks (create, import a World Info file, update, save entries, delete, attach to a character
or a chat, a card's own book saved or copied out), and each refusal, which leaves the store as
it was."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import NotFound, StoreError
from core.roleplay.cards import import_card
from core.roleplay.lore import (
    LoreError,
    LoreService,
    from_character_book,
    new_entry,
    world_info_bytes,
)
from core.store import Store
from tests.support.db_fixtures import LOREBOOK, card_png, v2_card


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


ENTRIES = [
    new_entry(0, key=["dragon"], content="Dragons sleep under the hill.", comment="Dragons"),
    new_entry(1, key=["moon"], content="The moon is red tonight.", order=200),
]
WORLD_INFO = {
    "entries": {
        "0": {"uid": 0, "key": ["castle"], "content": "A castle.", "comment": "Castle"},
        "5": {"uid": 5, "key": ["/tow(er|n)/i"], "content": "A town.", "order": 5},
    },
    "originalData": {"name": "from SillyTavern"},
}


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a lorebook operation may change: the books, and the books each character
    and chat uses (a character's card book included)."""
    return {
        "books": [b.model_dump() for b in store.list_lorebooks()],
        "characters": [
            (c.id, c.name, c.lorebook_ids, c.character_book) for c in store.list_characters()
        ],
        "chats": [(c.id, c.lorebook_ids) for c in store.list_conversations()],
    }


@pytest.fixture
def lore(store: Store) -> LoreService:
    return LoreService(store)


# --- the books ------------------------------------------------------------------------------


def test_create_makes_an_empty_book_and_refuses_a_taken_name(
    store: Store, lore: LoreService
) -> None:
    book = lore.create("  Harbour ")
    stored = store.get_lorebook(book.id)
    assert (stored.name, stored.entries, stored.settings, stored.is_global) == (
        "Harbour",
        [],
        {},
        False,
    )
    before = snapshot(store)
    with pytest.raises(StoreError, match='A lorebook named "Harbour" already exists'):
        lore.create("Harbour")
    with pytest.raises(StoreError, match="name"):
        lore.create("")
    assert snapshot(store) == before


def test_import_file_stores_the_book_the_file_holds(store: Store, lore: LoreService) -> None:
    data = json.dumps(WORLD_INFO).encode()
    book = lore.import_file(data, "Castles.json")
    stored = store.get_lorebook(book.id)
    assert stored.name == "Castles"  # the file has no name: the file's, without ".json"
    assert [(e["uid"], e["key"], e["content"]) for e in stored.entries] == [
        (0, ["castle"], "A castle."),
        (5, ["/tow(er|n)/i"], "A town."),
    ]
    # exported again: the same entries under the same keys, the file's other fields kept
    out = json.loads(world_info_bytes(stored))
    assert out["originalData"] == {"name": "from SillyTavern"}
    assert {k: (e["key"], e["content"], e["order"]) for k, e in out["entries"].items()} == {
        "0": (["castle"], "A castle.", 100),
        "5": (["/tow(er|n)/i"], "A town.", 5),
    }
    # the same file again: a book of its own, its name made unique
    assert lore.import_file(data, "Castles.json").name == "Castles (2)"
    # a name in the file wins; a V2 character_book is read too, with its description
    named = lore.import_file(json.dumps(LOREBOOK).encode(), "export.v2.json")
    assert (named.name, named.description) == ("Harbour lore", "Places of the harbour")
    assert [e["key"] for e in named.entries] == [["lighthouse", "tower"], ["港口"]]
    assert named.settings["scan_depth"] == 4 and named.settings["token_budget"] == 512
    assert lore.import_file(b'{"entries": {}}', "a.b.json").name == "a.b"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"entries": {"0": ', "The World Info file is not valid JSON"),
        (b"\xff\xfe garbage", "not UTF-8"),
        (b'{"name": "x"}', 'This is not a World Info file: it has no "entries"'),
        (b'{"entries": {"0": "text"}}', "Entry 0 is not a JSON object"),
    ],
)
def test_a_refused_import_stores_nothing(
    store: Store, lore: LoreService, data: bytes, says: str
) -> None:
    store.create_lorebook("World", ENTRIES)
    before = snapshot(store)
    with pytest.raises(LoreError, match=says):
        lore.import_file(data, "World.json")
    assert snapshot(store) == before


def test_update_changes_the_fields_given(store: Store, lore: LoreService) -> None:
    book = store.create_lorebook("World", ENTRIES)
    store.create_lorebook("Other")
    lore.update(
        book.id,
        name="Realm",
        description="places",
        is_global=True,
        settings={"scan_depth": 4, "recursive": True},
    )
    stored = store.get_lorebook(book.id)
    assert (stored.name, stored.description, stored.is_global, stored.settings) == (
        "Realm",
        "places",
        True,
        {"scan_depth": 4, "recursive": True},
    )
    assert stored.entries == ENTRIES  # not given, kept
    before = snapshot(store)
    with pytest.raises(StoreError, match='A lorebook named "Other" already exists'):
        lore.update(book.id, name="Other", description="changed")
    with pytest.raises(StoreError, match="Lorebooks have no field 'colour'"):
        lore.update(book.id, colour="red")
    with pytest.raises(StoreError, match="There is no lorebook with id 999"):
        lore.update(999, name="Gone")
    assert snapshot(store) == before


def test_save_entries_replaces_the_books_entries(store: Store, lore: LoreService) -> None:
    book = store.create_lorebook("World", ENTRIES)
    new = [ENTRIES[1], new_entry(2, key=["sun"], content="The sun.")]
    assert lore.save_entries(book.id, new).entries == new
    assert store.get_lorebook(book.id).entries == new
    before = snapshot(store)
    with pytest.raises(StoreError, match="Each lorebook entry must be a JSON object"):
        lore.save_entries(book.id, [*new, "not an entry"])  # type: ignore[list-item]
    assert snapshot(store) == before


def test_delete_detaches_the_book_everywhere(store: Store, lore: LoreService) -> None:
    book = store.create_lorebook("World", ENTRIES)
    keep = store.create_lorebook("Keep")
    ch = store.create_character({"name": "Ada"})
    conv = store.create_conversation(ch.id)
    store.set_character_lorebooks(ch.id, [book.id, keep.id])
    store.set_conversation_lorebooks(conv.id, [keep.id, book.id])
    lore.delete(book.id)
    assert [b.name for b in store.list_lorebooks()] == ["Keep"]
    assert store.get_character(ch.id).lorebook_ids == [keep.id]
    assert store.get_conversation(conv.id).lorebook_ids == [keep.id]
    before = snapshot(store)
    with pytest.raises(StoreError, match=f"There is no lorebook with id {book.id}"):
        lore.delete(book.id)
    assert snapshot(store) == before


# --- attached books -------------------------------------------------------------------------


def test_attach_to_character_and_chat(store: Store, lore: LoreService) -> None:
    a = store.create_lorebook("A")
    b = store.create_lorebook("B")
    ch = store.create_character({"name": "Ada"})
    conv = store.create_conversation(ch.id)
    assert lore.attach_to_character(ch.id, [b.id, a.id, b.id]).lorebook_ids == [b.id, a.id]
    assert lore.attach_to_chat(conv.id, [a.id]).lorebook_ids == [a.id]
    assert store.get_character(ch.id).lorebook_ids == [b.id, a.id]
    assert store.get_conversation(conv.id).lorebook_ids == [a.id]
    before = snapshot(store)
    with pytest.raises(StoreError, match="There is no lorebook with id 999"):
        lore.attach_to_character(ch.id, [a.id, 999])
    with pytest.raises(StoreError, match="There is no lorebook with id 999"):
        lore.attach_to_chat(conv.id, [999])
    with pytest.raises(StoreError, match="must be a list of lorebook ids"):
        lore.attach_to_chat(conv.id, ["A"])  # type: ignore[list-item]
    with pytest.raises(StoreError, match="There is no character with id 999"):
        lore.attach_to_character(999, [a.id])
    with pytest.raises(StoreError, match="There is no conversation with id 999"):
        lore.attach_to_chat(999, [a.id])
    assert snapshot(store) == before
    lore.attach_to_chat(conv.id, [])
    assert store.get_conversation(conv.id).lorebook_ids == []


# --- a character's own book -----------------------------------------------------------------


def test_save_character_book_writes_a_v2_book_into_the_card(
    store: Store, lore: LoreService
) -> None:
    ch = import_card(store, card_png(v2_card()), "keeper.png")
    entries, settings = from_character_book(ch.character_book)
    entries[0]["content"] = "The lighthouse was rebuilt in 1901."
    entries.append(new_entry(7, key=["glade"], content="A quiet glade."))
    lore.save_character_book(ch.id, entries)
    book = store.get_character(ch.id).character_book
    # the card book's other fields, its settings and each entry's unknown fields are kept
    assert book["name"] == "Harbour lore" and book["extensions"] == {"some_tool": {"x": 1}}
    assert (book["scan_depth"], book["token_budget"]) == (4, 512)
    assert [e["content"] for e in book["entries"]] == [
        "The lighthouse was rebuilt in 1901.",
        "港口在北边。",
        "A quiet glade.",
    ]
    assert book["entries"][0]["priority"] == 5 and book["entries"][2]["keys"] == ["glade"]
    again, same_settings = from_character_book(book)
    assert same_settings == settings
    assert (again[0], again[2]) == (entries[0], entries[2])
    # settings given replace the book's own
    lore.save_character_book(ch.id, entries, {**settings, "scan_depth": 9, "recursive": True})
    book = store.get_character(ch.id).character_book
    assert (book["scan_depth"], book["recursive_scanning"]) == (9, True)


def test_save_character_book_gives_a_card_without_one_a_book(
    store: Store, lore: LoreService
) -> None:
    ch = store.create_character({"name": "Ada"})
    lore.save_character_book(ch.id, [new_entry(0, key=["glade"], content="A quiet glade.")])
    book = store.get_character(ch.id).character_book
    assert book["name"] == "Ada" and book["scan_depth"] == 2
    assert [(e["keys"], e["content"], e["enabled"]) for e in book["entries"]] == [
        (["glade"], "A quiet glade.", True)
    ]
    before = snapshot(store)
    with pytest.raises(NotFound, match="There is no character with id 999"):
        lore.save_character_book(999, [])
    assert snapshot(store) == before


def test_copy_character_book_makes_a_lorebook_of_it(store: Store, lore: LoreService) -> None:
    ch = import_card(store, card_png(v2_card()), "keeper.png")
    copy = lore.copy_character_book(ch.id)
    assert (copy.name, copy.description) == ("Harbour lore", "Places of the harbour")
    assert (copy.entries, copy.settings) == from_character_book(ch.character_book)
    assert store.get_character(ch.id).character_book == ch.character_book  # the card unchanged
    assert lore.copy_character_book(ch.id).name == "Harbour lore (2)"
    # a card book without a name: named after the character
    own = {"entries": [{"id": 3, "keys": ["glade"], "content": "A glade."}]}
    plain = store.create_character({"name": "Ada", "character_book": own})
    copy = lore.copy_character_book(plain.id)
    assert (copy.name, copy.description) == ("Ada", "")
    assert [(e["uid"], e["key"]) for e in copy.entries] == [(3, ["glade"])]
    before = snapshot(store)
    with pytest.raises(NotFound, match="There is no character with id 999"):
        lore.copy_character_book(999)
    assert snapshot(store) == before
