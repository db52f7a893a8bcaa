"""The plumbing every part of the Store shares: the engine, one session per call (`_read`, and
`_write`, which takes the database's write lock first: BEGIN IMMEDIATE on SQLite, the store's
advisory lock on PostgreSQL, see core.store.database), the lookup of a row that
must exist (`_get`, NotFound otherwise) and the touch of a chat's `updated_at`.

Each aggregate of the store is a mixin over `StoreBase` in a module of its own (characters,
conversations, messages, groups, lorebooks, settings); `core.store.store.Store` composes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from core.errors import NotFound, StoreError
from core.store.database import IMMEDIATE, store_error
from core.store.models import Conversation, utcnow

T = TypeVar("T")


def _not_json(e: json.JSONDecodeError) -> StoreError:
    return StoreError(
        f"The database holds a value that is not valid JSON ({e}): it is damaged. Restore a "
        "backup (Settings, Backups)."
    )


class StoreBase:
    """An engine and the sessions over it. Every public method of the store is one short
    transaction in its own session, so a store is safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # both take a write lock when a write transaction begins (core.store.database)
        self._locks = engine.dialect.name in ("sqlite", "postgresql")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except SQLAlchemyError as e:
            raise store_error(e) from e
        except json.JSONDecodeError as e:  # a JSON column's stored text: SQLite never checks it
            raise _not_json(e) from e

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction, which takes the database's write lock first (SQLite: BEGIN
        IMMEDIATE; PostgreSQL: the advisory lock), so a read-modify-write inside it sees every
        write committed before and none while it runs."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                if self._locks:
                    session.connection(execution_options={IMMEDIATE: True})
                yield session
                session.commit()
        except SQLAlchemyError as e:
            raise store_error(e) from e
        except json.JSONDecodeError as e:
            raise _not_json(e) from e

    @staticmethod
    def _get(s: Session, cls: type[T], id_: int | None, what: str) -> T:
        """The row `id_` of table `cls`; NotFound ("There is no {what} with id N.") if none."""
        obj = s.get(cls, id_) if id_ is not None else None
        if obj is None:
            raise NotFound(f"There is no {what} with id {id_}.")
        return obj

    @staticmethod
    def _touch(s: Session, conversation_id: int) -> None:
        """The chat changed now (its place in the list of chats)."""
        s.exec(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=utcnow())
        )
