"""Two app servers behind HAProxy on one PostgreSQL database, sharing their state checkpoints
(deploy/cluster.py: real `streamlit run` servers on a tiny RWKV-7, Debian's HAProxy with
deploy/haproxy.py's configuration, the session's PostgreSQL server):

- routing: a browser session stays on its server by cookie (and Chromium draws the pages, their
  websocket going through HAProxy); /api/chats/{id}/... always reaches the chat's server; /v1
  keeps a client's server by its API key;
- a server killed with `kill -9` in the middle of a reply loses nothing that was acknowledged:
  the user's message is stored, the partial reply saved and marked interrupted; the chat's next
  request goes to the live server, which restores the shared checkpoint instead of feeding the
  chat again; HAProxy takes the dead server out.

Without PostgreSQL, HAProxy or Chromium the tests skip; under CI=true they fail instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from tests.support.required import unavailable
from tests.support.server import settle, track_runs

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tiny_models, postgres, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The cluster: PostgreSQL (a database of the session's server), app1 and app2, HAProxy."""
    from deploy.cluster import Cluster
    from deploy.haproxy import HaproxyMissing, haproxy_program

    try:
        haproxy_program()
    except HaproxyMissing as e:
        unavailable(str(e))
    name, url = postgres.new_database()
    folder = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(folder, 2, env={"RP_MODEL": str(tiny_models(7))}, db_url=url)
    with cluster:
        yield SimpleNamespace(url=cluster.url, cluster=cluster, db_url=url)
    postgres.drop(name)


@pytest.fixture(scope="module")
def client(server: SimpleNamespace) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, timeout=120) as c:
        yield c


def _served_by(r: Any) -> str:
    return r.headers["X-RP-Server"]


def _new_chat(client: httpx2.Client) -> int:
    characters = client.get("/api/characters").json()["data"]
    r = client.post(f"/api/characters/{characters[0]['id']}/chats", json={})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def _events(r: Any) -> Iterator[dict[str, Any]]:
    for line in r.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:])


def test_routing_sticky_pages_chats_by_id_and_v1_by_key(
    server: SimpleNamespace, client: httpx2.Client
) -> None:
    # the pages: a new browser gets a server and a cookie naming it, and keeps that server
    fresh = [client.get("/", headers={"Cookie": ""}) for _ in range(2)]
    assert {_served_by(r) for r in fresh} == {"app1", "app2"}  # round robin without a cookie
    cookie = fresh[0].cookies.get("RPSERVER") or fresh[0].headers["set-cookie"]
    assert "app" in cookie
    with httpx2.Client(base_url=server.url, timeout=60) as browser:
        first = browser.get("/")
        seen = {_served_by(browser.get("/")) for _ in range(6)}
        assert seen == {_served_by(first)}

    # /api/chats/{id}/...: every request of a chat on one server; chats spread over both
    chats = [_new_chat(client) for _ in range(8)]
    where: dict[int, set[str]] = {c: set() for c in chats}
    for c in chats:
        for path in (f"/api/chats/{c}", f"/api/chats/{c}/messages", f"/api/chats/{c}"):
            where[c].add(_served_by(client.get(path)))
    assert all(len(s) == 1 for s in where.values()), where
    assert set().union(*where.values()) == {"app1", "app2"}

    # /v1 by API key: one server per key, both servers over several keys
    by_key = {
        k: {
            _served_by(client.get("/v1/models", headers={"Authorization": f"Bearer {k}"}))
            for _ in range(3)
        }
        for k in (f"rp-client-{i}" for i in range(8))
    }
    assert all(len(s) == 1 for s in by_key.values()), by_key
    assert set().union(*by_key.values()) == {"app1", "app2"}


