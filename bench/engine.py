"""Engine speed on one model: our loop against a bare loop, and time to first token as a chat
grows, is regenerated, interleaved with another chat, and resumed after a restart.

    python bench/engine.py --backend rwkv --shape 0.1b --strategy "cpu fp32"
    python bench/engine.py --backend llama --shape 0.1b --gguf-type f16
    python bench/engine.py --model models/x.pth
    python bench/engine.py --backend llama --shape 1.5b --gguf-type q8_0   # the sizes people run

At the sizes people run (0.4b, 1.5b, 2.9b: the "real" profile, the default there) a decode step
reads gigabytes and a long card's prefill takes minutes on a CPU, so the chat of 40 turns is
left out and the run measures what users meet at those sizes (`real_profile`):
- decode: our loop against bare llama.cpp (`decode_ratio`, goal >= 0.97), and bare llama.cpp
  against the memory-bandwidth bound read from the bytes a step reads (`bound_ratio`, goal
  >= 0.85);
- launch: a new process loads the model and feeds a short prompt to its first token, with the
  model file dropped from the page cache first (`load_cold_s`, `first_token_cold_s`) and right
  after (`*_warm_s`), and that process's memory (`load_rss_*_mb`: its peak, and what is
  anonymous memory or mapped file pages);
- a new chat whose card is 2,000 tokens: time to its first sampled token against bare
  llama.cpp's prefill of the same tokens and one argmax (`card_ttft_ratio`, goal <= 1.1; the
  rwkv package's own forward for a .pth);
- a short chat, then regenerating its last reply in decode steps (`regen_steps`, goal <= 1),
  a checkpoint's size and the time to write it (`checkpoint_bytes`, `checkpoint_write_s`);
- a new process resuming the chat with the checkpoints dropped from the page cache, over a
  new chat's turn 1 (`resume_cold_ratio`, goal <= 1.5);
- this process's peak memory (`rss_peak_mb`).

Prints one JSON object. Every ratio compares figures measured in the same run on the same model,
and every model call runs on the model thread, as in the app: torch and llama.cpp keep one
OpenMP thread team per calling thread, and a second team slows the first one down.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bare import bare_decode_tok_s, bare_prefill_s, forward_decode_tok_s  # noqa: E402
from core.backends.base import Backend  # noqa: E402
from core.backends.gguf_file import inspect_gguf  # noqa: E402
from core.backends.loader import load_backend  # noqa: E402
from core.backends.model_thread import on_model_thread  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.engine.sampler import PRESETS, Penalties, SamplingParams, sample  # noqa: E402
from core.engine.state_cache import Checkpoint  # noqa: E402
from core.prompt import CharacterContext, Message  # noqa: E402

SHAPES = {
    "tiny": (2, 128),
    "0.1b": (12, 768),
    "0.4b": (24, 1024),
    "1.5b": (24, 2048),
    "2.9b": (32, 2560),
}
BF16_FROM = ("1.5b", "2.9b")  # shapes written in bf16, as BlinkDL releases its .pth files
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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("rwkv", "llama"), default="rwkv")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="0.1b")
    ap.add_argument("--model", help="a model file instead of a random --shape model")
    ap.add_argument("--strategy", default="cpu fp32")
    ap.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"))
    ap.add_argument("--threads", type=int, help="threads of the model (default: the app's)")
    ap.add_argument("--turns", type=int, help="turns of the chat (default 40; 4 in 'real')")
    ap.add_argument(
        "--profile",
        choices=("auto", "chat", "real"),
        default="auto",
        help="'chat': the 40-turn chat and its variants; 'real': what users meet at the sizes "
        "people run (the module's doc); auto: 'real' from 0.4b up",
    )
    ap.add_argument("--card-tokens", type=int, default=2000)
    ap.add_argument("--decode-steps", type=int, default=64, help="forwards per decode run")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="decode runs of each loop after a warm-up (the best counts), and repeats of the "
        "re-feed and the restart (the median counts)",
    )
    args = ap.parse_args()
    if args.profile == "auto":
        args.profile = "real" if args.shape in ("0.4b", *BF16_FROM) and not args.model else "chat"
    if args.turns is None:
        args.turns = 4 if args.profile == "real" else 40
    return args


def build_model(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from tests.support.tiny_model import write_model

    layers, width = SHAPES[args.shape]
    cache = Path(tempfile.gettempdir()) / "rwkv-rp-bench"
    bf16 = args.shape in BF16_FROM
    pth = cache / f"v7-{args.shape}{'-bf16' * bf16}.pth"
    if not pth.exists():
        import torch

        tmp = pth.with_suffix(".tmp")
        write_model(tmp, 7, layers, width, dtype=torch.bfloat16 if bf16 else torch.float32)
        tmp.rename(pth)
    if args.backend != "llama":
        return pth
    from core.models.convert import convert

    gguf_path = cache / f"v7-{args.shape}-{args.gguf_type}.gguf"
    if not gguf_path.exists():
        convert(pth, gguf_path, args.gguf_type, models_dir=cache)
    return gguf_path


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


# ---------------------------------------------------------------- decode
def our_decode_tok_s(engine: Engine, steps: int) -> float:
    """Forwards per second of the engine's loop, with its sampler, stop scan and streaming.
    A reply feeds back every token it samples but the last, so `steps` + 1 tokens cost `steps`
    forwards (fewer if it stops early: the count follows). Its time also holds the first
    token's sampling, one sample more than the forwards (0.2 ms in about a second)."""
    params = SamplingParams(
        temperature=1.0, top_p=0.6, seed=5, max_tokens=steps + 1, presence_penalty=0.2
    )
    res = engine.reply(CTX, [GREETING], Message("char"), params).consume()
    return (res.new_tokens - 1) / res.gen_s


