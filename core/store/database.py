"""The database under the store: the SQLAlchemy engine and the Alembic migrations that create
and upgrade it. SQLite (the default) runs with WAL, foreign keys, a busy timeout and BEGIN
IMMEDIATE for writes; PostgreSQL (`RP_DB_URL=postgresql+psycopg://...`, psycopg 3) gets the same
guarantees from its own means: a write transaction first takes one advisory lock
(`pg_advisory_xact_lock(WRITE_LOCK)`), so writers queue one at a time across every process on the
database as SQLite's do, and readers never wait (MVCC); the lock waits at most `LOCK_TIMEOUT_S`,
as SQLite's busy timeout; the session's time zone is UTC.

Alembic is imported by the functions that use it, not at the top: importing it took 0.4 s, and
this module is imported by the server before it answers (Home.py); the store is opened later, on
the model's loading thread, while the browser loads the page."""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, inspect, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool
from sqlmodel import create_engine

from core.errors import Conflict, StoreError, StoreUnavailable
from core.store.validation import json_dumps

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
APP_TABLES = ("characters", "conversations", "messages", "app_settings")
IMMEDIATE = "rp_begin_immediate"  # execution option: this transaction writes (BEGIN IMMEDIATE)
# PostgreSQL: the advisory lock every write transaction takes first (a fixed 64-bit key: "rp-write")
WRITE_LOCK = int.from_bytes(b"rp-write", "big") >> 1
LOCK_TIMEOUT_S = 15  # how long a writer waits for another (SQLite's busy_timeout)
# Alembic runs a migration through module-level proxies (alembic.context, alembic.op) and loads
# its scripts as modules: two threads migrating at once, even two different databases, ran each
# other's steps ("table characters already exists" in 58 of 60 tries). The app opens its store
# on the loading thread while tests and the API may open others: one at a time per process.
_ALEMBIC = threading.RLock()


def store_error(e: SQLAlchemyError) -> StoreError:
    """The database's error said as a StoreError. A character's name refused by the database
    itself is a Conflict: the store checks names first in the same transaction, so the name
    was taken under it (by another writer, where the database lets two write at once)."""
    text = str(getattr(e, "orig", None) or e)
    if isinstance(e, IntegrityError) and (
        "characters.name" in text or "ix_characters_name" in text  # SQLite / PostgreSQL
    ):
        return Conflict(
            "A character with that name already exists. Choose another name.", code="name_taken"
        )
    if isinstance(e, OperationalError) and ("locked" in text or "lock timeout" in text):
        return StoreUnavailable(
            "The database is busy (another program is writing to it). Try again."
        )
    if isinstance(e, OperationalError) and ("full" in text or "No space left" in text):
        return StoreUnavailable(
            "The disk is full: nothing could be saved. Free some space, then try again."
        )
    if isinstance(e, OperationalError | DatabaseError) and not isinstance(e, IntegrityError):
        return StoreUnavailable(f"Database error: {text}")
    return StoreError(f"Database error: {text}")


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite with WAL, foreign keys, busy timeout, BEGIN IMMEDIATE;
    for PostgreSQL with its write lock (`_postgres`)."""
    kwargs: dict[str, Any] = {"json_serializer": json_dumps}
    memory = _is_memory(url)
    if memory:  # one shared connection, else every thread would see its own empty database
        kwargs |= {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    if is_postgres(url):
        kwargs |= {
            # a connection the server dropped (a restart, a failover) is replaced, not used
            "pool_pre_ping": True,
            "connect_args": {
                "options": f"-c timezone=UTC -c lock_timeout={LOCK_TIMEOUT_S * 1000}",
                "connect_timeout": 10,
            },
        }
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "postgresql":
        _postgres(engine)
        return engine
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 15000")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA synchronous = FULL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (any driver; the app's is psycopg 3)."""
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except ArgumentError:
        return False


def _postgres(engine: Engine) -> None:
    """PostgreSQL's counterparts of the SQLite settings: a write transaction takes the one
    advisory lock first, so two writers (threads or processes, on any machine) queue instead
    of interleaving a read-modify-write. (The session's time zone is UTC: `make_engine`.)"""

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(IMMEDIATE):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")


