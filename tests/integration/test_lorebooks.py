"""Lorebooks with a real store, real cards and the tiny RWKV-7: books stored and attached, World
Info files imported and refused, a card's book firing on its keys, and a reply's fired lore
stored with it and fed again, so the state a later reply starts from equals the transcript fed
from scratch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from core.chat import conversation_context, prompt_messages
from core.errors import StoreError
from core.prompt import Message
from core.roleplay.cards import CardError, import_card
from core.roleplay.lore import (
    LoreError,
    activate,
    books_for_conversation,
    character_book,
    export_world_info,
    fire_lore,
    new_entry,
    parse_world_info,
)
from core.runtime import Runtime
from core.store import Store
from tests.support import FIXTURES
from tests.support.db_fixtures import card_png, v2_card

SERAPHINA = FIXTURES / "cards" / "default_Seraphina.png"
SHORT = {"max_tokens": 5, "seed": 3, "temperature": 1.0, "top_p": 0.9}


def _book(store: Store, name: str = "World", **kw: Any) -> Any:
    entries = kw.pop(
        "entries",
        [
            new_entry(
                0, key=["dragon"], content="Dragons sleep under the hill.", comment="Dragons"
            ),
            new_entry(1, key=["moon"], content="The moon is red tonight.", order=200),
            new_entry(2, constant=True, content="Magic is forbidden in the city.", comment="Law"),
        ],
    )
    return store.create_lorebook(name, entries, **kw)


# --- the store ------------------------------------------------------------------------------


def test_books_are_stored_attached_and_detached(store: Store) -> None:
    book = _book(store, description="places")
    assert store.get_lorebook(book.id).entries[0]["key"] == ["dragon"]
    assert [b.name for b in store.list_lorebooks()] == ["World"]
    with pytest.raises(StoreError, match="already exists"):
        _book(store)
    assert _book(store, unique=True).name == "World (2)"
    with pytest.raises(StoreError, match="entry must be a JSON object"):
        store.update_lorebook(book.id, entries=["not an entry"])
    assert len(store.get_lorebook(book.id).entries) == 3  # the refused change kept nothing
    ch = store.create_character({"name": "Ada", "greetings": ["Hi."]})
    conv = store.create_conversation(ch.id)
    store.set_character_lorebooks(ch.id, [book.id])
    store.set_conversation_lorebooks(conv.id, [book.id])
    with pytest.raises(StoreError, match="no lorebook with id 999"):
        store.set_character_lorebooks(ch.id, [book.id, 999])
    assert store.get_character(ch.id).lorebook_ids == [book.id]
    # a book attached twice is used once
    assert [b.name for b in books_for_conversation(store, store.get_conversation(conv.id))] == [
        "World"
    ]
    store.delete_lorebook(book.id)
    assert store.get_character(ch.id).lorebook_ids == []
    assert store.get_conversation(conv.id).lorebook_ids == []


def test_global_books_serve_every_chat(store: Store) -> None:
    _book(store, is_global=True)
    ch = store.create_character({"name": "Ada"})
    conv = store.create_conversation(ch.id)
    assert [b.source for b in books_for_conversation(store, conv)] == ["global"]


def test_world_info_file_import_export_round_trip(store: Store) -> None:
    data = {
        "entries": {
            "0": {"uid": 0, "key": ["castle"], "content": "A castle.", "comment": "Castle"},
            "1": {"uid": 1, "key": ["/tow(er|n)/i"], "content": "A town.", "order": 5},
        }
    }
    parsed = parse_world_info(json.dumps(data).encode(), "Castles")
    saved = store.create_lorebook(parsed.name, parsed.entries, parsed.settings)
    out = export_world_info(store.get_lorebook(saved.id))
    assert {k: (e["key"], e["content"]) for k, e in out["entries"].items()} == {
        "0": (["castle"], "A castle."),
        "1": (["/tow(er|n)/i"], "A town."),
    }
    again = parse_world_info(json.dumps(out))
    assert export_world_info(again) == out


def test_a_malformed_file_saves_nothing(store: Store) -> None:
    _book(store)
    with pytest.raises(LoreError, match="not valid JSON"):
        parse_world_info(b'{"entries": {"0": ')
    assert [len(b.entries) for b in store.list_lorebooks()] == [3]


# --- cards ----------------------------------------------------------------------------------


def test_a_cards_own_book_fires_on_its_keys(store: Store) -> None:
    ch = import_card(store, card_png(v2_card()), "keeper.png")
    book = character_book(ch)
    assert book is not None and book.name == "Harbour lore"
    hits = activate([book], ["Is that the old tower?", "the light is on"], char=ch.name)
    assert [f.content for f in hits.fired] == ["The lighthouse was built in 1887."]
    # the secondary key is required (AND ANY) and the disabled entry never fires
    assert activate([book], ["the tower", "港口"]).fired == []


def test_seraphina_lorebook_fires_on_its_keys(store: Store) -> None:
    ch = import_card(store, SERAPHINA.read_bytes(), SERAPHINA.name)
    book = character_book(ch)
    assert book is not None and len(book.entries) == 4
    for entry in book.entries:
        key = entry["key"][0]
        res = activate([book], [f"Tell me about the {key}."], char=ch.name, user="Bob")
        assert [f.uid for f in res.fired] == [entry["uid"]], key
        assert "{{char}}" not in res.text() and "Bob" in res.text()
    assert activate([book], ["Good morning."]).fired == []
    conv = store.create_conversation(ch.id)
    ctx = conversation_context(store, conv.id)
    text, meta = fire_lore(store, conv, ctx, [Message("user", "What are the shadowfang?")])
    assert "Shadowfangs are beasts of darkness" in text
    assert [m["uid"] for m in meta["lore"]] == [1]


# --- a chat with lore -----------------------------------------------------------------------


def test_fired_lore_is_stored_with_the_reply_and_fed_again(rt: Runtime) -> None:
    engine = rt.load()
    svc, store = rt.chat, rt.store
    ch = store.create_character({"name": "Ada", "greetings": ["Hello."]})
    book = _book(store)
    store.set_character_lorebooks(ch.id, [book.id])
    conv = svc.new_chat(ch.id)
    svc.set_sampling(conv.id, SHORT, "custom")
    ctx = conversation_context(store, conv.id)
    # the constant entry is in the opening, from the first reply on
    opening = engine.format.opening(ctx)
    assert "Magic is forbidden in the city." in opening
    svc.send(conv.id, "Look, a dragon under the moon!")
    reply = svc.reply(conv.id).consume().message
    assert reply is not None
    # both fired, fed by order (the moon's 200 goes after the dragon's 100); the constant not
    assert reply.meta["before"] == "Dragons sleep under the hill.\nThe moon is red tonight."
    assert [m["title"] for m in reply.meta["lore"]] == ["Dragons", "moon"]
    svc.send(conv.id, "Nothing else.")
    history = prompt_messages(store, conv.id)
    assert history[2].before == reply.meta["before"]
    prompt = engine.prompt_text(ctx, history, Message("char"))
    assert prompt.index("Dragons sleep") < prompt.index("Ada:", len(opening) + 20)
    # the invariant: the state the next reply starts from (through the cache) equals the stored
    # transcript, lore included, fed from scratch
    speaker = Message("char")
    cached, _ = engine.state_for(ctx, history, speaker)
    fresh, _ = engine.reference_state(ctx, history, speaker)
    np.testing.assert_allclose(cached, fresh, atol=1e-4)
    # the dragon is two messages back: out of the scan depth, nothing fires
    second = svc.reply(conv.id).consume().message
    assert second is not None and "before" not in second.meta and "lore" not in second.meta
    # a regenerate fires again from the same place, the same way
    regen = svc.reply(conv.id, "regen").consume().message
    assert regen is not None and "lore" not in regen.meta


def test_a_bad_regex_in_a_book_never_breaks_a_reply(rt: Runtime) -> None:
    rt.load()
    svc, store = rt.chat, rt.store
    ch = store.create_character({"name": "Ada", "greetings": ["Hello."]})
    bad = [new_entry(0, key=["/([a-/", "harbour"], content="The harbour is closed.")]
    book = store.create_lorebook("Bad", bad)
    conv = svc.new_chat(ch.id)
    store.set_conversation_lorebooks(conv.id, [book.id])
    svc.set_sampling(conv.id, SHORT, "custom")
    svc.send(conv.id, "To the harbour!")
    reply = svc.reply(conv.id).consume().message
    assert reply is not None and reply.meta["before"] == "The harbour is closed."
    assert "([a-" in reply.meta["lore_errors"][0]


def test_macros_in_lore_are_evaluated_once(store: Store) -> None:
    ch = store.create_character({"name": "Ada", "description": "A keeper."})
    book = store.create_lorebook(
        "Dice",
        [
            new_entry(0, key=["dice"], content="{{char}} rolled {{roll:d1000000}}."),
            new_entry(1, constant=True, content="The sky is {{random::red::green::blue}}."),
        ],
    )
    store.set_character_lorebooks(ch.id, [book.id])
    conv = store.create_conversation(ch.id)
    ctx = conversation_context(store, conv.id)
    text, _ = fire_lore(store, conv, ctx, [Message("user", "Throw the dice.")])
    assert text.startswith("Ada rolled ") and "{{" not in text
    # the constant entry is in the opening, its macro evaluated the same way every time
    persona = ctx.persona
    assert "The sky is " in persona and "{{" not in persona
    assert all(conversation_context(store, conv.id).persona == persona for _ in range(5))


# --- a huge card book (issue 21) -------------------------------------------------------------


def hoard_card(n: int = 1_200_000) -> bytes:
    """The issue's card: 3.6 MB of JSON whose character_book has 1.2 million (empty) entries."""
    head = b'{"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Hoard", '
    return head + b'"character_book": {"entries": [' + b",".join([b"{}"] * n) + b"]}}}"


