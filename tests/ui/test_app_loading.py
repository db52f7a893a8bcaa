"""AppTest of the first minute: the model loads in the background and the pages do not wait.

The load is the real one (the tiny RWKV-7 model through the rwkv package), held on purpose
before it starts: `held_load` makes the app's loader wait on an Event that the test sets. While
it is held, Home lists the characters, Settings and Chat say the model is loading, and the chat
input is there; a message sent meanwhile is answered once the load is let go. A model file that
cannot be loaded is named with its reason and a retry button, which loads it once it is fixed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.support.required import unavailable
from tests.support.ui import chat_texts, check, errors, follow, open_app, store, wait_model

WAIT_S = 60  # a generous bound for a thread of this test to reach a point; nothing is timed


class Held:
    """The app's model loader, held before it loads until `release()`."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.entered = threading.Event()  # the app's load has started and waits for `go`

    def release(self) -> None:
        self.go.set()


@pytest.fixture
def held_load(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    import core.backends.loader as loader

    held = Held()
    real = loader.load_backend

    def load(*args: Any, **kwargs: Any) -> Any:
        held.entered.set()
        assert held.go.wait(WAIT_S), "the test never let the load go"
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "load_backend", load)
    try:
        yield held
    finally:
        held.release()  # never leave the load thread waiting (the fixture's reset joins it)


def _runtime() -> Any:
    from core import runtime

    return runtime.current()


def _infos(at: Any) -> list[str]:
    """The st.info notes, their markdown escapes (of a file name) removed."""
    return [i.value.replace("\\", "") for i in at.info]


def test_pages_render_while_the_model_loads(held_load: Held, tiny_model: Path) -> None:
    s = store()
    ch = s.create_character({"name": "Hana", "greetings": ["Welcome, {{user}}!"]})
    at = open_app(loaded=False)
    check(at)
    assert held_load.entered.wait(WAIT_S)
    assert _runtime().state() == "loading"
    # Home: the characters at once, and what the model is doing, with the model's name
    assert "Hana" in [t.value for t in at.text]
    assert any("Loading the model" in i and tiny_model.name in i for i in _infos(at))
    assert not any("rwkv7" in t.value for t in at.text)
    assert not errors(at)

    settings = open_app("pages/settings.py", loaded=False)
    assert any("Loading the model" in i for i in _infos(settings))
    assert settings.button(key="load_model") is not None  # the rest of Settings is there

    # one click opens a chat; its input is there while the model still loads
    at.button(key=f"home_chat_{ch.id}").click().run()
    check(at)
    follow(at, "pages/chat.py")
    assert at.chat_input(key="chat_input") is not None
    assert "Welcome, User!" in chat_texts(at)
    assert any("Loading the model" in i for i in _infos(at))
    assert _runtime().state() == "loading"

    held_load.release()
    wait_model(at)  # the page reruns by itself when the load ends
    assert not any("Loading the model" in i for i in _infos(at))
    home = open_app()
    assert any("rwkv7" in t.value and tiny_model.name in t.value for t in home.text)


