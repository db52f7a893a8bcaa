"""A reply that opens with its own speaker's name (the full name or a part of it, with either
colon) loses it; one that opens with the user's name ends there, on real token bytes."""

from __future__ import annotations

import pytest

from core.backends.tokenizer import world_tokenizer
from core.engine.stops import StopScanner, name_prefixes

ME = "Captain Ada Reyes"
STOPS = ["\n\n", "\nBen:", "\nBen\uff1a", "\nNarrator:"]


def _run(text: str, me: str = ME) -> tuple[str, str, StopScanner]:
    tok = world_tokenizer()
    sc = StopScanner(STOPS, strip_prefixes=name_prefixes(me))
    shown = ""
    for t in tok.encode(text):
        shown += sc.push(tok.token_bytes(t))
        if sc.stopped:
            break
    return shown, sc.final_text(), sc


@pytest.mark.parametrize(
    ("reply", "kept"),
    [
        ("Captain Ada Reyes: Welcome aboard.", "Welcome aboard."),
        ("Ada Reyes: Welcome aboard.", "Welcome aboard."),
        ("Ada: Welcome aboard.", "Welcome aboard."),
        ("Reyes: Welcome aboard.", "Welcome aboard."),
        ("Captain Ada: Welcome aboard.", "Welcome aboard."),
        ("Ada Reyes\uff1a Welcome aboard.", "Welcome aboard."),
        ("  Ada:Welcome aboard.", "Welcome aboard."),
        ("Ada smiles. Welcome aboard.", "Ada smiles. Welcome aboard."),  # a name, no colon: kept
        ("Adam: hello", "Adam: hello"),  # another name that starts like hers
        ("Welcome aboard. Ada: that's me.", "Welcome aboard. Ada: that's me."),  # not leading
        ("Ben: I take the wheel.", ""),  # the user's line: the reply ends before it
        ("Aye.\nBen: I take the wheel.", "Aye."),
        ("Aye.\nBen\uff1a I take the wheel.", "Aye."),
    ],
)
def test_name_prefix_table(reply: str, kept: str) -> None:
    shown, final, _ = _run(reply)
    assert final == kept
    assert shown == kept  # what streamed is what is kept: no prefix flashes on screen


def test_a_chinese_name_with_either_colon() -> None:
    for reply in ("林晚：欢迎光临。", "林晚: 欢迎光临。"):
        assert _run(reply, "林晚")[1] == "欢迎光临。"


def test_prefixes_are_the_name_and_its_word_runs() -> None:
    got = {p[:-1] for p in name_prefixes(ME)}
    assert got == {
        "Captain Ada Reyes",
        "Captain Ada",
        "Ada Reyes",
        "Captain",
        "Ada",
        "Reyes",
    }
    assert set(name_prefixes("林晚")) == {"林晚:", "林晚\uff1a"}
