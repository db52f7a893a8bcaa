"""Decode speed for each thread count, alone and beside one CPU-bound process, on both back ends:
is the default thread count (core/backends/threads.py) safe when another program wants a core?

    python bench/threads.py                      # RWKV-7 0.1B shape: llama.cpp f16 and rwkv fp32
    python bench/threads.py --backends llama --tokens 128
    python bench/threads.py --backends embedded  # the embedded model (SmolLM2 Q4_1, llama.cpp)

The busy process (`while True: pass`) is started and killed by the bench. Each figure is the
best of `--rounds` runs, alone and busy interleaved, so that load from other programs in one
moment does not pick the winner; the load average before and after is printed with the figures.
Prints one JSON object; `default_busy_ratio` is the default's speed beside the busy process over
the best thread count's speed there (the target is at least 0.7).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import build_model  # noqa: E402
from core.backends.loader import load_backend, set_threads  # noqa: E402
from core.backends.model_thread import on_model_thread  # noqa: E402
from core.backends.threads import default_threads, usable_cpus  # noqa: E402


def decode_tok_s(backend: Any, tokens: int, max_s: float) -> float:
    """Greedy decode steps as the engine makes them (`advance`), after 4 warm-up steps; stops
    after `tokens` steps or `max_s` seconds, so a collapsed run still ends."""
    logits, state = backend.forward(backend.tokenize("Once upon a time"), backend.initial_state())
    n, t0 = 0, 0.0
    while n < tokens + 4:
        if n == 4:
            t0 = time.perf_counter()
        logits, state = backend.advance([int(np.argmax(logits))], state)
        n += 1
        if t0 and time.perf_counter() - t0 > max_s:
            break
    return (n - 4) / (time.perf_counter() - t0)


def busy_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(backend: Any, counts: list[int], args: argparse.Namespace) -> dict[str, Any]:
    alone: dict[int, float] = {}
    busy: dict[int, float] = {}
    for _ in range(args.rounds):
        for n in counts:
            set_threads(backend, n)
            rate = on_model_thread(decode_tok_s, backend, args.tokens, args.max_s)
            alone[n] = max(alone.get(n, 0.0), rate)
            proc = busy_process()
            try:
                rate = on_model_thread(decode_tok_s, backend, args.tokens, args.max_s)
            finally:
                proc.kill()
                proc.wait()
            busy[n] = max(busy.get(n, 0.0), rate)
    default = default_threads()
    best = max(busy, key=lambda n: busy[n])
    return {
        "alone_tok_s": {str(n): round(v, 2) for n, v in alone.items()},
        "busy_tok_s": {str(n): round(v, 2) for n, v in busy.items()},
        "best_busy_threads": best,
        "default_busy_ratio": round(busy[default] / busy[best], 3),
        "default_alone_ratio": round(alone[default] / max(alone.values()), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--backends", nargs="+", choices=("llama", "rwkv", "embedded"), default=["llama", "rwkv"]
    )
    ap.add_argument("--shape", default="0.1b")
    ap.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"))
    ap.add_argument("--strategy", default="cpu fp32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-s", type=float, default=8.0, help="cut a collapsed run after this")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    counts = list(range(1, usable_cpus() + 1))
    out: dict[str, Any] = {
        "shape": args.shape,
        "cpus": usable_cpus(),
        "default_threads": default_threads(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    for kind in args.backends:
        if kind == "embedded":  # the app's default model, no path: the embedded one
            backend = load_backend(None, "llama")
            label = "embedded"
        else:
            build_args = argparse.Namespace(
                model=None, shape=args.shape, backend=kind, gguf_type=args.gguf_type
            )
            backend = load_backend(build_model(build_args), kind, args.strategy)
            label = f"llama.cpp {args.gguf_type}" if kind == "llama" else f"rwkv {args.strategy}"
        out[label] = measure(backend, counts, args)
        on_model_thread(backend.close)
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