def test_a_message_sent_while_loading_is_answered_when_ready(
    held_load: Held, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import runtime

    s = store()
    ch = s.create_character({"name": "Ivo", "greetings": ["Hey."], "sampling_preset": "precise"})
    conv = s.create_conversation(ch.id)
    s.update_conversation(conv.id, sampling={**(conv.sampling or {}), "max_tokens": 8})
    at = open_app("pages/chat.py", loaded=False, chat=str(conv.id))
    assert held_load.entered.wait(WAIT_S)
    assert at.chat_input(key="chat_input") is not None

    # the reply waits for the model: let the load go only once the page waits for it, and
    # record what was saved at that moment
    waiting = threading.Event()
    real_wait = runtime.Runtime.wait_engine

    def wait_engine(self: Any, timeout: float | None = None) -> Any:
        waiting.set()
        return real_wait(self, timeout)

    monkeypatch.setattr(runtime.Runtime, "wait_engine", wait_engine)
    seen: dict[str, Any] = {}

    def release_when_waiting() -> None:
        if waiting.wait(WAIT_S):
            seen["state"] = _runtime().state()
            seen["texts"] = [m.text for m in s.list_messages(conv.id)]
        held_load.release()

    helper = threading.Thread(target=release_when_waiting)
    helper.start()
    at.chat_input(key="chat_input").set_value("Are you there?").run()
    helper.join()
    check(at)
    assert seen["state"] == "loading"  # the page waited on the load, not on a finished model
    assert seen["texts"] == ["Hey.", "Are you there?"]  # sent (and saved) before it was ready
    msgs = s.list_messages(conv.id)
    assert [m.role for m in msgs] == ["char", "user", "char"]
    assert msgs[-1].meta.get("stop") not in (None, "interrupted")  # a reply that ended
    assert len(at.chat_message) == 3  # and the page shows it under the message
    assert not errors(at)


def test_a_model_that_fails_to_load_says_why_and_can_be_retried(
    app_env: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a model at all")
    monkeypatch.setenv("RP_MODEL", str(bad))
    s = store()
    ch = s.create_character({"name": "Nomo", "greetings": ["Hi."]})
    conv = s.create_conversation(ch.id)
    at = open_app("pages/chat.py", loaded=False, chat=str(conv.id))
    wait_model(at)  # the background load ends (it fails); the page reruns
    assert _runtime().state() == "failed"
    errs = [e.replace("\\", "") for e in errors(at)]
    assert errs and errs[0].startswith("Could not load the model:") and "broken.pth" in errs[0]
    retry = at.button(key="chat_load")
    assert retry.label.replace("\\", "") == "Try loading broken.pth again"
    # a failed model stays failed: other pages do not try it again on their own
    home = open_app(loaded=False)
    assert _runtime().state() == "failed"
    assert any(e.startswith("Could not load the model:") for e in errors(home))

    shutil.copyfile(tiny_model, bad)  # the user fixes the file, then clicks retry
    at.button(key="chat_load").click().run()
    check(at)
    wait_model(at)
    assert _runtime().state() == "ready"
    assert not errors(at)
    assert at.chat_input(key="chat_input") is not None


# A fresh interpreter does what `streamlit run Home.py` does at start: import Home (to find its
# st.App), then enter the app's lifespan; then it imports what the Chat page imports.
SERVER_START = """
import asyncio, gc, json, sys, threading
import Home
# core.api itself is an empty package (the mount reads core.api.paths); the API is core.api.app
heavy = ("alembic", "pandas", "sqlalchemy", "numpy", "core.store", "core.engine", "core.api.app")
at_import = sorted(m for m in heavy if m in sys.modules)
api_at_import = Home._api.built
from core import runtime
rt = runtime.current()  # what the lifespan does first, on the server's own thread
at_runtime = sorted(m for m in heavy if m in sys.modules)

async def start():
    async with Home._lifespan(None):  # the lifespan that Home.py gives st.App
        return gc.get_freeze_count(), runtime.current().state()

frozen, state = asyncio.run(start())
from core.store import default_url
engine = rt.wait_loaded(120)
for t in [t for t in threading.enumerate() if t.name == "after-load"]:
    t.join(120)
import core.chat, core.prompt, pages.group_ui, pages.lore_ui, pages.prompt_ui, pages.versions_ui
print(json.dumps({
    "at_import": at_import, "frozen": frozen, "frozen_after_load": gc.get_freeze_count(),
    "state": state, "loaded": engine is not None, "failure": rt.failure(),
    "api_at_import": api_at_import, "api_after_load": Home._api.built,
    "at_runtime": at_runtime, "db_url_is_default": rt.db_url == default_url(),
    "characters": [c.name for c in rt.store.list_characters()],
    "pandas_for_chat": "pandas" in sys.modules,
}))
"""


def test_the_server_start_defers_heavy_work_and_freezes_its_objects(tmp_path: Path) -> None:
    """What the first page waits for, measured by bench/first_reply.py: the server answers
    before the store (SQLAlchemy, Alembic), the engine (numpy) and the API are imported: the
    store opens on the loading thread while the browser loads the page, and the API is built
    once the model has loaded. The objects of the start are frozen out of the collections that
    Streamlit runs after every page run, and the Chat page's modules leave pandas unimported
    (0.5-0.9 s, needed by the lorebook table only). The load still starts with the server."""
    from core.backends.embedded import embedded_model_path, missing_message

    if embedded_model_path() is None:
        unavailable(missing_message())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
    env["RP_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", SERVER_START],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["at_import"] == seen["at_runtime"] == []  # none before the server answers
    assert seen["db_url_is_default"]  # the runtime's database is the store's default one
    assert not seen["api_at_import"] and seen["api_after_load"]
    assert seen["state"] in ("loading", "ready")  # the lifespan started the load
    assert seen["frozen"] > 20_000  # the objects of the server's imports (Streamlit)
    assert seen["frozen_after_load"] > seen["frozen"]  # and then those of the loading thread
    assert seen["loaded"] and seen["failure"] is None
    assert seen["characters"]  # the store opened and seeded on the loading thread
    assert not seen["pandas_for_chat"]
