"""Batched decoding: several chats (and several versions of one reply) decoding at once, against
one chat alone and against a bare batched forward loop, on the same model in the same run.

    python bench/batch.py               # RWKV-7 0.1B shape (f16 GGUF, and .pth) + embedded model
    python bench/batch.py --models rwkv --tokens 40 --rounds 3
    python bench/batch.py --models pth --pth-strategies "cpu fp32,cpu bf16"
    python bench/batch.py --shape tiny             # quick: a tiny random RWKV-7

Models: `rwkv` the RWKV-7 shape as a GGUF through llama.cpp, `embedded` the embedded transformer
(llama.cpp), `pth` the same RWKV-7 shape's .pth through the rwkv package (one section per
`--pth-strategies` entry).

Prints one JSON object with a section per model:
- `agg_ratio_2/4/8`: total tokens/s of 2, 4, 8 chats replying at once (one thread each, as
  browser sessions or API clients) over one chat alone;
- `per_chat_ratio_2`: each chat's own tokens/s with two running, over one alone;
- `swipes3_ratio`: time for three versions of one reply at once over one version, each time
  per forward pass of the longest version (`swipesN_s`, `swipesN_passes`): on random weights every
  version runs to its cap, but the embedded model's versions end where they end, and three
  versions take as long as their longest;
- `batch_vs_bare`: our loop's aggregate at 4 chats over a bare batched decode of 4 sequences
  (argmax, no engine, no sampling): the ceiling. On llama.cpp one `llama_decode` a step, with
  the model's thread count and, where the back end has one, its wide count for passes of
  several steps (`wide_threads`, `bare_tok_s_4_wide`; the better of the two is the ceiling); on
  the rwkv package the batched step (core/backends/rwkv7_batch.py) called directly, its
  one-sequence figure the package's own forward (what a chat alone runs);
- `bare_agg_ratio_4`: the ceiling over the bare loop of one sequence.
Tokens are counted per forward pass: a reply of n tokens takes n - 1 passes (its first token
is sampled from the cached prompt's logits, with no pass), so our loops' rates are passes a
second, as the bare loops' are (one token per sequence per pass). Every figure is the best of
`--rounds` runs after a short warm-up run (WARM_TOKENS tokens a reply); the configurations take
turns within a round, so each meets the same spells of load from other work on the machine.
Prompts are cached by the warm-up: the figures are decode speeds, from a reply's first token to
its last. The checkpoint a reply leaves (its closed form
fed after it ends, when the sampled tokens are not exactly the stored text's: on these random
weights, half the replies, 40 tokens each) is made on the model thread after the reply, as in
the app while its user reads and types: each run waits for the last run's (`Engine.settle`)
before its clock starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import SHAPES, build_model  # noqa: E402
from core.backends.base import Backend  # noqa: E402
from core.backends.llama import LlamaBackend  # noqa: E402
from core.backends.model_thread import on_model_thread  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.engine.batch import consume_together  # noqa: E402
from core.engine.sampler import SamplingParams  # noqa: E402
from core.errors import ModelError  # noqa: E402
from core.prompt import CharacterContext, Message  # noqa: E402

WARM_TOKENS = 4  # tokens a reply in the warm-up run of each configuration
NAMES = ("Mira", "Pip", "Rook", "Ada", "Ben", "Cy", "Dee", "Eli")
CHATS = [
    (
        CharacterContext(name=n, user_name="Ren", persona=f"{n} is a talkative traveller."),
        [
            Message("char", f"Hello! I am {n}, and I have stories."),
            Message("user", f"Tell me a long story, {n}, number {i}."),
        ],
    )
    for i, n in enumerate(NAMES)
]


def _params(tokens: int, seed: int) -> SamplingParams:
    # penalties off and a wide top-p: replies run to their token cap on random weights
    return SamplingParams(
        temperature=1.0,
        top_p=0.9,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=tokens,
        seed=seed,
    )


def passes(new_tokens: int) -> int:
    """Forward passes of a reply of `new_tokens` tokens: its first comes from the prompt's
    logits (cached by the warm-up), each later one from a pass over the token before it."""
    return max(0, new_tokens - 1)


def chats_at_once(engine: Engine, k: int, tokens: int) -> dict[str, float]:
    """k chats replying at once, one thread each: total and per-chat tokens/s, counting a
    token per forward pass of each chat (`passes`)."""
    engine.settle()  # the last run's reply checkpoints are made before the clock starts
    replies = [
        engine.reply(ctx, hist, Message("char"), _params(tokens, 100 + i))
        for i, (ctx, hist) in enumerate(CHATS[:k])
    ]
    ends: list[float] = [0.0] * k
    done = [0] * k
    start = threading.Barrier(k + 1)

    def run(i: int) -> None:
        start.wait()
        done[i] = passes(replies[i].consume().new_tokens)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = max(ends) - t0
    per_chat = min(n / (e - t0) for n, e in zip(done, ends, strict=True))
    return {"agg": sum(done) / wall, "per_chat": per_chat, "tokens": float(sum(done))}


def versions_s(engine: Engine, n: int, tokens: int) -> dict[str, float]:
    """n versions of one reply at once (prompt cached): seconds, and the longest version's
    forward passes (a real model's versions end at different lengths; the time is the
    longest's)."""
    ctx, hist = CHATS[0]
    engine.settle()
    t0 = time.perf_counter()
    res = consume_together(engine.reply_versions(ctx, hist, Message("char"), _params(tokens, 7), n))
    seconds = time.perf_counter() - t0
    longest = max(1, *(passes(r.new_tokens) for r in res))
    # "agg" orders results in `best`: fewer seconds a token of the longest version is better
    return {"agg": -seconds / longest, "s": seconds, "longest": float(longest)}


def bare_batch_tok_s(
    backend: LlamaBackend, k: int, n_tokens: int, threads: int | None = None
) -> float:
    """Total tokens/s of a bare loop decoding k sequences in one llama_decode per step
    (argmax each, no states, no sampling, no engine): the ceiling of batched decoding.
    `threads`: llama.cpp's count for passes of several tokens (the back end's wide one)."""
    import llama_cpp as L

    b = backend
    with b._lock:
        if threads is not None:
            L.llama_set_n_threads(b._ctx, b.n_threads, threads)
        b._collect()
        seqs: list[int] = []
        for _ in range(k):
            seqs.append(b._take_slot(set(seqs)))
        if k > 1:
            seqs = sorted(b._in_one_run(seqs))  # one pass a step, as the engine's batches run
        bt = b._batch
        toks = [0] * k
        try:
            t0 = 0.0
            for step in range(n_tokens + 1):
                if step == 1:
                    t0 = time.perf_counter()  # the first step warms up
                bt.n_tokens = k
                for i, s in enumerate(seqs):
                    bt.token[i] = toks[i]
                    bt.pos[i] = step
                    bt.n_seq_id[i] = 1
                    bt.seq_id[i][0] = s
                    bt.logits[i] = 1
                if L.llama_decode(b._ctx, bt) != 0:
                    raise ModelError("llama.cpp failed in the bare batch loop.")
                for i in range(k):
                    ptr = L.llama_get_logits_ith(b._ctx, i)
                    toks[i] = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(b.n_vocab,))))
            return k * n_tokens / (time.perf_counter() - t0)
        finally:
            for s in seqs:
                b._free_slot(s)
            L.llama_set_n_threads(b._ctx, b.n_threads, b.n_threads)


