"""The API as SillyTavern uses it: time to first token over a 40-turn chat resent whole every turn,
a regenerate at turn 40, and two chats taking turns; our app against llama-cpp-python's own
server on the same GGUF, in the same run.

    python bench/api.py                                   # RWKV-7 0.1B shape, f16 GGUF
    python bench/api.py --turns 10 --shape tiny           # a quick look
    python bench/api.py --model models/x.gguf             # a real model

Ours is the app served the way users run it: `streamlit run Home.py -- --model X.gguf` on a fresh
data directory (pages and API on one port). The peer is `python -m llama_cpp.server --model
X.gguf` (needs `pip install -r requirements-dev.txt`, the `llama-cpp-python[server]` extras) with
`--chat_format chatml`: the GGUF's `tokenizer.chat_template` is llama.cpp's template *name*
"rwkv-world", which llama-cpp-python renders as a Jinja template, so without a chat format every
prompt it builds is the literal text "rwkv-world" (4 tokens) and nothing would be measured. Both
servers compute with the same number of threads (the app's default, or --threads).

The client behaves like SillyTavern's Chat Completion source "Custom (OpenAI-compatible)": the
request body its server forwards (messages with the default prompt order: main prompt, card
fields, example dialogue as system messages named example_user / example_assistant, "[Start a new
Chat]", the greeting, then the chat; `logit_bias: {}`, penalties, `stream: true`), the whole
transcript every turn. Time to first token (TTFT) = from sending the request to the first SSE
chunk with non-empty `delta.content`.

Both servers get the same transcript: the user lines and the assistant's replies are fixed in
advance (REPLIES, not what each server answered, which would make the two chats differ), so
every request to one server is the same request to the other. Both servers run at once and take
turns request by request (which one goes first alternates), so both meet the same spells of
load from other work; the peer's `--n_ctx` is sized for the longest prompt.

Prints ONE JSON object:
- api_ttft_growth: median TTFT of the last 3 turns / median of the first 3 (one chat alone;
  goal <= 1.2). A median of three, not one turn each, because this machine is shared and one
  turn's figure can be doubled by another process. `api_ttft_first_s` / `api_ttft_last_s` are the
  raw turn 1 and turn N.
- api_regen_ttft_s: TTFT of the turn-N request sent again (SillyTavern's regenerate / swipe),
  median of 3 repeats.
- api_interleaved_growth: two chats A and B taking turns (A1 B1 A2 B2 ...): the same ratio over
  both chats' TTFTs (goal <= 1.2).
- api_prompt_tokens_turn1 / _last: the prompt of turn 1 and of turn N in tokens, as the server
  counts them (`usage`, asked once more after the timed turns): the same messages, each server's
  own prompt format and tokenizer; `api_cached_tokens_last`: of turn N's, those our app
  restored from its state cache.
- peer_api_*: the same against llama-cpp-python's server.
- regen_speedup: peer_api_regen_ttft_s / api_regen_ttft_s (goal >= 20).
- With `--depth-note N`, every request carries an Author's Note as SillyTavern sends it: a
  system message N messages above the end of the chat (its default depth is 4; at the start of
  the chat while it is shorter). Our app runs twice, with the API setting `api_notes_at_reply`
  at its default ("auto": next to the reply for RWKV; `api_*`) and set to "depth" (where the
  client put it; `api_depth_*`). `note_ttft_growth`: median TTFT of the last 3 turns / median
  of turns 2-4 with the default (goal <= 1.2; turn 1 is left out: it feeds the opening);
  `note_ttft_depth_growth` the same with the note where the client put it;
  `note_vs_depth_last`: last-3 medians, default over "depth"; `*_fed_tokens_last`: what the
  last turn fed (its prompt tokens less those restored from the cache; our requests ask for
  the usage at the end of their stream, `api_fed_tokens` per turn).
- per-turn TTFT lists, and the setup. Every figure was measured on whatever else the machine
  was running at the time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import SHAPES, build_model  # noqa: E402
from core.backends.threads import default_threads  # noqa: E402

CHAR, USER_NAME = "Mira", "Ren"
# SillyTavern 1.12.6's default Chat Completion prompt order, with a small card filled in
SYSTEM_PROMPTS = [
    f"Write {CHAR}'s next reply in a fictional chat between {CHAR} and {USER_NAME}.",
    f"{CHAR} is a travelling cartographer who has walked every road between the mountains and "
    "the sea. She speaks warmly, notices small details, and keeps her maps in a leather tube.",
    f"[{CHAR}'s personality: curious, patient, dry humour, fond of old bridges]",
    "[Circumstances and context of the dialogue: an inn on the salt road, late autumn, rain]",
    "[Example Chat]",
]
EXAMPLES = [
    ("example_user", "Where are we?"),
    ("example_assistant", "On the salt road, two days from the sea. Mind the puddles."),
]
GREETING = f"*{CHAR} unrolls a map across the table.* Welcome back, {USER_NAME}. Sit, dry off."
# user turns of 20-40 words, as people write in a role play; the chat's letter and the turn make
# every message unique, so no two chats share a transcript past the greeting
USER_LINES = [
    "I shake the rain off my coat and sit down across from you. What did you find on the "
    "northern pass this time, and is the old bridge still standing?",
    "*leans over the map* That valley looks strange on your drawing. Why did you mark it with a "
    "red circle and three little crosses along the river bank?",
    "I order two bowls of soup from the innkeeper and push one toward you. Tell me about the "
    "people who live near the waterfall, are they friendly to travellers?",
    "Hmm, I have heard stories about lights in the marsh at night. Did you see any of them, or "
    "is it just something the fishermen say to scare children?",
    "*taps the edge of the map* If we leave at dawn, how many days would it take to reach the "
    "coast by your shortest road, and where could we sleep safely?",
    "I pull out my grandfather's compass and set it beside your map. It always points a little "
    "wrong near the hills. Do you know why that happens there?",
]
# the assistant's side of the transcript, fixed in advance and the same for both servers (about
# 20-30 tokens each, a little more than a reply of MAX_TOKENS would be); the turn's number
# makes each unique
REPLIES = [
    "*{c} smiles and points at the map.* The bridge still stands, though its planks are loose.",
    "Those crosses mark old wells. *She lowers her voice.* Two of them are dry, one is not.",
    "They are kind, if you bring salt. *{c} sips the soup.* They trade fish for it at dawn.",
    "I saw them twice. *She shrugs.* Marsh gas, the scholars say. The fishermen disagree.",
    "Four days by the cliff road. We can sleep at the lighthouse; the keeper owes me a favour.",
    "*{c} taps the compass.* Iron in the hills. Every needle bends there, even mine.",
]
MAX_TOKENS = 16
NOTE = f"[Author's note: {CHAR} speaks in short sentences and mentions the weather.]"
START_S = 300  # a server's start-up (and the first model load) on a loaded machine
REQUEST_S = 600  # one request at most; a stuck server ends the bench with a clear message


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="0.1b")
    ap.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"))
    ap.add_argument("--model", help="a GGUF file instead of a random --shape model")
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    ap.add_argument("--threads", type=int, help="threads of both servers (default: the app's)")
    ap.add_argument("--skip-peer", action="store_true", help="measure only our app")
    ap.add_argument("--skip-ours", action="store_true", help="measure only the peer")
    ap.add_argument("--keep-logs", help="a directory to keep both servers' logs in")
    ap.add_argument(
        "--depth-note",
        type=int,
        default=0,
        help="send an Author's Note at this depth (SillyTavern's default: 4; 0: none), and "
        "run our app also with the note where the client puts it",
    )
    args = ap.parse_args()
    args.backend = "llama"  # build_model's GGUF path
    if args.turns < 3:
        ap.error("--turns must be at least 3")
    return args


# ---------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process in its own process group, stopped (group and all) by `stop`."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    ready_path: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""

    def start(self, tries: int = 2) -> None:
        for attempt in range(1, tries + 1):
            self.port = free_port()
            cmd = [a.replace("{port}", str(self.port)) for a in self.cmd]
            self.base = f"http://127.0.0.1:{self.port}"
            with open(self.log, "a") as out:
                out.write(f"\n--- start {attempt}: {' '.join(cmd)}\n")
                out.flush()
                self.proc = subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not start; its log ends with:\n{tail}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.base + self.ready_path, timeout=5) as r:
                    if r.status == 200:
                        return True
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


def our_server(
    model: Path, data: Path, threads: int, log: Path, notes: str | None = None
) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
    env["RP_DATA_DIR"] = str(data)
    env["RP_MODEL"] = str(model)
    # the Threads setting of the app (and the notes'), written before it starts (a fresh data
    # directory)
    _write_threads_setting(data, threads, notes)
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "Home.py")]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--server.runOnSave", "false", "--server.address", "127.0.0.1"]
    cmd += ["--server.port", "{port}", "--", "--model", str(model)]
    return Server("our app (streamlit run Home.py)", cmd, env, log, "/v1/models")


def _write_threads_setting(data: Path, threads: int, notes: str | None = None) -> None:
    from core.settings import API_NOTES
    from core.store import open_store

    store = open_store(f"sqlite:///{data / 'app.db'}")
    try:
        store.set_setting("threads", threads)
        if notes is not None:
            store.set_setting(API_NOTES, notes)
    finally:
        with suppress(Exception):
            store.close()


def peer_server(model: Path, threads: int, log: Path, n_ctx: int = 16384) -> Server:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    cmd += ["--host", "127.0.0.1", "--port", "{port}", "--n_ctx", str(n_ctx)]
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    cmd += ["--chat_format", "chatml"]
    return Server("llama-cpp-python's server", cmd, env, log, "/v1/models")


# ---------------------------------------------------------------- the client
@dataclass
class Result:
    ttft_s: float
    total_s: float
    text: str
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


def stream_chat(base: str, body: dict[str, Any]) -> Result:
    """POST /v1/chat/completions with stream: true; read the SSE events as they come."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=REQUEST_S)
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=payload,
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    if resp.status != 200:
        detail = resp.read().decode(errors="replace")[:500]
        conn.close()
        raise RuntimeError(f"{base}: HTTP {resp.status}: {detail}")
    first: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] = {}
    try:
        for raw in resp:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"{base}: error event: {event['error']}")
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    if first is None:
                        first = time.perf_counter() - t0
                    parts.append(text)
            if event.get("usage"):
                usage = event["usage"]
    finally:
        conn.close()
    total = time.perf_counter() - t0
    details = usage.get("prompt_tokens_details") or {}
    return Result(
        ttft_s=first if first is not None else total,
        total_s=total,
        text="".join(parts),
        prompt_tokens=usage.get("prompt_tokens"),
        cached_tokens=details.get("cached_tokens"),
    )


