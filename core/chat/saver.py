"""Saving a reply while it is generated and when it ends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from core.contracts import Op, ReplyMeta, Role, Stop
from core.store import ChatMessage, Store
from core.text import normalize

SAVE_EVERY_S = 2.0  # a reply in progress is saved this often: a crash loses at most this much


class ReplySaver:
    """Saves a reply while it is generated, so that a crash (kill -9, a power cut) loses at most
    its last couple of seconds.

    `op` is Op.NEW (a new message by `role`), Op.REGEN (a new version of `target`) or
    Op.CONTINUE: the version of `target` shown, made longer in place (as SillyTavern's continue
    does), or with `new_version` a new version holding the longer text (the app's old way).
    The first save, `every_s` seconds into the reply, creates the message or the version (or
    rewrites the version continued) with meta stop "interrupted"; later saves rewrite it in
    place, and `finish` writes the final text with its real stop reason. A reply cut short by
    a crash is then a shorter stored message, shown as interrupted. The engine rebuilds a
    reply's checkpoint from the stored text, so the state invariant holds for it like for any
    other message.
    """

    def __init__(
        self,
        store: Store,
        conversation_id: int,
        op: Op | str,
        role: Role | str = Role.CHAR,
        target: ChatMessage | None = None,
        meta: dict[str, Any] | None = None,
        name: str = "",
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        character_id: int | None = None,
        new_version: bool = False,
    ) -> None:
        op, role = Op(op), Role(role)
        if op == Op.VERSIONS or (op != Op.NEW and target is None):
            raise ValueError(f"unknown reply operation {op!r} (or no message to change)")
        self.store, self.conversation_id, self.op, self.role = store, conversation_id, op, role
        self.name = name  # the speaker's name when it is not the role's default
        self.character_id = character_id  # a group chat's member who speaks (a new message)
        self.target = target
        self.new_version = new_version  # continue: a new version instead of the one shown
        self.meta = {**(meta or {}), **({"continued": True} if op == Op.CONTINUE else {})}
        self.every_s = SAVE_EVERY_S if every_s is None else every_s
        self._clock = clock
        self._last = clock()
        self._base = target.text if op == Op.CONTINUE and target is not None else ""
        self._streamed = ""
        self.message: ChatMessage | None = None  # as last saved
        self._version = 0  # the version of `message` this reply writes

    def track(self, pieces: Iterable[str]) -> Iterator[str]:
        """The engine's text pieces, passed on; the text so far is saved every `every_s` s."""
        for piece in pieces:
            self._streamed += piece
            if self._clock() - self._last >= self.every_s:
                self._save(normalize(self._base + self._streamed), {"stop": Stop.INTERRUPTED})
                self._last = self._clock()
            yield piece

    def finish(self, text: str, meta: dict[str, Any]) -> ChatMessage | None:
        """The final save (the engine's on_finish): `text` as stored and the reply's meta (for
        continue, `meta["tokens"]` counts the new tokens only). None when nothing was said."""
        if self.op == Op.CONTINUE and self.target is not None:
            old = ReplyMeta.from_dict(self.target.meta).tokens
            meta = {**meta, "tokens": int(old or 0) + int(meta.get("tokens") or 0)}
        self._save(text, meta)
        return self.message

    def _save(self, text: str, meta: dict[str, Any]) -> None:
        if not text.strip() or (self.op == Op.CONTINUE and text == self._base):
            return  # nothing said (yet)
        meta = {**self.meta, **meta}
        if self.message is not None:
            self.message = self.store.set_version(self.message.id, self._version, text, meta)
        elif self.op == Op.CONTINUE and not self.new_version:
            assert self.target is not None  # the version shown, longer: rewritten in place
            self._version = self.target.chosen
            self.message = self.store.set_version(self.target.id, self._version, text, meta)
        elif self.op == Op.NEW:
            self.message = self.store.add_message(
                self.conversation_id,
                self.role,
                text,
                name=self.name,
                meta=meta,
                character_id=self.character_id,
            )
        else:
            assert self.target is not None
            self.message = self.store.add_alternative(self.target.id, text, meta=meta)
            self._version = self.message.chosen