def test_a_card_with_more_book_entries_than_a_lorebook_is_refused(store: Store) -> None:
    card = hoard_card()
    assert 3_500_000 < len(card) < 3_700_000  # the size, under the store's JSON limit
    with pytest.raises(CardError, match="1,200,000 entries; the limit is 5,000"):
        import_card(store, card, "hoard.json")
    with pytest.raises(CardError, match="5,001 entries"):  # as a PNG too, one over the limit
        book = {"entries": [{"keys": ["k"], "content": "c"}] * 5001}
        import_card(store, card_png(v2_card(character_book=book)), "over.png")
    assert store.list_characters() == []
    book = {"entries": [{"keys": ["k"], "content": "c"}] * 5000}
    assert import_card(store, card_png(v2_card(character_book=book)), "at.png").name


def _hoard_stored_before_the_limit(store: Store) -> Any:
    """A character whose card book has 1.2 million entries, written as an import before the
    limit did (straight into the database: the store now refuses it): entry 10 and entry
    1,000,000 both fire on "dragon"."""
    ch = store.create_character({"name": "Hoard", "greetings": ["Hello."]})
    entries: list[dict[str, Any]] = [{}] * 1_200_000
    entries[10] = {"keys": ["dragon"], "content": "A dragon sleeps here.", "comment": "near"}
    entries[1_000_000] = {"keys": ["dragon"], "content": "Far away.", "comment": "far"}
    with store.engine.begin() as db:
        db.execute(
            text("UPDATE characters SET character_book = :book WHERE id = :id"),
            {"book": json.dumps({"name": "Hoard book", "entries": entries}), "id": ch.id},
        )
    return store.get_character(ch.id)


