"""Checkpoints over a user's life: many chats at a real model's state size within the default
budgets, then every chat reopened after a restart, in random order: how many tokens each
reopening feeds again.

    python -m bench.retention                      # 50 chats of 60 messages, 2.9B state size
    python -m bench.retention --chats 5 --turns 4  # a quick look

What runs is the app's own Engine and state cache (core/engine/), on a data directory of its
own with the default budgets (512 MB in memory, 2048 MB on disk). The model is a stand-in with
the shape's real state size (RWKV-7: layers x 66 x width float32 values, 21.6 MB at 2.9B; the
logits of the 65536-token World vocabulary stored with each checkpoint), the World tokenizer,
and a forward pass that costs nothing: what is measured is which checkpoints the cache keeps,
not the model's speed. Its state bytes are pseudo-random, so no compression of the disk store
could gain on them (a real state would compress a little: see bench/checkpoint_size.py).

Each chat: a character's opening (10 characters, 5 chats each), its greeting, then `--turns`
turns of a user message (about 30 tokens) and a reply (`--reply-tokens`, default 80), one chat
after the other (last week's chat is older than today's). Then a new Engine on the same
directory (a restart) opens every chat in random order (`Engine.warm`, what the Chat page does
when a chat is opened), and regenerates its last reply (`Engine.state_for` of the transcript
before it).

Prints one JSON object:
- refeed_tokens: tokens fed again, summed over the chats, to reopen them (goal 0: every chat's
  tip is kept); refeed_chats: chats that fed anything; refeed_tokens_max: the most one chat fed;
- regen_refeed_tokens / regen_refeed_chats: the same for a regenerate of each chat's last reply
  after the reopening;
- transcript_tokens: the chats' transcripts summed (what a cache that kept nothing would feed);
- disk_bytes, disk_files (after the chats, and after the reopening), checkpoint_bytes (one
  state with its logits), budgets; the policy's own figures where the cache reports them;
- lru: the same figures from the same chats with the retention policy off (the cache's plain
  LRU, as before the policy: the same-run baseline; `--no-baseline` skips it), and
  refeed_spared_ratio, the share of the LRU's refeed_tokens that the policy spared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.backends.base import Backend, ModelInfo  # noqa: E402
from core.backends.tokenizer import WORLD_VOCAB_SIZE, world_tokenizer  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.engine.sampler import SamplingParams  # noqa: E402
from core.prompt import CharacterContext, Message  # noqa: E402

# RWKV-7 shapes: (layers, width)
SHAPES = {"0.1b": (12, 768), "0.4b": (24, 1024), "1.5b": (24, 2048), "2.9b": (32, 2560)}
SHAPES["7.2b"] = (32, 4096)
_HEAD = struct.Struct("<4sQ32s")


def rwkv7_state_bytes(layers: int, width: int) -> int:
    """Bytes of an RWKV-7 state in float32: per layer two token shifts of `width` values and
    width/64 heads of 64 x 64 WKV values: 66 x width values a layer."""
    return layers * 66 * width * 4


class StandIn(Backend):
    """A model of the shape's state size whose forward pass costs nothing. Its state is the
    hash chain of every token fed (so a wrong restore would show as a different state), and its
    serialised state has the real size: a header with the hash, then pseudo-random bytes drawn
    from it. Its logits put the mass on a word token drawn from the state, so replies are plain
    words and never stop before their token cap. It counts the tokens it is fed."""

    max_batch = 1

    def __init__(self, shape: str) -> None:
        layers, width = SHAPES[shape]
        self.size = rwkv7_state_bytes(layers, width)
        self.world = world_tokenizer()
        self.words = [
            t
            for t in range(1, WORLD_VOCAB_SIZE)
            if (b := self.world.token_bytes(t)).startswith(b" ")
            and b[1:].isalpha()
            and b[1:].isascii()
            and len(b) > 3
        ]
        self.fed = 0
        self.info = ModelInfo(
            path="",
            backend="standin",
            arch="rwkv7",
            n_layer=layers,
            n_embd=width,
            n_vocab=WORLD_VOCAB_SIZE,
            n_params=0,
            strategy=f"stand-in, {self.size / 1e6:.1f} MB state",
            load_s=0.0,
            identity=f"bench-retention-{shape}",
        )
        self.state_format = "bench stand-in v1"

    def tokenize(self, text: str) -> list[int]:
        return self.world.encode(text)

    def detokenize(self, tokens: list[int]) -> bytes:
        return self.world.decode_bytes(tokens)

    def token_bytes(self, token: int) -> bytes:
        return self.world.token_bytes(token)

    def initial_state(self) -> tuple[bytes, int]:
        return (bytes(32), 0)

    def forward(self, tokens: list[int], state: Any) -> tuple[np.ndarray, Any]:
        digest, n = state
        self.fed += len(tokens)
        new = hashlib.sha256(digest + np.asarray(tokens, np.int32).tobytes()).digest()
        logits = np.zeros(WORLD_VOCAB_SIZE, np.float32)
        logits[self.words[int.from_bytes(new[:4], "little") % len(self.words)]] = 30.0
        return logits, (new, n + len(tokens))

    def copy_state(self, state: Any) -> Any:
        return state

    def _payload(self, digest: bytes, n: int) -> bytes:
        return np.random.default_rng(int.from_bytes(digest[:8], "little")).bytes(n)

    def state_to_bytes(self, state: Any) -> bytes:
        digest, n = state
        head = _HEAD.pack(b"STND", n, digest)
        return head + self._payload(digest, self.size - len(head))

    def state_from_bytes(self, data: bytes) -> Any:
        magic, n, digest = _HEAD.unpack_from(data)
        if magic != b"STND" or len(data) != self.size:
            raise ValueError("not a stand-in state")
        if data[_HEAD.size : _HEAD.size + 4096] != self._payload(digest, 4096):
            raise ValueError("a stand-in state whose bytes do not match its hash")
        return (digest, n)

    def eos_token(self) -> int | None:
        return None

    def close(self) -> None:
        pass


USER_WORDS = (
    "the road north rain lantern bridge river map inn soup coin tower marsh lights compass hills "
    "valley wells fishermen lighthouse keeper salt dawn coast sleep favour iron needle stories"
).split()


def user_line(chat: int, turn: int, rng: random.Random) -> str:
    words = " ".join(rng.choice(USER_WORDS) for _ in range(22))
    return f"(chat {chat}, turn {turn}) Tell me about {words}?"


def character(i: int) -> CharacterContext:
    persona = (
        f"{{{{char}}}} number {i} is a travelling cartographer who has walked every road between "
        "the mountains and the sea, speaks warmly, notices small details, keeps maps in a "
        "leather tube, distrusts shortcuts, and collects stories of old bridges. " * 3
    )
    return CharacterContext(
        name=f"Mira{i}",
        user_name="Ren",
        persona=persona,
        example_dialogue="{{user}}: Where are we?\n{{char}}: On the salt road, two days from "
        "the sea.",
    )


def dir_usage(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def play(args: argparse.Namespace, policy: bool) -> dict[str, Any]:
    """Play the chats, restart, reopen each one; with `policy` False the state cache's
    retention policy is off (`pin_reply` does nothing: a plain LRU over every checkpoint, what
    the cache did before the policy), the same-run baseline."""
    rng = random.Random(args.seed)
    backend = StandIn(args.shape)
    work = Path(tempfile.mkdtemp(prefix="rp-retention-"))
    states = work / "states"
    params = SamplingParams(temperature=0.0, top_p=1.0, seed=1, max_tokens=args.reply_tokens)

    def engine_() -> Engine:
        eng = Engine(
            backend, cache_dir=states, mem_budget_mb=args.mem_mb, disk_budget_mb=args.disk_mb
        )
        if not policy:
            eng.cache.pin_reply = lambda *a, **k: None  # type: ignore[method-assign]
        return eng

    engine = engine_()
    chats: list[tuple[CharacterContext, list[Message]]] = []
    t0 = time.perf_counter()
    tag = "policy" if policy else "lru"
    try:
        for c in range(args.chats):
            ctx = character(c % 10)
            hist = [Message("char", f"Welcome back, Ren. (chat {c}) The maps are ready.")]
            engine.warm(ctx, hist)  # the chat is opened
            for turn in range(1, args.turns + 1):
                hist.append(Message("user", user_line(c, turn, rng)))
                res = engine.reply(ctx, hist, Message("char"), params).consume()
                hist.append(Message("char", res.text or "…"))
            chats.append((ctx, hist))
            print(f"[retention {tag}] chat {c + 1}/{args.chats}", file=sys.stderr, flush=True)
        engine.flush()
        play_s = time.perf_counter() - t0
        after_play = dir_usage(states)
        stats_play = engine.cache_stats()
        engine.close()

        # a restart: a new engine on the same directory opens every chat, in random order
        engine = engine_()
        order = list(range(len(chats)))
        rng.shuffle(order)
        refeed: dict[int, int] = {}
        regen: dict[int, int] = {}
        transcript = 0
        for c in order:
            ctx, hist = chats[c]
            transcript += engine._build(ctx, hist, None).n_tokens
            before = backend.fed
            engine.warm(ctx, hist)
            refeed[c] = backend.fed - before
            before = backend.fed
            engine.state_for(ctx, hist[:-1], Message("char"))
            regen[c] = backend.fed - before
        engine.flush()
        after_open = dir_usage(states)
        stats_open = engine.cache_stats()
        engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "state_bytes": backend.size,
        "refeed_tokens": sum(refeed.values()),
        "refeed_chats": sum(1 for v in refeed.values() if v),
        "refeed_tokens_max": max(refeed.values(), default=0),
        "regen_refeed_tokens": sum(regen.values()),
        "regen_refeed_chats": sum(1 for v in regen.values() if v),
        "transcript_tokens": transcript,
        "disk_bytes_after_chats": after_play[0],
        "disk_files_after_chats": after_play[1],
        "disk_bytes_after_reopen": after_open[0],
        "disk_files_after_reopen": after_open[1],
        "play_s": round(play_s, 1),
        "cache_after_chats": {k: v for k, v in stats_play.items() if not k.startswith("hits")},
        "cache_after_reopen": stats_open,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="2.9b")
    ap.add_argument("--chats", type=int, default=50)
    ap.add_argument("--turns", type=int, default=30, help="user messages and replies a chat")
    ap.add_argument("--reply-tokens", type=int, default=80)
    ap.add_argument("--mem-mb", type=float, default=512)
    ap.add_argument("--disk-mb", type=float, default=2048)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip the run with the policy off (`lru`)"
    )
    args = ap.parse_args()

    got = play(args, policy=True)
    n_logits_bytes = WORLD_VOCAB_SIZE * 4
    out: dict[str, Any] = {
        "bench": "retention",
        "shape": args.shape,
        "model": "stand-in with the shape's state size (no compute)",
        "state_bytes": got["state_bytes"],
        "checkpoint_bytes": got["state_bytes"] + n_logits_bytes,
        "chats": args.chats,
        "turns": args.turns,
        "messages_per_chat": 1 + 2 * args.turns,
        "reply_tokens": args.reply_tokens,
        "mem_budget_mb": args.mem_mb,
        "disk_budget_mb": args.disk_mb,
        **{k: v for k, v in got.items() if k != "state_bytes"},
    }
    if not args.no_baseline:
        lru = play(args, policy=False)
        out["lru"] = {k: v for k, v in lru.items() if k != "state_bytes"}
        # what the policy spared, as a share of what the plain LRU re-fed
        base = lru["refeed_tokens"]
        out["refeed_spared_ratio"] = round(1 - out["refeed_tokens"] / base, 4) if base else None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
