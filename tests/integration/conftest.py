"""Fixtures of the integration tests: a store on the test's own data directory, and real models
loaded once and shared by the tests that only read from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core import runtime
from core.config import default_url
from core.runtime import Runtime
from core.store import Store
from tests.support.db_fixtures import DATABASES, open_test_store


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The test's own database, on each kind the store runs on: the SQLite file of the test's
    data directory, then a fresh database on the session's PostgreSQL server. $RP_DB_URL names
    it (unset for SQLite, whose file is the default), so every store the test opens with
    open_test_store()/open_store() is that one."""
    if request.param == "sqlite":
        monkeypatch.delenv("RP_DB_URL", raising=False)
        yield default_url()
        return
    pg = request.getfixturevalue("postgres")
    name, url = pg.new_database()
    monkeypatch.setenv("RP_DB_URL", url)
    yield url
    pg.drop(name)


@pytest.fixture(params=DATABASES)
def empty_db_url(request: pytest.FixtureRequest, data_dir: Path):
    """A database with nothing in it yet, not migrated (for the migrations' tests): the URL of
    a SQLite file not made yet in the data directory, then an empty PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{data_dir / 'app.db'}"
        return
    pg = request.getfixturevalue("postgres")
    name, url = pg.empty_database()
    yield url
    pg.drop(name)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """The store of the test's own database (see db_url: once on SQLite, once on PostgreSQL,
    the same assertions), closed afterwards."""
    s = open_test_store()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The SQLite store of the test's data directory, for what only SQLite has (its file, its
    pragmas, VACUUM INTO backups); PostgreSQL's counterparts have tests of their own."""
    monkeypatch.delenv("RP_DB_URL", raising=False)
    s = open_test_store()
    yield s
    s.close()


@pytest.fixture(scope="session")
def rwkv7_backend(tiny_models):
    """One loaded tiny RWKV-7 (cpu fp32), shared by the tests that only read from it."""
    from core.backends.rwkv import RwkvBackend

    return RwkvBackend(tiny_models(7), "cpu fp32")


@pytest.fixture
def rt(data_dir: Path, tiny_models, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The app's runtime (store, model, chat service) on the test's data directory, with the
    tiny RWKV-7 as $RP_MODEL; forgotten afterwards, as a new process would."""
    monkeypatch.setenv("RP_MODEL", str(tiny_models(7)))
    for var in ("RP_DB_URL", "RP_BACKEND", "RP_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    runtime.reset()
    yield runtime.current()
    runtime.reset()
