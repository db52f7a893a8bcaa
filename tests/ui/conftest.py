"""Fixtures of the page tests: the app on an empty data directory, with a tiny RWKV-7 model.

The model is random weights in the real layout (tests.support.tiny_model): replies are
gibberish, which is fine for testing the pages. It is chosen through $RP_MODEL, the
lowest-priority way the app picks a model (after Settings, the flags after `--` and the saved
setting).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    """RWKV-7, 2 layers, width 128."""
    return Path(tiny_models(7, 2, 128))


def _clear_caches() -> None:
    import streamlit as st

    from core import runtime

    runtime.reset()
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app_env(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty data directory (RP_DATA_DIR) with the tiny model as the app's model."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    monkeypatch.setenv("RP_DATA_DIR", str(data))
    monkeypatch.setenv("RP_MODEL", str(tiny_model))
    for var in ("RP_PASSWORD", "RP_DB_URL", "RP_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    _clear_caches()  # the store, the engine and the model slot are per process
    yield data
    _clear_caches()