def test_chromium_draws_the_pages_through_haproxy(server: SimpleNamespace) -> None:
    """Streamlit's page and its websocket through HAProxy: Home shows the bundled characters."""
    from tests.support.server import CHROMIUM, CHROMIUM_ARGS, playwright_api

    sync_api = playwright_api()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            track_runs(page)
            page.goto(server.url, wait_until="domcontentloaded")
            settle(page)
            page.get_by_text("Mira").first.wait_for(timeout=60_000)
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            assert cookies.get("RPSERVER") in ("app1", "app2")
        finally:
            browser.close()


def test_a_server_killed_mid_reply_loses_nothing_and_the_chat_goes_on_elsewhere(
    server: SimpleNamespace, client: httpx2.Client
) -> None:
    from core.store import open_store

    cluster = server.cluster
    chat = _new_chat(client)
    # turn 1 ends normally: its checkpoint is in the shared folder when the reply ends
    r = client.post(f"/api/chats/{chat}/messages", json={"text": "Hello!", "max_tokens": 12})
    assert r.status_code == 200, r.text
    owner = _served_by(r)
    turn1 = r.json()["usage"]

    # the next turn streams; its server is killed once the reply has been saved as it grows.
    # The tiny model's reply can end early (a stop string, its end token) before the first save:
    # then that turn is simply over, and the next one is tried
    store = open_store(server.db_url)
    killed = False
    ended: list[str] = []
    for attempt in range(5):
        acknowledged: list[int] = []
        body = {"text": f"Tell me everything about the island ({attempt}).", "stream": True}
        body |= {"max_tokens": 8192, "seed": 5 + attempt}
        with client.stream("POST", f"/api/chats/{chat}/messages", json=body) as r:
            assert _served_by(r) == owner  # the chat's server
            try:
                for event in _events(r):
                    if "user_message" in event:
                        acknowledged.append(event["user_message"]["id"])
                    if "delta" in event and not killed:
                        last = store.list_messages(chat)[-1]
                        if last.role == "char" and last.meta.get("stop") == "interrupted":
                            cluster.kill(owner)  # kill -9, mid-reply
                            killed = True
                    if "done" in event:
                        ended.append(str(event.get("stop_reason")))
                        turn1 = event.get("usage") or turn1  # the newest checkpoint's turn
            except httpx2.HTTPError:
                pass  # the stream breaks with its server
        if killed:
            break
    assert killed, f"every reply ended before its first save ({ended}): raise max_tokens"
    assert acknowledged
    messages = store.list_messages(chat)
    assert acknowledged[0] in [m.id for m in messages]  # the acknowledged message is kept
    partial = messages[-1]
    assert partial.role == "char" and partial.text and partial.meta["stop"] == "interrupted"

    # the chat's next request: the live server, from the shared checkpoint of turn 1
    deadline = time.monotonic() + 30
    while True:
        r = client.post(
            f"/api/chats/{chat}/messages", json={"text": "Still there?", "max_tokens": 4}
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the moment HAProxy needs to see the server gone
    assert r.status_code == 200, r.text
    assert _served_by(r) != owner
    usage = r.json()["usage"]
    # restored: the checkpoint turn 1's reply left in the shared folder (its prompt and more);
    # fed: turn 2's message, the partial reply (its state died with its server), this message
    assert usage["cached_tokens"] > turn1["prompt_tokens"], (turn1, usage)
    assert [m.role for m in store.list_messages(chat)][-4:] == ["user", "char", "user", "char"]

    # HAProxy took the dead server out: every chat now lands on the live one
    for c in (chat, _new_chat(client)):
        assert _served_by(client.get(f"/api/chats/{c}")) != owner
    store.close()


def test_the_committed_example_configuration_is_the_generated_one() -> None:
    """deploy/haproxy.cfg (the documented configuration for two servers) is what
    deploy/haproxy.py writes, and HAProxy accepts it."""
    from deploy.haproxy import check_config, haproxy_config

    committed = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
    generated = haproxy_config(
        [("app1", "127.0.0.1:8601"), ("app2", "127.0.0.1:8602")], bind="127.0.0.1:8500"
    )
    assert committed.read_text() == generated
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "haproxy.cfg").write_text(generated)
        check_config(Path(d) / "haproxy.cfg")
