"""The .pth -> GGUF converter: what it writes, its CLI, and that failures leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import gguf
import pytest
import torch

import core.convert as conv
from core.backends.gguf_file import inspect_gguf
from core.convert import ConversionCancelled, convert, main
from core.errors import ModelError
from tests.support import REPO


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".part", ".gguf"))


@pytest.mark.parametrize("gtype", ["f32", "f16", "q8_0"])
def test_v7_converts_with_the_layout_llama_cpp_expects(tiny_models, tmp_path, gtype) -> None:
    seen: list[float] = []
    out = convert(tiny_models(7), tmp_path / "m.gguf", gtype, progress=lambda f, _m: seen.append(f))
    assert out == tmp_path / "m.gguf" and _leftovers(tmp_path) == ["m.gguf"]
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    s = inspect_gguf(out)
    assert s.arch == "rwkv7" and s.get("tokenizer.ggml.model") == "rwkv"
    assert s.get("tokenizer.ggml.tokens") == 65536 and s.get("rwkv7.block_count") == 2
    types = {name: t for name, (_shape, t) in s.tensors.items()}
    assert len(types) == 6 + 2 * 28  # emb, its norm w+b, output norm w+b, head; 28 a block
    if gtype == "q8_0":  # and the gguf package reads it the same way
        r = gguf.GGUFReader(out)
        assert {t.name: int(t.tensor_type) for t in r.tensors} == types
    F32, F16, Q8 = (gguf.GGMLQuantizationType[n] for n in ("F32", "F16", "Q8_0"))
    big = {"f32": F32, "f16": F16, "q8_0": Q8}[gtype]
    assert types["token_embd.weight"] == big and types["blk.1.time_mix_key.weight"] == big
    # these stay float32 whatever the type, as llama.cpp wants
    for name in (
        "blk.0.time_mix_lerp_fused.weight",
        "blk.0.time_mix_w1.weight",
        "blk.0.attn_norm.weight",
    ):
        assert types[name] == F32


def test_v6_converts(tiny_models, tmp_path) -> None:
    out = convert(tiny_models(6), tmp_path / "v6.gguf", "f16")
    s = inspect_gguf(out)
    assert s.arch == "rwkv6" and s.get("rwkv6.time_mix_extra_dim") == 32


@pytest.mark.parametrize("version", [4, 5])
def test_versions_llama_cpp_cannot_run_are_refused(tiny_models, tmp_path, version) -> None:
    with pytest.raises(ModelError, match=f"RWKV-{version}.*only RWKV-6 and RWKV-7"):
        convert(tiny_models(version), tmp_path / "x.gguf")
    assert _leftovers(tmp_path) == []


def test_files_that_are_not_rwkv_are_refused(tmp_path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(4, 4)}, other)
    with pytest.raises(ModelError, match="not an RWKV model"):
        convert(other, tmp_path / "x.gguf")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ModelError, match="not a PyTorch model file"):
        convert(junk, tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="not found"):
        convert(tmp_path / "missing.pth", tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="Unknown GGUF type"):
        convert(other, tmp_path / "x.gguf", "q4_0")
    assert _leftovers(tmp_path) == []


def test_unwritable_destinations(tiny_models, tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        convert(tiny_models(7), tmp_path / "no" / "such" / "x.gguf")
    with pytest.raises(ModelError, match="Cannot write"):
        convert(tiny_models(7), Path("/proc/x.gguf"))  # refused even to root
    src = tmp_path / "same.pth"
    src.write_bytes(tiny_models(7).read_bytes())
    with pytest.raises(ModelError, match="source file itself"):
        convert(src, src)


def test_too_little_disk_is_found_before_writing(tiny_models, tmp_path, monkeypatch) -> None:
    class Usage:
        total, used, free = 10**9, 10**9 - 10**6, 10**6

    monkeypatch.setattr(conv.shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(ModelError, match="Not enough free disk space"):
        convert(tiny_models(7), tmp_path / "x.gguf")
    assert _leftovers(tmp_path) == []


def test_cancel_and_failure_leave_nothing(tiny_models, tmp_path, monkeypatch) -> None:
    cancel = threading.Event()

    def progress(frac: float, _msg: str) -> None:
        if frac > 0.3:
            cancel.set()

    with pytest.raises(ConversionCancelled):
        convert(tiny_models(7), tmp_path / "x.gguf", "f16", progress=progress, cancel=cancel)
    assert _leftovers(tmp_path) == []

    real = conv._data
    calls = [0]

    def failing(t):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(28, "No space left on device")
        return real(t)

    monkeypatch.setattr(conv, "_data", failing)
    with pytest.raises(ModelError, match="disk filled up"):
        convert(tiny_models(7), tmp_path / "x.gguf", "f16")
    assert _leftovers(tmp_path) == []


def test_cli_exit_codes(tiny_models, tmp_path, capsys) -> None:
    assert main([str(tiny_models(7)), str(tmp_path / "a.gguf"), "--type", "q8_0", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a.gguf")
    assert main([str(tiny_models(5)), str(tmp_path / "b.gguf"), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tiny_models(7)), str(tmp_path / "c.gguf"), "--type", "q2"])
    assert e.value.code == 2
    assert _leftovers(tmp_path) == ["a.gguf"]


@pytest.mark.slow
def test_cli_runs_as_a_module(tiny_models, tmp_path) -> None:
    dst = tmp_path / "m.gguf"
    run = subprocess.run(
        [sys.executable, "-m", "core.convert", str(tiny_models(7)), str(dst), "--type", "f16"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert dst.is_file() and "100%" in run.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "core.convert", str(tmp_path / "nope.pth"), str(dst)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "not found" in bad.stderr
