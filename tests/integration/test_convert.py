"""The .pth -> GGUF converter: what it writes, its CLI, that failures leave nothing behind, and
where it refuses to write (outside models/, the data directory, an existing file)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import gguf
import pytest
import torch

import core.models.convert as conv
from core.backends.gguf_file import inspect_gguf
from core.errors import ModelError
from core.models.convert import (
    ConversionCancelled,
    ConvertJob,
    DestinationExists,
    convert,
    main,
)
from tests.support import REPO


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".part", ".gguf"))


@pytest.mark.parametrize("gtype", ["f32", "f16", "q8_0"])
def test_v7_converts_with_the_layout_llama_cpp_expects(tiny_models, models, gtype) -> None:
    seen: list[float] = []
    out = convert(tiny_models(7), models / "m.gguf", gtype, progress=lambda f, _m: seen.append(f))
    assert out == models / "m.gguf" and _leftovers(models) == ["m.gguf"]
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


def test_v6_converts(tiny_models, models) -> None:
    out = convert(tiny_models(6), models / "v6.gguf", "f16")
    s = inspect_gguf(out)
    assert s.arch == "rwkv6" and s.get("rwkv6.time_mix_extra_dim") == 32


@pytest.mark.parametrize("version", [4, 5])
def test_versions_llama_cpp_cannot_run_are_refused(tiny_models, models, version) -> None:
    with pytest.raises(ModelError, match=f"RWKV-{version}.*only RWKV-6 and RWKV-7"):
        convert(tiny_models(version), models / "x.gguf")
    assert _leftovers(models) == []


def test_files_that_are_not_rwkv_are_refused(models) -> None:
    other = models / "other.pth"
    torch.save({"fc.weight": torch.zeros(4, 4)}, other)
    with pytest.raises(ModelError, match="not an RWKV model"):
        convert(other, models / "x.gguf")
    junk = models / "junk.pth"
    junk.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ModelError, match="not a PyTorch model file"):
        convert(junk, models / "x.gguf")
    with pytest.raises(ModelError, match="not found"):
        convert(models / "missing.pth", models / "x.gguf")
    with pytest.raises(ModelError, match="Unknown GGUF type"):
        convert(other, models / "x.gguf", "q4_0")
    assert _leftovers(models) == []


def test_unwritable_destinations(tiny_models, models, monkeypatch) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        convert(tiny_models(7), models / "no" / "such" / "x.gguf")
    monkeypatch.setattr("core.config.MODELS_DIR", Path("/proc"))
    with pytest.raises(ModelError, match="Cannot write"):
        convert(tiny_models(7), Path("/proc/x.gguf"))  # refused even to root


def test_converting_onto_the_database_leaves_it_byte_identical(
    tiny_models, models, data_dir, monkeypatch
) -> None:
    from core.store import open_store

    store = open_store()
    store.create_character({"name": "Ada", "description": "kept"})
    store.close()
    db = data_dir / "app.db"
    before = db.read_bytes()
    (models / "link.gguf").symlink_to(db)
    for dst in (db, models / ".." / "data" / "app.db", models / "link.gguf"):
        for overwrite in (False, True):
            with pytest.raises(ModelError):
                convert(tiny_models(7), dst, overwrite=overwrite)
    assert db.read_bytes() == before
    # a data directory inside the models folder is off limits too
    inner = models / "data"
    monkeypatch.setenv("RP_DATA_DIR", str(inner))
    with pytest.raises(ModelError, match="data directory"):
        convert(tiny_models(7), inner / "x.gguf")
    assert _leftovers(inner) == [] and _leftovers(models) == ["link.gguf"]


def test_only_gguf_names_inside_the_models_folder(tiny_models, models, tmp_path) -> None:
    for dst, why in (
        (models / ".." / "x.gguf", "only inside the models folder"),
        (tmp_path / "elsewhere" / "x.gguf", "only inside the models folder"),
        (models / "x.bin", "ending in .gguf"),
        (models / "x", "ending in .gguf"),
    ):
        with pytest.raises(ModelError, match=why):
            convert(tiny_models(7), dst)
    assert _leftovers(tmp_path) == [] and _leftovers(models) == []
    sub = models / "sub"
    sub.mkdir()
    assert convert(tiny_models(7), sub / "x.gguf").is_file()  # a folder inside models is fine


def test_an_existing_file_is_replaced_only_when_confirmed(tiny_models, models, capsys) -> None:
    mine = models / "mine.gguf"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(DestinationExists, match="already exists"):
        convert(tiny_models(7), mine)
    assert main([str(tiny_models(7)), str(mine), "--quiet"]) == 1
    assert "--force" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's own file" and _leftovers(models) == ["mine.gguf"]
    assert main([str(tiny_models(7)), str(mine), "--quiet", "--force"]) == 0
    assert inspect_gguf(mine).arch == "rwkv7"


def test_the_source_must_be_a_pth_model(tiny_models, models) -> None:
    weights = models / "weights.bin"  # a real model, but not under a model file's name
    weights.write_bytes(tiny_models(7).read_bytes())
    with pytest.raises(ModelError, match="not a .pth file"):
        convert(weights, models / "x.gguf")
    assert _leftovers(models) == []


def test_too_little_disk_is_found_before_writing(tiny_models, models, monkeypatch) -> None:
    class Usage:
        total, used, free = 10**9, 10**9 - 10**6, 10**6

    monkeypatch.setattr(conv.shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(ModelError, match="Not enough free disk space"):
        convert(tiny_models(7), models / "x.gguf")
    assert _leftovers(models) == []


def test_cancel_and_failure_leave_nothing(tiny_models, models, monkeypatch) -> None:
    cancel = threading.Event()

    def progress(frac: float, _msg: str) -> None:
        if frac > 0.3:
            cancel.set()

    with pytest.raises(ConversionCancelled):
        convert(tiny_models(7), models / "x.gguf", "f16", progress=progress, cancel=cancel)
    assert _leftovers(models) == []

    real = conv._data
    calls = [0]

    def failing(t):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(28, "No space left on device")
        return real(t)

    monkeypatch.setattr(conv, "_data", failing)
    with pytest.raises(ModelError, match="disk filled up"):
        convert(tiny_models(7), models / "x.gguf", "f16")
    assert _leftovers(models) == []


def test_a_job_converts_in_the_background_with_its_progress(tiny_models, models) -> None:
    job = ConvertJob.start(tiny_models(7), models / "job.gguf", "f16")
    seen = []
    while not job.wait(0.01):
        seen.append(job.progress()[0])
    assert job.error is None and job.result == models / "job.gguf"
    assert job.progress() == (1.0, "Wrote job.gguf") and seen == sorted(seen)
    assert inspect_gguf(job.result).arch == "rwkv7"
    # a bad destination, or a bad source, is the job's ModelError: nothing is written
    with pytest.raises(ModelError, match="only inside the models folder"):
        ConvertJob.start(tiny_models(7), models.parent / "out.gguf")
    job = ConvertJob.start(models / "missing.pth", models / "other.gguf")
    assert job.wait(60) and isinstance(job.error, ModelError) and job.result is None
    assert _leftovers(models) == ["job.gguf"]


def test_one_job_a_file_and_a_cancelled_one_leaves_nothing(models, monkeypatch) -> None:
    started = threading.Event()

    def slow(src, dst, type, progress, cancel, overwrite, models_dir):  # noqa: ANN001, ANN202
        progress(0.5, "Converting blk.0")
        started.set()
        assert cancel.wait(60)
        raise ConversionCancelled("Conversion cancelled; no file was written.")

    monkeypatch.setattr(conv, "convert", slow)
    job = ConvertJob.start(models / "a.pth", models / "x.gguf")
    assert started.wait(60) and not job.done
    assert job.progress() == (0.5, "Converting blk.0")
    with pytest.raises(ModelError, match="being written by another conversion"):
        ConvertJob.start(models / "b.pth", models / "x.gguf")
    other = ConvertJob.start(models / "b.pth", models / "y.gguf")  # another file: at once
    job.cancel()
    other.cancel()
    assert job.done and isinstance(job.error, ConversionCancelled) and job.result is None
    again = ConvertJob.start(models / "a.pth", models / "x.gguf")  # free again once it ended
    again.cancel()
    assert isinstance(again.error, ConversionCancelled)


def test_cli_exit_codes(tiny_models, models, capsys, monkeypatch) -> None:
    assert main([str(tiny_models(7)), str(models / "a.gguf"), "--type", "q8_0", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(models / "a.gguf")
    monkeypatch.chdir(models.parent)  # a bare name goes into the models folder, not the cwd
    assert main([str(tiny_models(7)), "bare.gguf"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(models / "bare.gguf") and "100%" in out.err
    assert main([str(tiny_models(5)), str(models / "b.gguf"), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tiny_models(7)), str(models / "c.gguf"), "--type", "q2"])
    assert e.value.code == 2
    assert _leftovers(models) == ["a.gguf", "bare.gguf"]


def test_cli_runs_as_a_module(tiny_models, tmp_path) -> None:
    """The module's entry point (in a subprocess, which writes only where the repository's
    models/ is, so only refusals are run here; conversions are in test_cli_exit_codes)."""
    dst = tmp_path / "m.gguf"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.models.convert",
            str(tiny_models(7)),
            str(dst),
            "--type",
            "f16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "only inside the models folder" in run.stderr
    assert not dst.exists()
    missing = "no-such-model-file.pth"
    bad = subprocess.run(
        [sys.executable, "-m", "core.models.convert", str(tmp_path / missing), "x-no-such.gguf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "not found" in bad.stderr
    assert not (REPO / "models" / "x-no-such.gguf").exists()
