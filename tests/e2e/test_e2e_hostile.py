"""End to end, issue 21: no single request, card or lorebook freezes the server. A real
`streamlit run Home.py` (pages and API on one port) with the tiny RWKV-7, its database prepared
before it starts: a lorebook whose keys are slow regular expressions, a character whose card
book has 1.2 million entries (stored as an import before the limit stored it), and chat
requests of thousands of messages. Throughout each, the server's /_stcore/health must answer
within 2 s (`HealthWatch`); at the end it must still stop on SIGTERM.

Nothing here is timed against the machine: the health check's 2 s is the issue's requirement
of the server's responsiveness, and every wait for the server's work is generous.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import pytest

from tests.support.server import HealthWatch, rss_bytes, running_app, wait_idle

pytestmark = pytest.mark.timeout(1800)

WAIT_S = 600  # an upper bound for a request's answer on a loaded machine; never asserted
SLOW_KEYS = ["/(a+)+$/", "/(a|aa)+$/"]  # the issue's key, and one slow for the regex package too
ISSUE_MESSAGE = "a" * 40 + "!"


def _prepare(data: Path, model: Path) -> SimpleNamespace:
    from core.roleplay.lore import new_entry
    from core.store import open_store

    s = open_store(f"sqlite:///{data / 'app.db'}")
    s.set_setting("model", {"path": str(model), "backend": "rwkv", "strategy": "cpu fp32"})
    book = s.create_lorebook(
        "Patterns",
        [
            new_entry(0, key=[SLOW_KEYS[0]], content="Never.", comment="issue key"),
            new_entry(1, key=[SLOW_KEYS[1]], content="Never either.", comment="slow key"),
            new_entry(2, key=["aaa"], content="Many a's were said.", comment="plain key"),
        ],
    )
    regex = s.create_character({"name": "Reggie", "greetings": ["Say something."]})
    s.set_character_lorebooks(regex.id, [book.id])
    hoard = s.create_character({"name": "Hoard", "greetings": ["Welcome to the hoard."]})
    s.close()
    entries: list[dict[str, Any]] = [{}] * 1_200_000
    entries[10] = {"keys": ["dragon"], "content": "A dragon sleeps here.", "comment": "near"}
    entries[1_000_000] = {"keys": ["dragon"], "content": "Far away.", "comment": "far"}
    with sqlite3.connect(data / "app.db") as db:  # the store refuses it now: as an old import
        db.execute(
            "UPDATE characters SET character_book = ? WHERE id = ?",
            (json.dumps({"name": "Hoard book", "entries": entries}), hoard.id),
        )
    return SimpleNamespace(regex=regex.id, hoard=hoard.id)


@pytest.fixture(scope="module")
def server(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("e2e-hostile")
    data = root / "data"
    data.mkdir()
    ids = _prepare(data, tiny_models(7))
    with running_app(data, root / "server.log") as app:
        with httpx.Client(base_url=app.url, timeout=WAIT_S) as client:
            # the model loads at start; this waits for it (the health watch is for what follows)
            r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
            assert r.status_code == 200, r.text
            yield SimpleNamespace(
                url=app.url, proc=app.proc, log=root / "server.log", http=client, **vars(ids)
            )


def _reply(server: Any, character: int, text: str) -> dict[str, Any]:
    """A new chat with `character`, `text` sent and the reply (whole): the reply's JSON."""
    chat = server.http.post(f"/api/characters/{character}/chats").json()["id"]
    r = server.http.post(f"/api/chats/{chat}/messages", json={"text": text, "max_tokens": 4})
    assert r.status_code == 200, r.text
    return r.json()["message"]


def test_a_slow_regex_key_leaves_the_server_responsive(server: Any) -> None:
    with HealthWatch(server.url) as health:
        reply = _reply(server, server.regex, ISSUE_MESSAGE)  # froze the server before
        longer = _reply(server, server.regex, "a" * 60 + "!")
        models = server.http.get("/v1/models")
    health.check()
    assert models.status_code == 200
    assert [m["title"] for m in reply["meta"]["lore"]] == ["plain key"]
    # the key the regex package cannot prune runs out of time: skipped, and named under the reply
    errors = longer["meta"]["lore_errors"]
    assert any(SLOW_KEYS[1] in e and "took too long" in e for e in errors), errors
    assert [m["title"] for m in longer["meta"]["lore"]] == ["plain key"]


def test_a_card_book_of_a_million_entries_leaves_the_server_responsive(server: Any) -> None:
    with HealthWatch(server.url) as health:
        first = _reply(server, server.hoard, "A dragon!")  # ran over 220 s at 2 GB before
        second = _reply(server, server.hoard, "Another dragon?")
    health.check()
    for reply in (first, second):
        assert [m["title"] for m in reply["meta"]["lore"]] == ["near"]  # the far one is not read
        errors = reply["meta"]["lore_errors"]
        assert any("1,200,000 entries" in e for e in errors), errors


def test_many_messages_are_refused_or_stopped_with_the_client(server: Any) -> None:
    pid = server.proc.pid
    url = "/v1/chat/completions"
    text = ("The tide is turning and the gulls cry over the harbour wall. " * 14)[:780]
    many = [
        {"role": "user" if i % 2 else "assistant", "content": f"{i} {text}"} for i in range(4000)
    ]
    rss = rss_bytes(pid)
    with HealthWatch(server.url) as health:
        # over the limit: a 400 that says so, at once
        over = [{"role": "user", "content": f"m{i}"} for i in range(10_000)]
        r = server.http.post(url, json={"messages": over, "max_tokens": 1})
        assert r.status_code == 400, r.text[:300]
        assert "10,000 messages" in r.json()["error"]["message"]
        # under it (3 MB, some 700,000 tokens to feed): the client leaves during the prefill,
        # and the server stops feeding (it took minutes to notice before)
        body = {"messages": many, "max_tokens": 8, "stream": True}
        with server.http.stream("POST", url, json=body) as r:
            assert r.status_code == 200
            assert next(r.iter_lines()).startswith("data: ")  # the first event: the role
        assert wait_idle(pid, timeout=60), "the prefill went on after its client left"
    health.check()
    grew = rss_bytes(pid) - rss
    assert grew < 512 * 2**20, f"RSS grew by {grew / 2**20:.0f} MiB"
    # the server serves the next request
    r = server.http.post(url, json={"messages": many[-3:], "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_the_server_still_stops_on_sigterm(server: Any) -> None:
    """Issue 21: SIGTERM was ignored while a regular expression held the process. Last in this
    module: it ends the server."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not stop on SIGTERM within 60 s")
