"""Characters' RWKV state files on both back ends (core/roleplay/state_files.py,
Backend.state_with_wkv, Engine): the state a file defines gives the rwkv package's own logits
from that state on the rwkv package and on llama.cpp, a file of another shape is refused with a
clear message, a chat with a file never shares a checkpoint with one without it, and the state
invariant holds for it. A model without an RWKV state runs the chat without the file and says
so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.backends.llama import LlamaBackend
from core.backends.rwkv import RwkvBackend
from core.engine import Engine
from core.errors import ModelError
from core.models.convert import convert
from core.prompt import Message
from tests.support.invariant import CTX, Counted, check_invariant
from tests.support.state_file import (
    arrays,
    package_state,
    start_state,
    state_file,
    time_states,
    to_bytes,
)
from tests.support.tiny_model import make_state_dict

PROMPT = "User: hello there, how are you today?\n\nAssistant: 你好。I am fine 🙂\n\nUser:"
TOL = 1e-4  # the bound for "the rwkv package's own forward from that state"


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory):
    """ggufs(version) -> the tiny model as an f32 GGUF (converted once per module)."""
    root = tmp_path_factory.mktemp("gguf")
    made: dict[int, Path] = {}

    def get(version: int) -> Path:
        if version not in made:
            made[version] = convert(
                tiny_models(version), root / f"v{version}.gguf", "f32", models_dir=root
            )
        return made[version]

    return get


@pytest.fixture(scope="module")
def merged_v6(tiny_models, tmp_path_factory) -> tuple[Path, bytes]:
    """The tiny RWKV-6 with a state file's time_state merged into its weights (as RWKV-PEFT's
    merge does): the rwkv package then starts from that state by its own code, transposing it
    itself. Returns the merged model and the state file."""
    tensors = time_states(layers=2, heads=2, head_size=64, seed=6)
    sd = make_state_dict(6, 2, 128)  # the same weights as tiny_models(6)
    path = tmp_path_factory.mktemp("merged") / "v6-state.pth"
    torch.save({**sd, **tensors}, path)
    return path, to_bytes(tensors)


def _logits(x) -> np.ndarray:
    return x.float().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _max_diff(ours, ref, tokens: list[int], steps: int = 16) -> float:
    """Feed `tokens`, then `steps` greedy tokens (the reference's choice) one at a time, with
    `ours` and `ref`: each (forward, its start state)."""
    (fa, sa), (fb, sb) = ours, ref
    la, sa = fa(tokens, sa)
    lb, sb = fb(tokens, sb)
    la, lb = _logits(la), _logits(lb)
    diff = float(np.abs(la - lb).max())
    for _ in range(steps):
        t = int(np.argmax(lb))
        la, sa = fa([t], sa)
        lb, sb = fb([t], sb)
        la, lb = _logits(la), _logits(lb)
        diff = max(diff, float(np.abs(la - lb).max()))
    return diff


def _package_v7(backend: RwkvBackend, data: bytes):
    """The rwkv package's own forward, from the state the file defines (built by hand)."""
    return backend.model.forward, package_state(backend, data)


# --- exactness ----------------------------------------------------------------------------------
def test_rwkv_backend_v7_starts_from_the_files_state(rwkv7_backend) -> None:
    data = state_file(seed=1)
    b = rwkv7_backend
    tokens = b.tokenize(PROMPT)
    diff = _max_diff((b.forward, b.state_with_wkv(arrays(data))), _package_v7(b, data), tokens)
    assert diff <= TOL, diff
    # the file changes the model's output (a state ignored would pass the check above only
    # if it also passed this one)
    plain, _ = b.forward(tokens, b.initial_state())
    with_file, _ = b.forward(tokens, b.state_with_wkv(arrays(data)))
    assert float(np.abs(plain - with_file).max()) > 0.05


def test_rwkv_backend_v6_matches_the_package_with_the_state_merged(tiny_models, merged_v6) -> None:
    """RWKV-6: the package reads a merged time_state itself (transposed to its [head, key,
    value]); our back end, given the same file, starts from the same state."""
    merged, data = merged_v6
    ref = RwkvBackend(merged, "cpu fp32")
    ours = RwkvBackend(tiny_models(6), "cpu fp32")
    tokens = ours.tokenize(PROMPT)
    diff = _max_diff(
        (ours.forward, ours.state_with_wkv(arrays(data))), (ref.model.forward, None), tokens
    )
    assert diff <= TOL, diff


def test_llama_backend_v7_matches_the_package_from_the_files_state(ggufs, rwkv7_backend) -> None:
    """The state written into llama.cpp's sequence bytes gives the rwkv package's logits from
    the file's state (measured: 3e-6); the same file read transposed would not."""
    data = state_file(seed=2)
    llama = LlamaBackend(ggufs(7))
    tokens = llama.tokenize(PROMPT)
    diff = _max_diff(
        (llama.forward, llama.state_with_wkv(arrays(data))),
        _package_v7(rwkv7_backend, data),
        tokens,
    )
    assert diff <= TOL, diff
    flipped = [np.ascontiguousarray(w.transpose(0, 2, 1)) for w in arrays(data)]
    a, _ = llama.forward(tokens, llama.state_with_wkv(flipped))
    b, _ = rwkv7_backend.model.forward(tokens, package_state(rwkv7_backend, data))
    assert float(np.abs(a - _logits(b)).max()) > 0.05  # the layout matters: this test can fail


def test_llama_backend_v6_matches_the_package_with_the_state_merged(ggufs, merged_v6) -> None:
    merged, data = merged_v6
    ref = RwkvBackend(merged, "cpu fp32")
    llama = LlamaBackend(ggufs(6))
    tokens = llama.tokenize(PROMPT)
    diff = _max_diff(
        (llama.forward, llama.state_with_wkv(arrays(data))), (ref.model.forward, None), tokens
    )
    assert diff <= TOL, diff


def test_a_llama_state_from_a_file_is_a_state_like_any_other(ggufs) -> None:
    """It survives bytes (a checkpoint on disk), a second instance of the model, and is never
    changed by feeding it."""
    llama = LlamaBackend(ggufs(7))
    st = llama.state_with_wkv(arrays(state_file(seed=3)))
    tokens = llama.tokenize(PROMPT)
    a, _ = llama.forward(tokens, st)
    b, _ = llama.forward(tokens, st)  # fed again: unchanged
    other = LlamaBackend(ggufs(7))
    c, _ = other.forward(tokens, other.state_from_bytes(llama.state_to_bytes(st)))
    assert np.array_equal(a, b) and np.array_equal(a, c)


# --- shape ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, words",
    [
        ((3, 2, 64), "3 layers and 2 heads of 64 (width 128)"),
        ((2, 4, 64), "2 layers and 4 heads of 64 (width 256)"),
        ((2, 4, 32), "2 layers and 4 heads of 32 (width 128)"),
    ],
)
def test_a_file_of_another_shape_is_refused_with_both_shapes(
    rwkv7_backend, ggufs, tmp_path, shape, words
) -> None:
    ctx = replace(CTX, start_state=start_state(state_file(*shape), "big.pth"))
    for backend in (rwkv7_backend, LlamaBackend(ggufs(7))):
        eng = Engine(backend, cache_dir=tmp_path / backend.info.backend)
        with pytest.raises(ModelError) as e:
            eng.start_notice(ctx)
        msg = str(e.value)
        assert "big.pth" in msg and words in msg, msg
        assert "has 2 layers and 2 heads of 64 (width 128)" in msg, msg
        with pytest.raises(ModelError):  # every way in says the same
            eng.state_for(ctx, [], Message("char"))
        with pytest.raises(ModelError, match="layers of"):
            backend.state_with_wkv(arrays(state_file(*shape)))
        # what the Characters page says of a file before any chat: the same sentence
        assert eng.state_file_fit("big.pth", shape) == msg
        assert eng.state_file_fit("big.pth", (2, 2, 64)) == ""
        assert eng.state_file_fit("big.pth", (0, 0, 0)) == ""  # not known (an imported card)


