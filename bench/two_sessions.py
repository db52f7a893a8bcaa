"""Two sessions chatting at once through one shared Engine, as two browser sessions do.

    python -m bench.two_sessions                      # the embedded default model
    python -m bench.two_sessions --model models/x.gguf --tokens 128 --rounds 3
    python -m bench.two_sessions --tiny               # a tiny random RWKV-7 (no model needed)

Each session is a thread with its own chat (its own character and history). The script times
one session alone, then both at once (started together), and prints one JSON object: tokens per
second of each session and of both together against one alone. Generation is not batched:
every model call runs on the one model thread, which takes the two replies' steps in turn, so
`together_vs_alone` is expected near 1 and `each_vs_alone` near 0.5. Read the two together: one
reply waiting for the other to finish would also give `together_vs_alone` near 1, but
`each_vs_alone` near 1. The README quotes both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.backends.loader import load_backend  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.engine.sampler import SamplingParams  # noqa: E402
from core.prompt import CharacterContext, Message  # noqa: E402

SESSIONS = (
    (
        CharacterContext(
            name="Mira",
            user_name="Traveler",
            persona="Mira keeps the lighthouse on Gull Rock. She talks a lot.",
        ),
        [
            Message("char", "Well, you're either lost or very brave. Come in, the kettle's on."),
            Message("user", "Tell me everything about this lighthouse, from the beginning."),
        ],
    ),
    (
        CharacterContext(
            name="Pip",
            user_name="Captain",
            persona="Pip is a chatty maintenance robot on a slow starship.",
        ),
        [
            Message("char", "Good cycle, Captain! The tomatoes are thriving."),
            Message("user", "Give me a long, detailed report on every garden deck."),
        ],
    ),
)


def _reply(engine: Engine, i: int, params: SamplingParams) -> dict[str, Any]:
    ctx, history = SESSIONS[i]
    t0 = time.perf_counter()
    reply = engine.reply(ctx, history, Message("char"), params)
    res = reply.consume()
    wall = time.perf_counter() - t0
    return {
        "tokens": res.new_tokens,
        "seconds": round(wall, 3),
        "tok_s": round(res.new_tokens / wall, 2) if wall > 0 else 0.0,
        "decode_tok_s": round(res.tok_s, 2),
        "ttft_s": round(res.ttft_s, 3),
        "stop": res.stop_reason,
    }


def _together(engine: Engine, params: SamplingParams) -> dict[str, Any]:
    start = threading.Barrier(2)
    out: dict[int, dict[str, Any]] = {}

    def run(i: int) -> None:
        start.wait()
        out[i] = _reply(engine, i, params)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = out[0]["tokens"] + out[1]["tokens"]
    return {
        "a": out[0],
        "b": out[1],
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model file (default: the embedded default model)")
    p.add_argument("--backend", default="auto", choices=("auto", "rwkv", "llama"))
    p.add_argument("--strategy", default="cpu fp32")
    p.add_argument("--tiny", action="store_true", help="a tiny random RWKV-7 (2 layers, 128)")
    p.add_argument("--tokens", type=int, default=128, help="max tokens per reply")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    model = args.model
    tmp = None
    if args.tiny:
        from tests.support.tiny_model import write_model

        tmp = tempfile.TemporaryDirectory()
        model = str(write_model(Path(tmp.name) / "tiny-v7.pth", 7, 2, 128))
    backend = load_backend(model, backend=args.backend, strategy=args.strategy)
    engine = Engine(backend, cache_dir=None)
    # temperature 1 and penalties off: long replies; fixed seeds: the same work every round
    params = SamplingParams(
        temperature=1.0,
        top_p=0.9,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=args.tokens,
        seed=1,
    )
    _reply(engine, 0, params)  # warm up: first-use tables, caches of both prompts
    _reply(engine, 1, params)

    alone: list[dict[str, Any]] = []
    together: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        alone.append(_reply(engine, 0, params))
        alone.append(_reply(engine, 1, params))
        together.append(_together(engine, params))
    alone_tok_s = statistics.median(r["tok_s"] for r in alone)
    both_tok_s = statistics.median(r["tok_s"] for r in together)
    # each session's share: the one that finished first ran beside the other all along (the
    # other may then run alone for a while, as replies end at different lengths)
    each_tok_s = statistics.median(
        min(x["a"], x["b"], key=lambda r: r["seconds"])["tok_s"] for x in together
    )
    info = engine.info
    result = {
        "bench": "two_sessions",
        "model": Path(info.path).name if info.path else "",
        "backend": info.backend,
        "arch": info.arch,
        "strategy": info.strategy,
        "max_tokens": args.tokens,
        "rounds": args.rounds,
        "alone_tok_s": round(alone_tok_s, 2),
        "together_tok_s": round(both_tok_s, 2),
        "each_together_tok_s": round(each_tok_s, 2),
        "together_vs_alone": round(both_tok_s / alone_tok_s, 3) if alone_tok_s else None,
        "each_vs_alone": round(each_tok_s / alone_tok_s, 3) if alone_tok_s else None,
        "alone_runs": alone,
        "together_runs": together,
    }
    print(json.dumps(result))
    engine.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