def _is_memory(url: str) -> bool:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def known_revisions() -> list[str]:
    """Revision ids of this app, oldest first."""
    from alembic.script import ScriptDirectory

    with _ALEMBIC:
        script = ScriptDirectory.from_config(alembic_config())
        return [s.revision for s in reversed(list(script.walk_revisions()))]


# A schema as compared: each table's columns, by name, with their declared type, NOT NULL and
# place in the primary key (SQLite's PRAGMA table_info); SQLite's and Alembic's own tables left
# out. Column order is not compared: a column added by a migration comes last in an upgraded
# file and may not in a new one.
Schema = dict[str, dict[str, tuple[str, bool, int]]]


def sqlite_schema(con: sqlite3.Connection) -> Schema:
    """The tables and columns of the SQLite database open on `con`."""
    tables = [
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name != 'alembic_version'"
        )
    ]
    return {
        t: {
            col[1]: (str(col[2]).upper(), bool(col[3]), int(col[5]))
            for col in con.execute("SELECT * FROM pragma_table_info(?)", (t,))
        }
        for t in tables
    }


@functools.cache
def revision_schema(revision: str) -> Schema:
    """The schema this app's migrations make at `revision` (built once, in memory)."""
    engine = make_engine("sqlite://")
    try:
        upgrade_db(engine, revision)
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            return sqlite_schema(raw)
    finally:
        engine.dispose()


def schema_differences(found: Schema, expected: Schema) -> list[str]:
    """What differs between two schemas, said table by table (empty: they are the same)."""
    out: list[str] = []
    for t in sorted(expected.keys() - found.keys()):
        out.append(f"table {t} is missing")
    for t in sorted(found.keys() - expected.keys()):
        out.append(f"table {t} is not this app's")
    for t in sorted(found.keys() & expected.keys()):
        have, want = found[t], expected[t]
        missing = sorted(want.keys() - have.keys())
        extra = sorted(have.keys() - want.keys())
        changed = sorted(c for c in want.keys() & have.keys() if want[c] != have[c])
        if missing:
            out.append(f"table {t} lacks {', '.join(missing)}")
        if extra:
            out.append(f"table {t} has other columns ({', '.join(extra)})")
        if changed:
            out.append(f"table {t} defines {', '.join(changed)} otherwise")
    return out


def db_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_db(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` (creating it if empty), in one transaction; SQLite
    files are switched to WAL mode (a lasting property of the file).

    Refuses, touching nothing, a database at a revision this app does not know (made by a newer
    version) or one that has tables but no revision (not made by this app).
    """
    with _ALEMBIC:
        _upgrade(engine, revision)


def _upgrade(engine: Engine, revision: str) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.util.exc import CommandError

    cfg = alembic_config()
    known = set(known_revisions())
    where = engine.url.render_as_string(hide_password=True)

    def check(conn: Connection) -> None:
        current = MigrationContext.configure(conn).get_current_heads()
        unknown = [r for r in current if r not in known]
        if unknown:
            raise StoreError(
                f"The database {where} is at revision {', '.join(unknown)}, which this version "
                "of the app does not know (it was made by a newer version). It was left "
                "untouched: update the app, or set RP_DB_URL to another database."
            )
        if not current:
            tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
            if tables:
                raise StoreError(
                    f"The database {where} has tables but was not made by this app "
                    f"({', '.join(sorted(tables)[:5])}). It was left untouched: set RP_DB_URL "
                    "to another database."
                )

    try:
        with engine.connect() as conn:
            with conn.begin():  # a read: nothing is written before the checks pass
                check(conn)
            if engine.dialect.name == "sqlite" and not _is_memory(str(engine.url)):
                # outside any transaction (SQLite cannot change journal mode inside one)
                conn.connection.dbapi_connection.execute("PRAGMA journal_mode = WAL")  # type: ignore[union-attr]
            conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                check(conn)  # again, under the write lock: another process may have migrated
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
    except SQLAlchemyError as e:
        raise StoreError(f"Cannot open the database {where}: {getattr(e, 'orig', e)}") from e
    except CommandError as e:
        raise StoreError(f"Cannot migrate the database {where}: {e}") from e
