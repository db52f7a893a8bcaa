"""A user's name that would break the transcript's `Name:` lines: one ending in a colon ("Bob:"),
or the character's own name. Either way the user's lines must not get into a reply: names lose
their trailing colons, and the user's stop string stays when the two names are the same. Run
through the app's chat service on the real tiny RWKV-7, its next tokens forced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.chat import ChatService
from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message
from core.prompt.chatml import ChatMLFormat
from core.prompt.roleplay import RoleplayFormat
from core.store import Store
from tests.support.forced import ForcedBackend


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


P = SamplingParams(seed=1, max_tokens=40)


def _service(store: Store, backend: object, tmp_path: Path) -> ChatService:
    eng = Engine(backend, cache_dir=tmp_path / "states")
    return ChatService(lambda: store, lambda: eng)


@pytest.mark.parametrize(
    ("user", "said", "kept"),
    [
        # a name ending in a colon: the transcript says "Bob:", never "Bob::"
        ("Bob:", " Hello.\nBob: and I write your line", "Hello."),
        ("Bob\uff1a", " Hello.\nBob\uff1a and I write your line", "Hello."),
        # the user named like the character: a new "Alice:" line is the user's, not the reply
        ("Alice", " Hello.\nAlice: and I write your line", "Hello."),
    ],
)
def test_the_users_lines_never_get_into_a_reply(
    store: Store, rwkv7_backend: object, tmp_path: Path, user: str, said: str, kept: str
) -> None:
    alice = store.create_character({"name": "Alice", "greetings": ["Hi {{user}}."]})
    store.set_setting("user_name", user)
    fb = ForcedBackend(rwkv7_backend)
    svc = _service(store, fb, tmp_path)
    conv = svc.new_chat(alice.id)
    svc.send(conv.id, "Hi there.")
    fb.say(said)
    turn = svc.reply(conv.id, params=P).consume()
    assert turn.message.text == kept


def test_a_character_named_with_a_colon_is_said_without_it(
    store: Store, rwkv7_backend: object, tmp_path: Path
) -> None:
    made = store.create_character({"name": "Zed:"})
    assert made.name == "Zed"  # stored without it, so every prompt and page says "Zed"


@pytest.mark.parametrize("fmt", [RoleplayFormat(), ChatMLFormat()])
def test_stop_strings_keep_the_users_line_when_the_names_clash(fmt: object) -> None:
    ctx = CharacterContext(name="Alice", user_name="Alice")
    assert "\nAlice:" in fmt.stop_strings(Message("char"), ctx, [])  # type: ignore[attr-defined]
    ctx = CharacterContext(name="Alice", user_name="Bob:")
    stops = fmt.stop_strings(Message("char"), ctx, ["Cy:"])  # type: ignore[attr-defined]
    assert "\nBob:" in stops and "\nCy:" in stops and not any("::" in s for s in stops)
