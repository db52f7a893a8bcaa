"""The one mapping of the core's errors to HTTP statuses (core/api/errors.py, api_error), and
the database's own errors said as the store's (core/store/database.py, store_error)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from core.api.errors import ApiError, api_error
from core.errors import (
    AppError,
    Conflict,
    ModelError,
    ModelUnavailable,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from core.store.database import store_error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFound("There is no chat with id 7."), 404, None),
        (Conflict("The chat changed.", "not_last_message"), 409, "not_last_message"),
        (ModelUnavailable("Unloaded.", "model_unloaded"), 503, "model_unloaded"),
        (ModelError("The file is not a model."), 503, "model_not_available"),
        (StoreUnavailable("The disk is full."), 503, "database_unavailable"),
        (StoreError("The title is empty."), 400, None),
        (AppError("Something the user can fix."), 400, None),
        (ApiError(413, "Too large."), 413, None),
    ],
)
def test_each_kind_of_error_has_its_status(error: Exception, status: int, code: str) -> None:
    said = api_error(error)
    assert (said.status, said.code) == (status, code)
    assert said.message == str(error)


def test_a_bug_is_a_500_that_tells_nothing_of_it() -> None:
    said = api_error(KeyError("secret internal detail"))
    assert said.status == 500 and "secret" not in said.message


def _operational(text: str) -> OperationalError:
    return OperationalError("INSERT ...", None, sqlite3.OperationalError(text))


def test_the_databases_errors_say_what_to_do() -> None:
    full = store_error(_operational("database or disk is full"))
    assert isinstance(full, StoreUnavailable) and "disk is full" in str(full)
    busy = store_error(_operational("database is locked"))
    assert isinstance(busy, StoreUnavailable) and "busy" in str(busy)
    damaged = store_error(_operational("database disk image is malformed"))
    assert isinstance(damaged, StoreUnavailable)
    refused = store_error(IntegrityError("INSERT", None, sqlite3.IntegrityError("CHECK failed")))
    assert type(refused) is StoreError  # a refusal of this request, not an unusable database
