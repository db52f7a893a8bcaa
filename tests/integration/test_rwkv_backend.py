"""Loading BlinkDL .pth files of every RWKV version through the rwkv package, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.backends.rwkv import RwkvBackend, check_strategy
from core.errors import ModelError
from tests.support import REPO

PROMPT = "User: hello, who are you?\n\nAssistant:"


@pytest.mark.parametrize("version", [7, 6, 5, 4])
def test_each_version_loads_and_reports_itself(tiny_models, version: int) -> None:
    b = RwkvBackend(tiny_models(version), "cpu fp32")
    info = b.info
    assert (info.arch, info.version) == (f"rwkv{version}", version)
    assert (info.n_layer, info.n_embd, info.n_vocab) == (2, 128, 65536)
    assert info.n_params == sum(t.numel() for t in torch.load(tiny_models(version)).values())
    assert info.strategy == "cpu fp32" and info.load_s > 0 and len(info.identity) == 32
    tokens = b.tokenize(PROMPT)
    logits, state = b.forward(tokens, b.initial_state())
    assert logits.shape == (65536,) and logits.dtype == np.float32
    assert np.isfinite(logits).all() and logits.std() > 0.1
    # feeding token by token gives the same logits as the whole prompt at once
    s = b.initial_state()
    for t in tokens:
        one, s = b.forward([t], s)
    assert np.abs(one - logits).max() < 1e-4


def test_v7_and_v6_load_one_after_the_other_and_both_keep_working(tiny_models) -> None:
    v7 = RwkvBackend(tiny_models(7), "cpu fp32")
    first, _ = v7.forward(v7.tokenize(PROMPT), v7.initial_state())
    v6 = RwkvBackend(tiny_models(6), "cpu fp32")
    assert (v7.info.version, v6.info.version) == (7, 6)
    v6.forward(v6.tokenize(PROMPT), v6.initial_state())
    again, _ = v7.forward(v7.tokenize(PROMPT), v7.initial_state())
    assert np.array_equal(first, again)
    assert "RWKV_V7_ON" not in os.environ or os.environ["RWKV_V7_ON"] != "1"


def test_path_without_suffix_and_bf16_strategy(tiny_models) -> None:
    p = tiny_models(7)
    b = RwkvBackend(p.with_suffix(""), "cpu bf16")
    logits, state = b.forward(b.tokenize(PROMPT), b.initial_state())
    assert np.isfinite(logits).all()
    restored = b.state_from_bytes(b.state_to_bytes(state))
    a, _ = b.forward([11], state)
    c, _ = b.forward([11], restored)
    assert np.array_equal(a, c)


def test_forward_never_modifies_the_state_it_is_given(rwkv7_backend) -> None:
    b = rwkv7_backend
    _, s = b.forward(b.tokenize("Hello"), b.initial_state())
    before = [t.clone() for t in s]
    b.forward(b.tokenize(" world"), s)
    assert all(torch.equal(x, y) for x, y in zip(before, s, strict=True))


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: d / "missing.pth", "not found"),
        (lambda d: _write(d / "notes.pth", b"just some text\n" * 10), "not a PyTorch model"),
        (lambda d: _truncated(d), "not a PyTorch model|could not be read"),
        (lambda d: _other_network(d), "not an RWKV model"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, make, expect: str) -> None:
    import re

    with pytest.raises(ModelError, match=re.compile(expect, re.I)):
        RwkvBackend(make(tmp_path), "cpu fp32")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))

    marker = ""


def test_pickled_program_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "payload": _Exploit()}, path)
    with pytest.raises(ModelError, match="pickled program"):
        RwkvBackend(path, "cpu fp32")
    assert not marker.exists()


@pytest.mark.parametrize(
    "strategy, version, expect",
    [
        ("gpu fp99", 7, "Unknown strategy"),
        ("cpu", 6, "Unknown strategy"),
        ("cpu fp32i8", 7, "RWKV-7 models accept only"),
        ("cuda fp16i8 *10 -> cpu fp32", 7, "RWKV-7 models accept only"),
        ("cuda fp16", 7, "needs a CUDA GPU"),
        ("cuda fp16i8 *10 -> cpu fp32", 6, "needs a CUDA GPU"),
    ],
)
def test_unknown_or_unsupported_strategies(strategy: str, version: int, expect: str) -> None:
    if "cuda" in strategy and "CUDA GPU" in expect and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match=expect):
        check_strategy(strategy, version)


def test_valid_strategies_pass() -> None:
    assert check_strategy("  cpu   fp32 ", 7) == "cpu fp32"
    assert check_strategy("cpu fp32i8", 6) == "cpu fp32i8"
    assert check_strategy("cpu fp32 *1 -> cpu bf16", 5) == "cpu fp32 *1 -> cpu bf16"


def test_a_failed_load_leaves_the_loaded_model_usable(rwkv7_backend, tmp_path: Path) -> None:
    before, _ = rwkv7_backend.forward([11, 12], rwkv7_backend.initial_state())
    with pytest.raises(ModelError):
        RwkvBackend(_write(tmp_path / "x.pth", b"\x00" * 100), "cpu fp32")
    with pytest.raises(ModelError):
        RwkvBackend(tmp_path / "x.pth", "cpu fp32i8")
    after, _ = rwkv7_backend.forward([11, 12], rwkv7_backend.initial_state())
    assert np.array_equal(before, after)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(d: Path) -> Path:
    from tests.support.tiny_model import write_model

    full = write_model(d / "full.pth", 7, 1, 64, vocab=65536)
    data = full.read_bytes()
    return _write(d / "cut.pth", data[: len(data) // 2])


def _other_network(d: Path) -> Path:
    path = d / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, path)
    return path


def test_tiny_model_command_line_writes_a_loadable_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "made.pth"
    cmd = [sys.executable, "-m", "tests.support.tiny_model", "--version", "5", "--layers", "2"]
    cmd += ["--width", "64", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    b = RwkvBackend(out, "cpu fp32")
    assert (b.info.version, b.info.n_layer, b.info.n_embd, b.info.n_vocab) == (5, 2, 64, 65536)