def best_rates(loops: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The best rate of each loop over `rounds` runs after one warm-up run each. The loops take
    turns within a round, so that each meets the same warm-up and the same spells of load from
    other work; the best run is the one that other work disturbed least."""
    for loop in loops.values():
        loop()
    best = dict.fromkeys(loops, 0.0)
    for _ in range(rounds):
        for name, loop in loops.items():
            best[name] = max(best[name], loop())
    return best


def measure_decode(backend: Backend, engine: Engine, steps: int, rounds: int) -> dict[str, Any]:
    """Our loop against the bare Backend-protocol loop (forward + argmax) and, on llama.cpp,
    against a bare llama_decode loop with no state handling: the yardstick of `decode_ratio`."""
    loops = {
        "ours": lambda: our_decode_tok_s(engine, steps),
        "bare": lambda: on_model_thread(forward_decode_tok_s, backend, steps),
    }
    if backend.info.backend == "llama":
        loops["llama_bare"] = lambda: on_model_thread(bare_decode_tok_s, backend, steps)
    best = best_rates(loops, rounds)
    ours = best["ours"]
    out = {
        "decode_forwards": steps,
        "decode_best_of": rounds,
        "bare_decode_tok_s": round(best["bare"], 2),
        "decode_tok_s": round(ours, 2),
        "decode_step_s": round(1 / ours, 4),
    }
    if "llama_bare" in best:
        out["llama_bare_decode_tok_s"] = round(best["llama_bare"], 2)
    out["decode_ratio"] = round(ours / best.get("llama_bare", best["bare"]), 3)
    return out


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


# ---------------------------------------------------------------- bandwidth bound
def bytes_read_per_token(path: Path) -> tuple[int, list[str]]:
    """Bytes of weights one decode step reads, from the GGUF's tensor table, and the tensors
    left out. The token-embedding table gives one row per token (n_embd values), unless it is
    also the output head (tied embeddings: no `output.weight`), which reads all of it. The
    recurrent state, read and written each step, is left out too (2.4 MB at 0.1B: under 1 %)."""
    tensors = inspect_gguf(path).tensors
    skip = ["token_embd.weight"] if {"token_embd.weight", "output.weight"} <= set(tensors) else []
    total = 0
    for name, (shape, kind) in tensors.items():
        if name not in skip:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            total += math.prod(shape) // block * size
    return total, skip


READERS = {  # ways to read every byte of an array, each cheap per byte
    "sum": lambda a: np.add.reduce(a),
    "max": lambda a: np.maximum.reduce(a),
    "or64": lambda a: np.bitwise_or.reduce(a.view(np.uint64)),
}


def read_bandwidth_gbs(threads: int, mib: int = 512) -> tuple[float, str]:
    """Memory read bandwidth with as many threads as the model uses: the best of 5 reads after
    a warm-up, over several reading kernels (the best kernel counts: one that computes more
    per byte than the memory delivers would measure itself, not the memory, and made the bound
    look lower than what llama.cpp reached). A decode step reads its weights and writes almost
    nothing, on all of the model's threads: so each thread reads its own slice of one array
    (numpy releases the GIL in its reductions). Returns (GB/s, the kernel)."""
    a = np.ones(mib << 18, np.float32)
    parts = np.array_split(a, threads)
    best, how = 0.0, ""
    with ThreadPoolExecutor(threads) as pool:
        for name, read in READERS.items():
            for _ in range(6):
                t0 = time.perf_counter()
                list(pool.map(read, parts))
                rate = a.nbytes / (time.perf_counter() - t0)
                if rate > best:
                    best, how = rate, name
    return best / 1e9, how


def measure_bound(
    path: Path, bare: Callable[[], float], threads: int, rounds: int
) -> dict[str, Any]:
    """The bare llama.cpp loop against the rate at which memory can deliver the weights, both
    measured in turn (`rounds` times each, the best counts), so that both meet the same load."""
    per_token, skipped = bytes_read_per_token(path)
    bw, kernel, bare_best = 0.0, "", 0.0
    for _ in range(rounds):
        rate, how = read_bandwidth_gbs(threads)
        if rate > bw:
            bw, kernel = rate, how
        bare_best = max(bare_best, bare())
    bound = bw * 1e9 / per_token
    return {
        "bandwidth_gbs": round(bw, 2),
        "bandwidth_kernel": kernel,
        "bandwidth_threads": threads,
        "weight_bytes_per_token": per_token,
        "weights_not_read_per_token": skipped,
        "bound_tok_s": round(bound, 2),
        "bound_bare_decode_tok_s": round(bare_best, 2),
        "bound_ratio": round(bare_best / bound, 3),
    }


# ---------------------------------------------------------------- time to first token
def window(turns: int) -> int:
    return max(3, turns // 5)


def measure_chat(engine: Engine, turns: int) -> tuple[dict[str, Any], list[Message]]:
    """One chat of `turns` turns; the opening is cached first, as when a character's chat is
    opened. Returns the figures and the transcript."""
    engine.warm(CTX, [GREETING])
    hist = [GREETING]
    ttfts = []
    for n in range(1, turns + 1):
        hist.append(Message("user", USER.format(tag="S", n=n)))
        t, text = ttft(engine, hist)
        ttfts.append(t)
        hist.append(Message("char", text))
    # medians over windows of turns: whether the first sampled token is visible text or has to
    # wait for the next one (a space, half a character) varies from turn to turn
    win = window(turns)
    turn1 = statistics.median(ttfts[:win])
    turn_n = statistics.median(ttfts[-win:])
    return {
        "ttft_turn1_s": round(turn1, 4),
        "ttft_turn40_s": round(turn_n, 4),
        "ttft_growth": round(turn_n / turn1, 3),
    }, hist


def measure_regen(engine: Engine, hist: list[Message], step_s: float) -> dict[str, Any]:
    """Regenerate the last reply: the same transcript before it."""
    regen = statistics.median(ttft(engine, hist[:-1])[0] for _ in range(3))
    return {"regen_ttft_s": round(regen, 4), "regen_in_decode_steps": round(regen / step_s, 2)}


def measure_refeed(
    engine: Engine, backend: Backend, hist: list[Message], rounds: int
) -> dict[str, Any]:
    """The naive baseline: feed the whole transcript of the last turn from the initial state,
    then sample, all on the model thread (as the engine samples there too); median of runs."""
    tokens = backend.tokenize(engine.prompt_text(CTX, hist[:-1], Message("char")))

    def refeed() -> None:
        logits, _ = backend.forward(tokens, backend.initial_state())
        sample(logits, CAPPED, np.random.default_rng(0))

    engine.flush()  # no checkpoint writes running beside it
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        on_model_thread(refeed)
        times.append(time.perf_counter() - t0)
    return {
        "refeed_ttft_turn40_s": round(statistics.median(times), 4),
        "transcript_tokens_turn40": len(tokens),
    }


def measure_interleaved(engine: Engine, turns: int) -> dict[str, Any]:
    """Two chats of the same character taking turns."""
    a, b = [GREETING], [GREETING]
    pair = []
    for n in range(1, turns + 1):
        row = []
        for tag, h in (("A", a), ("B", b)):
            h.append(Message("user", USER.format(tag=tag, n=n)))
            t, text = ttft(engine, h)
            h.append(Message("char", text))
            row.append(t)
        pair.append(statistics.mean(row))
    win = window(turns)
    growth = statistics.median(pair[-win:]) / statistics.median(pair[:win])
    return {"interleaved_growth": round(growth, 3)}


# ---------------------------------------------------------------- lorebooks
LORE_ENTRIES = 30
LORE_EVERY = 3  # an entry fires every LORE_EVERY turns (turns 1, 4, 7, ..., 40)


def lore_book() -> Any:
    """A 30-entry book: entry i fires on "landmark{i:02d}" (no key is part of another, so one
    entry fires at a time); one constant entry."""
    from core.roleplay.lore import Book, new_entry

    entries = [
        new_entry(
            i,
            key=[f"landmark{i:02d}"],
            content=f"Landmark {i} is a stone tower by the river; travellers leave a coin there "
            "for luck, and the keeper writes their names in a book.",
            order=100 + i,
        )
        for i in range(LORE_ENTRIES)
    ]
    entries.append(new_entry(LORE_ENTRIES, constant=True, content="Maps here are drawn by hand."))
    return Book("Valleys", entries)


def measure_lore(engine: Engine, turns: int, rounds: int = 5) -> dict[str, Any]:
    """A chat with a 30-entry lorebook whose entries fire every few turns, fed as the app feeds
    them (core/lore.py): the entries that fire for a reply are fed just before it and stored
    with it; the constant entry is in the opening. Then the time to first token of a firing
    turn after the 40 turns against a firing turn 1 of a new chat, in pairs taken one after the
    other (a new user message each time, as in measure_resume), so that both meet the same
    load; the medians count. Each time includes the activation (keys scanned, tokens counted
    with the model's tokenizer). The tokens fed say the same without timing: equal at turn 1
    and after turn 40 when the cache serves the whole chat and its stored lore."""
    from dataclasses import replace

    from core.roleplay.lore import activate

    book = lore_book()
    ctx = replace(CTX, persona=f"{CTX.persona}\n{activate([book], []).text(constant=True)}")

    def turn(hist: list[Message], text: str) -> tuple[float, Any, str]:
        """One reply after the user's `text`: seconds to first text, the result, the lore."""
        hist = [*hist, Message("user", text)]
        t0 = time.perf_counter()
        res = activate(
            [book],
            [m.text for m in hist],
            char=ctx.name,
            user=ctx.user_name,
            count_tokens=lambda text: len(engine.backend.tokenize(text)),
        )
        reply = engine.reply(ctx, hist, Message("char", before=res.text()), CAPPED)
        first = None
        for _ in reply:
            if first is None:
                first = time.perf_counter() - t0
        out = reply.result
        return (first if first is not None else out.ttft_s), out, res.text()

    def ask(tag: str, n: int, fires: bool) -> str:
        topic = f"landmark{(n // LORE_EVERY) % LORE_ENTRIES:02d}" if fires else "old bridge"
        return f"{USER.format(tag=tag, n=n)} And the {topic}?"

    engine.warm(ctx, [GREETING])
    hist = [GREETING]
    fired_turns = 0
    for n in range(1, turns + 1):
        text = ask("L", n, (n - 1) % LORE_EVERY == 0)
        _, res, before = turn(hist, text)
        fired_turns += bool(before)
        hist += [Message("user", text), Message("char", res.text or "…", before=before)]
    engine.flush()
    firsts, lasts, fed1, fed_n = [], [], 0, 0
    for i in range(rounds):
        t, res, before = turn([GREETING], ask(f"N{i}", 1, True))
        assert before, "turn 1 fires an entry"
        firsts.append(t)
        fed1 = res.fed_tokens
        t, res, before = turn(hist, ask(f"R{i}", turns + 1, True))
        assert before, "the turn after the chat fires an entry"
        lasts.append(t)
        fed_n = res.fed_tokens
    turn1, turn_n = statistics.median(firsts), statistics.median(lasts)
    return {
        "lore_entries": LORE_ENTRIES,
        "lore_fired_turns": fired_turns,
        "lore_fed_tokens_turn1": fed1,
        "lore_fed_tokens_turn40": fed_n,
        "lore_ttft_turn1_s": round(turn1, 4),
        "lore_ttft_turn40_s": round(turn_n, 4),
        "lore_ttft_growth": round(turn_n / turn1, 3),
    }


def measure_resume(
    engine: Engine, backend: Backend, cache_dir: Path, hist: list[Message], rounds: int
) -> dict[str, Any]:
    """A restart: a new engine on the same data directory continues the long chat, each time
    with a different next message (the model stays loaded: its load time is not part of a
    reply's time to first token). Each resume is paired with a turn 1 measured just before it,
    in a new chat on the running engine, so that both meet the same state of the machine.
    `resume_breakdown` says where a resume's time goes, against turn 1's."""
    turns = len(hist) // 2  # the greeting, then a user message and a reply per turn
    turn1s, resumes = [], []
    for i in range(rounds):
        engine.flush()  # no checkpoint writes running beside either measurement
        engine.warm(CTX, [GREETING])  # a new chat's opening is cached, as in measure_chat
        turn1s.append(ttft(engine, [GREETING, Message("user", USER.format(tag="N", n=i + 1))])[0])
        engine.flush()
        restarted = Engine(backend, cache_dir=cache_dir)
        nxt = Message("user", USER.format(tag="R", n=turns + 1 + i))
        resumes.append(ttft(restarted, [*hist, nxt])[0])
        restarted.flush()
    turn1, resume = statistics.median(turn1s), statistics.median(resumes)
    engine.flush()
    # a tag no other chat of this run used, so that neither prompt is in the cache already
    nxt = Message("user", USER.format(tag="Z", n=turns + 1))
    restarted = Engine(backend, cache_dir=cache_dir)
    return {
        "resume_ttft_s": round(resume, 4),
        "resume_turn1_ttft_s": round(turn1, 4),
        "resume_ratio": round(resume / turn1, 3),
        "resume_breakdown": {
            "resume": prefill_breakdown(restarted, backend, [*hist, nxt], cache_dir),
            "turn1": prefill_breakdown(
                engine, backend, [GREETING, Message("user", USER.format(tag="Z", n=1))], None
            ),
        },
    }


def prefill_breakdown(
    engine: Engine, backend: Backend, hist: list[Message], cache_dir: Path | None
) -> dict[str, Any]:
    """The steps before a reply's first sampled token, timed one by one (seconds): render and
    tokenize the transcript and hash its chunk keys (`build`), find and restore the longest
    cached prefix (`restore`: on a restart, read the checkpoint file, check its sha256 and
    deserialise the state, each also timed alone on the same file), feed the rest (`feed`)."""
    t0 = time.perf_counter()
    prompt = engine._build(CTX, hist, Message("char"))
    t1 = time.perf_counter()
    cp, done = engine._restore(prompt)
    t2 = time.perf_counter()
    rest = [t for chunk in prompt.chunks[done:] for t in chunk.tokens]
    if rest:
        on_model_thread(backend.forward, rest, cp.state)
    t3 = time.perf_counter()
    out: dict[str, Any] = {
        "build_s": round(t1 - t0, 4),
        "restore_s": round(t2 - t1, 4),
        "feed_s": round(t3 - t2, 4),
        "transcript_tokens": sum(len(c.tokens) for c in prompt.chunks),
        "fed_tokens": len(rest),
    }
    path = cache_dir / f"{prompt.chunks[done - 1].key}.state" if cache_dir and done else None
    if path is not None and path.is_file():
        import hashlib

        t0 = time.perf_counter()
        data = path.read_bytes()
        t1 = time.perf_counter()
        hashlib.sha256(data).digest()
        t2 = time.perf_counter()
        n = int.from_bytes(data[40:44], "little")  # after the magic and the digest
        n_logits = json.loads(data[44 : 44 + n])["n_logits"]
        on_model_thread(backend.state_from_bytes, data[44 + n + 4 * n_logits :])
        t3 = time.perf_counter()
        out.update(
            file_bytes=len(data),
            read_s=round(t1 - t0, 4),
            sha256_s=round(t2 - t1, 4),
            deserialise_s=round(t3 - t2, 4),
        )
    return out


def drop_from_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to drop the files' pages from its page cache (posix_fadvise DONTNEED), as
    after a reboot or once other work has pushed them out. Only clean pages go: the state
    cache fsyncs its files, and the engine has been flushed before."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[Path]) -> float | None:
    """The fraction of the files' pages in the page cache (mincore over a mapping of each),
    None where it cannot be read."""
    import ctypes
    import mmap

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
    total = resident = 0
    for path in paths:
        size = path.stat().st_size
        if not size:
            continue
        n = (size + page - 1) // page
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # nothing touched
            try:
                buf = ctypes.c_char.from_buffer(mm)
                vec = (ctypes.c_ubyte * n)()
                rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), size, vec)
                del buf
                if rc != 0:
                    return None
                resident += sum(v & 1 for v in vec)
                total += n
            finally:
                mm.close()
    return resident / total if total else None


