"""One real PostgreSQL server for the whole test session (Debian's `postgresql` package, started by
deploy.postgres.LocalPostgres in a temporary directory on a free port of 127.0.0.1, stopped when
the session ends), and a fresh database for each test that asks for one: a copy of a template
migrated once, so a test starts on an empty store at the newest revision in a few tens of ms.

Without PostgreSQL a test that needs it skips, and fails under CI=true (tests/support/required).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from tests.support.required import unavailable

TEMPLATE = "rp_template"


class PostgresForTests:
    def __init__(self) -> None:
        self._pg = None
        self._dir: Path | None = None
        self._error: str | None = None
        self._n = itertools.count(1)

    def server(self):  # -> deploy.postgres.LocalPostgres
        """The session's server, started on first use; a skip (a failure under CI) without
        PostgreSQL."""
        if self._error:
            unavailable(self._error)
        if self._pg is None:
            from deploy.postgres import LocalPostgres, PostgresMissing

            try:
                import psycopg  # noqa: F401
            except ImportError:
                self._error = "psycopg is not installed (pip install -r requirements.txt)"
                unavailable(self._error)
            # not under pytest's tmp_path: its parents are private to root, and the server
            # runs as the postgres user
            self._dir = Path(tempfile.mkdtemp(prefix="rp-test-pg-"))
            try:
                pg = LocalPostgres(self._dir, fast=True).start()
            except PostgresMissing as e:
                self._error = str(e)
                unavailable(self._error)
            from core.store import open_store

            pg.create_database(TEMPLATE)
            open_store(pg.url(TEMPLATE)).close()  # migrated once; every test copies it
            self._pg = pg
        return self._pg

    def new_database(self) -> tuple[str, str]:
        """(name, SQLAlchemy URL) of a new database at the newest revision, empty."""
        pg = self.server()
        name = f"t{next(self._n)}"
        pg.drop_database(name)
        return name, pg.create_database(name, template=TEMPLATE)

    def empty_database(self) -> tuple[str, str]:
        """(name, URL) of a new database with no tables at all (migrations start from nothing)."""
        pg = self.server()
        name = f"e{next(self._n)}"
        pg.drop_database(name)
        return name, pg.create_database(name)

    def drop(self, name: str) -> None:
        if self._pg is not None:
            self._pg.drop_database(name)

    def close(self) -> None:
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
