"""The store's typed errors: a row that does not exist is NotFound, a character's name taken
under the store by another writer a Conflict; both are StoreErrors (AppErrors) with the same
sentences as before, which pages show and the API answers with. A store in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from core.contracts import ROLES, Role
from core.errors import AppError, Conflict, NotFound, StoreError
from core.store import Store, open_store
from core.store.database import store_error

MISSING = 4242


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store("sqlite://")
    yield s
    s.close()


def _ids(s: Store) -> dict[str, int]:
    """A character, a chat and a message that exist, for the calls that need one of them."""
    ch = s.create_character({"name": "Ann"})
    conv = s.create_conversation(ch.id)
    msg = s.add_message(conv.id, "user", "hi")
    return {"char": ch.id, "conv": conv.id, "msg": msg.id}  # type: ignore[dict-item]


# (what is missing, the call), each given the ids of rows that do exist
CALLS: list[tuple[str, Callable[[Store, dict[str, int]], Any]]] = [
    ("character", lambda s, i: s.update_character(MISSING, {"description": "x"})),
    ("character", lambda s, i: s.duplicate_character(MISSING)),
    ("character", lambda s, i: s.delete_character(MISSING, chats="keep")),
    ("character", lambda s, i: s.create_conversation(MISSING)),
    ("character", lambda s, i: s.create_group_conversation([i["char"], MISSING])),
    ("character", lambda s, i: s.add_group_member(i["conv"], MISSING)),
    ("character", lambda s, i: s.set_character_lorebooks(MISSING, [])),
    (
        "character",
        lambda s, i: s.import_conversation(
            character_id=MISSING, character_name="X", title="t", messages=[]
        ),
    ),
    (
        "character",
        lambda s, i: s.import_conversation(
            character_id=None, character_name="X", title="t", messages=[], members=[1, MISSING]
        ),
    ),
    ("conversation", lambda s, i: s.update_conversation(MISSING, title="t")),
    ("conversation", lambda s, i: s.rename_conversation(MISSING, "t")),
    ("conversation", lambda s, i: s.delete_conversation(MISSING)),
    ("conversation", lambda s, i: s.add_message(MISSING, "user", "hi")),
    ("conversation", lambda s, i: s.rewind(MISSING, 0)),
    ("conversation", lambda s, i: s.add_group_member(MISSING, i["char"])),
    ("conversation", lambda s, i: s.remove_group_member(MISSING, i["char"])),
    ("conversation", lambda s, i: s.set_member_muted(MISSING, i["char"], True)),
    ("conversation", lambda s, i: s.update_group_settings(MISSING, allow_self=True)),
    ("conversation", lambda s, i: s.set_conversation_lorebooks(MISSING, [])),
    ("message", lambda s, i: s.edit_message(MISSING, "x")),
    ("message", lambda s, i: s.add_alternative(MISSING, "x")),
    ("message", lambda s, i: s.set_version(MISSING, 0, "x")),
    ("message", lambda s, i: s.select_alternative(MISSING, 0)),
    ("message", lambda s, i: s.delete_message(MISSING)),
    ("lorebook", lambda s, i: s.update_lorebook(MISSING, name="x")),
    ("lorebook", lambda s, i: s.delete_lorebook(MISSING)),
    ("lorebook", lambda s, i: s.set_character_lorebooks(i["char"], [MISSING])),
    ("lorebook", lambda s, i: s.set_conversation_lorebooks(i["conv"], [MISSING])),
]


@pytest.mark.parametrize(("what", "call"), CALLS)
def test_a_missing_row_is_not_found(
    store: Store, what: str, call: Callable[[Store, dict[str, int]], Any]
) -> None:
    ids = _ids(store)
    with pytest.raises(NotFound) as e:
        call(store, ids)
    assert str(e.value) == f"There is no {what} with id {MISSING}."
    # still a StoreError (and an AppError): every caller that catches those goes on as before
    assert isinstance(e.value, StoreError) and isinstance(e.value, AppError)


def test_other_refusals_are_plain_store_errors(store: Store) -> None:
    """Not everything refused is NotFound: a wrong value or a version out of range is not a
    missing row."""
    ids = _ids(store)
    for call in (
        lambda: store.add_message(ids["conv"], "robot", "hi"),
        lambda: store.select_alternative(ids["msg"], 5),
        lambda: store.set_version(ids["msg"], 5, "x"),
        lambda: store.delete_character(ids["char"], chats="maybe"),
        lambda: store.create_character({"name": "Ann"}),
    ):
        with pytest.raises(StoreError) as e:
            call()
        assert not isinstance(e.value, NotFound | Conflict), e.value


def test_a_name_taken_under_the_store_is_a_conflict() -> None:
    """The store checks a name in its write transaction; a database that refuses it anyway
    (another writer took it meanwhile) is a Conflict, with the sentence it always had."""
    orig = Exception("UNIQUE constraint failed: characters.name")
    err = store_error(IntegrityError("INSERT INTO characters ...", {}, orig))
    assert isinstance(err, Conflict) and isinstance(err, StoreError)
    assert str(err) == "A character with that name already exists. Choose another name."
    assert err.code == "name_taken"
    other = store_error(IntegrityError("INSERT ...", {}, Exception("FOREIGN KEY failed")))
    assert type(other) is StoreError


def test_roles_are_the_contracts_ones(store: Store) -> None:
    from core.store import ROLES as store_roles
    from core.store import Role as StoreRole
    from core.store.models import ROLES as model_roles

    assert StoreRole is Role and store_roles is ROLES and model_roles is ROLES
    ids = _ids(store)
    msg = store.add_message(ids["conv"], Role.NARRATOR, "The rain stops.")
    assert store.get_message(msg.id).role == "narrator"  # stored as its plain value
    with pytest.raises(StoreError, match="user, char, narrator"):
        store.add_message(ids["conv"], "robot", "hi")
