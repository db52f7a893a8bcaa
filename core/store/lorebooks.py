"""Lorebooks (World Info; core.roleplay.lore reads their entries): list, read, create (with a
unique name when asked), change and delete them, and attach them to characters and chats
(`lorebook_ids`). A deleted lorebook is detached from every character and chat.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import select

from core.errors import NotFound, StoreError
from core.store.base import StoreBase
from core.store.models import Character, Conversation, Lorebook, utcnow
from core.store.validation import (
    MAX_LORE_ENTRIES,
    MAX_NAME,
    check_dict,
    check_json,
    check_list,
    check_name,
    check_text,
    clean_name,
)

__all__ = ["MAX_LORE_ENTRIES", "LorebooksMixin"]


def _check_lorebook(fields: dict[str, Any]) -> dict[str, Any]:
    """A lorebook's fields checked (any subset); raises StoreError naming the bad field."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "name":
            out[key] = check_name(value, "The lorebook's name")
        elif key == "description":
            out[key] = check_text(value, "The lorebook's description")
        elif key == "entries":
            items = check_list(value, "The lorebook's entries", MAX_LORE_ENTRIES)
            if not all(isinstance(e, dict) for e in items):
                raise StoreError("Each lorebook entry must be a JSON object.")
            out[key] = check_json(items, "The lorebook's entries")
        elif key == "settings":
            out[key] = check_dict(value, "The lorebook's settings")
        elif key == "is_global":
            out[key] = bool(value)
        else:
            raise StoreError(f"Lorebooks have no field {key!r}.")
    return out


class LorebooksMixin(StoreBase):
    """list_lorebooks, get_lorebook, get_lorebook_by_name, create_lorebook, update_lorebook,
    delete_lorebook, set_character_lorebooks, set_conversation_lorebooks."""

    def list_lorebooks(self) -> list[Lorebook]:
        with self._read() as s:
            stmt = select(Lorebook).order_by(func.lower(Lorebook.name), Lorebook.id)
            return list(s.exec(stmt).all())

    def get_lorebook(self, lorebook_id: int | None) -> Lorebook | None:
        if lorebook_id is None:
            return None
        with self._read() as s:
            return s.get(Lorebook, lorebook_id)

    def get_lorebook_by_name(self, name: str) -> Lorebook | None:
        with self._read() as s:
            return s.exec(select(Lorebook).where(Lorebook.name == clean_name(name))).first()

    def create_lorebook(
        self,
        name: str,
        entries: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        description: str = "",
        is_global: bool = False,
        *,
        unique: bool = False,
    ) -> Lorebook:
        """Add a lorebook. A taken name is refused, or with `unique` made "Name (2)"."""
        values = _check_lorebook(
            {
                "name": name,
                "entries": entries or [],
                "settings": settings or {},
                "description": description,
                "is_global": is_global,
            }
        )
        with self._write() as s:
            taken = s.exec(select(Lorebook.name)).all()
            if values["name"] in taken:
                if not unique:
                    raise StoreError(
                        f'A lorebook named "{values["name"]}" already exists. Choose another name.'
                    )
                base, n = values["name"], 2
                while f"{base[: MAX_NAME - 5]} ({n})" in taken:
                    n += 1
                values["name"] = f"{base[: MAX_NAME - 5]} ({n})"
            book = Lorebook(**values)
            s.add(book)
            s.flush()
        return book

    def update_lorebook(self, lorebook_id: int, **fields: Any) -> Lorebook:
        """Change name, description, entries, settings or is_global of a lorebook."""
        values = _check_lorebook(fields)
        with self._write() as s:
            book = self._get(s, Lorebook, lorebook_id, "lorebook")
            if "name" in values and values["name"] != book.name:
                other = s.exec(select(Lorebook.id).where(Lorebook.name == values["name"])).first()
                if other is not None:
                    raise StoreError(
                        f'A lorebook named "{values["name"]}" already exists. Choose another name.'
                    )
            for key, value in values.items():
                setattr(book, key, value)
            book.updated_at = utcnow()
            s.add(book)
        return book

    def delete_lorebook(self, lorebook_id: int) -> None:
        """Delete a lorebook and detach it from every character and chat."""
        with self._write() as s:
            book = self._get(s, Lorebook, lorebook_id, "lorebook")
            for cls in (Character, Conversation):
                for row in s.exec(select(cls)).all():
                    if lorebook_id in (row.lorebook_ids or []):
                        row.lorebook_ids = [i for i in row.lorebook_ids if i != lorebook_id]
                        s.add(row)
            s.delete(book)

    def set_character_lorebooks(self, character_id: int, lorebook_ids: list[int]) -> Character:
        """Attach exactly these lorebooks to a character (besides its own card's book)."""
        ids = self._lorebook_ids(lorebook_ids)
        with self._write() as s:
            character = self._get(s, Character, character_id, "character")
            character.lorebook_ids = ids
            character.updated_at = utcnow()
            s.add(character)
        return character

    def set_conversation_lorebooks(
        self, conversation_id: int, lorebook_ids: list[int]
    ) -> Conversation:
        """Attach exactly these lorebooks to a chat."""
        ids = self._lorebook_ids(lorebook_ids)
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            conv.lorebook_ids = ids
            s.add(conv)
        return conv

    def _lorebook_ids(self, lorebook_ids: Any) -> list[int]:
        items = check_list(lorebook_ids, "The lorebooks")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise StoreError("The lorebooks must be a list of lorebook ids.")
        ids = list(dict.fromkeys(items))
        with self._read() as s:
            found = (
                set(s.exec(select(Lorebook.id).where(Lorebook.id.in_(ids))).all()) if ids else set()
            )
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"There is no lorebook with id {missing[0]}.")
        return ids
