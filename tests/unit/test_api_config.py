"""ApiConfig, what the API's guard asks: a key when the password rule says so, nothing passing
when the password setting cannot be read, and the keys and origins saved in Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.api.config import ApiConfig
from core.api.errors import ApiError
from core.auth import hash_password
from core.runtime import Runtime
from tests.support.memory_store import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def _config(tmp_path: Path, store: MemoryStore, address: str = "127.0.0.1") -> ApiConfig:
    rt = Runtime(tmp_path)
    rt._store = store  # type: ignore[assignment]
    return ApiConfig(listen_address=lambda: address, runtime=lambda: rt)


def test_a_key_is_required_as_the_password_rule_says(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RP_PASSWORD", raising=False)
    assert not _config(tmp_path, store).key_required()
    assert _config(tmp_path, store, "0.0.0.0").key_required()
    store.values["password"] = hash_password("secret")
    assert _config(tmp_path, store).key_required()
    store.values["password"] = ""
    monkeypatch.setenv("RP_PASSWORD", "env-pass")
    assert _config(tmp_path, store).key_required()


def test_an_unreadable_password_setting_lets_nothing_through(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RP_PASSWORD", raising=False)
    store.broken = True
    with pytest.raises(ApiError) as e:
        _config(tmp_path, store).key_required()
    assert e.value.status == 503 and e.value.code == "password_unreadable"
    assert "cannot be read" in e.value.message and "no such table" in e.value.message
    config = _config(tmp_path, store)
    assert config.allowed_origins() == []  # no origin allowed: refused, as it should
    with pytest.raises(ApiError) as e:  # no key taken for wrong: the server cannot check it
        config.key_ok("rp-anything")
    assert e.value.status == 503 and e.value.code == "api_keys_unreadable"


def test_a_saved_password_that_is_not_text_lets_nothing_through(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RP_PASSWORD", raising=False)
    store.values["password"] = {"hash": "pbkdf2_sha256$1$x$y"}  # not what set_password writes
    with pytest.raises(ApiError) as e:
        _config(tmp_path, store).key_required()
    assert e.value.status == 503 and "not text" in e.value.message
    store.values["password"] = None  # nothing saved: no password
    assert not _config(tmp_path, store).key_required()


def test_keys_and_origins_are_those_saved_in_settings(tmp_path: Path, store: MemoryStore) -> None:
    config = _config(tmp_path, store)
    key, _ = config.runtime().settings.create_api_key("script")
    config.runtime().settings.set_api_origins("http://localhost:8000")
    assert config.key_ok(key) and not config.key_ok(key + "x")
    assert config.allowed_origins() == ["http://localhost:8000"]
