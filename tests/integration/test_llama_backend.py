"""The llama.cpp back end on RWKV GGUF files made by our converter: the same random weights give
the same logits as the rwkv package, states are exact values, bad files are refused cleanly."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bare import bare_decode_tok_s, forward_decode_tok_s
from core.backends.llama import LlamaBackend, LlamaState
from core.backends.tokenizer import world_tokenizer
from core.engine import Engine
from core.errors import ModelError
from core.models.convert import convert
from tests.support.invariant import PROPERTY, check_invariant, op

PROMPT = "User: hello there, how are you today?\n\nAssistant: 你好。I am fine 🙂\n\nUser:"


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory):
    """ggufs(type, version=7) -> Path of the tiny model converted once per module."""
    root = tmp_path_factory.mktemp("gguf")
    made: dict[tuple[str, int], Path] = {}

    def get(gtype: str, version: int = 7) -> Path:
        if (gtype, version) not in made:
            made[gtype, version] = convert(
                tiny_models(version), root / f"v{version}-{gtype}.gguf", gtype, models_dir=root
            )
        return made[gtype, version]

    return get


@pytest.fixture(scope="module")
def f32(ggufs) -> LlamaBackend:
    return LlamaBackend(ggufs("f32"))


def _max_diff_over_decode(a, b, tokens: list[int], steps: int = 20) -> float:
    """Feed the prompt, then `steps` greedy tokens one at a time through both back ends."""
    la, sa = a.forward(tokens, a.initial_state())
    lb, sb = b.forward(tokens, b.initial_state())
    diff = float(np.abs(la - lb).max())
    for _ in range(steps):
        t = int(np.argmax(lb))
        la, sa = a.forward([t], sa)
        lb, sb = b.forward([t], sb)
        diff = max(diff, float(np.abs(la - lb).max()))
    return diff


@pytest.mark.parametrize("version", [7, 6])
def test_f32_gguf_matches_the_rwkv_package(ggufs, tiny_models, version) -> None:
    from core.backends.rwkv import RwkvBackend

    ref = RwkvBackend(tiny_models(version), "cpu fp32")
    llama = LlamaBackend(ggufs("f32", version))
    tokens = llama.tokenize(PROMPT)
    assert tokens == ref.tokenize(PROMPT)
    # measured: 3.6e-6 (v7), 2.6e-6 (v6)
    assert _max_diff_over_decode(llama, ref, tokens) <= 1e-4


@pytest.mark.parametrize("gtype, bound", [("f16", 0.02), ("q8_0", 0.3)])
def test_f16_and_q8_0_stay_close(ggufs, tiny_models, rwkv7_backend, gtype, bound) -> None:
    llama = LlamaBackend(ggufs(gtype))
    # measured on these random weights: f16 3.5e-3, q8_0 0.11 (logits of magnitude ~5)
    assert _max_diff_over_decode(llama, rwkv7_backend, llama.tokenize(PROMPT)) <= bound


def test_info_and_vocabulary(f32, ggufs) -> None:
    info = f32.info
    assert (info.backend, info.arch, info.version) == ("llama", "rwkv7", 7)
    assert (info.n_layer, info.n_embd, info.n_vocab) == (2, 128, 65536)
    assert info.n_params > 0 and len(info.identity) == 32 and info.load_s > 0
    assert info.extra["file_type"] == "f32" and info.extra["recurrent"] is True
    assert f32.prompt_format() is None and f32.eos_token() is None
    tok = world_tokenizer()
    for text in (PROMPT, "<s> <|im_end|> \x00\xff", "  spaces\n\n\nand\ttabs", "日本語のテキスト"):
        assert f32.tokenize(text) == tok.encode(text)
        assert f32.detokenize(f32.tokenize(text)).decode() == text
    assert all(f32.token_bytes(t) == tok.token_bytes(t) for t in range(info.n_vocab))
    # llama.cpp's own RWKV tokenizer agrees on ordinary text; it would also match "<s>" and
    # "[PAD1]" as tokens (the rwkv package never does), which is why the World tokenizer is used
    assert f32._tokenize_raw(PROMPT, parse_special=False) == tok.encode(PROMPT)
    assert f32._tokenize_raw("<s>", parse_special=False) == [0] != f32.tokenize("<s>")
    # another type of the same weights is another identity (their states differ)
    assert LlamaBackend(ggufs("f16")).info.identity != info.identity


def test_forward_never_modifies_its_input_state(f32) -> None:
    b = f32
    a_tokens, b_tokens = b.tokenize("User: one two three"), b.tokenize(" four five\n\n")
    _, s_a = b.forward(a_tokens, b.initial_state())
    x1, s_ab = b.forward(b_tokens, s_a)
    x2, _ = b.forward(b_tokens, s_a)  # s_a again, after it was fed once
    _, _ = b.forward([11, 12, 13], s_ab)
    x3, _ = b.forward(b_tokens, s_a)
    assert np.array_equal(x1, x2) and np.array_equal(x1, x3)
    # and the initial state is still empty
    y1, _ = b.forward(a_tokens + b_tokens, b.initial_state())
    assert np.array_equal(y1, b.forward(a_tokens + b_tokens, b.initial_state())[0])
    with pytest.raises(ValueError):
        b.forward([], s_a)
    with pytest.raises(ModelError, match="outside the vocabulary"):
        b.forward([70000], s_a)


def test_state_bytes_restore_exactly_in_a_fresh_backend(ggufs, f32) -> None:
    a_tokens, b_tokens = f32.tokenize("User: the snapshot"), f32.tokenize(" then more text")
    _, s_a = f32.forward(a_tokens, f32.initial_state())
    data = f32.state_to_bytes(s_a)
    assert f32.state_nbytes(s_a) == len(data)
    x, _ = f32.forward(b_tokens, s_a)
    fresh = LlamaBackend(ggufs("f32"))
    restored = fresh.state_from_bytes(data)
    y, _ = fresh.forward(b_tokens, restored)
    assert np.array_equal(x, y)  # bit for bit
    z, _ = fresh.forward(b_tokens, fresh.copy_state(restored))
    assert np.array_equal(x, z)
    # the initial state round-trips too
    empty = fresh.state_from_bytes(f32.state_to_bytes(f32.initial_state()))
    assert np.array_equal(
        fresh.forward(a_tokens, empty)[0], f32.forward(a_tokens, f32.initial_state())[0]
    )
    with pytest.raises(ModelError, match="another model"):
        LlamaBackend(ggufs("f16")).state_from_bytes(data)
    with pytest.raises(ModelError):
        fresh.state_from_bytes(b"garbage")


def test_many_live_states_are_saved_and_restored_when_slots_run_out(ggufs, f32) -> None:
    small = LlamaBackend(ggufs("f32"), n_slots=2)
    tokens = small.tokenize(PROMPT)
    states = [small.forward(tokens[:k], small.initial_state())[1] for k in range(1, 9)]
    assert sum(s.slot is not None for s in states) <= 2  # the rest live as bytes
    assert all(isinstance(s, LlamaState) for s in states)
    got = [small.forward([261], s)[0] for s in states]
    again = [small.forward([261], s)[0] for s in reversed(states)][::-1]
    want = [
        f32.forward([261], f32.forward(tokens[:k], f32.initial_state())[1])[0] for k in range(1, 9)
    ]
    for g, a, w in zip(got, again, want, strict=True):
        assert np.array_equal(g, a) and np.array_equal(g, w)


def test_states_of_another_instance_travel_as_bytes(ggufs, f32) -> None:
    other = LlamaBackend(ggufs("f32"))
    tokens = f32.tokenize(PROMPT)
    _, s = f32.forward(tokens, f32.initial_state())
    f32.state_to_bytes(s)  # now it has bytes
    assert np.array_equal(other.forward([11], s)[0], f32.forward([11], s)[0])


def _bad(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_bad_files_raise_model_error_and_the_loaded_model_keeps_working(
    ggufs, f32, tmp_path, capfd
) -> None:
    tokens = f32.tokenize(PROMPT)
    before, _ = f32.forward(tokens, f32.initial_state())
    good = ggufs("f16").read_bytes()
    cases = {
        "truncated.gguf": (good[: len(good) // 2], "truncated|damaged"),
        "header-only.gguf": (good[:20], "truncated"),
        "magic.gguf": (b"GGUX" + good[4:], "not a GGUF file"),
        "text.gguf": (b"this is a text file, not a model\n" * 20, "not a GGUF file"),
        "empty.gguf": (b"", "not a GGUF file"),
    }
    for name, (data, pattern) in cases.items():
        with pytest.raises(ModelError, match=pattern):
            LlamaBackend(_bad(tmp_path, name, data))
    with pytest.raises(ModelError, match="not found"):
        LlamaBackend(tmp_path / "missing.gguf")

    unknown = tmp_path / "unknown.gguf"
    w = gguf.GGUFWriter(unknown, "nonexistent")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([b"a", b"b"])
    w.add_tensor("token_embd.weight", np.zeros((2, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="'nonexistent'.*does not know"):
        LlamaBackend(unknown)

    # a well-formed file that llama.cpp itself refuses (a tensor missing): still a ModelError
    noweights = tmp_path / "missing-tensor.gguf"
    w = gguf.GGUFWriter(noweights, "rwkv7")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_wkv_head_size(64)
    w.add_tokenizer_model("rwkv")
    w.add_token_list([b"<s>", b"a"])
    w.add_tensor("token_embd.weight", np.zeros((2, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="could not load"):
        LlamaBackend(noweights)

    after, _ = f32.forward(tokens, f32.initial_state())
    assert np.array_equal(before, after)
    out = capfd.readouterr()
    assert "llama" not in out.err and "ggml" not in out.err  # llama.cpp's log is silenced


def test_closed_backend_refuses_politely(ggufs) -> None:
    b = LlamaBackend(ggufs("f32"))
    _, s = b.forward([11], b.initial_state())
    b.close()
    b.close()
    with pytest.raises(ModelError, match="closed"):
        b.forward([11], s)


def test_loader_dispatches_gguf_here(ggufs) -> None:
    from core.backends.loader import load_backend

    b = load_backend(ggufs("q8_0"), n_threads=1)
    assert isinstance(b, LlamaBackend) and b.n_threads == 1


def test_speed_helpers_run(f32) -> None:
    assert bare_decode_tok_s(f32, 4) > 0
    assert forward_decode_tok_s(f32, 4) > 0


def test_a_copied_gguf_has_the_same_identity_and_shares_states(ggufs, f32, tmp_path) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(ggufs("f32"), copy)
    b = LlamaBackend(copy)
    assert b.info.identity == f32.info.identity
    _, s = f32.forward([11, 12], f32.initial_state())
    restored = b.state_from_bytes(f32.state_to_bytes(s))
    assert np.array_equal(b.forward([13], restored)[0], f32.forward([13], s)[0])


@settings(PROPERTY, max_examples=15)
@given(ops=st.lists(op, min_size=1, max_size=8))
def test_state_invariant_on_the_llama_backend(f32, ops) -> None:
    """The foundation's property test, on llama.cpp states."""
    check_invariant(f32, ops)


