"""The data directory is private to the user who runs the app: 0700, and 0600 for the database
(with SQLite's WAL and SHM files), avatars and checkpoints, when they are made and, for what an
older version left readable, at every start."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.engine import Engine
from core.prompt import CharacterContext, Message
from core.roleplay import avatars
from core.roleplay.cards import open_app_store
from tests.support.db_fixtures import picture

CTX = CharacterContext(name="Alice", user_name="Bob")


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    """The usual umask (022), whatever the test runner has: files would be 0644 without care."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _not_private(root: Path) -> dict[str, str]:
    """The data directory and what is below it (links aside) that is not 0700 (a folder) or
    0600 (a file), with its mode."""
    wrong = {}
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) != want:
            wrong[str(p.relative_to(root))] = oct(stat.S_IMODE(mode))
    return wrong


def _fill(data: Path, backend) -> None:
    """What a user's session leaves: the database (open, so with its WAL and SHM files), an
    avatar, checkpoints."""
    store = open_app_store()
    store.create_character({"name": "Ada", "avatar": avatars.save_avatar(picture())})
    eng = Engine(backend, cache_dir=data / "states")
    eng.warm(CTX, [Message("user", "hello")])
    eng.flush()
    names = {str(p.relative_to(data)).split("/")[0] for p in data.rglob("*")}
    assert {"app.db", "app.db-wal", "app.db-shm", "avatars", "states"} <= names
    assert _not_private(data) == {}
    store.close()


def test_new_files_are_private(rwkv7_backend, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "new" / "data"  # not there yet: the app makes it
    monkeypatch.setenv("RP_DATA_DIR", str(data))
    _fill(data, rwkv7_backend)


def test_a_start_makes_what_is_there_private(rwkv7_backend, data_dir: Path, tmp_path: Path) -> None:
    _fill(data_dir, rwkv7_backend)
    for p in [data_dir, *data_dir.rglob("*")]:  # as an older version left them
        p.chmod(0o755 if p.is_dir() else 0o644)
    outside = tmp_path / "not-ours.txt"
    outside.write_text("a file elsewhere that a link in the data directory points at")
    outside.chmod(0o644)
    (data_dir / "link").symlink_to(outside)
    open_app_store().close()
    assert _not_private(data_dir) == {}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # links are not followed
