"""Changing characters, the front ends' way: `CharacterService(store)`.

A character's save is a picture file and a database row together: `save` stores the picture
(checked and re-encoded by core.roleplay.avatars), then writes the row; when the row is refused
(a taken or empty name, a field too long, the character gone) the picture it just stored is
deleted again, so a failed save leaves no file behind. A picture replaced or removed by a save
is deleted by the store once no character uses it (copies share theirs). Reads (list_characters,
get_character) stay on the Store.

A character's RWKV state file (core.roleplay.state_files) goes the same way: checked and stored
first (named by its sha256), then the row with its reference; a refused row leaves no new file
behind, and a file no character refers to any more is deleted.
"""

from __future__ import annotations

import logging
from typing import Any

from core.roleplay import avatars, state_files
from core.roleplay.state_files import StateFileError, StateFileRef
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
        state_file: tuple[bytes, str] | None = None,
        remove_state_file: bool = False,
    ) -> Character:
        """Create a character (`character_id` None) or change the fields given of one.

        `avatar`: a new picture (any format avatars reads), stored first: AvatarError when it
        is refused, and then nothing is written. `remove_avatar` (without `avatar`): the
        character has no picture any more. `state_file`: (bytes, file name) of an RWKV state
        file (core.roleplay.state_files), checked and stored first too (StateFileError when
        refused); `remove_state_file` (without it): the character has none any more. Raises
        AvatarError, StateFileError or StoreError (NotFound when the character is gone); on any
        failure after a file was stored, that file is deleted unless a character uses it.
        """
        values = dict(fields)
        old_ref = None
        if state_file is not None or remove_state_file:
            current = self.store.get_character(character_id) if character_id is not None else None
            extensions = values.get("extensions", current.extensions if current else {})
            old_ref = _reference(current.extensions) if current is not None else None
        new_ref: StateFileRef | None = None
        created = False
        if state_file is not None:
            new_ref, created = state_files.store_state_file(*state_file)
            values["extensions"] = state_files.with_reference(extensions, new_ref)
        elif remove_state_file:
            values["extensions"] = state_files.with_reference(extensions, None)
        new_avatar = ""
        try:
            if avatar is not None:
                new_avatar = avatars.save_avatar(avatar)
                values["avatar"] = new_avatar
            elif remove_avatar:
                values["avatar"] = ""
            if character_id is None:
                saved = self.store.create_character(values)
            else:
                saved = self.store.update_character(character_id, values)
        except BaseException:
            if new_avatar:
                self._discard(new_avatar)
            if new_ref is not None and created:
                self._collect_state_file(new_ref.sha256)
            raise
        if old_ref is not None and (new_ref is None or new_ref.sha256 != old_ref.sha256):
            self._collect_state_file(old_ref.sha256)
        return saved

    def state_file(self, character: Character) -> tuple[StateFileRef | None, str]:
        """The character's state file, and what keeps a chat from using it ("" when it is
        stored here): a card imported without its file, a malformed reference."""
        try:
            ref = state_files.reference(character.extensions)
        except StateFileError as e:
            return None, str(e)
        if ref is None or state_files.is_present(ref.sha256):
            return ref, ""
        return ref, (
            f"{character.name}'s state file {ref.name} (sha256 {ref.sha256[:12]}...) is not in "
            "this app's data folder: its chats run without it until you upload it again in "
            "the character's form."
        )

    def duplicate(self, character_id: int) -> Character:
        """A copy named "Name (2)" (or the next free number), with no chats; it shares the
        picture."""
        return self.store.duplicate_character(character_id)

    def delete(self, character_id: int, chats: str) -> None:
        """Delete a character; `chats` "delete" deletes its chats, "keep" keeps them detached.
        Its picture and state file go once no other character uses them."""
        character = self.store.get_character(character_id)
        ref = _reference(character.extensions) if character is not None else None
        self.store.delete_character(character_id, chats=chats)
        if ref is not None:
            self._collect_state_file(ref.sha256)

    def import_card(self, data: bytes, filename: str) -> Character:
        """A character from a card file (PNG or JSON, core.roleplay.cards); a taken name
        becomes "Name (2)". A refused card stores nothing."""
        from core.roleplay.cards import import_card

        return import_card(self.store, data, filename)

    def _collect_state_file(self, sha256: str) -> None:
        """Delete a stored state file that no character refers to any more. Never hides the
        save's own error."""
        try:
            for c in self.store.list_characters():
                ref = _reference(c.extensions)
                if ref is not None and ref.sha256 == sha256:
                    return
            state_files.remove_state_file(sha256)
        except Exception:
            log.warning("could not delete the unused state file %s", sha256, exc_info=True)

    def _discard(self, rel: str) -> None:
        """Delete the picture a failed save stored, unless a character uses it after all (the
        row was written and something after it failed). Never hides the save's own error."""
        try:
            self.store.collect_avatar(rel)
        except Exception:
            log.warning("could not delete the unused avatar %s", rel, exc_info=True)


def _reference(extensions: Any) -> StateFileRef | None:
    """A character's state-file reference; None also for a malformed one."""
    try:
        return state_files.reference(extensions)
    except StateFileError:
        return None
