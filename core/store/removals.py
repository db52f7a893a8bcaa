"""Delete a message, rewind a chat, delete one version of a message: each keeps what it removed
for an undo, until the next compaction.

A removal is a row of `removals` with a token; the messages it removed stay in `messages` with
`removal_id` set (every read of a chat skips them, messages.py), at the position they had. A
removed version is kept in the removal's `data`. `undo_removal(token)` puts it all back:
messages at their positions (the messages there now move down one each), a version at its
index (chosen again if it was the one shown). Undoing the latest removal first, then the one
before, gives back exactly the chat as it was; an older removal undone while a newer one is
pending goes back to the positions it had (so it may land one or two places off), each of its
messages in its order, nothing lost. The positions of a chat's messages stay 0..n-1.

`compact_removals` deletes for good the removals older than a while (the app runs it at start,
core.runtime: `UNDO_KEEP`), and their messages.

Nothing here touches the state cache: a message put back renders the same tokens, so its
checkpoints (keyed by the token prefix) are found again if the cache still holds them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from core.errors import Conflict, NotFound
from core.store.base import StoreBase
from core.store.messages import _set_at, live
from core.store.models import ChatMessage, Conversation, Removal, utcnow
from core.store.validation import MAX_ITEMS

UNDO_KEEP = timedelta(hours=24)  # removals younger than this survive a compaction


@dataclass(frozen=True)
class Removed:
    """What a removal took away (or an undo put back): its token for `undo_removal` ("" when
    nothing was removed), the chat, the kind ("delete", "rewind", "version") and how many
    messages (0 for a version)."""

    token: str
    conversation_id: int
    kind: str
    messages: int


class RemovalsMixin(StoreBase):
    """delete_message, rewind, remove_version, undo_removal, compact_removals."""

    def delete_message(self, message_id: int) -> Removed:
        """Remove one message; those after it move up one position."""
        with self._write() as s:
            msg = _live(s, message_id)
            cid, pos = msg.conversation_id, msg.position
            removal = _new_removal(s, cid, "delete", {"messages": 1})
            msg.removal_id = removal.id
            s.add(msg)
            s.flush()
            s.exec(
                update(ChatMessage)
                .where(ChatMessage.conversation_id == cid, ChatMessage.position > pos, live())
                .values(position=ChatMessage.position - 1)
            )
            self._touch(s, cid)
            return Removed(removal.token, cid, "delete", 1)

    def rewind(self, conversation_id: int, position: int) -> Removed:
        """Remove the messages at `position` and after."""
        with self._write() as s:
            self._get(s, Conversation, conversation_id, "conversation")
            rows = list(
                s.exec(
                    select(ChatMessage).where(
                        ChatMessage.conversation_id == conversation_id,
                        ChatMessage.position >= position,
                        live(),
                    )
                ).all()
            )
            if not rows:
                return Removed("", conversation_id, "rewind", 0)
            removal = _new_removal(s, conversation_id, "rewind", {"messages": len(rows)})
            s.exec(
                update(ChatMessage)
                .where(col(ChatMessage.id).in_([m.id for m in rows]))
                .values(removal_id=removal.id)
            )
            self._touch(s, conversation_id)
            return Removed(removal.token, conversation_id, "rewind", len(rows))

    def remove_version(self, message_id: int, index: int) -> Removed:
        """Remove version `index` (0-based) of a message that has several; the one after it is
        shown in its place when it was the one shown (the one before, for the last)."""
        with self._write() as s:
            msg = _live(s, message_id)
            alts = list(msg.alternatives) or [msg.text]
            if not isinstance(index, int) or not 0 <= index < len(alts):
                raise NotFound(
                    f"Version {index} does not exist; this message has {len(alts)} "
                    "version(s), numbered from 0."
                )
            if len(alts) == 1:
                raise Conflict(
                    "This is the message's only version: delete the message instead.",
                    "only_version",
                )
            metas = _set_at(msg.alt_meta, 0, None, len(alts))
            chosen = min(max(msg.chosen, 0), len(alts) - 1)
            data = {
                "message_id": msg.id,
                "index": index,
                "text": alts[index],
                "meta": metas[index],
                "chosen": chosen == index,
            }
            removal = _new_removal(s, msg.conversation_id, "version", data)
            del alts[index], metas[index]
            if index < chosen or (index == chosen and index == len(alts)):
                chosen -= 1
            _show(msg, alts, metas, chosen)
            s.add(msg)
            self._touch(s, msg.conversation_id)
            return Removed(removal.token, msg.conversation_id, "version", 0)

    def undo_removal(self, token: str) -> Removed:
        """Put back what the removal `token` took away. NotFound when there is no such removal
        (undone already, or compacted); Conflict when the message of a removed version is gone
        (put it back first)."""
        with self._write() as s:
            removal = s.exec(select(Removal).where(Removal.token == str(token))).first()
            if removal is None:
                raise NotFound(
                    "There is nothing to undo with that token: it was undone already, or what it "
                    "removed was deleted for good."
                )
            cid = removal.conversation_id
            if removal.kind == "version":
                _put_version_back(s, removal)
                count = 0
            else:
                rows = list(
                    s.exec(
                        select(ChatMessage)
                        .where(ChatMessage.removal_id == removal.id)
                        .order_by(ChatMessage.position, ChatMessage.id)
                    ).all()
                )
                for m in rows:  # in order: each makes room at its place, then takes it
                    s.exec(
                        update(ChatMessage)
                        .where(
                            ChatMessage.conversation_id == cid,
                            ChatMessage.position >= m.position,
                            live(),
                        )
                        .values(position=ChatMessage.position + 1)
                    )
                    m.removal_id = None
                    s.add(m)
                    s.flush()
                _renumber(s, cid)
                count = len(rows)
            s.delete(removal)
            self._touch(s, cid)
            return Removed(str(token), cid, removal.kind, count)

    def compact_removals(
        self, older_than: timedelta = UNDO_KEEP, now: datetime | None = None
    ) -> int:
        """Delete for good the removals made more than `older_than` ago (timedelta(0): all),
        with the messages they kept; returns how many removals went."""
        cutoff = (now or utcnow()) - older_than
        with self._write() as s:
            old = select(Removal.id).where(Removal.created_at <= cutoff)
            ids = list(s.exec(old).all())
            if not ids:
                return 0
            s.exec(delete(ChatMessage).where(col(ChatMessage.removal_id).in_(ids)))
            s.exec(delete(Removal).where(col(Removal.id).in_(ids)))
            return len(ids)


def delete_removals(s: Session, conversation_ids: Any) -> None:
    """A chat deleted for good: its removals go with it (its messages are deleted by the
    caller, removed ones included)."""
    s.exec(delete(Removal).where(col(Removal.conversation_id).in_(conversation_ids)))


# --- helpers, inside one write ----------------------------------------------------------------
def _live(s: Session, message_id: int) -> ChatMessage:
    msg = StoreBase._get(s, ChatMessage, message_id, "message")
    if msg.removal_id is not None:
        raise NotFound(f"There is no message with id {message_id}.")
    return msg


def _new_removal(s: Session, conversation_id: int, kind: str, data: dict[str, Any]) -> Removal:
    removal = Removal(
        token=secrets.token_urlsafe(12), conversation_id=conversation_id, kind=kind, data=data
    )
    s.add(removal)
    s.flush()
    return removal


def _show(msg: ChatMessage, alts: list[str], metas: list[Any], chosen: int) -> None:
    """Set a message's versions and the one shown (text, meta), clearing its tokens."""
    msg.alternatives, msg.alt_meta, msg.chosen = alts, metas, chosen
    msg.text, msg.meta = alts[chosen], dict(metas[chosen] or {})
    msg.tokens = None
    msg.updated_at = utcnow()


