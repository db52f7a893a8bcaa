"""Fixtures of every level: tiny random-weight RWKV models (built once per session, official
layout, real World vocabulary) and a private data directory for every test.

Each test is marked with its level, the folder it lives in (unit, integration, ui, e2e), so
`-m "not e2e"` or `-m unit` select by level.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.support")

LEVELS = ("unit", "integration", "ui", "e2e")


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
