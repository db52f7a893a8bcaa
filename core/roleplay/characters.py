"""Changing characters, the front ends' way: `CharacterService(store)`.

A character's save is a picture file and a database row together: `save` stores the picture
(checked and re-encoded by core.roleplay.avatars), then writes the row; when the row is refused
(a taken or empty name, a field too long, the character gone) the picture it just stored is
deleted again, so a failed save leaves no file behind. A picture replaced or removed by a save
is deleted by the store once no character uses it (copies share theirs). Reads (list_characters,
get_character) stay on the Store.
"""

from __future__ import annotations

import logging
from typing import Any

from core.roleplay import avatars
from core.store import Character, Store

log = logging.getLogger(__name__)


class CharacterService:
    """Create, change, duplicate, delete and import characters over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(
        self,
        character_id: int | None,
        fields: dict[str, Any],
        avatar: bytes | None = None,
        remove_avatar: bool = False,
    ) -> Character:
        """Create a character (`character_id` None) or change the fields given of one.

        `avatar`: a new picture (any format avatars reads), stored first: AvatarError when it
        is refused, and then nothing is written. `remove_avatar` (without `avatar`): the
        character has no picture any more. Raises AvatarError or StoreError (NotFound when the
        character is gone); on any failure after the picture was stored, that picture is
        deleted unless a character uses it.
        """
        values = dict(fields)
        new_avatar = ""
        if avatar is not None:
            new_avatar = avatars.save_avatar(avatar)
            values["avatar"] = new_avatar
        elif remove_avatar:
            values["avatar"] = ""
        try:
            if character_id is None:
                return self.store.create_character(values)
            return self.store.update_character(character_id, values)
        except BaseException:
            if new_avatar:
                self._discard(new_avatar)
            raise

    def duplicate(self, character_id: int) -> Character:
        """A copy named "Name (2)" (or the next free number), with no chats; it shares the
        picture."""
        return self.store.duplicate_character(character_id)

    def delete(self, character_id: int, chats: str) -> None:
        """Delete a character; `chats` "delete" deletes its chats, "keep" keeps them detached.
        Its picture goes once no other character uses it."""
        self.store.delete_character(character_id, chats=chats)

    def import_card(self, data: bytes, filename: str) -> Character:
        """A character from a card file (PNG or JSON, core.roleplay.cards); a taken name
        becomes "Name (2)". A refused card stores nothing."""
        from core.roleplay.cards import import_card

        return import_card(self.store, data, filename)

    def _discard(self, rel: str) -> None:
        """Delete the picture a failed save stored, unless a character uses it after all (the
        row was written and something after it failed). Never hides the save's own error."""
        try:
            self.store.collect_avatar(rel)
        except Exception:
            log.warning("could not delete the unused avatar %s", rel, exc_info=True)
