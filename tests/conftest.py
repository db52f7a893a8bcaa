"""Fixtures of every level: tiny random-weight RWKV models (built once per session, official
layout, real World vocabulary) and a private data directory for every test.

Each test is marked with its level, the folder it lives in (unit, integration, ui, e2e), so
`-m "not e2e"` or `-m unit` select by level.

Hypothesis: under CI=true every run draws a fresh seed and prints it in the header (and again
at the end when a test failed), so CI explores new examples each run and a red build replays
with `--hypothesis-seed=SEED`. Off CI Hypothesis draws its own and keeps failing examples in
.hypothesis/; `--hypothesis-profile=replay` runs every property test on its fixed,
derandomized examples.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

pytest.register_assert_rewrite("tests.support")

LEVELS = ("unit", "integration", "ui", "e2e")


hypothesis_settings.register_profile("ci", derandomize=False, database=None, print_blob=True)
hypothesis_settings.register_profile("replay", derandomize=True, database=None)
_SEED_KEY = pytest.StashKey[tuple[object, str] | None]()


def pytest_configure(config: pytest.Config) -> None:
    """Under CI=true, a fresh Hypothesis seed for the run (unless one or a profile is given)."""
    from hypothesis import core

    from tests.support.required import in_ci

    seed = config.getoption("hypothesis_seed", None)
    profile = config.getoption("hypothesis_profile", None)
    how = "given"
    if in_ci() and seed is None and profile is None:
        hypothesis_settings.load_profile("ci")
        seed, how = secrets.randbelow(2**32), "a fresh one each CI run"
        core.global_force_seed = seed
    config.stash[_SEED_KEY] = (seed, how) if seed is not None else None


def _seed_line(config: pytest.Config) -> str | None:
    got = config.stash.get(_SEED_KEY, None)
    if got is None:
        return None
    seed, how = got
    return f"hypothesis seed {seed} ({how}; replay: --hypothesis-seed={seed})"


def pytest_report_header(config: pytest.Config) -> str | None:
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    line = _seed_line(config)
    if line and exitstatus != 0:
        terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent
    for item in items:
        level = item.path.resolve().relative_to(root).parts[0]
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))


# tests never reach the network, and never write into the repository's data/
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("RP_DATA_DIR", str(d))
    return d


@pytest.fixture
def data_dir(_private_data_dir: Path) -> Path:
    return _private_data_dir


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder of the test's own, where the converter and downloads may write."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr("core.config.MODELS_DIR", folder)
    return folder


@pytest.fixture(scope="session")
def postgres():
    """The session's one PostgreSQL server (tests/support/postgres.py), started on first use
    and stopped when the session ends; `postgres.new_database()` gives a test its own database."""
    from tests.support.postgres import PostgresForTests

    pg = PostgresForTests()
    yield pg
    pg.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """tiny_models(version, layers=2, width=128) -> Path of a .pth built once per session."""
    from tests.support.tiny_model import write_model

    root = tmp_path_factory.mktemp("tiny-models")
    made: dict[tuple[int, int, int], Path] = {}

    def get(version: int, layers: int = 2, width: int = 128) -> Path:
        key = (version, layers, width)
        if key not in made:
            made[key] = write_model(root / f"v{version}-L{layers}-D{width}.pth", *key)
        return made[key]

    return get
