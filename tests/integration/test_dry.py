"""DRY on both back ends (the rwkv package and llama.cpp, on the same tiny RWKV-7 weights): a
reply that sets out to copy an earlier line word for word is turned away from it by the
penalty, which grows with the length of the repeat; without DRY the same reply copies it all.

The model's wish to copy is real sampling pressure, not a forced outcome: the tiny model's own
logits plus a boost of BOOST on the line's next token (tests/support/forced.py). Greedy
decoding, so nothing depends on a seed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core.backends.llama import LlamaBackend
from core.engine import Engine
from core.engine.sampler import PRESETS, SamplingParams
from core.models.convert import convert
from core.prompt import CharacterContext, Message
from tests.support.forced import ForcedBackend

CTX = CharacterContext(name="Alice", user_name="Bob", persona="{{char}} keeps the lighthouse.")
# no sequence breaker inside (new line, colon, quote, asterisk): a repeat may run its length
LINE = (
    "the old keeper walks along the rocky shore every single morning before the first light "
    "breaks over the grey and restless sea"
)
BOOST = 20.0
GREEDY = SamplingParams(
    temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=40, seed=1
)


@pytest.fixture(scope="module")
def gguf_path(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dry-gguf")
    return convert(tiny_models(7), root / "v7-f32.gguf", "f32", models_dir=root)


@pytest.fixture(params=["rwkv", "llama"])
def backend(request, rwkv7_backend, gguf_path):
    if request.param == "rwkv":
        return rwkv7_backend
    return LlamaBackend(gguf_path)


def _copying(backend) -> tuple[Engine, list[int]]:
    fb = ForcedBackend(backend, boost=BOOST)
    fb.say(" " + LINE + "\n\n")  # then the blank line that ends a reply
    return Engine(fb), fb.script


def _reply(backend, params: SamplingParams) -> tuple[str, int]:
    engine, script = _copying(backend)
    history = [Message("char", LINE), Message("user", "And then?")]
    res = engine.reply(CTX, history, Message("char"), params).consume()
    return res.text, res.new_tokens


def test_without_dry_the_reply_copies_the_earlier_line(backend) -> None:
    text, _ = _reply(backend, GREEDY)
    assert text == LINE


def test_dry_turns_the_reply_away_from_a_verbatim_copy(backend) -> None:
    dry = replace(GREEDY, **{k: getattr(PRESETS["roleplay"], k) for k in DRY_FIELDS})
    text, _ = _reply(backend, dry)
    assert text != LINE and not LINE.startswith(text)  # it left the line at some point
    # where: the penalty 0.8 * 1.75 ** (n - 2) passes the boost of 20 when the repeat is 8
    # tokens long, so the copy ends within the line's first 8 tokens (a few tokens of the
    # model's own preference may end it sooner)
    engine, script = _copying(backend)
    copied = _common_prefix(engine.backend.tokenize(" " + text), script)
    assert 2 <= copied <= 8, (copied, text)


def test_a_weaker_dry_lets_a_longer_repeat_through(backend) -> None:
    strong = replace(GREEDY, dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    weak = replace(strong, dry_multiplier=0.05)  # passes 20 only at a repeat of 13
    engine, script = _copying(backend)
    tok = engine.backend.tokenize
    n_strong = _common_prefix(tok(" " + _reply(backend, strong)[0]), script)
    n_weak = _common_prefix(tok(" " + _reply(backend, weak)[0]), script)
    assert n_weak > n_strong


DRY_FIELDS = ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_sequence_breakers")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
