"""Can a checkpoint be stored smaller and stay exact? Lossless compression of real states: the
state after a role-play transcript, serialised as the state cache stores it, compressed and
restored, then the next token's logits compared with those of the same bytes restored
without a codec (and those with the state never stored: `restore_max_diff`).

    python -m bench.checkpoint_size                        # RWKV-7 0.1B shape + the embedded model
    python -m bench.checkpoint_size --shape 0.4b --tokens 2000

Models: the RWKV-7 shape with random weights (official layout) through the rwkv package
(`cpu fp32`: the state's own dtype is fp32; `cpu bf16`: its token shifts are bf16 and stored
as bf16 already) and through llama.cpp (GGUF f16: llama.cpp keeps the recurrent state in f32),
and the embedded SmolLM2-135M (trained weights; its state is an f16 KV cache). Random weights
make a state of random-looking floats; a trained model's may compress better or worse, so
the embedded model's KV cache is the one figure from trained weights.

Codecs (Python's standard library, nothing to install): zlib at levels 1 and 6, lzma preset 1,
each on the bytes as they are and on the bytes split into planes ("shuffle": byte 0 of every
float, then byte 1, ...; the exponent bytes of floats repeat a lot). For each: the size over the
raw size (`ratio`), compression and decompression speed (MB/s, best of 3), and whether the
restored state is exact (`exact`: bytes identical and the next logits identical, bit for bit).

Prints one JSON object: per model, `raw_bytes`, and per codec `ratio`, `compress_mb_s`,
`decompress_mb_s`, `exact`; `best` names the smallest exact codec and `saving` what it saves.
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import SHAPES, build_model  # noqa: E402
from core.backends.model_thread import on_model_thread  # noqa: E402

TEXT = (
    "Ren: I shake the rain off my coat and sit down across from you. What did you find on the "
    "northern pass this time, and is the old bridge still standing?\n\nMira: *She smiles and "
    "points at the map.* The bridge still stands, though its planks are loose, and the river "
    "has risen since spring. We should cross it early, before the fog.\n\n"
)


def shuffled(data: bytes, width: int) -> bytes:
    """The bytes in `width` planes (padded to a multiple of `width`; the length travels)."""
    pad = (-len(data)) % width
    arr = np.frombuffer(data + bytes(pad), np.uint8).reshape(-1, width)
    return len(data).to_bytes(8, "little") + arr.T.copy().tobytes()


def unshuffled(data: bytes, width: int) -> bytes:
    n = int.from_bytes(data[:8], "little")
    arr = np.frombuffer(data[8:], np.uint8).reshape(width, -1)
    return arr.T.copy().tobytes()[:n]


def codecs(width: int) -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    plain: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "zlib1": (lambda b: zlib.compress(b, 1), zlib.decompress),
        "zlib6": (lambda b: zlib.compress(b, 6), zlib.decompress),
        "lzma1": (lambda b: lzma.compress(b, preset=1), lzma.decompress),
        "bz2_9": (lambda b: bz2.compress(b, 9), bz2.decompress),
    }
    out = dict(plain)
    for name, (c, d) in plain.items():
        out[f"shuffle{width}+{name}"] = (
            lambda b, c=c: c(shuffled(b, width)),
            lambda b, d=d: unshuffled(d(b), width),
        )
    return out


def best_time(fn: Callable[[], Any], runs: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(backend: Any, tokens: int, width: int) -> dict[str, Any]:
    """The state after `tokens` tokens of role play, through every codec."""
    ids = backend.tokenize(TEXT * (tokens // len(backend.tokenize(TEXT)) + 1))[:tokens]
    _, state = on_model_thread(backend.forward, ids, backend.initial_state())
    raw = on_model_thread(backend.state_to_bytes, state)
    nxt = backend.tokenize(" Mira:")[:1]
    kept, _ = on_model_thread(backend.forward, nxt, state)
    # the logits from the stored bytes as they are: what any lossless codec must give back
    want, _ = on_model_thread(backend.forward, nxt, on_model_thread(backend.state_from_bytes, raw))
    out: dict[str, Any] = {
        "tokens": len(ids),
        "raw_bytes": len(raw),
        # stored and restored without a codec, against the state never stored (a transformer's
        # KV cells restored elsewhere in the cache sum in another order)
        "restore_max_diff": float(np.abs(want - kept).max()),
        "codecs": {},
    }
    for name, (comp, decomp) in codecs(width).items():
        tc, packed = best_time(lambda comp=comp: comp(raw))
        td, back = best_time(lambda decomp=decomp, packed=packed: decomp(packed))
        restored = on_model_thread(backend.state_from_bytes, back)
        got, _ = on_model_thread(backend.forward, nxt, restored)
        mb = len(raw) / 2**20
        out["codecs"][name] = {
            "ratio": round(len(packed) / len(raw), 4),
            "compress_mb_s": round(mb / tc, 1),
            "decompress_mb_s": round(mb / td, 1),
            "exact": back == raw and bool(np.array_equal(got, want)),
        }
    exact = {k: v for k, v in out["codecs"].items() if v["exact"]}
    best = min(exact, key=lambda k: exact[k]["ratio"]) if exact else None
    out["best"] = best
    out["saving"] = round(1 - exact[best]["ratio"], 4) if best else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="0.1b")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--skip-embedded", action="store_true")
    args = ap.parse_args()
    from core.backends.loader import load_backend

    out: dict[str, Any] = {"bench": "checkpoint_size", "shape": args.shape, "tokens": args.tokens}
    args.backend, args.model, args.gguf_type = "rwkv", None, "f16"
    pth = on_model_thread(build_model, args)
    for strategy in ("cpu fp32", "cpu bf16"):
        backend = load_backend(pth, "rwkv", strategy)
        out[f"rwkv_{strategy.replace(' ', '_')}"] = measure(backend, args.tokens, 4)
        on_model_thread(backend.close)
    args.backend = "llama"
    gguf = on_model_thread(build_model, args)
    backend = load_backend(gguf)
    out["llama_f16"] = measure(backend, args.tokens, 4)
    backend.close()
    if not args.skip_embedded:
        backend = load_backend(None)  # the embedded SmolLM2 (trained weights; f16 KV cache)
        out["embedded_kv"] = measure(backend, args.tokens, 2)
        backend.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
