"""Fixtures of the integration tests: a store on the test's own data directory, and real models
loaded once and shared by the tests that only read from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core import runtime
from core.runtime import Runtime
from core.store import Store
from tests.support.db_fixtures import open_test_store


@pytest.fixture
def store(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store of the test's own data directory (never $RP_DB_URL), closed afterwards."""
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
