"""Several app servers behind HAProxy, on one PostgreSQL database, sharing their checkpoints: how
much of each prompt the state caches serve under chat affinity and under plain round robin, the
time to first token at two servers against one server at half the load, and a server killed
halfway.

    python -m bench.cluster                                 # 100 clients x 10 turns, both models
    python -m bench.cluster --clients 10 --turns 3 --models 0.1b   # a quick look

Setup, all on this machine: PostgreSQL (Debian's, a cluster of its own in a temporary folder,
fsync off: a bench), 2 app servers (`streamlit run Home.py`, each on its own port, the app's
default thread count) sharing `RP_STATE_DIR` and `RP_DATA_DIR`, HAProxy in front with
deploy/haproxy.py's configuration; each phase on a fresh database and a fresh state folder. The
models: the embedded one (SmolLM2-135M through llama.cpp, a transformer: its checkpoints are KV
caches that grow with the chat) and the RWKV-7 0.1B shape (random weights, an f16 GGUF through
llama.cpp: every checkpoint 2.4 MB). Cache budgets: 2 GB of memory and 8 GB of disk a server.

Load: `--clients` simulated SillyTavern clients, each a chat with SillyTavern's bundled
Seraphina card (tests/fixtures/cards; the system prompt, her description and greeting, as its
Chat Completion source sends them) resent whole every turn to /v1/chat/completions (streaming,
`max_tokens` 16, the client's own API key), for `--turns` turns; each turn's reply, as the server
sent it, joins the transcript. A bounded loop: `--concurrency` requests in flight at most, a
client's next turn only after its last one ended, clients served in turn.

Phases and what the JSON reports, per model:
- `affinity`: HAProxy routes /v1 by the API key. `affinity_cached_pct`: prompt tokens served
  from cache over all prompt tokens (`usage.prompt_tokens_details.cached_tokens` summed over
  every request); `affinity_ttft_p50_s` / `_p95_s`.
- `roundrobin`: the same with /v1 and /api round robin, the checkpoints shared (a reply ends
  once its checkpoint is on the shared disk). `roundrobin_cached_pct`, `roundrobin_ttft_*`.
- `one_server`: one app server behind HAProxy, half the clients and half the concurrency;
  `one_server_ttft_p95_s` and `p95_ratio` = affinity p95 / one server p95 (goal <= 1.5).
- `failover`: the clients on the app's own API (`/api/chats/{id}/messages`, streaming, routed by
  chat id) with stored chats; once half of all turns have ended, one server gets `kill -9`. A
  client whose request breaks looks at its chat and asks again (a reply after its message, or a
  new version of an interrupted reply). `failover_lost_messages`: messages acknowledged to a
  client (the `user_message` event of a message, the `done` event of a reply) not in the
  database at the end (goal 0); `failover_interrupted`: replies saved as interrupted;
  `failover_refeed_tokens`: over the chats that were on the killed server, the tokens their
  first request on the live server fed beyond what their turns fed before (their median), i.e.
  what was fed again because the killed server's memory was lost (goal: near 0).
The machine's 1-minute load average before and after each phase is in `load`; every figure was
measured beside whatever else ran on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.api import USER_LINES  # noqa: E402
from deploy.cluster import Cluster  # noqa: E402
from deploy.postgres import LocalPostgres  # noqa: E402

CARD = REPO / "tests" / "fixtures" / "cards" / "default_Seraphina.png"
MAX_TOKENS = 16
REQUEST_S = 600
USER = "Ren"


# ------------------------------------------------------------------------------ the card
def seraphina() -> dict[str, str]:
    from core.roleplay.cards import read_card

    d = read_card(CARD.read_bytes())["data"]

    def sub(text: str) -> str:
        return text.replace("{{char}}", d["name"]).replace("{{user}}", USER)

    return {
        "name": d["name"],
        "description": sub(d["description"]),
        "greeting": sub(d["first_mes"]),
    }


# ------------------------------------------------------------------------------ HTTP
@dataclass
class Turn:
    ttft_s: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    server: str = ""
    text: str = ""
    ok: bool = True
    error: str = ""
    acked: list[int] = field(default_factory=list)  # ids the server acknowledged (failover)


def _post_stream(
    port: int, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_S)
    t0 = time.perf_counter()
    conn.request(
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    return conn, conn.getresponse(), t0


def _events(resp: http.client.HTTPResponse):
    for raw in resp:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


# ------------------------------------------------------------------------------ clients
class V1Client:
    """A SillyTavern chat (Chat Completion, Custom source): the card's prompt, the greeting, the
    transcript so far and the new user line, resent whole every turn."""

    def __init__(self, i: int, card: dict[str, str]) -> None:
        self.i, self.card = i, card
        self.key = f"rp-bench-client-{i}"
        self.history: list[dict[str, str]] = []
        self.turn = 0

    def body(self) -> dict[str, Any]:
        name = self.card["name"]
        msgs = [
            {
                "role": "system",
                "content": f"Write {name}'s next reply in a fictional chat "
                f"between {name} and {USER}.",
            },
            {"role": "system", "content": self.card["description"]},
            {"role": "system", "content": "[Start a new Chat]"},
            {"role": "assistant", "content": self.card["greeting"]},
            *self.history,
        ]
        return {
            "messages": msgs,
            "model": "any",
            "temperature": 1,
            "top_p": 1,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "logit_bias": {},
            "user_name": USER,
            "assistant_name": name,
            "stream_options": {"include_usage": True},
        }

    def step(self, port: int) -> Turn:
        line = f"({self.i}.{self.turn + 1}) {USER_LINES[(self.i + self.turn) % len(USER_LINES)]}"
        self.history.append({"role": "user", "content": line})
        headers = {"Authorization": f"Bearer {self.key}"}
        conn, resp, t0 = _post_stream(port, "/v1/chat/completions", self.body(), headers)
        turn = Turn(ttft_s=0.0, server=resp.getheader("X-RP-Server") or "")
        try:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
            parts: list[str] = []
            for event in _events(resp):
                if "error" in event:
                    raise RuntimeError(str(event["error"]))
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        turn.ttft_s = turn.ttft_s or time.perf_counter() - t0
                        parts.append(text)
                usage = event.get("usage")
                if usage:
                    turn.prompt_tokens = usage.get("prompt_tokens") or 0
                    details = usage.get("prompt_tokens_details") or {}
                    turn.cached_tokens = details.get("cached_tokens") or 0
            turn.text = "".join(parts)
            turn.ttft_s = turn.ttft_s or time.perf_counter() - t0
        finally:
            conn.close()
        self.history.append({"role": "assistant", "content": turn.text})
        self.turn += 1
        return turn


class ApiClient:
    """A stored chat on the app's own API (routed by chat id): each turn a message and its
    reply, streamed; a broken request is recovered from what the chat holds."""

    def __init__(self, i: int, chat_id: int) -> None:
        self.i, self.chat = i, chat_id
        self.turn = 0

    def step(self, port: int) -> Turn:
        line = f"({self.i}.{self.turn + 1}) {USER_LINES[(self.i + self.turn) % len(USER_LINES)]}"
        turn = self._stream(
            port,
            f"/api/chats/{self.chat}/messages",
            {"text": line, "stream": True, "max_tokens": MAX_TOKENS},
        )
        while not turn.ok:  # its server died: the chat says what was kept; ask again
            time.sleep(0.5)
            try:
                messages = _get_json(port, f"/api/chats/{self.chat}/messages")["data"]
            except (OSError, RuntimeError, http.client.HTTPException):
                continue
            last = messages[-1]
            if last["role"] == "user" and last["text"] == line:
                path, body = f"/api/chats/{self.chat}/reply", {"role": "char"}
            elif last["role"] != "user" and messages[-2]["text"] == line:
                path, body = f"/api/chats/{self.chat}/regenerate", {"message_id": last["id"]}
            else:  # the message itself never reached the database
                path, body = f"/api/chats/{self.chat}/messages", {"text": line}
            acked = turn.acked
            turn = self._stream(port, path, {**body, "stream": True, "max_tokens": MAX_TOKENS})
            turn.acked = acked + turn.acked
            turn.error = "recovered"
        self.turn += 1
        return turn

    def _stream(self, port: int, path: str, body: dict[str, Any]) -> Turn:
        turn = Turn(ttft_s=0.0)
        try:
            conn, resp, t0 = _post_stream(port, path, body, {})
        except OSError as e:
            return Turn(0.0, ok=False, error=str(e))
        turn.server = resp.getheader("X-RP-Server") or ""
        try:
            if resp.status != 200:
                resp.read()
                turn.ok, turn.error = False, f"HTTP {resp.status}"
                return turn
            done = False
            for event in _events(resp):
                if "user_message" in event:
                    turn.acked.append(event["user_message"]["id"])
                if "delta" in event:
                    turn.ttft_s = turn.ttft_s or time.perf_counter() - t0
                if "error" in event:
                    raise RuntimeError(str(event["error"]))
                if event.get("done"):
                    done = True
                    if event.get("message"):  # None: nothing was said, nothing saved
                        turn.acked.append(event["message"]["id"])
                    usage = event.get("usage") or {}
                    turn.prompt_tokens = usage.get("prompt_tokens") or 0
                    turn.cached_tokens = usage.get("cached_tokens") or 0
            turn.ok = done
            turn.error = "" if done else "stream ended without its end"
        except (OSError, RuntimeError, http.client.HTTPException, ValueError) as e:
            turn.ok, turn.error = False, str(e)
        finally:
            conn.close()
        return turn


# ------------------------------------------------------------------------------ the load
def run_load(
    port: int,
    clients: list[Any],
    turns: int,
    concurrency: int,
    on_turn: Callable[[int], None] | None = None,
) -> list[tuple[int, int, Turn]]:
    """Every client's `turns` turns, `concurrency` requests in flight at most, clients taken in
    turn (a client's next turn only once its last has ended). (client, turn, Turn) records."""
    lock = threading.Lock()
    ready = list(range(len(clients)))  # clients waiting for a worker, in order
    left = {i: turns for i in range(len(clients))}
    records: list[tuple[int, int, Turn]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def worker() -> None:
        while not done.is_set():
            with lock:
                i = ready.pop(0) if ready else None
            if i is None:
                if all(n == 0 for n in left.values()):
                    return
                time.sleep(0.01)
                continue
            client = clients[i]
            try:
                turn = client.step(port)
            except BaseException as e:
                errors.append(e)
                done.set()
                return
            with lock:
                records.append((i, client.turn, turn))
                left[i] -= 1
                if left[i] > 0:
                    ready.append(i)
                n = len(records)
            if on_turn is not None:
                on_turn(n)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return records


def pct(part: float, whole: float) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        v = values[0] if values else 0.0
        return round(v, 3), round(v, 3)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return round(statistics.median(values), 3), round(q[94], 3)


# ------------------------------------------------------------------------------ the phases
@dataclass
class Setup:
    model_env: dict[str, str]
    pg: LocalPostgres
    root: Path
    n: int = 0

    def cluster(self, servers: int, affinity: bool) -> Cluster:
        from core.store import open_store

        self.n += 1
        db = f"bench{self.n}"
        self.pg.drop_database(db)
        url = self.pg.create_database(db)
        store = open_store(url)
        store.set_setting("cache_mem_mb", 2048)
        store.set_setting("cache_disk_mb", 8192)
        store.close()
        folder = self.root / f"phase{self.n}"
        return Cluster(folder, servers, env=self.model_env, db_url=url, affinity=affinity)


def warm(cluster: Cluster) -> None:
    """Each server's model loaded (a raw completion unrelated to the load's prompts)."""
    for s in cluster.servers:
        conn, resp, _ = _post_stream(
            s.port, "/v1/completions", {"prompt": "Hello", "max_tokens": 1}, {}
        )
        resp.read()
        conn.close()


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def v1_phase(
    setup: Setup, servers: int, affinity: bool, clients: int, turns: int, concurrency: int
) -> dict[str, Any]:
    card = seraphina()
    with setup.cluster(servers, affinity) as cluster:
        warm(cluster)
        before, t0 = load_avg(), time.monotonic()
        records = run_load(
            cluster.port, [V1Client(i, card) for i in range(clients)], turns, concurrency
        )
        seconds = time.monotonic() - t0
    prompt = sum(t.prompt_tokens for _, _, t in records)
    cached = sum(t.cached_tokens for _, _, t in records)
    # a chat's first turn can only reuse the card's opening (another chat's checkpoints): with
    # fewer turns a chat it weighs more, so the later turns are reported on their own too
    later = [t for _, n, t in records if n > 1]
    p50, p95 = quantiles([t.ttft_s for _, _, t in records])
    by_server: dict[str, int] = {}
    for _, _, t in records:
        by_server[t.server] = by_server.get(t.server, 0) + 1
    return {
        "requests": len(records),
        "cached_pct": pct(cached, prompt),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cached_pct_after_turn1": pct(
            sum(t.cached_tokens for t in later), sum(t.prompt_tokens for t in later)
        ),
        "ttft_p50_s": p50,
        "ttft_p95_s": p95,
        "by_server": by_server,
        "seconds": round(seconds, 1),
        "load": [before, load_avg()],
    }


def failover_phase(setup: Setup, clients: int, turns: int, concurrency: int) -> dict[str, Any]:
    from core.roleplay.cards import import_card
    from core.store import open_store

    with setup.cluster(2, True) as cluster:
        store = open_store(cluster.db_url)
        character = import_card(store, CARD.read_bytes(), CARD.name)
        chats = [store.create_conversation(character.id).id for _ in range(clients)]
        warm(cluster)
        total = clients * turns
        killed: dict[str, Any] = {}

        def on_turn(n: int) -> None:
            if n >= total // 2 and not killed:
                killed["name"] = "app1"
                killed["at_turn"] = n
                killed["t"] = time.monotonic()
                cluster.kill("app1")

        before = load_avg()
        api_clients = [ApiClient(i, c) for i, c in enumerate(chats)]
        records = run_load(cluster.port, api_clients, turns, concurrency, on_turn)
        after = load_avg()
        stored = {m.id for c in chats for m in store.list_messages(c)}
        interrupted = sum(
            1
            for c in chats
            for m in store.list_messages(c)
            if m.role != "user"
            and any((a or {}).get("stop") == "interrupted" for a in m.alt_meta or [m.meta])
        )
        store.close()
    acked = [a for _, _, t in records for a in t.acked]
    lost = [a for a in acked if a not in stored]
    # the chats whose server was killed: their turns before, and the first after
    refeed = 0
    moved = 0
    by_client: dict[int, list[Turn]] = {}
    for i, _, t in records:
        by_client.setdefault(i, []).append(t)
    for turns_of in by_client.values():
        before_kill = [t for t in turns_of if t.server == "app1" and t.ok and not t.error]
        after_kill = [t for t in turns_of if t.server != "app1" and t.prompt_tokens]
        if not before_kill or not after_kill:
            continue
        moved += 1
        usual = statistics.median(t.prompt_tokens - t.cached_tokens for t in before_kill)
        first = after_kill[0]
        refeed += max(0, int(first.prompt_tokens - first.cached_tokens - usual))
    return {
        "requests": len(records),
        "killed": killed.get("name"),
        "killed_after_turns": killed.get("at_turn"),
        "recovered_turns": sum(1 for _, _, t in records if t.error == "recovered"),
        "acknowledged": len(acked),
        "lost_messages": len(lost),
        "interrupted_replies": interrupted,
        "moved_chats": moved,
        "refeed_tokens": refeed,
        "load": [before, after],
    }


def model_env(name: str) -> dict[str, str]:
    if name == "embedded":
        return {"RP_MODEL": ""}
    from core.models.convert import convert
    from tests.support.tiny_model import write_model

    cache = Path(tempfile.gettempdir()) / "rwkv-rp-bench"
    pth = cache / "v7-0.1b.pth"
    if not pth.exists():
        write_model(pth, 7, 12, 768)
    gguf = cache / "v7-0.1b-f16.gguf"
    if not gguf.exists():
        convert(pth, gguf, "f16", models_dir=cache)
    return {"RP_MODEL": str(gguf)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--models", default="embedded,0.1b")
    ap.add_argument("--phases", default="affinity,roundrobin,one_server,failover")
    args = ap.parse_args()
    phases = args.phases.split(",")
    out: dict[str, Any] = {
        "bench": "cluster",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_start": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {
            "servers": 2,
            "clients": args.clients,
            "turns": args.turns,
            "concurrency": args.concurrency,
            "one_server_clients": max(1, args.clients // 2),
            "one_server_concurrency": max(1, args.concurrency // 2),
            # the load; a smaller one (a 2-core machine) says so here
            "scaled_down_from": None
            if (args.clients, args.turns) == (100, 10)
            else "100 clients x 10 turns",
            "max_tokens": MAX_TOKENS,
            "card": CARD.name,
            "database": "PostgreSQL (Debian's, fsync off), a fresh database a phase",
        },
        "goals": {
            "affinity_cached_pct": ">= 95",
            "roundrobin_cached_pct": ">= 90",
            "failover_lost_messages": 0,
            "p95_ratio": "<= 1.5",
        },
    }
    pg_dir = Path(tempfile.mkdtemp(prefix="rp-bench-pg-"))
    with tempfile.TemporaryDirectory(prefix="rp-bench-cluster-") as tmp:
        with LocalPostgres(pg_dir, fast=True) as pg:
            for name in args.models.split(","):
                setup = Setup(model_env(name), pg, Path(tmp) / name)
                res: dict[str, Any] = {}
                if "affinity" in phases:
                    a = v1_phase(setup, 2, True, args.clients, args.turns, args.concurrency)
                    res |= {
                        "affinity_cached_pct": a["cached_pct"],
                        "affinity_cached_pct_after_turn1": a["cached_pct_after_turn1"],
                        "affinity_ttft_p50_s": a["ttft_p50_s"],
                        "affinity_ttft_p95_s": a["ttft_p95_s"],
                        "affinity": a,
                    }
                    print(json.dumps({name: {"affinity": a}}), file=sys.stderr, flush=True)
                if "roundrobin" in phases:
                    r = v1_phase(setup, 2, False, args.clients, args.turns, args.concurrency)
                    res |= {
                        "roundrobin_cached_pct": r["cached_pct"],
                        "roundrobin_cached_pct_after_turn1": r["cached_pct_after_turn1"],
                        "roundrobin_ttft_p50_s": r["ttft_p50_s"],
                        "roundrobin_ttft_p95_s": r["ttft_p95_s"],
                        "roundrobin": r,
                    }
                    print(json.dumps({name: {"roundrobin": r}}), file=sys.stderr, flush=True)
                if "one_server" in phases:
                    o = v1_phase(
                        setup,
                        1,
                        True,
                        max(1, args.clients // 2),
                        args.turns,
                        max(1, args.concurrency // 2),
                    )
                    res |= {
                        "one_server_ttft_p50_s": o["ttft_p50_s"],
                        "one_server_ttft_p95_s": o["ttft_p95_s"],
                        "one_server": o,
                    }
                    if "affinity_ttft_p95_s" in res and o["ttft_p95_s"]:
                        res["p95_ratio"] = round(res["affinity_ttft_p95_s"] / o["ttft_p95_s"], 2)
                    print(json.dumps({name: {"one_server": o}}), file=sys.stderr, flush=True)
                if "failover" in phases:
                    f = failover_phase(setup, args.clients, args.turns, args.concurrency)
                    res |= {
                        "failover_lost_messages": f["lost_messages"],
                        "failover_refeed_tokens": f["refeed_tokens"],
                        "failover": f,
                    }
                    print(json.dumps({name: {"failover": f}}), file=sys.stderr, flush=True)
                out[name] = res
        shutil.rmtree(pg_dir, ignore_errors=True)
    out["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