def bare_rwkv_tok_s(backend: Any, k: int, n_tokens: int) -> float:
    """The same ceiling on the rwkv package: k sequences through the batched RWKV-7 step (one
    sequence: the package's forward, as a chat alone runs), argmax each, no engine."""
    import torch

    b = backend
    state = b.forward(b.tokenize("User: hello\n\nAssistant:"), b.initial_state())[1]
    states, toks = [state] * k, [0] * k
    t0 = 0.0
    for step in range(n_tokens + 1):
        if step == 1:
            t0 = time.perf_counter()  # the first step warms up
        if k == 1:
            lg, s = b.forward(toks, states[0])
            rows, states = [lg], [s]
        else:
            logits, states = b._batch.forward(toks, states)
            rows = list(logits.float())
        toks = [int(torch.argmax(torch.as_tensor(r))) for r in rows]
    return k * n_tokens / (time.perf_counter() - t0)


def best(
    loops: dict[str, Callable[[int], Any]],
    rounds: int,
    tokens: int,
    key: Callable[[Any], float],
    warm_tokens: int = WARM_TOKENS,
) -> dict:
    """Each loop's best result over `rounds` runs of `tokens` tokens a reply, after one short
    warm-up run each (it caches the prompts and builds what a first pass builds), turns taken in
    a round. `key` orders results (higher is better)."""
    for loop in loops.values():
        loop(warm_tokens)
    out: dict[str, Any] = {}
    for _ in range(rounds):
        for name, loop in loops.items():
            r = loop(tokens)
            if name not in out or key(r) > key(out[name]):
                out[name] = r
    return out