@dataclass
class Chat:
    """One SillyTavern chat: its transcript, resent whole every turn."""

    tag: str
    model_id: str
    max_tokens: int
    note_depth: int = 0  # an Author's Note this many messages above the end (0: none)
    history: list[dict[str, Any]] = field(default_factory=list)
    turn: int = 0

    def user_line(self) -> str:
        line = USER_LINES[self.turn % len(USER_LINES)]
        return f"({self.tag}{self.turn + 1}) {line}"

    def body(self) -> dict[str, Any]:
        msgs: list[dict[str, Any]] = [{"role": "system", "content": p} for p in SYSTEM_PROMPTS]
        msgs += [{"role": "system", "name": n, "content": c} for n, c in EXAMPLES]
        msgs.append({"role": "system", "content": "[Start a new Chat]"})
        chat = [{"role": "assistant", "content": GREETING}, *self.history]
        if self.note_depth:  # SillyTavern: at the depth, or at the chat's start while shorter
            at = max(0, len(chat) - self.note_depth)
            chat.insert(at, {"role": "system", "content": NOTE})
        msgs += chat
        # what SillyTavern's server forwards for the Custom source (undefined keys dropped)
        return {
            "messages": msgs,
            "model": self.model_id,
            "temperature": 1,
            "max_tokens": self.max_tokens,
            "stream": True,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_p": 1,
            "logit_bias": {},
        }

    def reply(self) -> str:
        line = REPLIES[self.turn % len(REPLIES)].format(c=CHAR)
        return f"({self.tag}{self.turn + 1}) {line}"

    def ask(self) -> None:
        """The next user turn joins the transcript."""
        self.history.append({"role": "user", "content": self.user_line()})

    def answered(self) -> None:
        """The turn's fixed reply joins the transcript (whatever a server answered)."""
        self.history.append({"role": "assistant", "content": self.reply()})
        self.turn += 1

    def without_last_reply(self) -> dict[str, Any]:
        """The last turn's request again (SillyTavern drops the last reply and resends)."""
        return {**self.body(), "messages": self.body()["messages"][:-1]}