# --- cache keys -----------------------------------------------------------------------------------
def test_cache_keys_differ_with_and_without_a_state_file(rwkv7_backend, tmp_path) -> None:
    eng = Engine(rwkv7_backend, cache_dir=tmp_path)
    hist = [Message("char", "Welcome, {{user}}."), Message("user", "hi")]
    a, b = state_file(seed=1), state_file(seed=2)

    def keys(ctx) -> list[str]:
        return [c.key for c in eng._build(ctx, hist, Message("char")).chunks]

    plain = keys(CTX)
    with_a = keys(replace(CTX, start_state=start_state(a)))
    assert len(plain) == len(with_a) > 3
    assert not set(plain) & set(with_a)
    assert not set(with_a) & set(keys(replace(CTX, start_state=start_state(b))))
    # the same file (whatever its name) keys the same, in another engine too
    again = Engine(rwkv7_backend, cache_dir=tmp_path)
    same = replace(CTX, start_state=start_state(a, "other-name.pth"))
    assert [c.key for c in again._build(same, hist, Message("char")).chunks] == with_a


def test_a_chat_with_a_state_file_never_uses_a_checkpoint_without_it(
    rwkv7_backend, tmp_path
) -> None:
    counted = Counted(rwkv7_backend)
    eng = Engine(counted, cache_dir=tmp_path)
    hist = [Message("char", "Welcome, {{user}}."), Message("user", "hi")]
    with_file = replace(CTX, start_state=start_state(state_file(seed=4)))
    plain_logits, _ = eng.state_for(CTX, hist, Message("char"))  # cached, without the file
    before = counted.fed
    cached, _ = eng.state_for(with_file, hist, Message("char"))
    n = len(eng._build(with_file, hist, Message("char")).chunks)
    fed = counted.fed - before
    assert fed == sum(len(c.tokens) for c in eng._build(with_file, hist, Message("char")).chunks)
    assert n > 3
    fresh, _ = eng.reference_state(with_file, hist, Message("char"))
    assert float(np.abs(cached - fresh).max()) <= TOL
    assert float(np.abs(cached - plain_logits).max()) > 0.05
    before = counted.fed  # and now it is cached: nothing is fed again
    eng.state_for(with_file, hist, Message("char"))
    assert counted.fed == before
    # the reference starts from the file: the package's own forward from the file's state
    ref_tokens = [t for c in eng._build(with_file, hist, Message("char")).chunks for t in c.tokens]
    pkg, _ = rwkv7_backend.model.forward(
        ref_tokens, package_state(rwkv7_backend, state_file(seed=4))
    )
    assert float(np.abs(fresh - _logits(pkg)).max()) <= TOL


