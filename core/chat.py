"""A chat's side of the engine: what the engine needs to know of a saved conversation, and
how a reply the engine generates is saved.

The store keeps rows; the engine takes a CharacterContext and a list of Messages. This module
turns one into the other, so that neither the store nor the engine knows of the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from core.errors import StoreError
from core.prompt import CharacterContext, Message
from core.store import Character, ChatMessage, Store
from core.text import DEFAULT_CHAR, normalize

SAVE_EVERY_S = 2.0  # a reply in progress is saved this often: a crash loses at most this much


def character_context(
    store: Store, character: Character, user_name: str | None = None
) -> CharacterContext:
    """What the engine needs to open a chat with `character`."""
    return CharacterContext(
        name=character.name,
        user_name=store.user_name(user_name, character.user_name),
        persona=character.description,
        personality=character.personality,
        scenario=character.scenario,
        example_dialogue=character.example_dialogue,
        user_persona=store.setting_str("user_persona"),
        stop_strings=list(character.stop_strings),
    )


def conversation_context(store: Store, conversation_id: int) -> CharacterContext:
    """The character context of a chat (a bare one if its character was deleted)."""
    conv = store.get_conversation(conversation_id)
    if conv is None:
        raise StoreError(f"There is no conversation with id {conversation_id}.")
    character = store.get_character(conv.character_id)
    if character is not None:
        return character_context(store, character, conv.user_name or None)
    return CharacterContext(
        name=conv.character_name or DEFAULT_CHAR,
        user_name=store.user_name(conv.user_name),
        user_persona=store.setting_str("user_persona"),
    )


def prompt_messages(store: Store, conversation_id: int) -> list[Message]:
    """The transcript as the engine reads it (the chosen version of each message)."""
    return [
        Message(role=m.role, text=m.text, name=m.name)  # type: ignore[arg-type]
        for m in store.list_messages(conversation_id)
    ]


class ReplySaver:
    """Saves a reply while it is generated, so that a crash (kill -9, a power cut) loses at most
    its last couple of seconds.

    `op` is "new" (a new message by `role`), "regen" or "continue" (a new version of `target`).
    The first save, `every_s` seconds into the reply, creates the message or the version with
    meta stop "interrupted"; later saves rewrite it in place, and `finish` writes the final text
    with its real stop reason. A reply cut short by a crash is then a shorter stored message,
    shown as interrupted. The engine rebuilds a reply's checkpoint from the stored text, so the
    state invariant holds for it like for any other message.
    """

    def __init__(
        self,
        store: Store,
        conversation_id: int,
        op: str,
        role: str = "char",
        target: ChatMessage | None = None,
        meta: dict[str, Any] | None = None,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if op not in ("new", "regen", "continue") or (op != "new" and target is None):
            raise ValueError(f"unknown reply operation {op!r} (or no message to change)")
        self.store, self.conversation_id, self.op, self.role = store, conversation_id, op, role
        self.target = target
        self.meta = {**(meta or {}), **({"continued": True} if op == "continue" else {})}
        self.every_s = SAVE_EVERY_S if every_s is None else every_s
        self._clock = clock
        self._last = clock()
        self._base = target.text if op == "continue" and target is not None else ""
        self._streamed = ""
        self.message: ChatMessage | None = None  # as last saved
        self._version = 0  # the version of `message` this reply writes

    def track(self, pieces: Iterable[str]) -> Iterator[str]:
        """The engine's text pieces, passed on; the text so far is saved every `every_s` s."""
        for piece in pieces:
            self._streamed += piece
            if self._clock() - self._last >= self.every_s:
                self._save(normalize(self._base + self._streamed), {"stop": "interrupted"})
                self._last = self._clock()
            yield piece

    def finish(self, text: str, meta: dict[str, Any]) -> ChatMessage | None:
        """The final save (the engine's on_finish): `text` as stored and the reply's meta (for
        continue, `meta["tokens"]` counts the new tokens only). None when nothing was said."""
        if self.op == "continue" and self.target is not None:
            old = (self.target.meta or {}).get("tokens")
            meta = {**meta, "tokens": int(old or 0) + int(meta.get("tokens") or 0)}
        self._save(text, meta)
        return self.message

    def _save(self, text: str, meta: dict[str, Any]) -> None:
        if not text.strip() or (self.op == "continue" and text == self._base):
            return  # nothing said (yet)
        meta = {**self.meta, **meta}
        if self.message is not None:
            self.message = self.store.set_version(self.message.id, self._version, text, meta)
        elif self.op == "new":
            self.message = self.store.add_message(self.conversation_id, self.role, text, meta=meta)
        else:
            assert self.target is not None
            self.message = self.store.add_alternative(self.target.id, text, meta=meta)
            self._version = self.message.chosen
