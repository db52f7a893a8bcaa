"""Does a model fit in this machine's memory? Checked before loading, so that a model too large
gets a sentence instead of the kernel's out-of-memory kill (which takes the whole app down).

The estimate is what the weights take in RAM once loaded, plus what running needs beside them:
- a GGUF (llama.cpp maps the file): the file's size, which must stay in memory to run at
  memory speed, plus the context (a recurrent model's states, a transformer's KV cache) and
  llama.cpp's compute buffers;
- a `.pth` on the CPU (the rwkv package): every parameter at the strategy's precision (4
  bytes in fp32, 2 in bf16/fp16, 1 in int8), whatever the file stores, plus a margin; the
  file itself is mapped and read tensor by tensor, so its pages can be dropped;
- a `.pth` on a GPU: only the file's largest tensor has to pass through RAM (not checked
  here).
`MemAvailable` is the kernel's own figure of what a new program can use without swapping.
Setting RP_IGNORE_MEMORY=1 skips the check (a machine whose swap is fast enough, say).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ModelError

GIB = 2**30
RUN_MARGIN = 300 * 2**20  # buffers beside the weights: compute graph, tokenizer, logits
IGNORE_ENV = "RP_IGNORE_MEMORY"


def available_ram() -> int | None:
    """Bytes a new program can use now without swapping (MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def strategy_bytes(strategy: str) -> float | None:
    """Bytes a parameter takes in RAM under an rwkv strategy; None when the weights go to a GPU
    (the first segment's device decides: 'cuda fp16i8 *10 -> cpu fp32' keeps some on the CPU,
    counted at the CPU segment's precision)."""
    segments = [s.split() for s in strategy.split("->") if s.split()]
    cpu = [seg for seg in segments if seg[0] == "cpu"]
    if not cpu:
        return None
    dtype = cpu[-1][1] if len(cpu[-1]) > 1 else "fp32"
    if dtype.endswith("i8"):
        return 1.0
    return 4.0 if dtype == "fp32" else 2.0


def gguf_needs(path: Path, context_bytes: int = 0) -> int:
    """RAM a GGUF needs to run: the mapped file, its context, the margin."""
    return path.stat().st_size + context_bytes + RUN_MARGIN


def pth_needs(n_params: int, strategy: str) -> int | None:
    """RAM a `.pth` of `n_params` needs under `strategy` (None: weights on a GPU)."""
    per = strategy_bytes(strategy)
    if per is None:
        return None
    return int(n_params * per) + RUN_MARGIN


def check_fits(needed: int | None, what: str, advice: str) -> None:
    """Raise ModelError when `needed` bytes are more than the memory available now."""
    if needed is None or os.environ.get(IGNORE_ENV) == "1":
        return
    free = available_ram()
    if free is None or needed <= free:
        return
    raise ModelError(
        f"{what} needs about {needed / GIB:.1f} GB of memory to run, and {free / GIB:.1f} GB is "
        f"free now: loading it would make the system stop the app. {advice} "
        f"(To try anyway, set {IGNORE_ENV}=1.)"
    )
