"""The messages of a conversation: list and read them, append one, edit it, add and pick its
versions (alternatives: regenerated replies, swipes), rewrite a version as a reply grows.
Deleting, rewinding and removing a version keep what they removed for an undo: removals.py.

A message's `text` is always `alternatives[chosen]` and `meta` that version's `alt_meta`;
every change of `text` clears its `tokens`. Each change of a message touches its chat's
`updated_at`. A removed message (`removal_id` set) is skipped by every read here, and cannot
be changed: it is not found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from core.contracts import ROLES
from core.errors import NotFound, StoreError
from core.store.base import StoreBase
from core.store.models import ChatMessage, Conversation, utcnow
from core.store.validation import MAX_ITEMS, MAX_MESSAGE, check_dict, check_name, check_text


def _set_at(items: list[Any], index: int, value: Any, length: int) -> list[Any]:
    """A copy of `items` padded with {} (or cut) to `length`, with `value` at `index` if given."""
    out = [x if isinstance(x, dict) else {} for x in list(items)[:length]]
    out += [{} for _ in range(length - len(out))]
    if value is not None and 0 <= index < length:
        out[index] = value
    return out


class MessagesMixin(StoreBase):
    """list_messages, get_message, add_message, edit_message, add_alternative, set_version,
    select_alternative."""

    def list_messages(self, conversation_id: int) -> list[ChatMessage]:
        """The chat's messages in order (not those removed and kept for an undo)."""
        stmt = (
            select(ChatMessage)
            .where(ChatMessage.conversation_id == conversation_id, live())
            .order_by(ChatMessage.position, ChatMessage.id)
        )
        with self._read() as s:
            return list(s.exec(stmt).all())

    def get_message(self, message_id: int) -> ChatMessage | None:
        """The message, or None (also when it was removed)."""
        with self._read() as s:
            msg = s.get(ChatMessage, message_id)
            return msg if msg is not None and msg.removal_id is None else None

    def add_message(
        self,
        conversation_id: int,
        role: str,
        text: str,
        name: str = "",
        meta: dict[str, Any] | None = None,
        character_id: int | None = None,
    ) -> ChatMessage:
        """Append a message at the end of a conversation. `character_id`: which character
        spoke (a group chat's member); None = the chat's character."""
        if role not in ROLES:
            raise StoreError(f"A message's role must be one of {', '.join(ROLES)}, not {role!r}.")
        text = check_text(text, "The message", MAX_MESSAGE)
        name = check_name(name or "", "The speaker's name", allow_empty=True)
        meta = check_dict(meta, "The message's meta")
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            last = s.exec(
                select(func.max(ChatMessage.position)).where(
                    ChatMessage.conversation_id == conversation_id, live()
                )
            ).one()
            now = utcnow()
            msg = ChatMessage(
                conversation_id=conversation_id,
                position=0 if last is None else last + 1,
                role=role,
                name=name,
                character_id=character_id,
                text=text,
                alternatives=[text],
                chosen=0,
                alt_meta=[meta],
                meta=meta,
                created_at=now,
                updated_at=now,
            )
            conv.updated_at = now
            s.add(conv)
            s.add(msg)
            s.flush()
        return msg

    def edit_message(self, message_id: int, text: str) -> ChatMessage:
        """Replace the text of the chosen version of a message."""
        text = check_text(text, "The message", MAX_MESSAGE)

        def change(msg: ChatMessage) -> None:
            alts = list(msg.alternatives) or [msg.text]
            chosen = min(max(msg.chosen, 0), len(alts) - 1)
            alts[chosen] = text
            msg.alternatives, msg.chosen, msg.text = alts, chosen, text
            msg.meta = {**msg.meta, "edited": True}
            msg.alt_meta = _set_at(msg.alt_meta, chosen, msg.meta, len(alts))

        return self._change_message(message_id, change)

    def add_alternative(
        self,
        message_id: int,
        text: str,
        meta: dict[str, Any] | None = None,
        select: bool = True,
    ) -> ChatMessage:
        """Add another version of a message (a regenerated reply, a swipe); with `select` it
        becomes the chosen one."""
        text = check_text(text, "The message", MAX_MESSAGE)
        meta = check_dict(meta, "The message's meta")

        def change(msg: ChatMessage) -> None:
            alts = list(msg.alternatives) or [msg.text]
            if len(alts) >= MAX_ITEMS:
                raise StoreError(f"A message can have at most {MAX_ITEMS} versions.")
            alt_meta = _set_at(msg.alt_meta, len(alts), meta, len(alts) + 1)
            msg.alternatives, msg.alt_meta = [*alts, text], alt_meta
            if select:
                msg.chosen, msg.text, msg.meta = len(alts), text, meta

        return self._change_message(message_id, change, clear_tokens=select)

    def set_version(
        self, message_id: int, index: int, text: str, meta: dict[str, Any] | None = None
    ) -> ChatMessage:
        """Rewrite version `index` (0-based) of a message in place: a reply saved as it grows.
        Not an edit: no "edited" mark."""
        text = check_text(text, "The message", MAX_MESSAGE)
        meta = check_dict(meta, "The message's meta")

        def change(msg: ChatMessage) -> None:
            alts = list(msg.alternatives) or [msg.text]
            if not 0 <= index < len(alts):
                raise StoreError(f"Version {index} of message {message_id} does not exist.")
            alts[index] = text
            msg.alternatives, msg.alt_meta = alts, _set_at(msg.alt_meta, index, meta, len(alts))
            if msg.chosen == index:
                msg.text, msg.meta = text, meta

        return self._change_message(message_id, change)

    def select_alternative(self, message_id: int, index: int) -> ChatMessage:
        """Show and feed version `index` (0-based) of a message."""

        def change(msg: ChatMessage) -> None:
            alts = list(msg.alternatives) or [msg.text]
            if not isinstance(index, int) or not 0 <= index < len(alts):
                raise StoreError(
                    f"Version {index} does not exist; this message has {len(alts)} "
                    f"version(s), numbered from 0."
                )
            metas = _set_at(msg.alt_meta, 0, None, len(alts))
            msg.chosen, msg.text, msg.meta = index, alts[index], dict(metas[index] or {})

        return self._change_message(message_id, change)

    def _change_message(
        self,
        message_id: int,
        change: Callable[[ChatMessage], None],
        clear_tokens: bool = True,
        touch: bool = True,
    ) -> ChatMessage:
        with self._write() as s:
            msg = self._live_message(s, message_id)
            change(msg)
            if clear_tokens:
                msg.tokens = None
            if touch:
                now = utcnow()
                msg.updated_at = now
                conv = s.get(Conversation, msg.conversation_id)
                if conv is not None:
                    conv.updated_at = now
                    s.add(conv)
            s.add(msg)
        return msg

    def _live_message(self, s: Session, message_id: int) -> ChatMessage:
        msg = self._get(s, ChatMessage, message_id, "message")
        if msg.removal_id is not None:
            raise NotFound(f"There is no message with id {message_id}.")
        return msg


def live() -> Any:
    """The condition of a message not removed (for a query's where)."""
    return col(ChatMessage.removal_id).is_(None)
