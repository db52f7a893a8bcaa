"""Yardsticks for the benches: bare decode loops with no engine and no state handling."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ModelError

if TYPE_CHECKING:
    from core.backends.llama import LlamaBackend


def bare_decode_tok_s(backend: LlamaBackend, n_tokens: int = 128, first_token: int = 0) -> float:
    """Tokens/s of a bare llama.cpp loop on `backend`'s model: decode one token, argmax its
    logits, feed that, on one sequence, with no state handling at all. The yardstick for the
    back end's own forward loop."""
    import llama_cpp as L  # here, so that the rwkv bench never loads llama.cpp

    b = backend
    with b._lock:
        b._check_open()
        b._collect()
        seq = b._take_slot(None)
        bt = b._batch
        try:
            tok = first_token
            t0 = 0.0
            for i in range(n_tokens + 1):
                if i == 1:
                    t0 = time.perf_counter()  # the first step warms up
                bt.n_tokens = 1
                bt.token[0] = tok
                bt.pos[0] = i
                bt.n_seq_id[0] = 1
                bt.seq_id[0][0] = seq
                bt.logits[0] = 1
                if L.llama_decode(b._ctx, bt) != 0:
                    raise ModelError("llama.cpp failed in the bare decode loop.")
                ptr = L.llama_get_logits_ith(b._ctx, -1)
                tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(b.n_vocab,))))
            return n_tokens / (time.perf_counter() - t0)
        finally:
            b._free_slot(seq)


def forward_decode_tok_s(backend: Any, n_tokens: int = 128, first_token: int = 0) -> float:
    """Tokens/s of the same greedy loop through the Backend protocol (`forward` with states)."""
    logits, state = backend.forward([first_token], backend.initial_state())
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits, state = backend.forward([int(np.argmax(logits))], state)
    return n_tokens / (time.perf_counter() - t0)


def bare_prefill_s(backend: Any, tokens: list[int]) -> float:
    """Seconds a bare prefill of `tokens` takes from the initial state, to its last token's
    logits and their argmax. llama.cpp: one fresh sequence, `n_batch` tokens a `llama_decode`,
    logits of the last token only, no state handling; other back ends: their own `forward`."""
    if getattr(backend.info, "backend", "") != "llama":
        t0 = time.perf_counter()
        logits, _ = backend.forward(tokens, backend.initial_state())
        int(np.argmax(logits))
        return time.perf_counter() - t0
    import llama_cpp as L

    b = backend
    with b._lock:
        b._check_open()
        b._collect()
        seq = b._take_slot(None)
        bt = b._batch
        try:
            t0 = time.perf_counter()
            for start in range(0, len(tokens), b.n_batch):
                part = tokens[start : start + b.n_batch]
                bt.n_tokens = len(part)
                for i, t in enumerate(part):
                    bt.token[i] = t
                    bt.pos[i] = start + i
                    bt.n_seq_id[i] = 1
                    bt.seq_id[i][0] = seq
                    bt.logits[i] = 1 if start + i == len(tokens) - 1 else 0
                if L.llama_decode(b._ctx, bt) != 0:
                    raise ModelError("llama.cpp failed in the bare prefill.")
            ptr = L.llama_get_logits_ith(b._ctx, len(tokens) - 1 - start)
            int(np.argmax(np.ctypeslib.as_array(ptr, shape=(b.n_vocab,))))
            return time.perf_counter() - t0
        finally:
            b._free_slot(seq)
