"""Batched decoding on the rwkv (torch) back end: RWKV-7 decode steps of several sequences run
as one batched step (core/backends/rwkv7_batch.py), and each sequence gets the package's own
logits (within 1e-4 in fp32), the same reply for the same seed, and states that continue alone
exactly as states made alone. Tiny random-weight models through the real rwkv package.

No timing: where replies must share a pass the model thread is held busy until they all ask."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from core.backends.base import BatchItemError
from core.backends.rwkv import MAX_BATCH_V7, RwkvBackend
from core.backends.rwkv7_batch import Rwkv7Batch
from core.engine import Engine
from core.engine.batch import consume_together
from core.engine.engine import version_seed
from core.engine.sampler import SamplingParams
from core.errors import ModelError
from core.prompt import Message
from tests.support.batching import CHATS, HeldModel

WORDS = ("cat", "sea", "moon", "storm", "bread", "lamp", "fox", "river")
STEPS = 24  # decode steps after each prompt
P = SamplingParams(
    temperature=1.0, top_p=0.9, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=20
)


def _prompts(b: RwkvBackend, n: int) -> list[list[int]]:
    # different lengths and words: every sequence of a batch has a state of its own
    return [
        b.tokenize(f"User: tell me about the {w}{'!' * i}\n\nAssistant:")
        for i, w in enumerate(WORDS[:n])
    ]


def _alone(b: RwkvBackend, prompt: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """Greedy decode through the package alone: the logits of every step and the tokens."""
    lg, st = b.forward(prompt, b.initial_state())
    logits, tokens = [lg], []
    for _ in range(STEPS):
        tokens.append(int(np.argmax(lg)))
        lg, st = b.forward([tokens[-1]], st)
        logits.append(lg)
    return logits, tokens


def _batched_diff(b: RwkvBackend, n: int, step: Any) -> float:
    """Largest logit difference between `step` (batched) and the package alone, over a
    prompt and STEPS steps of n sequences fed the alone run's tokens. Input states must come
    back unchanged."""
    prompts = _prompts(b, n)
    solo = [_alone(b, p) for p in prompts]
    states = [b.forward(p, b.initial_state())[1] for p in prompts]
    diff = 0.0
    for k in range(STEPS):
        before = [[t.clone() for t in s] for s in states]
        logits, states_out = step([solo[j][1][k] for j in range(n)], states)
        for s, kept in zip(states, before, strict=True):  # forward never changes its input
            assert all(torch.equal(x, y) for x, y in zip(s, kept, strict=True))
        diff = max(
            diff, *(float(np.abs(lg - solo[j][0][k + 1]).max()) for j, lg in enumerate(logits))
        )
        states = states_out
    return diff


def _via_backend(b: RwkvBackend) -> Any:
    def step(tokens: list[int], states: list[Any]) -> tuple[list[np.ndarray], list[Any]]:
        out = b.forward_batch([([t], s, False) for t, s in zip(tokens, states, strict=True)])
        return [lg for lg, _ in out], [s for _, s in out]

    return step


def _via_batch(b: RwkvBackend) -> Any:
    """The batched step itself (forward_batch runs a lone item through the package)."""

    def step(tokens: list[int], states: list[Any]) -> tuple[list[np.ndarray], list[Any]]:
        logits, new = b._batch.forward(tokens, states)
        return list(logits.float().numpy()), new

    return step


@pytest.mark.parametrize("n", [2, 3, 8])
def test_batched_steps_give_the_package_logits(rwkv7_backend, n: int) -> None:
    b = rwkv7_backend
    assert b.max_batch == MAX_BATCH_V7
    assert _batched_diff(b, n, _via_backend(b)) < 1e-4


def test_a_batch_of_one_gives_the_package_logits(rwkv7_backend) -> None:
    assert _batched_diff(rwkv7_backend, 1, _via_batch(rwkv7_backend)) < 1e-4


def test_deeper_wider_model_in_fp32_and_without_the_onednn_copies(tiny_models) -> None:
    """4 layers of 256 (4 heads): the packed products (oneDNN) and the plain ones (MKL) both
    give the package's logits."""
    b = RwkvBackend(tiny_models(7, 4, 256), "cpu fp32")
    assert _batched_diff(b, 3, _via_backend(b)) < 1e-4
    assert b._batch._packed  # the large matrices went through their [out, in] copies
    plain = Rwkv7Batch(b.model)
    plain._packed = {}  # no copies: every product through torch's own matmul

    def plain_step(tokens: list[int], states: list[Any]) -> tuple[list[np.ndarray], list[Any]]:
        logits, new = plain.forward(tokens, states)
        return list(logits.numpy()), new

    assert _batched_diff(b, 3, plain_step) < 1e-4


