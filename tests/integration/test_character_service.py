"""CharacterService (core/roleplay/characters.py): a character's picture file and its row saved
as one operation on a real store and real files. A refused save leaves no new picture behind; a
replaced or removed picture is deleted once no character uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.errors import NotFound, StoreError
from core.roleplay import avatars
from core.roleplay.avatars import AvatarError
from core.roleplay.characters import CharacterService
from core.store import Store
from tests.support.db_fixtures import picture


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


@pytest.fixture
def service(store: Store) -> CharacterService:
    return CharacterService(store)


def pictures(data_dir: Path) -> set[str]:
    folder = data_dir / "avatars"
    return {f"avatars/{p.name}" for p in folder.iterdir()} if folder.is_dir() else set()


def test_save_creates_a_character_with_its_picture(
    service: CharacterService, store: Store, data_dir: Path
) -> None:
    ch = service.save(None, {"name": "Ann", "description": "A bard."}, avatar=picture())
    assert ch.id is not None and ch.name == "Ann" and ch.description == "A bard."
    assert ch.avatar.startswith("avatars/") and (data_dir / ch.avatar).is_file()
    assert pictures(data_dir) == {ch.avatar}
    assert store.get_character(ch.id).avatar == ch.avatar
    # no picture: none is stored
    bo = service.save(None, {"name": "Bo"})
    assert bo.avatar == "" and pictures(data_dir) == {ch.avatar}


def test_save_changes_only_the_fields_given(service: CharacterService, store: Store) -> None:
    ch = service.save(None, {"name": "Ann", "description": "old", "tags": ["a"]})
    changed = service.save(ch.id, {"description": "new"})
    assert changed.id == ch.id and changed.description == "new" and changed.tags == ["a"]
    assert store.get_character(ch.id).description == "new"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Taken"}, "already exists"),  # a duplicate name
        ({"name": "   "}, "empty"),  # an empty name
        ({"name": "Long", "description": "x" * 100_001}, "limit"),  # a field too long
    ],
)
def test_a_refused_new_character_leaves_no_picture_behind(
    service: CharacterService, store: Store, data_dir: Path, fields: dict, message: str
) -> None:
    service.save(None, {"name": "Taken"})
    before = pictures(data_dir)
    with pytest.raises(StoreError, match=message):
        service.save(None, fields, avatar=picture())
    assert pictures(data_dir) == before
    assert [c.name for c in store.list_characters()] == ["Taken"]


def test_a_refused_change_keeps_the_old_picture_and_drops_the_new(
    service: CharacterService, store: Store, data_dir: Path
) -> None:
    ann = service.save(None, {"name": "Ann"}, avatar=picture(color=(1, 2, 3)))
    service.save(None, {"name": "Bo"})
    with pytest.raises(StoreError, match="already exists"):
        service.save(ann.id, {"name": "Bo"}, avatar=picture(color=(9, 9, 9)))
    assert pictures(data_dir) == {ann.avatar}
    assert store.get_character(ann.id).avatar == ann.avatar
    # a character deleted meanwhile: NotFound, and the picture just stored goes too
    with pytest.raises(NotFound, match="There is no character with id 4242"):
        service.save(4242, {"description": "x"}, avatar=picture())
    assert pictures(data_dir) == {ann.avatar}


def test_a_refused_picture_writes_nothing(
    service: CharacterService, store: Store, data_dir: Path
) -> None:
    with pytest.raises(AvatarError, match="picture"):
        service.save(None, {"name": "Ann"}, avatar=b"not a picture")
    assert store.list_characters() == [] and pictures(data_dir) == set()


def test_a_replaced_or_removed_picture_is_collected(
    service: CharacterService, store: Store, data_dir: Path
) -> None:
    ann = service.save(None, {"name": "Ann"}, avatar=picture(color=(1, 2, 3)))
    first = ann.avatar
    ann = service.save(ann.id, {"description": "new face"}, avatar=picture(color=(4, 5, 6)))
    assert ann.avatar != first and pictures(data_dir) == {ann.avatar}
    # a picture shared with a copy stays while the copy uses it
    copy = service.duplicate(ann.id)
    assert copy.name == "Ann (2)" and copy.avatar == ann.avatar
    service.save(ann.id, {}, remove_avatar=True)
    assert store.get_character(ann.id).avatar == "" and pictures(data_dir) == {copy.avatar}
    service.delete(copy.id, chats="keep")
    assert pictures(data_dir) == set()


def test_a_picture_the_row_uses_is_never_deleted(
    service: CharacterService, store: Store, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the row was written and a later step failed (here: deleting the old picture),
    the new picture stays: the character uses it."""
    ann = service.save(None, {"name": "Ann"}, avatar=picture(color=(1, 2, 3)))
    real_remove = avatars.remove_avatar_file

    def failing_remove(rel: str) -> None:
        if rel == ann.avatar:
            raise PermissionError("read-only file")
        real_remove(rel)

    monkeypatch.setattr(avatars, "remove_avatar_file", failing_remove)
    with pytest.raises(PermissionError):
        service.save(ann.id, {}, avatar=picture(color=(4, 5, 6)))
    now = store.get_character(ann.id).avatar
    assert now != ann.avatar and (data_dir / now).is_file()


def test_duplicate_and_delete(service: CharacterService, store: Store) -> None:
    ann = service.save(None, {"name": "Ann", "greetings": ["Hi."]})
    copy = service.duplicate(ann.id)
    assert copy.name == "Ann (2)" and copy.greetings == ["Hi."]
    kept = store.create_conversation(ann.id)
    gone = store.create_conversation(copy.id)
    service.delete(ann.id, chats="keep")
    service.delete(copy.id, chats="delete")
    assert store.get_character(ann.id) is None and store.get_character(copy.id) is None
    assert store.get_conversation(kept.id).character_name == "Ann"
    assert store.get_conversation(gone.id) is None
    with pytest.raises(NotFound):
        service.duplicate(ann.id)
    with pytest.raises(StoreError, match="delete.*keep"):
        service.delete(4242, chats="maybe")


def test_import_card(service: CharacterService, store: Store, data_dir: Path) -> None:
    card = b'{"name": "Imported", "description": "from a card"}'
    ch = service.import_card(card, "card.json")
    assert ch.name == "Imported" and store.get_character(ch.id).description == "from a card"
    again = service.import_card(card, "card.json")
    assert again.name == "Imported (2)"