def measure_restart(
    engine: Engine,
    model: Path,
    args: argparse.Namespace,
    cache_dir: Path,
    hist: list[Message],
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A real restart: a new process loads the model (as the app does, warm-up included) and
    resumes the long chat from the checkpoints on disk; its time to first token (not its load
    time) over a turn 1 measured just before in this warm process.
    - `restart`: the checkpoints as this run left them, in the page cache (a warm restart: the
      app closed and opened again at once);
    - `cold_restart`: the checkpoint files dropped from the page cache first (posix_fadvise
      DONTNEED), so the resume reads them from the disk, as after a reboot;
      `cold_restart_resident` is the fraction of their pages still cached after the drop
      (mincore: 0 when the drop worked), `checkpoint_files_bytes` what there was to read;
    - `restart_no_warm_up` (rwkv): without the back end's warm-up at load (what a restart
      cost before it)."""
    import subprocess

    turns = len(hist) // 2
    out: dict[str, Any] = {}
    variants = [("restart", False, False), ("cold_restart", False, True)]
    if args.backend == "rwkv":
        variants.append(("restart_no_warm_up", True, False))
    if only:
        variants = [v for v in variants if v[0] in only]
    files = sorted(cache_dir.glob("*.state"))
    out["checkpoint_files_bytes"] = sum(f.stat().st_size for f in files)
    for name, no_warm_up, cold in variants:
        turn1s, restarts, resident = [], [], []
        for i in range(args.rounds):
            engine.flush()
            engine.warm(CTX, [GREETING])
            user = Message("user", USER.format(tag=f"M{name[:2]}{name[-2:]}", n=i + 1))
            turn1s.append(ttft(engine, [GREETING, user])[0])
            engine.flush()
            nxt = USER.format(tag=f"P{name[:2]}{name[-2:]}", n=turns + 1 + i)
            spec = {
                "model": str(model),
                "backend": args.backend,
                "strategy": args.strategy,
                "threads": args.threads,
                "cache_dir": str(cache_dir),
                "hist": [[m.role, m.text] for m in hist] + [["user", nxt]],
                "no_warm_up": no_warm_up,
            }
            spec_path = cache_dir.parent / "resume-child.json"
            spec_path.write_text(json.dumps(spec))
            if cold:
                files = sorted(cache_dir.glob("*.state"))
                drop_from_page_cache(files)
                frac = resident_fraction(files)
                if frac is not None:
                    resident.append(frac)
            run = subprocess.run(
                [sys.executable, __file__, "--resume-child", str(spec_path)],
                capture_output=True,
                text=True,
                check=True,
            )
            restarts.append(json.loads(run.stdout.strip().splitlines()[-1])["ttft_s"])
        turn1, restart = statistics.median(turn1s), statistics.median(restarts)
        out[f"{name}_ttft_s"] = round(restart, 4)
        out[f"{name}_turn1_ttft_s"] = round(turn1, 4)
        out[f"{name}_ratio"] = round(restart / turn1, 3)
        if cold and resident:
            out[f"{name}_resident"] = round(max(resident), 4)
    return out


def resume_child(spec_path: Path) -> int:
    """The new process of measure_restart: load, resume, print one JSON line."""
    spec = json.loads(spec_path.read_text())
    if spec["no_warm_up"]:
        from core.backends import rwkv

        rwkv.RwkvBackend._warm_up = lambda self: None  # type: ignore[method-assign]
    backend = load_backend(
        spec["model"], spec["backend"], spec["strategy"], n_threads=spec["threads"]
    )
    engine = Engine(backend, cache_dir=Path(spec["cache_dir"]))
    hist = [Message(role, text) for role, text in spec["hist"]]
    first, _ = ttft(engine, hist)
    engine.flush()
    print(json.dumps({"ttft_s": first, "load_s": backend.info.load_s}))
    return 0


# ---------------------------------------------------------------- the sizes people run
def status_mb() -> dict[str, float]:
    """This process's memory from /proc/self/status: peak, anonymous, mapped file pages (MB)."""
    out: dict[str, float] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return out
    for key, name in (("VmHWM", "peak"), ("RssAnon", "anon"), ("RssFile", "file")):
        for line in text.splitlines():
            if line.startswith(key + ":"):
                out[name] = round(int(line.split()[1]) / 1024, 1)
    return out