def test_bf16_batched_steps_stay_within_bf16_rounding(tiny_models) -> None:
    """In bf16 the products round to 8 bits of mantissa, and a batched product may round an
    activation the other way from the package's single one: logits then differ by about one
    bf16 step at their size (1/32 at 4-8), never by more than a few."""
    b = RwkvBackend(tiny_models(7), "cpu bf16")
    assert b._batch is not None and b.max_batch == MAX_BATCH_V7
    assert _batched_diff(b, 3, _via_backend(b)) < BF16_TOL


BF16_TOL = 0.15


def test_a_state_made_in_a_batch_continues_alone_as_one_made_alone(rwkv7_backend) -> None:
    b = rwkv7_backend
    prompts = _prompts(b, 3)
    alone = [b.forward(p, b.initial_state())[1] for p in prompts]
    out = b.forward_batch([([11], s, True) for s in alone])  # one batched step
    for (lg_b, st_b), s in zip(out, alone, strict=True):
        lg_a, st_a = b.forward([11], s)
        assert np.abs(lg_b - lg_a).max() < 1e-4
        # fed alone afterwards, and saved and restored: the same as the state made alone
        nxt_b, _ = b.forward([42, 7], b.state_from_bytes(b.state_to_bytes(st_b)))
        nxt_a, _ = b.forward([42, 7], st_a)
        assert np.abs(nxt_b - nxt_a).max() < 1e-4
        # each state holds memory of its own, not a view of the whole batch's
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in st_b)


def test_prompt_chunks_and_decode_steps_in_one_call(rwkv7_backend) -> None:
    b = rwkv7_backend
    p0, p1, p2 = _prompts(b, 3)
    s0 = b.forward(p0, b.initial_state())[1]
    s2 = b.forward(p2, b.initial_state())[1]
    out = b.forward_batch([([5], s0, True), (p1, b.initial_state(), False), ([9], s2, True)])
    want = [b.forward([5], s0), b.forward(p1, b.initial_state()), b.forward([9], s2)]
    for (lg, st), (lg_w, st_w) in zip(out, want, strict=True):
        assert np.abs(lg - lg_w).max() < 1e-4
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(st, st_w, strict=True))


@pytest.mark.parametrize(
    "bad, match",
    [
        (([], None), "at least one token"),
        (([65536], None), "outside the vocabulary"),
        (([-1], None), "outside the vocabulary"),
        (([3], "short"), "does not belong"),
    ],
)
def test_a_bad_item_fails_alone_before_anything_runs(rwkv7_backend, bad, match: str) -> None:
    b = rwkv7_backend
    s = b.forward(b.tokenize("Hello"), b.initial_state())[1]
    kept = [t.clone() for t in s]
    tokens, state = bad
    state = s[:3] if state == "short" else s
    with pytest.raises(BatchItemError, match=match) as e:
        b.forward_batch([([1], s, True), (tokens, state, True), ([2], s, False)])
    assert e.value.index == 1 and isinstance(e.value, ModelError)
    assert all(torch.equal(x, y) for x, y in zip(s, kept, strict=True))
    with pytest.raises(ValueError, match="at most 8"):
        b.forward_batch([([1], s, False)] * (MAX_BATCH_V7 + 1))