def test_a_huge_book_stored_before_the_limit_is_read_up_to_it(store: Store) -> None:
    ch = _hoard_stored_before_the_limit(store)
    conv = store.create_conversation(ch.id)
    ctx = conversation_context(store, conv.id)
    text, meta = fire_lore(store, conv, ctx, [Message("user", "A dragon!")])
    assert text == "A dragon sleeps here."  # the entry past the limit is not read
    assert [m["title"] for m in meta["lore"]] == ["near"]
    assert any("1,200,000 entries" in e and "5,000" in e for e in meta["lore_errors"])


def test_a_cards_book_is_converted_once_not_every_reply(store: Store, monkeypatch) -> None:
    import core.roleplay.lore.books as books

    converted: list[Any] = []
    real = books.from_character_book
    monkeypatch.setattr(books, "from_character_book", lambda b: converted.append(b) or real(b))
    ch = import_card(store, card_png(v2_card()), "keeper.png")
    conv = store.create_conversation(ch.id)
    for _ in range(3):  # three replies: the opening's constants and the fired lore each time
        ctx = conversation_context(store, conv.id)
        text, _ = fire_lore(store, conv, ctx, [Message("user", "the old tower, the light")])
        assert text == "The lighthouse was built in 1887."
    assert len(converted) == 1
    # the book edited: the character's row changed, its book is converted again
    book = dict(store.get_character(ch.id).character_book)
    book["entries"] = [{**book["entries"][0], "content": "Rebuilt in 1901."}]
    store.update_character(ch.id, {"character_book": book})
    ctx = conversation_context(store, conv.id)
    text, _ = fire_lore(store, conv, ctx, [Message("user", "the old tower, the light")])
    assert text == "Rebuilt in 1901." and len(converted) == 2
