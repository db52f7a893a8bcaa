"""The chaos run's own checks (bench/chaos.py, issue 24): what counts as an acknowledged text
still held. A check that is too strict reports a loss the app did not make (seed 544013653: a
continue cut off, then a regenerate cut off, on one message); one too loose hides a real loss."""

from __future__ import annotations

from bench.chaos import Acked, Ledger


def message(text: str, versions: list[str]) -> dict[str, object]:
    return {"id": 25, "chat_id": 2, "text": text, "versions": versions}


def test_an_answered_text_must_be_the_text_shown() -> None:
    a = Acked(2, "hello")
    assert a.held_by(message("hello", ["hello"]))
    assert not a.held_by(message("hello there", ["hello there"]))
    assert not a.held_by(message("other", ["hello", "other"]))  # kept, but no longer shown


def test_a_regenerate_cut_off_keeps_the_text_as_a_version() -> None:
    ledger = Ledger()
    ledger.ack(message("hello", ["hello"]))
    ledger.unsure(25, "regenerate")
    a = ledger.messages[25]
    assert a.held_by(message("new", ["hello", "new"]))
    assert not a.held_by(message("new", ["hell", "new"]))


def test_a_continue_then_a_regenerate_both_cut_off_keep_the_text_as_a_prefix() -> None:
    """The case seed 544013653 found: the continue made 'hello' longer in place, then the
    regenerate added a version and chose it. Nothing was lost; the second pending request
    used to overwrite the first, and the check then looked for 'hello' whole."""
    ledger = Ledger()
    ledger.ack(message("hello", ["old", "hello"]))
    ledger.unsure(25, "continue")
    ledger.unsure(25, "regenerate")
    a = ledger.messages[25]
    after = message("Deus", ["old", "hello and more", "Deus"])
    assert a.held_by(after)
    assert not a.held_by(message("Deus", ["old", "help", "Deus"]))  # a real loss still shows


def test_an_answer_clears_what_was_pending() -> None:
    ledger = Ledger()
    ledger.ack(message("hello", ["hello"]))
    ledger.unsure(25, "continue")
    ledger.ack(message("fresh", ["hello", "fresh"]))
    assert ledger.messages[25].pending == set()
    assert not ledger.messages[25].held_by(message("fresh and more", ["hello", "fresh and more"]))


def test_a_check_before_a_restart_keeps_what_is_pending() -> None:
    """Seed 602 (llama.cpp): the final check, before the clean stop, took a message's text as
    acknowledged while a continue cut off was still saving its end; the text then grew. Only
    after a restart can nothing of the old server still be going."""
    ledger = Ledger()
    ledger.ack(message("hello", ["hello"]))
    ledger.unsure(25, "continue")
    live = ledger.messages[25].seen("hello wor", settled=False)
    assert live.held_by(message("hello world", ["hello world"]))
    after_restart = ledger.messages[25].seen("hello wor", settled=True)
    assert not after_restart.held_by(message("hello world", ["hello world"]))
    plain = Acked(2, "hi").seen("hi", settled=False)  # nothing pending: exact from then on
    assert plain.pending == set() and not plain.held_by(message("hi there", ["hi there"]))
