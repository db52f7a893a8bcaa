"""Resume after a restart, on both back ends (the tiny RWKV-7 through the rwkv package, and the
same model converted to GGUF through llama.cpp): a chat of a few turns, then the process's model
and engine are thrown away; a new load of the same file and a new engine on the same cache
folder continue the chat from the checkpoint on disk. They feed only the new message and the
speaker's header, and the state they reach equals the state of a from-scratch feed of the whole
transcript (its logits, and the logits one token later)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message
from tests.support.invariant import Counted

CTX = CharacterContext(
    name="Mira",
    user_name="Ren",
    persona="{{char}} keeps the lighthouse and tells long stories.",
    example_dialogue="{{user}}: Where are we?\n{{char}}: On the rock, by the lamp.",
)
GREETING = Message("char", "Welcome, {{user}}. Mind the steps.")
LINES = ["Hello! Who are you?", "Tell me about the lamp.", "And the storms?"]
SPEAKER = Message("char")


@pytest.fixture(scope="module")
def model_files(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from core.models.convert import convert

    pth = Path(tiny_models(7))
    root = tmp_path_factory.mktemp("resume-gguf")
    return {"rwkv": pth, "llama": convert(pth, root / "v7-f32.gguf", "f32", models_dir=root)}


def _loader(kind: str, path: Path) -> Callable[[], Any]:
    """A new load of the model file, as a new process makes."""
    if kind == "rwkv":
        from core.backends.rwkv import RwkvBackend

        return lambda: RwkvBackend(path, "cpu fp32")
    from core.backends.llama import LlamaBackend

    return lambda: LlamaBackend(path)


def _chat(engine: Engine) -> list[Message]:
    """A few turns: each reply generated, and stored as the engine says it ended."""
    hist = [GREETING]
    for n, line in enumerate(LINES):
        hist.append(Message("user", line))
        params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, seed=n)
        res = engine.reply(CTX, hist, SPEAKER, params).consume()
        hist.append(Message("char", res.text))
    return hist


@pytest.mark.parametrize("kind", ["rwkv", "llama"])
def test_a_restarted_engine_resumes_from_disk(
    kind: str, model_files: dict[str, Path], tmp_path: Path
) -> None:
    load = _loader(kind, model_files[kind])
    folder = tmp_path / "states"
    first = Engine(load(), cache_dir=folder)
    hist = _chat(first)
    first.close()  # waits for the checkpoints on their way to disk; the model goes

    backend = Counted(load())  # the restart: a new load of the same file
    restarted = Engine(backend, cache_dir=folder)
    nxt = [*hist, Message("user", "What happened next?")]
    logits, state = restarted.state_for(CTX, nxt, SPEAKER)

    stats = restarted.cache_stats()
    assert stats["hits_disk"] == 1 and stats["hits_mem"] == 0 and stats["damaged"] == 0
    done = len(restarted._build(CTX, hist, None).chunks)  # up to the last reply's checkpoint
    new = restarted._build(CTX, nxt, SPEAKER).chunks[done:]
    assert [c.text.strip() for c in new][:2] == ["Ren:", "What happened next?"]
    assert backend.fed == sum(len(c.tokens) for c in new)  # only the new message and header

    ref_logits, ref_state = restarted.reference_state(CTX, nxt, SPEAKER)
    assert backend.fed > 2 * sum(len(c.tokens) for c in new)  # the reference fed it all
    assert np.abs(logits - ref_logits).max() < 1e-4
    probe = restarted.backend.tokenize(" The")
    after, _ = restarted.backend.forward(probe, state)
    ref_after, _ = restarted.backend.forward(probe, ref_state)
    assert np.abs(after - ref_after).max() < 1e-4  # the state itself, not only its logits
    restarted.close()


def test_a_restart_feeds_from_the_last_checkpoint_even_with_a_cold_model(
    model_files: dict[str, Path], tmp_path: Path
) -> None:
    """The rwkv back end warms its TorchScript paths while it loads (results not kept): a
    resume right after a load, and a whole feed from its initial state, give the logits of the
    same feed on a model that has run for a while."""
    load = _loader("rwkv", model_files["rwkv"])
    folder = tmp_path / "states"
    first = Engine(load(), cache_dir=folder)
    hist = _chat(first)
    nxt = [*hist, Message("user", "Again?")]
    warm_logits, _ = first.reference_state(CTX, nxt, SPEAKER)
    first.close()
    fresh = Engine(load(), cache_dir=folder)
    logits, _ = fresh.state_for(CTX, nxt, SPEAKER)
    assert fresh.cache_stats()["hits_disk"] == 1
    assert np.abs(logits - warm_logits).max() < 1e-4
    # and the warm-up left the initial state as it was: a whole feed from it agrees too
    from_start, _ = fresh.reference_state(CTX, nxt, SPEAKER)
    assert np.abs(from_start - warm_logits).max() < 1e-4
    fresh.close()
