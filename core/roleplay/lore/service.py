"""LoreService: every change a front end makes to lorebooks, and to the books attached to a
character or a chat. The pages call it for every write (reads stay on the Store), so the rules
around a write (a file parsed before its book is made, a card's book converted to V2 before it is
saved into the character) live here, not in a page. Errors are the store's and the parser's
(StoreError, LoreError), raised as they come: their messages are shown to the user as they are.

svc = LoreService(store)
book = svc.create("Harbour")
svc.save_entries(book.id, [new_entry(0, key=["lighthouse"], content="Built in 1887.")])
svc.attach_to_chat(conv.id, [book.id])
"""

from __future__ import annotations

from typing import Any

from core.errors import NotFound
from core.roleplay.lore.formats import from_character_book, parse_world_info, to_character_book
from core.store import Character, Conversation, Lorebook, Store


class LoreService:
    """The front ends' way to change lorebooks. Each method is one write of the store (one
    transaction); a refused one changes nothing."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- the books --------------------------------------------------------------------------

    def create(self, name: str) -> Lorebook:
        """A new empty book. A name already taken is refused."""
        return self.store.create_lorebook(name)

    def import_file(self, data: bytes, filename: str) -> Lorebook:
        """A book made from a World Info file (or a V2 character_book) as uploaded. Named as the
        file says, else after the file ("castles.json" -> "castles"); a name already taken gets
        " (2)". A file that cannot be read raises LoreError and stores nothing."""
        parsed = parse_world_info(data, filename.rsplit(".", 1)[0])
        return self.store.create_lorebook(
            parsed.name, parsed.entries, parsed.settings, parsed.description, unique=True
        )

    def update(self, book_id: int, **fields: Any) -> Lorebook:
        """Change a book's name, description, is_global, settings or entries."""
        return self.store.update_lorebook(book_id, **fields)

    def save_entries(self, book_id: int, entries: list[dict[str, Any]]) -> Lorebook:
        """Replace a book's entries with these (the editor's whole list)."""
        return self.store.update_lorebook(book_id, entries=entries)

    def delete(self, book_id: int) -> None:
        """Delete a book; it is detached from every character and chat."""
        self.store.delete_lorebook(book_id)

    # --- attached books ---------------------------------------------------------------------

    def attach_to_character(self, character_id: int, book_ids: list[int]) -> Character:
        """Attach exactly these books to a character (its card's own book aside)."""
        return self.store.set_character_lorebooks(character_id, book_ids)

    def attach_to_chat(self, conversation_id: int, book_ids: list[int]) -> Conversation:
        """Attach exactly these books to a chat."""
        return self.store.set_conversation_lorebooks(conversation_id, book_ids)

    # --- a character's own book (its card's V2 character_book) ------------------------------

    def save_character_book(
        self,
        character_id: int,
        entries: list[dict[str, Any]],
        settings: dict[str, Any] | None = None,
    ) -> Character:
        """Write these entries into the character's card as its V2 character_book. The card's
        book as stored keeps its other fields and each entry's unknown fields; `settings` (the
        book's scan depth, budget, recursion) are the card book's own when None."""
        ch = self._character(character_id)
        own = ch.character_book if isinstance(ch.character_book, dict) else None
        if settings is None:
            settings = from_character_book(own)[1]
        book = to_character_book(entries, settings, own or {"name": ch.name})
        return self.store.update_character(character_id, {"character_book": book})

    def copy_character_book(self, character_id: int) -> Lorebook:
        """The character's own book as a lorebook of its own, to attach to other characters and
        chats: named as the card's book (else after the character), " (2)" when that is taken."""
        ch = self._character(character_id)
        own = ch.character_book if isinstance(ch.character_book, dict) else {}
        entries, settings = from_character_book(own)
        name = str(own.get("name") or "").strip() or ch.name
        return self.store.create_lorebook(
            name, entries, settings, str(own.get("description") or ""), unique=True
        )

    def _character(self, character_id: int) -> Character:
        ch = self.store.get_character(character_id)
        if ch is None:
            raise NotFound(f"There is no character with id {character_id}.")
        return ch
