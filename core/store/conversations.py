"""Conversations (chats): start one with a character (its greetings become the first message,
the others its versions), list, read, rename, change and delete them, and import a whole chat
at once, all or nothing. Their messages are in `messages.py`; group chats in `groups.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete
from sqlmodel import select

from core.contracts import ROLES, Role
from core.errors import NotFound, StoreError
from core.store.base import StoreBase
from core.store.groups import GROUP_DEFAULTS, MAX_GROUP, check_group
from core.store.models import Character, ChatMessage, Conversation, utcnow
from core.store.removals import delete_removals
from core.store.validation import (
    MAX_MESSAGE,
    check_dict,
    check_line,
    check_list,
    check_name,
    check_text,
)
from core.text import substitute

_CONVERSATION_FIELDS = {"title", "model", "sampling", "user_name"}


class ConversationsMixin(StoreBase):
    """create_conversation, list_conversations, get_conversation, rename_conversation,
    update_conversation, delete_conversation, import_conversation."""

    if TYPE_CHECKING:  # from CharactersMixin, composed with this one in Store

        def get_character(self, character_id: int | None) -> Character | None: ...

        def user_name(self, *candidates: str | None) -> str: ...

    def create_conversation(
        self,
        character_id: int,
        title: str | None = None,
        model: str = "",
        sampling: dict[str, Any] | None = None,
        user_name: str | None = None,
    ) -> Conversation:
        """Start a chat with a character; its greetings become message 0 and its alternatives."""
        sampling = check_dict(sampling, "The sampling settings")
        model = check_line(model, "The model name", 1000)
        character = self.get_character(character_id)
        if character is None:
            raise NotFound(f"There is no character with id {character_id}.")
        uname = self.user_name(user_name, character.user_name)
        if title is None or not title.strip():
            title = f"{character.name} {datetime.now():%Y-%m-%d %H:%M}"
        title = check_line(title, "The title")
        greetings = [substitute(g, character.name, uname) for g in character.greetings]
        greetings = [g for g in greetings if g.strip()]
        with self._write() as s:
            if s.get(Character, character_id) is None:
                raise NotFound(f"There is no character with id {character_id}.")
            conv = Conversation(
                character_id=character_id,
                character_name=character.name,
                title=title,
                model=model,
                sampling=sampling,
                user_name=uname,
            )
            s.add(conv)
            s.flush()
            if greetings:
                s.add(
                    ChatMessage(
                        conversation_id=conv.id,
                        position=0,
                        role=Role.CHAR,
                        text=greetings[0],
                        alternatives=greetings,
                        chosen=0,
                        alt_meta=[{} for _ in greetings],
                    )
                )
        return conv

    def list_conversations(
        self, character_id: int | None = None, limit: int = 50
    ) -> list[Conversation]:
        """Conversations, the most recently updated first (of one character if given)."""
        stmt = select(Conversation)
        if character_id is not None:
            stmt = stmt.where(Conversation.character_id == character_id)
        stmt = stmt.order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        stmt = stmt.limit(max(1, int(limit)))
        with self._read() as s:
            return list(s.exec(stmt).all())

    def get_conversation(self, conversation_id: int | None) -> Conversation | None:
        if conversation_id is None:
            return None
        with self._read() as s:
            return s.get(Conversation, conversation_id)

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        return self.update_conversation(conversation_id, title=title)

    def update_conversation(self, conversation_id: int, **fields: Any) -> Conversation:
        """Change title, model, sampling or user_name of a conversation."""
        unknown = set(fields) - _CONVERSATION_FIELDS
        if unknown:
            raise StoreError(f"Conversations have no field(s) {', '.join(sorted(unknown))}.")
        values: dict[str, Any] = {}
        if "title" in fields:
            values["title"] = check_line(fields["title"], "The title")
            if not values["title"]:
                raise StoreError("The title is empty. Give a title.")
        if "model" in fields:
            values["model"] = check_line(fields["model"], "The model name", 1000)
        if "sampling" in fields:
            values["sampling"] = check_dict(fields["sampling"], "The sampling settings")
        if "user_name" in fields:
            values["user_name"] = check_name(fields["user_name"] or "", "The user's name", True)
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            for key, value in values.items():
                setattr(conv, key, value)
            conv.updated_at = utcnow()
            s.add(conv)
        return conv

    def delete_conversation(self, conversation_id: int) -> None:
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            s.exec(delete(ChatMessage).where(ChatMessage.conversation_id == conversation_id))
            delete_removals(s, [conversation_id])
            s.delete(conv)

    def import_conversation(
        self,
        *,
        character_id: int | None,
        character_name: str,
        title: str,
        user_name: str = "",
        model: str = "",
        sampling: dict[str, Any] | None = None,
        messages: list[dict[str, Any]],
        created_at: datetime | None = None,
        members: list[int] | None = None,
    ) -> Conversation:
        """Add a whole conversation at once (all or nothing). Each message is a dict with
        role, text and optionally name, alternatives, chosen, alt_meta, meta, created_at,
        character_id. `members`: a group chat's characters (two or more; the first is then
        the chat's character), with the group's default settings."""
        title = check_line(title, "The title") or "Imported chat"
        character_name = check_name(character_name or "", "The character's name", True)
        user_name = check_name(user_name or "", "The user's name", True)
        rows = [self._check_message_dict(i, m) for i, m in enumerate(messages)]
        sampling = check_dict(sampling, "The sampling settings")
        model = check_line(model, "The model name", 1000)
        ids = list(dict.fromkeys(int(i) for i in members or []))
        if len(ids) == 1 or len(ids) > MAX_GROUP:
            raise StoreError(f"A group chat has 2 to {MAX_GROUP} characters, not {len(ids)}.")
        with self._write() as s:
            group = [s.get(Character, i) for i in ids]
            for i, c in zip(ids, group, strict=True):
                if c is None:
                    raise NotFound(f"There is no character with id {i}.")
            if group and group[0] is not None:
                character_id, character_name = ids[0], group[0].name
            if character_id is not None and s.get(Character, character_id) is None:
                raise NotFound(f"There is no character with id {character_id}.")
            known = set(ids) | ({character_id} if character_id is not None else set())
            for row in rows:  # a speaker's id only where it is one of this chat's characters
                if row.get("character_id") not in known:
                    row.pop("character_id", None)
            now = utcnow()
            conv = Conversation(
                character_id=character_id,
                character_name=character_name,
                title=title,
                model=model,
                sampling=sampling,
                user_name=user_name,
                created_at=created_at or now,
                updated_at=now,
                members=ids,
                group=check_group(dict(GROUP_DEFAULTS)) if ids else {},
            )
            s.add(conv)
            s.flush()
            for position, row in enumerate(rows):
                s.add(ChatMessage(conversation_id=conv.id, position=position, **row))
        return conv

    def _check_message_dict(self, i: int, m: dict[str, Any]) -> dict[str, Any]:
        label = f"Message {i + 1}"
        role = m.get("role")
        if role not in ROLES:
            raise StoreError(f"{label}: the role must be one of {', '.join(ROLES)}, not {role!r}.")
        text = check_text(m.get("text", ""), f"{label}'s text", MAX_MESSAGE)
        alts = check_list(m.get("alternatives") or [text], f"{label}'s alternatives")
        alts = [check_text(a, f"{label}'s alternative", MAX_MESSAGE) for a in alts]
        chosen = m.get("chosen", 0)
        if not isinstance(chosen, int) or not 0 <= chosen < len(alts) or alts[chosen] != text:
            alts, chosen = (alts, alts.index(text)) if text in alts else ([*alts, text], len(alts))
        alt_meta = m.get("alt_meta")
        if not isinstance(alt_meta, list) or len(alt_meta) != len(alts):
            alt_meta = [{} for _ in alts]
        alt_meta = [check_dict(x if isinstance(x, dict) else {}, "meta") for x in alt_meta]
        meta = check_dict(m.get("meta") or alt_meta[chosen], f"{label}'s meta")
        alt_meta[chosen] = meta
        row: dict[str, Any] = {
            "role": role,
            "name": check_name(m.get("name") or "", f"{label}'s name", True),
            "text": text,
            "alternatives": alts,
            "chosen": chosen,
            "alt_meta": alt_meta,
            "meta": meta,
        }
        if isinstance(m.get("created_at"), datetime):
            row["created_at"] = row["updated_at"] = m["created_at"]
        if isinstance(m.get("character_id"), int) and role == "char":
            row["character_id"] = m["character_id"]
        return row
