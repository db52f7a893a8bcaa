"""Shared pieces of the page tests: a tiny RWKV-7 model, an empty data directory, AppTest helpers.

Tests import it as `from ui_helpers import ...` (tests/ is put on sys.path by the test module).
The model is random weights in the real layout (core.tiny_model): replies are gibberish, which
is fine for testing the pages. It is chosen through $RP_MODEL, the lowest-priority way the app
picks a model (after Settings, the flags after `--` and the saved setting).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
HOME = str(REPO / "Home.py")
TIMEOUT = 90  # seconds for one AppTest run (real generation with the tiny model)
SMALL_REPLY = 8  # max_tokens used by the tests: replies stay short and fast


@pytest.fixture(scope="session")
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RWKV-7, 2 layers, width 128: conftest's shared one when there is one."""
    try:
        return Path(request.getfixturevalue("tiny_models")(7, 2, 128))
    except pytest.FixtureLookupError:
        from core.tiny_model import write_model

        path = tmp_path_factory.mktemp("models") / "tiny-v7.pth"
        write_model(path, 7, 2, 128)
        return path


def _clear_caches() -> None:
    import streamlit as st

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


def open_app(page: str | None = None, **query: str) -> AppTest:
    """A new browser session on the app (optionally switched to `page`, e.g. "pages/chat.py")."""
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def follow(at: AppTest, page: str) -> AppTest:
    """After a click that called st.switch_page: the run already drew `page`, but AppTest's next
    run() would run the page it switched to last; tell it where the browser now is."""
    at.switch_page(page)
    return at


def check(at: AppTest) -> AppTest:
    """Fail on an exception shown by the page (a traceback must never reach the user)."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def store() -> Any:
    """A second Store on the test's data directory, to look at what the pages saved."""
    from core.db import open_store

    return open_store(seed=False)


def keys(at: AppTest, prefix: str) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith(prefix)]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def chat_texts(at: AppTest) -> list[str]:
    """The markdown bodies of the chat messages on the page, in order."""
    out: list[str] = []
    for msg in at.chat_message:
        out += [m.value for m in msg.markdown]
    return out


def create_character(at: AppTest, name: str, **fields: str) -> AppTest:
    """Fill and submit the character form on the Characters page."""
    at.button(key="new_character").click().run()
    check(at)
    at.text_input(key="cf_new_name").input(name)
    for field, value in fields.items():
        at.text_area(key=f"cf_new_{field}").input(value)
    form_save(at).run()
    return check(at)


def form_save(at: AppTest) -> Any:
    for b in at.button:
        if b.key and b.key.startswith("FormSubmitter:cf_") and b.label in ("Save", "保存"):
            return b.click()
    raise AssertionError("no Save button of the character form")