def measure(backend: Backend, tokens: int, rounds: int, ks: tuple[int, ...]) -> dict:
    engine = Engine(backend, cache_dir=None)
    ks = tuple(k for k in ks if k <= backend.max_batch)
    loops: dict[str, Callable[[int], Any]] = {
        f"chats_{k}": (lambda t, k=k: chats_at_once(engine, k, t)) for k in ks
    }
    bare = bare_batch_tok_s if isinstance(backend, LlamaBackend) else bare_rwkv_tok_s
    for k in (1, 4):
        if k <= backend.max_batch:
            loops[f"bare_{k}"] = lambda t, k=k: {"agg": on_model_thread(bare, backend, k, t)}
    wide = getattr(backend, "wide_threads", None)
    if wide and 4 <= backend.max_batch:  # the ceiling with the thread count wide passes use
        loops["bare_4_wide"] = lambda t: {"agg": on_model_thread(bare, backend, 4, t, wide)}
    for n in (1, 3):
        loops[f"versions_{n}"] = lambda t, n=n: versions_s(engine, n, t)
    r = best(loops, rounds, tokens, key=lambda x: x["agg"])
    alone = r["chats_1"]["agg"]
    out: dict[str, Any] = {
        "model": Path(backend.info.path).name,
        "arch": backend.info.arch,
        "strategy": backend.info.strategy,
        "max_batch": backend.max_batch,
        "alone_tok_s": round(alone, 2),
    }
    for k in ks:
        if k > 1:
            out[f"agg_tok_s_{k}"] = round(r[f"chats_{k}"]["agg"], 2)
            out[f"agg_ratio_{k}"] = round(r[f"chats_{k}"]["agg"] / alone, 3)
    if "chats_2" in r:
        out["per_chat_ratio_2"] = round(r["chats_2"]["per_chat"] / alone, 3)
    for n in (1, 3):
        out[f"swipes{n}_s"] = round(r[f"versions_{n}"]["s"], 3)
        out[f"swipes{n}_passes"] = int(r[f"versions_{n}"]["longest"])
    out["swipes3_ratio"] = round(r["versions_3"]["agg"] / r["versions_1"]["agg"], 3)
    if "bare_4" in r and "chats_4" in r:
        out["bare_tok_s_1"] = round(r["bare_1"]["agg"], 2)
        out["bare_tok_s_4"] = round(r["bare_4"]["agg"], 2)
        ceiling = r["bare_4"]["agg"]
        if "bare_4_wide" in r:
            out["wide_threads"] = wide
            out["bare_tok_s_4_wide"] = round(r["bare_4_wide"]["agg"], 2)
            ceiling = max(ceiling, r["bare_4_wide"]["agg"])
        out["bare_agg_ratio_4"] = round(ceiling / r["bare_1"]["agg"], 3)
        out["batch_vs_bare"] = round(r["chats_4"]["agg"] / ceiling, 3)
    engine.flush()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models", default="rwkv,embedded,pth", help="any of rwkv, embedded, pth (comma list)"
    )
    ap.add_argument(
        "--pth-strategies", default="cpu fp32", help="rwkv package strategies for pth (comma list)"
    )
    ap.add_argument("--shape", choices=tuple(SHAPES), default="0.1b")
    ap.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"))
    ap.add_argument("--tokens", type=int, default=40, help="tokens a reply")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each (the best counts)")
    ap.add_argument("--ks", default="1,2,4,8", help="numbers of chats at once")
    args = ap.parse_args(argv)
    ks = tuple(sorted({1, *(int(x) for x in args.ks.split(","))}))
    result: dict[str, Any] = {"bench": "batch", "tokens": args.tokens, "rounds": args.rounds}
    for which in args.models.split(","):
        if which == "pth":
            from core.backends.rwkv import RwkvBackend

            spec = argparse.Namespace(model=None, backend="rwkv", shape=args.shape)
            for strategy in args.pth_strategies.split(","):
                backend = on_model_thread(RwkvBackend, build_model(spec), strategy.strip())
                name = f"rwkv7_{args.shape}_pth_{strategy.strip().split()[-1]}"
                result[name] = measure(backend, args.tokens, args.rounds, ks)
                backend.close()
            continue
        if which == "rwkv":
            spec = argparse.Namespace(
                model=None, backend="llama", shape=args.shape, gguf_type=args.gguf_type
            )
            backend = LlamaBackend(build_model(spec))
            name = f"rwkv7_{args.shape}_{args.gguf_type}"
        elif which == "embedded":
            from core.backends.embedded import embedded_model_path

            path = embedded_model_path()
            if path is None:
                result["embedded"] = {"error": "the embedded model is not installed"}
                continue
            backend = LlamaBackend(path)
            name = "embedded"
        else:
            raise SystemExit(f"unknown model {which!r}")
        result[name] = measure(backend, args.tokens, args.rounds, ks)
        backend.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