def prompt_usage(base: str, body: dict[str, Any]) -> dict[str, Any]:
    """The request sent once more without streaming, max_tokens 1: its usage (prompt size, and
    for our app how much of it came from the state cache)."""
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps({**body, "stream": False, "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=REQUEST_S) as r:
        return json.load(r).get("usage") or {}


def model_id(base: str) -> str:
    with urllib.request.urlopen(base + "/v1/models", timeout=60) as r:
        data = json.load(r)
    return data["data"][0]["id"]


def growth(ttfts: list[float]) -> float:
    head = statistics.median(ttfts[:3])
    tail = statistics.median(ttfts[-3:])
    return round(tail / head, 3) if head > 0 else float("nan")


def in_turns(bases: dict[str, str], k: int) -> list[tuple[str, str]]:
    """The servers in the order of the k-th request: which goes first alternates."""
    items = list(bases.items())
    return items if k % 2 == 0 else items[::-1]


def measure(
    bases: dict[str, str], turns: int, max_tokens: int, note_depth: int = 0
) -> dict[str, dict[str, Any]]:
    """One chat for `turns` turns, its regenerate, then two new chats taking turns: every
    request sent to each server, the servers taking turns request by request."""
    ids = {name: model_id(base) for name, base in bases.items()}
    out: dict[str, dict[str, Any]] = {name: {} for name in bases}
    k = 0

    def each(chat: Chat, body: dict[str, Any] | None = None) -> dict[str, Result]:
        """The chat's current request to every server, in turn."""
        nonlocal k
        got: dict[str, Result] = {}
        for name, base in in_turns(bases, k):
            req = {**(body or chat.body()), "model": ids[name]}
            if name.startswith("api"):  # ours: each turn's usage (what it fed) at the end
                req["stream_options"] = {"include_usage": True}
            got[name] = stream_chat(base, req)
        k += 1
        return got

    warm = Chat("W", "", max_tokens, note_depth)  # loads the model, first-use tables
    for _ in range(2):
        warm.ask()
        each(warm)
        warm.answered()

    alone = Chat("A", "", max_tokens, note_depth)
    ttfts: dict[str, list[float]] = {name: [] for name in bases}
    feds: dict[str, list[int | None]] = {name: [] for name in bases}
    empty = dict.fromkeys(bases, 0)
    first_body: dict[str, Any] = {}
    for _ in range(turns):
        alone.ask()
        if not first_body:
            first_body = alone.body()
        for name, r in each(alone).items():
            ttfts[name].append(r.ttft_s)
            empty[name] += not r.text
            known = r.prompt_tokens is not None and r.cached_tokens is not None
            feds[name].append(r.prompt_tokens - r.cached_tokens if known else None)  # type: ignore[operator]
        alone.answered()
    regen_body = alone.without_last_reply()
    regens: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(3):
        for name, r in each(alone, regen_body).items():
            regens[name].append(r.ttft_s)
    usage_first = {n: prompt_usage(b, {**first_body, "model": ids[n]}) for n, b in bases.items()}
    usage_last = {n: prompt_usage(b, {**regen_body, "model": ids[n]}) for n, b in bases.items()}

    b, c = Chat("B", "", max_tokens, note_depth), Chat("C", "", max_tokens, note_depth)
    inter: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(turns):
        row: dict[str, list[float]] = {name: [] for name in bases}
        for chat in (b, c):
            chat.ask()
            for name, r in each(chat).items():
                row[name].append(r.ttft_s)
            chat.answered()
        for name in bases:  # both chats' TTFT per turn (their median), read like the single's
            inter[name].append(statistics.median(row[name]))

    for name in bases:
        t = ttfts[name]
        last = usage_last[name]
        out[name] = {
            "ttft_growth": growth(t),
            "ttft_growth_from_turn2": growth(t[1:]),
            "regen_ttft_s": round(statistics.median(regens[name]), 4),
            "interleaved_growth": growth(inter[name]),
            "ttft_first_s": round(t[0], 4),
            "ttft_last_s": round(t[-1], 4),
            "ttft_s": [round(x, 4) for x in t],
            "regen_ttft_runs_s": [round(x, 4) for x in regens[name]],
            "interleaved_ttft_s": [round(x, 4) for x in inter[name]],
            "prompt_tokens_turn1": usage_first[name].get("prompt_tokens"),
            "prompt_tokens_last": last.get("prompt_tokens"),
            "cached_tokens_last": (last.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "ttft_last3_s": round(statistics.median(t[-3:]), 4),
            "fed_tokens": feds[name] if any(f is not None for f in feds[name]) else None,
            "empty_replies": empty[name],
        }
    return out


def main() -> int:
    args = parse_args()
    model = build_model(args)
    threads = args.threads or default_threads()
    out: dict[str, Any] = {
        "bench": "api",
        "model": model.name,
        "turns": args.turns,
        "max_tokens": args.max_tokens,
        "threads": threads,
        "ours_served_by": "streamlit run Home.py (st.App: pages and /v1 on one port)",
        "peer_served_by": "python -m llama_cpp.server --chat_format chatml",
        "transcript": "the same user lines and fixed replies for both servers",
        "order": "both servers up at once, taking turns request by request",
        "ttft": "first SSE chunk with non-empty delta.content",
        "growth": "median TTFT of the last 3 turns / median of the first 3",
    }
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, ExitStack() as stack:
        logs = Path(args.keep_logs) if args.keep_logs else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        bases: dict[str, str] = {}
        if not args.skip_ours:
            data = Path(tmp) / "data"
            data.mkdir()
            srv = stack.enter_context(serving(our_server(model, data, threads, logs / "o.log")))
            bases["api"] = srv.base
            if args.depth_note:  # the same app with the note where the client puts it
                data = Path(tmp) / "data-depth"
                data.mkdir()
                log = logs / "o-depth.log"
                srv = stack.enter_context(
                    serving(our_server(model, data, threads, log, notes="depth"))
                )
                bases["api_depth"] = srv.base
        if not args.skip_peer:
            srv = stack.enter_context(serving(peer_server(model, threads, logs / "peer.log")))
            bases["peer_api"] = srv.base
        out["depth_note"] = args.depth_note
        measured = measure(bases, args.turns, args.max_tokens, args.depth_note)
        for name, figures in measured.items():
            out.update({f"{name}_{k}": v for k, v in figures.items()})
        if args.depth_note and "api" in measured and "api_depth" in measured:
            on, off = measured["api"], measured["api_depth"]
            out["note_ttft_growth"] = on["ttft_growth_from_turn2"]
            out["note_ttft_depth_growth"] = off["ttft_growth_from_turn2"]
            out["note_vs_depth_last"] = round(on["ttft_last3_s"] / off["ttft_last3_s"], 3)
            for name, fig in (("note", on), ("note_depth", off)):
                if fig["fed_tokens"]:
                    out[f"{name}_fed_tokens_last"] = fig["fed_tokens"][-1]
        if "api" in bases and "peer_api" in bases and out["api_regen_ttft_s"] > 0:
            out["regen_speedup"] = round(out["peer_api_regen_ttft_s"] / out["api_regen_ttft_s"], 2)
        out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
