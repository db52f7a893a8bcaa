"""Characters: search and read them, create (with a unique name when asked), change, duplicate
and delete them; their avatar files, deleted once no character uses them (`collect_avatar`);
and the user's name in a role play (`user_name`).

A character's name is unique. Renaming a character renames its chats (`character_name`);
deleting one deletes its chats or keeps them detached, and takes it out of its group chats.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, cast, delete, func, or_, update
from sqlmodel import Session, SQLModel, select

from core.errors import StoreError
from core.roleplay import avatars
from core.store.base import StoreBase
from core.store.groups import leave_groups
from core.store.models import (
    Character,
    CharacterCreate,
    CharacterUpdate,
    ChatMessage,
    Conversation,
    utcnow,
)
from core.store.removals import delete_removals
from core.store.validation import MAX_NAME, clean_name, validate_character
from core.text import DEFAULT_USER

_NUMBERED = re.compile(r"^(.*) \((\d+)\)$")  # "Name (2)"


class CharactersMixin(StoreBase):
    """list_characters, get_character, get_character_by_name, unique_name, create_character,
    update_character, duplicate_character, delete_character, collect_avatar, user_name."""

    if TYPE_CHECKING:  # from SettingsMixin, composed with this one in Store

        def setting_str(self, key: str) -> str: ...

    def list_characters(self, search: str = "") -> list[Character]:
        """Characters by name; `search` matches name, tags, creator or description."""
        stmt = select(Character)
        q = (search or "").strip()
        if q:
            stmt = stmt.where(
                or_(
                    Character.name.icontains(q, autoescape=True),
                    cast(Character.tags, String).icontains(q, autoescape=True),
                    Character.creator.icontains(q, autoescape=True),
                    Character.description.icontains(q, autoescape=True),
                )
            )
        stmt = stmt.order_by(func.lower(Character.name), Character.id)
        with self._read() as s:
            return list(s.exec(stmt).all())

    def get_character(self, character_id: int | None) -> Character | None:
        if character_id is None:
            return None
        with self._read() as s:
            return s.get(Character, character_id)

    def get_character_by_name(self, name: str) -> Character | None:
        with self._read() as s:
            return s.exec(select(Character).where(Character.name == clean_name(name))).first()

    def unique_name(self, name: str) -> str:
        """`name` cleaned, or "name (2)", "name (3)"... if taken."""
        with self._read() as s:
            return self._unique_name(s, name)

    def _unique_name(self, s: Session, name: str) -> str:
        name = clean_name(name)[:MAX_NAME] or "Unnamed"
        if not self._name_taken(s, name):
            return name
        m = _NUMBERED.match(name)
        base = m.group(1) if m else name
        n = 2
        while True:
            suffix = f" ({n})"
            candidate = base[: MAX_NAME - len(suffix)] + suffix
            if not self._name_taken(s, candidate):
                return candidate
            n += 1

    @staticmethod
    def _name_taken(s: Session, name: str, except_id: int | None = None) -> bool:
        stmt = select(Character.id).where(Character.name == name)
        if except_id is not None:
            stmt = stmt.where(Character.id != except_id)
        return s.exec(stmt).first() is not None

    def create_character(
        self, data: CharacterCreate | dict[str, Any], *, unique: bool = False
    ) -> Character:
        """Add a character. A taken name is refused, or with `unique` made "Name (2)"."""
        values = data.model_dump() if isinstance(data, SQLModel) else dict(data)
        if "name" not in values:
            raise StoreError("The character's name is empty. Give a name.")
        values = validate_character(values)
        with self._write() as s:
            if self._name_taken(s, values["name"]):
                if not unique:
                    raise StoreError(
                        f'A character named "{values["name"]}" already exists. Choose another name.'
                    )
                values["name"] = self._unique_name(s, values["name"])
            character = Character(**values)
            s.add(character)
            s.flush()
        return character

    def update_character(
        self, character_id: int, data: CharacterUpdate | dict[str, Any]
    ) -> Character:
        """Change the fields given (None and unset fields of a CharacterUpdate are kept)."""
        if isinstance(data, SQLModel):
            values = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
        else:
            values = dict(data)
        values = validate_character(values)
        old_avatar = ""
        with self._write() as s:
            character = self._get(s, Character, character_id, "character")
            if "name" in values and values["name"] != character.name:
                if self._name_taken(s, values["name"], except_id=character_id):
                    raise StoreError(
                        f'A character named "{values["name"]}" already exists. Choose another name.'
                    )
                s.exec(
                    update(Conversation)
                    .where(Conversation.character_id == character_id)
                    .values(character_name=values["name"])
                )
            if "avatar" in values and values["avatar"] != character.avatar:
                old_avatar = character.avatar
            for key, value in values.items():
                setattr(character, key, value)
            character.updated_at = utcnow()
            s.add(character)
        self.collect_avatar(old_avatar)
        return character

    def duplicate_character(self, character_id: int) -> Character:
        """A copy named "Name (2)" (or the next free number), with no chats."""
        with self._write() as s:
            original = self._get(s, Character, character_id, "character")
            values = original.model_dump(exclude={"id", "created_at", "updated_at"})
            values["name"] = self._unique_name(s, original.name)
            copy = Character(**json.loads(json.dumps(values, default=str)))
            s.add(copy)
            s.flush()
        return copy

    def delete_character(self, character_id: int, chats: str) -> None:
        """Delete a character. `chats="delete"` deletes its conversations too; `chats="keep"`
        keeps them, detached (character_id NULL, the name kept in `character_name`)."""
        if chats not in ("delete", "keep"):
            raise StoreError('Say what to do with the chats of the character: "delete" or "keep".')
        with self._write() as s:
            character = self._get(s, Character, character_id, "character")
            leave_groups(s, character_id)  # group chats go on with their other members
            if chats == "delete":
                conv_ids = select(Conversation.id).where(Conversation.character_id == character_id)
                s.exec(delete(ChatMessage).where(ChatMessage.conversation_id.in_(conv_ids)))
                delete_removals(s, conv_ids)
                s.exec(delete(Conversation).where(Conversation.character_id == character_id))
            else:
                s.exec(
                    update(Conversation)
                    .where(Conversation.character_id == character_id)
                    .values(character_id=None, character_name=character.name)
                )
            avatar = character.avatar
            s.delete(character)
        self.collect_avatar(avatar)

    def collect_avatar(self, rel: str) -> None:
        """Delete an avatar file that no character uses any more."""
        if not rel:
            return
        with self._read() as s:
            used = s.exec(select(Character.id).where(Character.avatar == rel)).first()
        if used is None:
            avatars.remove_avatar_file(rel)

    def user_name(self, *candidates: str | None) -> str:
        """The first usable name of `candidates`, else the saved user name, else "User"."""
        for name in (*candidates, self.setting_str("user_name")):
            if name and clean_name(name):
                return clean_name(name)
        return DEFAULT_USER
