"""The thread count (core/backends/threads.py): by default half the usable CPUs, so that the
model keeps computing at speed when another program wants a core (bench/threads.py measures
why); changed live on a loaded model, on the model thread where torch keeps it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from core.backends.loader import load_backend, set_threads
from core.backends.model_thread import on_model_thread


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process allowed on two CPUs; the model thread's torch count is put back after."""
    before = on_model_thread(torch.get_num_threads)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    yield
    on_model_thread(torch.set_num_threads, before)


def test_rwkv_leaves_a_core_free_and_changes_live(two_cpus: None, tiny_models: Any) -> None:
    backend = load_backend(tiny_models(7), "rwkv")
    assert backend.n_threads == 1 == on_model_thread(torch.get_num_threads)
    set_threads(backend, 2)
    assert on_model_thread(torch.get_num_threads) == 2 == backend.info.extra["threads"]
    set_threads(backend, 64)  # never more than the CPUs it may use
    assert on_model_thread(torch.get_num_threads) == 2


def test_llama_leaves_a_core_free_and_changes_live(
    two_cpus: None, tiny_models: Any, tmp_path: Path
) -> None:
    import llama_cpp as L

    from core.models.convert import convert

    gguf = convert(tiny_models(7), tmp_path / "tiny.gguf", "f32", models_dir=tmp_path)
    backend = load_backend(gguf, "llama")
    try:
        assert backend.n_threads == 1 == L.llama_n_threads(backend._ctx)
        set_threads(backend, 2)
        assert L.llama_n_threads(backend._ctx) == 2 == L.llama_n_threads_batch(backend._ctx)
        assert "2 threads" in backend.info.strategy
        logits, _ = backend.forward(backend.tokenize("Hello"), backend.initial_state())
        assert logits.shape == (backend.info.n_vocab,)  # and it still computes
    finally:
        on_model_thread(backend.close)