def _put_version_back(s: Session, removal: Removal) -> None:
    data = removal.data or {}
    msg = s.get(ChatMessage, data.get("message_id"))
    if msg is None or msg.removal_id is not None:
        raise Conflict(
            "The message of that version was deleted since: undo that first.", "message_gone"
        )
    alts = list(msg.alternatives) or [msg.text]
    if len(alts) >= MAX_ITEMS:
        raise Conflict(f"A message can have at most {MAX_ITEMS} versions.", "too_many_versions")
    metas = _set_at(msg.alt_meta, 0, None, len(alts))
    at = min(max(int(data.get("index", len(alts))), 0), len(alts))
    alts.insert(at, str(data.get("text", "")))
    metas.insert(at, data.get("meta") if isinstance(data.get("meta"), dict) else {})
    chosen = min(max(msg.chosen, 0), len(alts) - 2)
    chosen = at if data.get("chosen") else chosen + (at <= chosen)
    _show(msg, alts, metas, chosen)
    s.add(msg)


def _renumber(s: Session, conversation_id: int) -> None:
    """Positions 0..n-1 again, in order (an older removal undone before a newer one can leave
    a gap)."""
    rows = s.exec(
        select(ChatMessage)
        .where(ChatMessage.conversation_id == conversation_id, live())
        .order_by(ChatMessage.position, ChatMessage.id)
    ).all()
    for i, m in enumerate(rows):
        if m.position != i:
            m.position = i
            s.add(m)
