"""The state invariant as a property check (docs/ARCHITECTURE.md, "The state invariant"): after
any sequence of operations on a chat, the state the engine would use for the next reply gives the
same logits as feeding the stored transcript from scratch."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message

CTX = CharacterContext(
    name="小雪", user_name="Bob", persona="{{char}} is a snow fox.", example_dialogue="{{user}}: hi"
)
WORDS = ["hello", "你好", "the cat", "🎉", "line one\nline two", "why?", "  spaced  ", "ok\n\n\nok"]

op = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(WORDS), st.integers(0, 2**16)),
    st.tuples(st.just("regenerate"), st.integers(0, 2**16)),
    st.tuples(st.just("edit"), st.integers(0, 50), st.sampled_from(WORDS)),
    st.tuples(st.just("delete"), st.integers(1, 3)),
    st.tuples(st.just("stop"), st.sampled_from(WORDS), st.integers(1, 4)),
    st.tuples(st.just("reopen")),
)


def check_invariant(make_engine, ops) -> None:
    """Run `ops` against a transcript kept as the database would keep it, checking after each."""
    cache_dir = Path(tempfile.mkdtemp(prefix="states-"))
    try:
        eng = make_engine(cache_dir)
        hist: list[Message] = [Message("char", "Welcome, {{user}}.")]

        def reply(seed: int, max_tokens: int = 6, cancel_after: int | None = None) -> None:
            params = SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_tokens=max_tokens)
            cancel = threading.Event()
            r = eng.reply(CTX, hist, Message("char"), params, cancel=cancel)
            for n, _ in enumerate(r, 1):
                if cancel_after is not None and n >= cancel_after:
                    cancel.set()
            if r.result.text:
                hist.append(Message("char", r.result.text))

        for o in ops:
            kind = o[0]
            if kind == "send":
                hist.append(Message("user", o[1]))
                reply(o[2])
            elif kind == "regenerate" and hist and hist[-1].role == "char" and len(hist) > 1:
                hist.pop()
                reply(o[1])
            elif kind == "edit" and hist:
                hist[o[1] % len(hist)].text = o[2]
            elif kind == "delete":
                del hist[max(0, len(hist) - o[1]) :]
            elif kind == "stop":
                hist.append(Message("user", o[1]))
                reply(1234, max_tokens=12, cancel_after=o[2])
            elif kind == "reopen":
                eng.flush()  # a restart after the writes (a crash before them only loses speed)
                eng = make_engine(cache_dir)
            cached, _ = eng.state_for(CTX, hist, Message("char"))
            fresh, _ = eng.reference_state(CTX, hist, Message("char"))
            assert np.abs(cached - fresh).max() <= 1e-4, (o, hist)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