# --- the invariant --------------------------------------------------------------------------------
WITH_FILE = replace(CTX, start_state=start_state(state_file(seed=7), "fox.pth"))
OPS = [
    ("character", WITH_FILE),
    ("send", "hello", 1),
    ("regenerate", 2),
    ("character", CTX),  # the same chat without the file: its own checkpoints
    ("send", "the cat", 3),
    ("character", WITH_FILE),
    ("reopen",),
    ("continue", 4),
    ("edit", 1, "你好"),
    ("send", "why?", 5),
    ("versions", 2, 6, 1),
    ("delete", 2),
]


def test_state_invariant_with_a_state_file_on_the_rwkv_backend(rwkv7_backend) -> None:
    check_invariant(rwkv7_backend, OPS)


def test_state_invariant_with_a_state_file_on_llama_cpp(ggufs) -> None:
    check_invariant(LlamaBackend(ggufs(7)), OPS)


# --- a model without an RWKV state ----------------------------------------------------------------
def test_a_model_without_an_rwkv_state_runs_without_the_file_and_says_so(
    tiny_models, tmp_path
) -> None:
    """RWKV-4 (no matrix state) here; the embedded transformer takes the same path
    (LlamaBackend.wkv_shape is None for a model that is not recurrent), tested in
    test_embedded.py."""
    v4 = RwkvBackend(tiny_models(4), "cpu fp32")
    assert v4.wkv_shape() is None
    eng = Engine(v4, cache_dir=tmp_path)
    ctx = replace(CTX, start_state=start_state(state_file(), "fox.pth"))
    notice = eng.start_notice(ctx)
    assert "not an RWKV-5, 6 or 7 model" in notice and "fox.pth" in notice
    assert "runs without it" in notice
    assert "run without it" in eng.state_file_fit("fox.pth", (2, 2, 64))
    hist = [Message("user", "hi")]
    a, _ = eng.state_for(ctx, hist, Message("char"))
    b, _ = eng.state_for(CTX, hist, Message("char"))
    assert np.array_equal(a, b)  # the same chat as without the file, the same checkpoints
    with pytest.raises(ModelError):
        v4.state_with_wkv(arrays(state_file()))


def test_a_file_that_cannot_be_read_is_a_notice(rwkv7_backend, tmp_path) -> None:
    eng = Engine(rwkv7_backend, cache_dir=tmp_path)
    st = replace(start_state(state_file()), problem="Ada's state file x.pth is not here.")
    notice = eng.start_notice(replace(CTX, start_state=st))
    assert notice == "Ada's state file x.pth is not here. This chat runs without it."
    assert eng.start_notice(CTX) == ""
