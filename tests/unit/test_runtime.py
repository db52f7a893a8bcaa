"""The runtime's own rules, on a store in memory and a fake loader: the password in force
(RP_PASSWORD wins, an unreadable setting stays shut), a retry after an unload or a failure,
and the readiness of a model for a reply (`require_engine` and its codes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import runtime
from core.auth import hash_password
from core.errors import ModelError, ModelUnavailable, StoreError
from core.runtime import Runtime
from tests.support.memory_store import MemoryStore


class Engine:
    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    """Runtime._open without a model: an Engine, or `fail`'s ModelError."""

    def __init__(self) -> None:
        self.fail = ""
        self.calls = 0

    def __call__(self, choice: Any) -> Engine:
        self.calls += 1
        if self.fail:
            raise ModelError(self.fail)
        return Engine(choice.path)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def rt(
    tmp_path: Path, store: MemoryStore, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Runtime]:
    monkeypatch.delenv("RP_PASSWORD", raising=False)
    monkeypatch.setenv("RP_MODEL", "models/tiny.pth")
    r = Runtime(tmp_path)
    r._store = store  # type: ignore[assignment]
    monkeypatch.setattr(r, "_open", loader)
    yield r
    if r._loading is not None:
        r._loading.join()
    with runtime._MODEL.lock:  # the process's one model slot: left empty for the next test
        runtime._release()


def test_rp_password_wins_and_an_unreadable_setting_stays_shut(
    rt: Runtime, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rt.password_policy("127.0.0.1").open
    saved = hash_password("saved")
    store.values["password"] = saved
    policy = rt.password_policy("127.0.0.1")
    assert (policy.password, policy.source, policy.key_reasons) == (saved, "setting", ("password",))
    store.broken = True
    with pytest.raises(StoreError):  # never read as "no password"
        rt.password_policy("127.0.0.1")
    monkeypatch.setenv("RP_PASSWORD", "env-pass")  # wins, and needs no setting
    policy = rt.password_policy("0.0.0.0")
    assert (policy.password, policy.source) == ("env-pass", "env")
    assert policy.key_reasons == ("env_password", "listen")


def test_a_reply_loads_the_model_it_needs(rt: Runtime, loader: Loader) -> None:
    assert rt.state() == "idle"
    engine = rt.require_engine()
    assert isinstance(engine, Engine) and engine.path == "models/tiny.pth"
    assert rt.require_engine() is engine and loader.calls == 1


def test_an_unloaded_model_is_not_loaded_for_a_reply_until_retried(
    rt: Runtime, loader: Loader
) -> None:
    rt.load()
    rt.unload()
    with pytest.raises(ModelUnavailable) as e:
        rt.require_engine()
    assert e.value.code == "model_unloaded"
    assert str(e.value) == "The model was unloaded in Settings. Load it there, then try again."
    assert rt.state() == "unloaded" and loader.calls == 1
    rt.retry()  # the Load button: in the background
    assert rt.wait_loaded() is not None and rt.state() == "ready" and loader.calls == 2


def test_a_failed_model_says_why_and_is_tried_again_only_when_retried(
    rt: Runtime, loader: Loader
) -> None:
    loader.fail = "broken.pth is not a model."
    with pytest.raises(ModelUnavailable) as e:  # tried now, and failed
        rt.require_engine()
    assert e.value.code == "model_not_loaded"
    assert str(e.value) == (  # the same words whether it failed now or before
        "The model could not be loaded: broken.pth is not a model. Choose another in Settings."
    )
    with pytest.raises(ModelUnavailable) as e:  # not tried again on every request
        rt.require_engine()
    assert e.value.code == "model_not_loaded" and loader.calls == 1
    assert str(e.value) == (
        "The model could not be loaded: broken.pth is not a model. Choose another in Settings."
    )
    assert rt.state() == "failed"
    loader.fail = ""  # the user fixed the file
    rt.retry()
    assert rt.wait_loaded() is not None and rt.failure() is None and loader.calls == 2