def test_advance_gives_the_same_logits_and_uses_its_input_up(f32) -> None:
    toks = f32.tokenize(PROMPT)
    expected = []
    la, sa = f32.forward(toks, f32.initial_state())
    for t in (11, 12, 13):
        la, sa = f32.forward([t], sa)
        expected.append(la)
    lb, sb = f32.forward(toks, f32.initial_state())
    for t, want in zip((11, 12, 13), expected, strict=True):
        lb, nxt = f32.advance([t], sb)  # sb is the resident state: it is not saved first
        assert np.array_equal(lb, want)
        with pytest.raises(ModelError, match="used up"):
            f32.forward([t], sb)
        sb = nxt


def test_a_stored_state_the_back_end_refuses_is_only_a_miss(f32, tmp_path: Path) -> None:
    """A checkpoint llama.cpp will not load (another build wrote it, say) costs a re-feed."""
    from core.prompt import CharacterContext, Message

    ctx = CharacterContext(name="A", user_name="B", persona="test")
    hist = [Message("char", "hi"), Message("user", "hello")]
    eng = Engine(f32, cache_dir=tmp_path / "states")
    eng.warm(ctx, hist[:1])
    eng.flush()
    files = list((tmp_path / "states").glob("*.state"))
    assert files
    for f in files:  # keep the header and logits, cut the state: llama.cpp refuses it
        f.write_bytes(f.read_bytes()[:-100])
    fresh = Engine(f32, cache_dir=tmp_path / "states")
    a, _ = fresh.state_for(ctx, hist, Message("char"))
    b, _ = fresh.reference_state(ctx, hist, Message("char"))
    assert np.abs(a - b).max() < 1e-4
