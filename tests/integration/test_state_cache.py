"""Checkpoint files on disk (the rwkv back end on a tiny RWKV-7): a damaged or old file is a
miss, counted and deleted, never restored; writes are private and reach the disk before their
name does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.engine import Engine
from core.engine import state_cache as sc
from core.prompt import CharacterContext, Message

CTX = CharacterContext(name="Alice", user_name="Bob", persona="{{char}} is a cheerful cat.")
HISTORY = [
    Message("char", "Hello {{user}}!"),
    Message("user", "Hi, how are you?"),
    Message("char", "Fine, and you?"),
]
SPEAKER = Message("user")


def _checkpoints(backend, folder: Path) -> list[Path]:
    """One checkpoint file after each message of HISTORY, all on the way to its next reply."""
    eng = Engine(backend, cache_dir=folder)
    for n in range(1, len(HISTORY) + 1):
        eng.warm(CTX, HISTORY[:n])
    eng.flush()
    files = sorted(folder.glob("*.state"))
    assert len(files) >= 3
    return files


def _flip(path: Path, where: str) -> None:
    """Overwrite bytes of `path` in place (same length): 64 near the start, or 4 KB in the middle
    or at the end."""
    data = bytearray(path.read_bytes())
    start, size = {"header": (16, 64), "middle": (len(data) // 2, 4096), "end": (-4096, 4096)}[
        where
    ]
    start %= len(data)
    data[start : start + size] = bytes(b ^ 0x5A for b in data[start : start + size])
    path.write_bytes(data)


@pytest.mark.parametrize("where", ["header", "middle", "end"])
def test_a_damaged_checkpoint_is_a_counted_miss_and_is_deleted(
    rwkv7_backend, tmp_path: Path, where: str
) -> None:
    folder = tmp_path / "states"
    files = _checkpoints(rwkv7_backend, folder)
    for f in files:
        _flip(f, where)
    fresh = Engine(rwkv7_backend, cache_dir=folder)
    for f in files:  # a file's name is its key
        assert fresh.cache.get(f.stem) is None and not f.exists()
    assert fresh.cache_stats()["damaged"] == len(files)
    a, _ = fresh.state_for(CTX, HISTORY, SPEAKER)
    b, _ = fresh.reference_state(CTX, HISTORY, SPEAKER)
    assert np.abs(a - b).max() < 1e-4  # the logits of a fresh feed


def test_a_checkpoint_without_a_checksum_is_a_miss(rwkv7_backend, tmp_path: Path) -> None:
    """Files of the version before checksums: the same layout without MAGIC and digest."""
    folder = tmp_path / "states"
    files = _checkpoints(rwkv7_backend, folder)
    for f in files:
        f.write_bytes(f.read_bytes()[len(sc.MAGIC) + 32 :])
    fresh = Engine(rwkv7_backend, cache_dir=folder)
    fresh.state_for(CTX, HISTORY, SPEAKER)
    assert fresh.cache_stats()["damaged"] == len(files)
    fresh.flush()  # state_for wrote the last message's checkpoint again: a sound file
    back = [f for f in files if f.exists()]
    assert len(back) == 1 and back[0].read_bytes()[: len(sc.MAGIC)] == sc.MAGIC
    # and a sound file is a disk hit
    _checkpoints(rwkv7_backend, folder)
    again = Engine(rwkv7_backend, cache_dir=folder)
    again.state_for(CTX, HISTORY, SPEAKER)
    assert again.cache_stats()["hits_disk"] == 1 and again.cache_stats()["damaged"] == 0


def test_writes_are_private_and_synced_before_the_rename(
    rwkv7_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(sc.os, "fsync", fsync)
    monkeypatch.setattr(sc.os, "replace", replace)
    folder = tmp_path / "states"
    files = _checkpoints(rwkv7_backend, folder)
    renames = [i for i, (what, _) in enumerate(events) if what == "rename"]
    assert len(renames) == len(files)
    for i in renames:  # the temporary file was fsynced just before it got its name
        assert events[i - 1] == ("fsync", events[i][1])
    assert {p.name for p in folder.iterdir()} == {f.name for f in files}  # no temporary left
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {f.stat().st_mode & 0o777 for f in files} == {0o600}
