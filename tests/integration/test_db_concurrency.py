"""Concurrent writers: two threads at once, two processes at once on the same chat and the same
setting, and a writer process killed with SIGKILL; each on SQLite and on PostgreSQL (`db_url`),
with the same assertions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url

from core.store import open_store
from tests.support import REPO
from tests.support.db_fixtures import open_test_store

N = 150


def integrity(url: str) -> str:
    """ "ok" when the database's own check finds nothing wrong: SQLite's integrity_check of the
    file; on PostgreSQL, pg_amcheck over every table and index of the database."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(make_url(url).database)  # type: ignore[arg-type]
        try:
            return con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
    from deploy.postgres import pg_bin_dir

    u = make_url(url)
    res = subprocess.run(
        [
            str(pg_bin_dir() / "pg_amcheck"),
            "--install-missing",
            "--heapallindexed",
            "-h",
            str(u.host),
            "-p",
            str(u.port),
            "-U",
            str(u.username),
            str(u.database),
        ],
        capture_output=True,
        text=True,
    )
    return "ok" if res.returncode == 0 else (res.stdout + res.stderr).strip()


def test_two_threads_writing_at_once(db_url: str):
    store = open_test_store()
    cid = store.create_character({"name": "Shared"}).id
    conv = store.create_conversation(cid)
    start = threading.Barrier(2)
    errors: list[BaseException] = []
    ids: dict[str, list[int]] = {"a": [], "b": []}

    def writer(tag: str) -> None:
        try:
            start.wait()
            for i in range(N):
                msg = store.add_message(conv.id, "user", f"{tag}{i}")
                ids[tag].append(msg.id)
                if i % 10 == 0:  # other kinds of writes in between
                    store.set_setting(f"k-{tag}", i)
                    store.create_character({"name": f"{tag}-{i}"})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    msgs = store.list_messages(conv.id)
    assert len(msgs) == 2 * N
    assert [m.position for m in msgs] == list(range(2 * N))  # no position taken twice
    assert {m.id for m in msgs} == set(ids["a"]) | set(ids["b"])
    for tag in "ab":  # each writer's messages are in its own order
        mine = [m.text for m in msgs if m.text.startswith(tag)]
        assert mine == [f"{tag}{i}" for i in range(N)]
    assert len(store.list_characters()) == 1 + 2 * (N // 10)
    store.close()
    assert integrity(db_url) == "ok"


# one of two app processes: messages to one chat, and a counter in one setting changed from its
# value (update_setting's read-modify-write), interleaved
TWO_WRITERS = r"""
import sys
from core.store import open_store
store = open_store()
conv_id, tag, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # both start together
for i in range(n):
    store.add_message(conv_id, "user", f"{tag}{i}")
    store.update_setting("counter", lambda v: (v or 0) + 1)
    store.update_setting("seen", lambda v: [*(v or []), f"{tag}{i}"])
print("done", flush=True)
"""


def test_two_processes_writing_to_one_chat_and_one_setting_lose_nothing(db_url: str):
    """Two processes on one database (two app servers behind a load balancer) add messages
    to the same chat and change the same settings from their values at the same moment:
    every message is kept at its own place, every change of every setting counts."""
    store = open_test_store()
    conv = store.create_conversation(store.create_character({"name": "Shared"}).id)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_WRITERS, str(conv.id), tag, str(N)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in "ab"
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out.strip() == "done", err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    msgs = store.list_messages(conv.id)
    assert len(msgs) == 2 * N
    assert [m.position for m in msgs] == list(range(2 * N))
    for tag in "ab":
        assert [m.text for m in msgs if m.text.startswith(tag)] == [f"{tag}{i}" for i in range(N)]
    assert store.get_setting("counter") == 2 * N
    seen = store.get_setting("seen")
    assert sorted(seen) == sorted(f"{t}{i}" for t in "ab" for i in range(N))
    store.close()
    assert integrity(db_url) == "ok"


WRITER = r"""
import sys
from core.store import open_store
store = open_store()
conv_id = int(sys.argv[1])
i = 0
while True:
    msg = store.add_message(conv_id, "char", f"message {i} " + "x" * (i % 500), meta={"i": i})
    print(msg.id, flush=True)
    i += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_api_keys_made_and_revoked_at_once_are_never_lost(db_url: str):
    """Settings pages in several sessions (and two stores on one file, as two processes) make
    and revoke API keys at the same moment: every key made is kept, and every key revoked
    stays revoked (the list is read and written in one transaction)."""
    from core.access import create_key, list_keys, revoke_key

    stores = [open_test_store(), open_test_store()]
    old = [create_key(stores[0], f"old {i}")[1]["id"] for i in range(6)]
    start = threading.Barrier(6)
    errors: list[BaseException] = []
    made: list[str] = []

    def session(k: int) -> None:
        store = stores[k % 2]
        try:
            start.wait()
            for i in range(5):
                made.append(create_key(store, f"s{k} key {i}")[1]["id"])
                if i == 2:
                    assert revoke_key(store, old[k])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(r["id"] for r in list_keys(stores[1])) == sorted(made)
    assert not revoke_key(stores[0], old[0])  # already revoked


def test_writer_process_killed_mid_write(data_dir: Path, db_url: str):
    store = open_test_store()
    cid = store.create_character({"name": "Victim"}).id
    conv = store.create_conversation(cid)
    store.close()

    env = {**os.environ, "RP_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(conv.id)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[int] = []
    deadline = time.monotonic() + 30
    try:
        assert proc.stdout is not None
        while len(printed) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of its next write
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    printed += [int(x) for x in rest.split()]
    assert len(printed) >= 200, err
    assert proc.returncode == -signal.SIGKILL

    assert integrity(db_url) == "ok"
    store = open_store()
    msgs = store.list_messages(conv.id)
    stored = {m.id for m in msgs}
    assert set(printed) <= stored  # every write that returned is there
    assert len(stored) - len(printed) <= 1  # at most the one being written when killed
    assert [m.position for m in msgs] == list(range(len(msgs)))
    for m in msgs:
        assert m.text.startswith("message ") and m.meta["i"] == m.position
    store.add_message(conv.id, "user", "after the crash")  # and it still works
    store.close()
    assert integrity(db_url) == "ok"
