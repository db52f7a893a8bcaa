"""A model that would not fit in memory is refused before loading, with a sentence (core/backends/
memory.py), instead of the kernel's out-of-memory kill. Real tiny models; the memory the
machine has free is what the test says it is."""

from __future__ import annotations

import pytest

from core.backends import memory
from core.backends.loader import load_backend
from core.errors import ModelError
from core.models.convert import convert


@pytest.fixture
def little_free(monkeypatch) -> None:
    """A machine with 100 MB free (less than any model's run margin)."""
    monkeypatch.delenv(memory.IGNORE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_ram", lambda: 100 * 2**20)


def test_a_pth_too_large_for_memory_is_refused_with_the_gguf_advice(
    tiny_models, little_free
) -> None:
    with pytest.raises(ModelError) as e:
        load_backend(tiny_models(7), "rwkv", "cpu fp32")
    msg = str(e.value)
    assert "GB of memory" in msg and "0.1 GB is free" in msg and "GGUF q8_0" in msg


def test_a_gguf_too_large_for_memory_is_refused(tiny_models, tmp_path, little_free) -> None:
    gguf = convert(tiny_models(7), tmp_path / "tiny.gguf", "f32", models_dir=tmp_path)
    with pytest.raises(ModelError, match="smaller file"):
        load_backend(gguf)


def test_a_model_that_fits_loads_and_the_check_can_be_skipped(
    tiny_models, monkeypatch, little_free
) -> None:
    monkeypatch.setenv(memory.IGNORE_ENV, "1")
    assert load_backend(tiny_models(7), "rwkv", "cpu fp32").info.n_layer == 2
    monkeypatch.delenv(memory.IGNORE_ENV)
    monkeypatch.setattr(memory, "available_ram", lambda: 8 * 2**30)
    assert load_backend(tiny_models(7), "rwkv", "cpu fp32").info.n_layer == 2


def test_what_a_strategy_holds_in_memory() -> None:
    assert memory.strategy_bytes("cpu fp32") == 4.0
    assert memory.strategy_bytes("cpu bf16") == 2.0
    assert memory.strategy_bytes("cuda fp16") is None  # the GPU's memory, not RAM
    assert memory.strategy_bytes("cuda fp16i8 *10 -> cpu fp32") == 4.0
    assert memory.pth_needs(10**9, "cpu fp32") == 4 * 10**9 + memory.RUN_MARGIN