def test_v6_runs_batch_items_one_at_a_time(tiny_models) -> None:
    b = RwkvBackend(tiny_models(6), "cpu fp32")
    assert b.max_batch == 1 and b._batch is None
    s = b.forward(b.tokenize("Hello"), b.initial_state())[1]
    ((lg, st),) = b.forward_batch([([11], s, True)])
    lg_a, _ = b.forward([11], s)
    assert np.array_equal(lg, lg_a) and len(st) == len(s)
    eng = Engine(b, cache_dir=None)
    ctx, hist = CHATS[0]
    texts = [
        r.text
        for r in consume_together(
            eng.reply_versions(ctx, hist, Message("char"), _params(3, max_tokens=6), 2)
        )
    ]
    assert len(texts) == 2 and eng._batcher.batched == 0  # no pass held two sequences


def _params(seed: int, **kw: Any) -> SamplingParams:
    return SamplingParams(**{**P.to_dict(), "seed": seed, **kw})


@pytest.fixture(scope="module")
def engine(tiny_models) -> Engine:
    eng = Engine(RwkvBackend(tiny_models(7), "cpu fp32"), cache_dir=None)
    eng._batcher.learn_sizes = False  # passes shared whatever they cost on this machine
    return eng


def test_replies_in_a_batch_equal_the_same_replies_alone(engine) -> None:
    seeds = [3, 4, 5, 6]

    def alone(i: int, seed: int) -> tuple[str, int]:
        ctx, hist = CHATS[i]
        res = engine.reply(ctx, hist, Message("char"), _params(seed)).consume()
        return res.text, res.new_tokens

    solo = [alone(i, s) for i, s in enumerate(seeds)]
    engine.clear_cache()  # each prompt is fed again, in the batch
    before = engine._batcher.batched
    held = HeldModel(engine, len(seeds))
    out: list[Any] = [None] * len(seeds)

    def run(i: int) -> None:
        out[i] = alone(i, seeds[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    held.release_when_queued()
    for t in threads:
        t.join(120)
    assert out == solo
    assert len({t for t, _ in solo}) == 4
    assert engine._batcher.batched - before >= 4 * 10  # decode steps shared passes


def test_versions_from_one_state_each_equal_its_alone_run(engine) -> None:
    ctx, hist = CHATS[3]
    solo = [
        engine.reply(ctx, hist, Message("char"), _params(version_seed(40, i), max_tokens=16))
        .consume()
        .text
        for i in range(3)
    ]
    engine.clear_cache()
    before = engine._batcher.batched
    replies = engine.reply_versions(ctx, hist, Message("char"), _params(40, max_tokens=16), 3)
    held = HeldModel(engine, 1)  # the first version's prompt waits; the others wait for it
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.extend(consume_together(replies)))
    t.start()
    held.release_when_queued()
    t.join(120)
    assert [r.text for r in results] == solo and len(set(solo)) == 3
    assert sum(r.fed_tokens for r in results) == results[0].prompt_tokens  # fed once
    assert engine._batcher.batched - before >= 3 * 10


EXITS_CLEANLY = """
import sys
from core.backends.rwkv import RwkvBackend
from core.engine import Engine
from core.engine.batch import consume_together
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message

eng = Engine(RwkvBackend(sys.argv[1], "cpu fp32"), cache_dir=None)
ctx, hist = CharacterContext(name="Ada"), [Message("user", "Hello there!")]
params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=8, seed=1)
replies = eng.reply_versions(ctx, hist, Message("char"), params, 3)
print(len(consume_together(replies)), flush=True)
"""  # ends at once: the replies' checkpoints may still be queued on the model thread


def test_a_process_exits_cleanly_right_after_batched_replies(tiny_models) -> None:
    """A process that ends while the model thread still has replies' checkpoints to make must
    finish them and exit with 0: a model call torn down inside torch during the interpreter's
    shutdown aborts it ("terminate called without an active exception", exit 134), which the
    command-line tools and a stopped server would show."""
    import subprocess
    import sys

    from tests.support import REPO

    done = subprocess.run(
        [sys.executable, "-c", EXITS_CLEANLY, str(tiny_models(7))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "3"
