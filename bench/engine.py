"""Engine speed on one model: our loop against a bare loop, and time to first token as a chat
grows, is regenerated, interleaved with another chat, and resumed after a restart.

    python bench/engine.py --backend rwkv --shape 0.1b --strategy "cpu fp32"
    python bench/engine.py --backend llama --shape 0.1b --gguf-type f16
    python bench/engine.py --model models/x.pth

Prints one JSON object. Every ratio compares figures measured in the same run on the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.backends.loader import load_backend  # noqa: E402
from core.backends.model_thread import on_model_thread  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.engine.sampler import PRESETS, Penalties, SamplingParams, sample  # noqa: E402
from core.prompt import CharacterContext, Message  # noqa: E402

SHAPES = {"tiny": (2, 128), "0.1b": (12, 768), "0.4b": (24, 1024)}
CTX = CharacterContext(
    name="Mira",
    user_name="Ren",
    persona="{{char}} is a travelling cartographer who speaks warmly and notices small details.",
    example_dialogue="{{user}}: Where are we?\n{{char}}: On the salt road, two days from the sea.",
)
GREETING = Message("char", "Welcome back, {{user}}. The maps are ready.")
# user messages of the same length in tokens (only the chat's letter and the digits change), so
# that no two chats share a transcript past the greeting
USER = "Chat {tag} turn {n:03d}: tell me about the next valley, the river, and its people."
CAPPED = SamplingParams(temperature=1.0, top_p=0.6, seed=11, max_tokens=4)


def build_model(args: argparse.Namespace, work: Path) -> Path:
    if args.model:
        return Path(args.model)
    from tests.support.tiny_model import write_model

    layers, width = SHAPES[args.shape]
    cache = Path(tempfile.gettempdir()) / "rwkv-rp-bench"
    pth = cache / f"v7-{args.shape}.pth"
    if not pth.exists():
        write_model(pth, 7, layers, width)
    if args.backend != "llama":
        return pth
    from core.convert import convert

    gguf = cache / f"v7-{args.shape}-{args.gguf_type}.gguf"
    if not gguf.exists():
        convert(pth, gguf, args.gguf_type)
    return gguf


def ttft(engine: Engine, hist: list[Message], params: SamplingParams = CAPPED) -> tuple[float, str]:
    """Seconds from submitting to the first streamed text, and the stored reply."""
    reply = engine.reply(CTX, hist, Message("char"), params)
    t0 = time.perf_counter()
    first = None
    for _ in reply:
        if first is None:
            first = time.perf_counter() - t0
    res = reply.result
    return (first if first is not None else res.ttft_s), res.text or "…"


def bare_decode(backend, steps: int) -> float:
    """Forward one token and take the argmax, nothing else: the speed our loop is held to."""
    logits, state = backend.forward(backend.tokenize("Once upon a time"), backend.initial_state())
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, state = backend.forward([int(np.argmax(logits))], state)
    return steps / (time.perf_counter() - t0)


def our_decode(engine: Engine, steps: int) -> tuple[float, float]:
    """Tokens/s of the engine's loop over a long reply, and its mean step time."""
    params = SamplingParams(
        temperature=1.0, top_p=0.6, seed=5, max_tokens=steps, presence_penalty=0.2
    )
    rates = []
    for seed in (5, 6, 7):
        res = engine.reply(
            CTX, [GREETING], Message("char"), params.__class__(**{**params.to_dict(), "seed": seed})
        ).consume()
        if res.new_tokens >= 8:
            rates.append(res.new_tokens / res.gen_s)
    rate = max(rates) if rates else 0.0
    return rate, 1.0 / rate if rate else 0.0


def sample_ms(n_vocab: int) -> float:
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=n_vocab) * 3).astype(np.float32)
    pen = Penalties(n_vocab, 0.996)
    for t in rng.integers(0, n_vocab, 200):
        pen.add(int(t))
    p = PRESETS["roleplay"]
    for _ in range(20):
        sample(logits, p, rng, pen)
    t0 = time.perf_counter()
    n = 300
    for _ in range(n):
        sample(logits, p, rng, pen)
    return (time.perf_counter() - t0) / n * 1000


