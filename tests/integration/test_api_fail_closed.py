"""The API with its database damaged fails closed: what protects it (the password rule, the API
keys) cannot be read, so nothing is served, and it says so in OpenAI's error shape with a 503,
never a plain-text 500 and never a 200 without a key. Served for real (uvicorn, the routes and
guard that Home.py mounts) on a real SQLite file damaged under it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from core.api.config import ApiConfig
from core.auth import hash_password, new_api_key
from core.store import open_store
from tests.support.api_server import api_server
from tests.support.crash import damage

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


@pytest.fixture
def db(data_dir: Path, tiny_models: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RP_MODEL", str(tiny_models(7)))
    for name in ("RP_PASSWORD", "RP_DB_URL", "RP_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return data_dir / "app.db"


def _set(db: Path, key: str, raw_json: str) -> None:
    """Write a setting's stored JSON text as it is, bypassing every check (a bad disk's work)."""
    store = open_store(f"sqlite:///{db}")
    store.set_setting(key, "placeholder")
    store.close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE app_settings SET value = ? WHERE key = ?", (raw_json, key))


def _locked(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["message"]
    return error


@pytest.mark.parametrize(
    "harm",
    ["the password's value is not JSON", "the password is not text", "damaged at start"],
)
def test_an_unreadable_password_locks_the_api(db: Path, harm: str) -> None:
    if harm == "the password's value is not JSON":
        _set(db, "password", '{"pbkdf2_sha256$200000$')
    elif harm == "the password is not text":
        _set(db, "password", '{"hash": "pbkdf2_sha256$200000$x$y"}')
    else:
        store = open_store(f"sqlite:///{db}")
        store.set_setting("password", hash_password("secret"))
        store.close()
        damage(db)
    with api_server() as base:
        for r in (
            httpx.get(base + "/v1/models"),
            httpx.post(base + "/v1/chat/completions", json=CHAT),
            httpx.get(base + "/api/characters"),
        ):
            error = _locked(r)
            assert error["code"] == "password_unreadable"
            assert "cannot be read" in error["message"]


def test_keys_that_cannot_be_read_lock_the_api(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RP_PASSWORD", "secret")  # a key is needed; the keys are in the database
    key, record = new_api_key("SillyTavern")
    store = open_store(f"sqlite:///{db}")
    store.set_setting("api_keys", [record])
    store.close()
    with api_server() as base:
        auth = {"authorization": f"Bearer {key}"}
        assert httpx.get(base + "/v1/models", headers=auth).status_code == 200
        with sqlite3.connect(db) as con:  # the database is damaged under the running server
            con.execute("DROP TABLE app_settings")
        for r in (
            httpx.get(base + "/v1/models", headers=auth),
            httpx.post(base + "/v1/chat/completions", json=CHAT, headers=auth),
        ):
            error = _locked(r)
            assert error["code"] == "api_keys_unreadable" and "no such table" in error["message"]
        # without a key it is still the key that is asked for first
        assert httpx.get(base + "/v1/models").status_code == 401


def test_a_guard_that_cannot_check_lets_nothing_through(db: Path) -> None:
    def no_runtime() -> Any:
        raise PermissionError("the data folder cannot be read")

    with api_server(ApiConfig(runtime=no_runtime)) as base:
        r = httpx.get(base + "/v1/models", headers={"origin": "http://elsewhere.example"})
        assert _locked(r)["code"] == "guard_failed"
        assert _locked(httpx.get(base + "/v1/models"))["code"] == "password_unreadable"
