"""The Chat page saves a reply while it streams, and a reply cut by a crash shows as interrupted,
with continue and regenerate, after the restart.

The model is the tiny RWKV-7 forced to say a script (tests.support.forced), so the replies are
known; the crash is a real process killed with SIGKILL mid-reply (tests.support.crash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.backends.tokenizer import world_tokenizer
from tests.support.crash import kill_mid_reply
from tests.support.forced import ForcedBackend
from tests.support.ui import chat_texts, check, keys, open_app, store

CHAT = "pages/chat.py"


@pytest.fixture
def says(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """says(text): the app's model, when it loads, is forced to say `text` (then talks freely)."""
    import core.backends.loader as loader

    real = loader.load_backend
    script = {"text": ""}

    def load(*args: Any, **kwargs: Any) -> ForcedBackend:
        backend = ForcedBackend(real(*args, **kwargs))
        backend.say(script["text"])
        return backend

    monkeypatch.setattr(loader, "load_backend", load)
    return lambda text: script.update(text=text)


def new_chat(max_tokens: int) -> int:
    s = store()
    character = s.create_character({"name": "Aria", "greetings": ["Hello."]})
    conv = s.create_conversation(character.id, sampling={"max_tokens": max_tokens})
    s.add_message(conv.id, "user", "Tell me a story.")
    s.close()
    return conv.id


def test_the_page_saves_a_reply_while_it_streams(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, says: Callable[[str], None]
) -> None:
    from core.engine import Engine

    monkeypatch.setattr("core.chat.saver.SAVE_EVERY_S", 0.0)  # every piece, not every 2 s
    says(" la" * 100)
    conv_id = new_chat(max_tokens=12)
    at = open_app(CHAT, chat=str(conv_id))
    in_db: list[Any] = []
    real_reply = Engine.reply

    def reply_watched(self: Any, *args: Any, **kwargs: Any) -> Iterator[str]:
        it = iter(real_reply(self, *args, **kwargs))
        try:
            for i, piece in enumerate(it):
                yield piece  # the page saves before it asks for the next piece
                if i == 2:
                    in_db.append(store().list_messages(conv_id)[-1])
        finally:
            it.close()

    monkeypatch.setattr(Engine, "reply", reply_watched)
    at.chat_input(key="chat_input").set_value("Go on.").run()
    check(at)
    partial = in_db[0]  # what a crash after the third piece would have left
    assert (partial.role, partial.text, partial.meta["stop"]) == ("char", "la la la", "interrupted")
    final = store().list_messages(conv_id)[-1]
    assert final.id == partial.id and final.text == " ".join(["la"] * 12)  # saved in place
    assert final.meta["stop"] == "length" and final.alternatives == [final.text]


def test_a_reply_cut_by_a_crash_shows_as_interrupted_and_continues(
    app_env: Path, tiny_model: Path, says: Callable[[str], None]
) -> None:
    more = " and so on."
    conv_id = new_chat(max_tokens=len(world_tokenizer().encode(more)))
    text = kill_mid_reply(tiny_model, conv_id, app_env)

    says(more)
    at = open_app(CHAT, chat=str(conv_id))  # the app started again
    msg = store().list_messages(conv_id)[-1]
    assert msg.text == text and chat_texts(at)[-1] == text
    assert any(c.value == "interrupted" for c in at.caption)
    assert keys(at, f"regen_{msg.id}") and keys(at, f"cont_{msg.id}")

    at.button(key=f"cont_{msg.id}").click().run()
    check(at)
    done = store().get_message(msg.id)
    assert done.text == text + more and done.alternatives == [text + more]  # made longer
    assert done.meta["stop"] == "length" and done.meta["continued"]
    assert not any(c.value == "interrupted" for c in at.caption)