def bandwidth_gbs() -> float:
    """Memory bandwidth: copy a 512 MiB array (read + write), best of 5."""
    a = np.ones(2**27, np.float32)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t0))
    return best / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("rwkv", "llama"), default="rwkv")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="0.1b")
    ap.add_argument("--model", help="a model file instead of a random --shape model")
    ap.add_argument("--strategy", default="cpu fp32")
    ap.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"))
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--decode-steps", type=int, default=64)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rp-bench-"))
    model = build_model(args, work)
    backend = load_backend(model, args.backend, args.strategy)
    info = backend.info
    cache_dir = work / "states"
    engine = Engine(backend, cache_dir=cache_dir)
    out: dict[str, object] = {
        "backend": info.backend,
        "arch": info.arch,
        "shape": None if args.model else args.shape,
        "model": str(model) if args.model else None,
        "strategy": info.strategy,
        "n_layer": info.n_layer,
        "n_embd": info.n_embd,
        "params": info.n_params,
        "threads": os.cpu_count(),
    }

    # decode: ours vs bare, then the sampler alone
    # every model call runs on the model thread, as in the app (one OpenMP team)
    bare = on_model_thread(bare_decode, backend, args.decode_steps)
    ours, step = our_decode(engine, args.decode_steps)
    out.update(
        bare_decode_tok_s=round(bare, 2),
        decode_tok_s=round(ours, 2),
        decode_ratio=round(ours / bare, 3),
        decode_step_s=round(step, 4),
        sample_ms=round(sample_ms(info.n_vocab), 3),
    )
    if info.backend == "llama":
        from bench.bare import bare_decode_tok_s

        llama_bare = on_model_thread(bare_decode_tok_s, backend, args.decode_steps)
        weight_bytes = model.stat().st_size
        bw = bandwidth_gbs()
        bound = bw * 1e9 / weight_bytes
        out.update(
            llama_bare_decode_tok_s=round(llama_bare, 2),
            decode_ratio=round(ours / llama_bare, 3),
            bandwidth_gbs=round(bw, 2),
            weight_bytes_per_token=weight_bytes,
            bound_tok_s=round(bound, 2),
            bound_ratio=round(llama_bare / bound, 3),
        )

    # one chat of N turns: the opening is cached first (as when a character's chat is opened)
    engine.warm(CTX, [GREETING])
    hist = [GREETING]
    ttfts = []
    for n in range(1, args.turns + 1):
        hist.append(Message("user", USER.format(tag="S", n=n)))
        t, text = ttft(engine, hist)
        ttfts.append(t)
        hist.append(Message("char", text))
    # medians over windows of turns: whether the first sampled token is visible text or has to
    # wait for the next one (a space, half a character) varies from turn to turn
    win = max(3, args.turns // 5)
    turn1 = statistics.median(ttfts[:win])
    turn_n = statistics.median(ttfts[-win:])
    # regenerate the last reply: the same transcript before it
    regen = statistics.median(ttft(engine, hist[:-1])[0] for _ in range(3))
    # naive baseline: feed the whole transcript of the last turn, then sample
    tokens = backend.tokenize(engine.prompt_text(CTX, hist[:-1], Message("char")))
    engine.flush()  # no checkpoint writes running beside it
    t0 = time.perf_counter()
    logits, _ = on_model_thread(backend.forward, tokens, backend.initial_state())
    sample(logits, CAPPED, np.random.default_rng(0))
    refeed = time.perf_counter() - t0
    out.update(
        ttft_turn1_s=round(turn1, 4),
        ttft_turn40_s=round(turn_n, 4),
        ttft_growth=round(turn_n / turn1, 3),
        refeed_ttft_turn40_s=round(refeed, 4),
        transcript_tokens_turn40=len(tokens),
        regen_ttft_s=round(regen, 4),
        regen_in_decode_steps=round(regen / step, 2) if step else None,
    )

    # two chats of the same character taking turns
    a, b = [GREETING], [GREETING]
    pair = []
    for n in range(1, args.turns + 1):
        row = []
        for tag, h in (("A", a), ("B", b)):
            h.append(Message("user", USER.format(tag=tag, n=n)))
            t, text = ttft(engine, h)
            h.append(Message("char", text))
            row.append(t)
        pair.append(statistics.mean(row))
    out["interleaved_growth"] = round(
        statistics.median(pair[-win:]) / statistics.median(pair[:win]), 3
    )

    # restart: a new engine on the same data directory continues the long chat
    # (the model stays loaded: its load time is not part of a reply's time to first token);
    # three restarts, each sending a different next message after the same 40 turns
    engine.flush()
    resumes = []
    for tag in "XYZ":
        nxt = [*hist, Message("user", USER.format(tag=tag, n=args.turns + 1))]
        resumes.append(ttft(Engine(backend, cache_dir=cache_dir), nxt)[0])
    resume = statistics.median(resumes)
    out.update(resume_ttft_s=round(resume, 4), resume_ratio=round(resume / turn1, 3))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