def measure_load(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Launch to first token in a new process: import, load (llama.cpp maps the file), build the
    engine, feed a short prompt and sample its first token. Cold: the model file dropped from
    the page cache first (only possible while no process maps it: run before this one loads
    it); warm: at once after. The child's memory is read at its end."""
    out: dict[str, Any] = {}
    for name, cold in (("cold", True), ("warm", False)):
        if cold:
            drop_from_page_cache([model])
            frac = resident_fraction([model])
            if frac is not None:
                out["load_cold_resident"] = round(frac, 4)
        spec = {
            "model": str(model),
            "backend": args.backend,
            "strategy": args.strategy,
            "threads": args.threads,
        }
        run = subprocess.run(
            [sys.executable, __file__, "--load-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(run.stdout.strip().splitlines()[-1])
        out[f"load_{name}_s"] = got["load_s"]
        out[f"first_token_{name}_s"] = got["first_token_s"]
        out[f"load_rss_{name}_mb"] = got["mem"]
    return out


def load_child(spec_json: str) -> int:
    """measure_load's new process: one JSON line with its times (from its start) and memory."""
    t0 = time.perf_counter()
    spec = json.loads(spec_json)
    backend = load_backend(
        spec["model"], spec["backend"], spec["strategy"], n_threads=spec["threads"]
    )
    t_load = time.perf_counter() - t0
    engine = Engine(backend)
    params = SamplingParams(temperature=1.0, top_p=0.6, seed=1, max_tokens=1)
    engine.reply(CTX, [GREETING, Message("user", "Hello!")], Message("char"), params).consume()
    first = time.perf_counter() - t0
    print(
        json.dumps(
            {"load_s": round(t_load, 3), "first_token_s": round(first, 3), "mem": status_mb()}
        )
    )
    return 0


def card_context(tag: str, tokens: int, engine: Engine) -> CharacterContext:
    """A character whose description is about `tokens` tokens; `tag` makes it unlike others."""
    from dataclasses import replace

    unit = (
        "{{char}} keeps a journal of every road, every inn and every river crossing between "
        "the mountains and the sea, with the names of the ferrymen and the price of bread. "
    )
    n = max(1, tokens // max(1, len(engine.backend.tokenize(unit))))
    return replace(CTX, persona=f"[{tag}] " + unit * n)


def measure_card(engine: Engine, backend: Backend, tokens: int, rounds: int) -> dict[str, Any]:
    """A new chat whose card is about `tokens` tokens: our time from the request to its first
    sampled token (a reply capped at one token; the card is new each round, so nothing of it is
    cached) against the bare prefill of the same tokens from the initial state (llama.cpp: one
    sequence, n_batch tokens a call, logits of the last, argmax; a .pth: the rwkv package's
    forward), taking turns, the best of `rounds` each."""
    ours, bare = float("inf"), float("inf")
    one = SamplingParams(temperature=1.0, top_p=0.6, seed=3, max_tokens=1)
    n_tokens = 0
    for i in range(rounds):
        ctx = card_context(f"card {i}", tokens, engine)
        ids = [t for c in engine._build(ctx, [GREETING], Message("char")).chunks for t in c.tokens]
        n_tokens = len(ids)
        engine.flush()
        t0 = time.perf_counter()
        engine.reply(ctx, [GREETING], Message("char"), one).consume()
        ours = min(ours, time.perf_counter() - t0)
        engine.flush()
        bare = min(bare, on_model_thread(bare_prefill_s, backend, ids))
    return {
        "card_tokens": n_tokens,
        "card_ttft_s": round(ours, 3),
        "card_bare_prefill_s": round(bare, 3),
        "card_ttft_ratio": round(ours / bare, 3),
        "prefill_tok_s": round(n_tokens / bare, 1),
    }


def measure_regen_steps(engine: Engine, hist: list[Message], step_s: float) -> dict[str, Any]:
    """Regenerate the last reply, to its first sampled token (a reply capped at one token),
    in decode steps: what it costs beyond sampling is restoring the state it started from."""
    one = SamplingParams(temperature=1.0, top_p=0.6, seed=4, max_tokens=1)
    times = []
    for _ in range(3):
        engine.flush()
        t0 = time.perf_counter()
        res = engine.reply(CTX, hist[:-1], Message("char"), one).consume()
        times.append(time.perf_counter() - t0)
        assert res.fed_tokens == 0, "a regenerate fed tokens"
    regen = statistics.median(times)
    return {"regen_s": round(regen, 4), "regen_steps": round(regen / step_s, 3)}


def measure_checkpoint(engine: Engine, hist: list[Message]) -> dict[str, Any]:
    """One checkpoint (the state after the chat) written as the state cache writes it
    (serialised, sha256, written, fsynced, renamed): its size and the time, best of 3."""
    from core.engine.state_cache import StateCache

    logits, state = engine.state_for(CTX, hist, Message("char"))
    cp = Checkpoint(logits, state, 0)
    best = float("inf")
    size = 0
    with tempfile.TemporaryDirectory(prefix="rp-cp-") as tmp:
        for i in range(3):
            cache = StateCache(
                engine.backend.state_to_bytes, engine.backend.state_from_bytes, Path(tmp)
            )
            t0 = time.perf_counter()
            cache._write_disk(f"{i:064x}", cp)
            best = min(best, time.perf_counter() - t0)
            size = (Path(tmp) / f"{i:064x}.state").stat().st_size
    return {"checkpoint_bytes": size, "checkpoint_write_s": round(best, 4)}


def main_real(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"real_profile": True, "model_file_bytes": model.stat().st_size}
    out.update(measure_load(model, args))  # first: no process of ours maps the file yet
    backend = load_backend(model, args.backend, args.strategy, n_threads=args.threads)
    info = backend.info
    cache_dir = work / "states"
    engine = Engine(backend, cache_dir=cache_dir)
    out.update(
        backend=info.backend,
        arch=info.arch,
        shape=args.shape,
        strategy=info.strategy,
        n_layer=info.n_layer,
        n_embd=info.n_embd,
        params=info.n_params,
        threads=info.extra["threads"],
        turns=args.turns,
        rounds=args.rounds,
        load_s=round(info.load_s, 3),
    )
    out.update(measure_decode(backend, engine, args.decode_steps, args.rounds))
    if info.backend == "llama":
        out.update(
            measure_bound(
                model,
                lambda: on_model_thread(bare_decode_tok_s, backend, args.decode_steps),
                out["threads"],
                args.rounds,
            )
        )
    out.update(measure_card(engine, backend, args.card_tokens, args.rounds))
    engine.warm(CTX, [GREETING])
    hist = [GREETING]
    for n in range(1, args.turns + 1):
        hist.append(Message("user", USER.format(tag="S", n=n)))
        hist.append(Message("char", ttft(engine, hist)[1]))
    out.update(measure_regen_steps(engine, hist, out["decode_step_s"]))
    out.update(measure_checkpoint(engine, hist))
    restart = measure_restart(engine, model, args, cache_dir, hist, only=("cold_restart",))
    out.update(restart)
    out["resume_cold_ratio"] = restart.get("cold_restart_ratio")
    out["rss_mb"] = status_mb()
    return out


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="rp-bench-"))
    # building a random model is torch work: on the model thread too, so that the main thread
    # never starts an OpenMP team of its own
    model = on_model_thread(build_model, args)
    if args.profile == "real":
        print(json.dumps(main_real(args, model, work)))
        return 0
    backend = load_backend(model, args.backend, args.strategy, n_threads=args.threads)
    info = backend.info
    cache_dir = work / "states"
    engine = Engine(backend, cache_dir=cache_dir)
    out: dict[str, Any] = {
        "backend": info.backend,
        "arch": info.arch,
        "shape": None if args.model else args.shape,
        "model": str(model) if args.model else None,
        "strategy": info.strategy,
        "n_layer": info.n_layer,
        "n_embd": info.n_embd,
        "params": info.n_params,
        "threads": info.extra["threads"],
        "turns": args.turns,
        "rounds": args.rounds,
    }
    out.update(measure_decode(backend, engine, args.decode_steps, args.rounds))
    out["sample_ms"] = round(sample_ms(info.n_vocab), 3)
    if info.backend == "llama":
        out.update(
            measure_bound(
                model,
                lambda: on_model_thread(bare_decode_tok_s, backend, args.decode_steps),
                out["threads"],
                args.rounds,
            )
        )
    chat, hist = measure_chat(engine, args.turns)
    out.update(chat)
    out.update(measure_regen(engine, hist, out["decode_step_s"]))
    out.update(measure_refeed(engine, backend, hist, args.rounds))
    out.update(measure_interleaved(engine, args.turns))
    out.update(measure_lore(engine, args.turns, max(3, args.rounds)))
    out.update(measure_resume(engine, backend, cache_dir, hist, args.rounds))
    out.update(measure_restart(engine, model, args, cache_dir, hist))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--resume-child":  # measure_restart's new process
        raise SystemExit(resume_child(Path(sys.argv[2])))
    if len(sys.argv) == 3 and sys.argv[1] == "--load-child":  # measure_load's new process
        raise SystemExit(load_child(sys.argv[2]))
    raise SystemExit(main())
