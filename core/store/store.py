"""The store: characters, conversations, messages and settings in one SQL database.

`open_store()` opens (and creates or migrates) `data_dir()/app.db`, or the SQLAlchemy URL given
or named by `$RP_DB_URL`. Every method is one short transaction in its own session, so a
`Store` is safe to share between threads (Streamlit sessions); the objects it returns are
detached copies that stay readable after it returns.

SQLite runs in WAL mode with foreign keys on and a busy timeout on every connection, and each
write transaction starts with BEGIN IMMEDIATE: two writers queue instead of failing, and a
reader never sees half a write.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, cast, delete, func, or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, select

from core.config import default_url
from core.errors import StoreError
from core.roleplay import avatars
from core.store.database import IMMEDIATE, make_engine, store_error, upgrade_db
from core.store.models import (
    ROLES,
    AppSetting,
    Character,
    CharacterCreate,
    CharacterUpdate,
    ChatMessage,
    Conversation,
    Lorebook,
    utcnow,
)
from core.store.validation import (
    MAX_ITEMS,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_SHORT,
    check_dict,
    check_json,
    check_line,
    check_list,
    check_name,
    check_text,
    clean_name,
    validate_character,
)
from core.text import DEFAULT_USER, substitute

log = logging.getLogger(__name__)

_CONVERSATION_FIELDS = {"title", "model", "sampling", "user_name"}
_NUMBERED = re.compile(r"^(.*) \((\d+)\)$")  # "Name (2)"


def open_store(url: str | None = None) -> Store:
    """Open the store at `url` (default: `default_url()`), migrated to the newest schema.
    The bundled characters are seeded by the app at start (core.roleplay.cards.open_app_store),
    not here: the store knows nothing of card formats.
    """
    engine = make_engine(url or default_url())
    try:
        upgrade_db(engine)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


# --- the store ------------------------------------------------------------------------------


class Store:
    """All database operations of the app. Thread-safe: each call is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except SQLAlchemyError as e:
            raise store_error(e) from e

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it takes the write lock first (BEGIN IMMEDIATE)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                if self._sqlite:
                    session.connection(execution_options={IMMEDIATE: True})
                yield session
                session.commit()
        except SQLAlchemyError as e:
            raise store_error(e) from e

    # --- characters ---------------------------------------------------------------------

    def list_characters(self, search: str = "") -> list[Character]:
        """Characters by name; `search` matches name, tags, creator or description."""
        stmt = select(Character)
        q = (search or "").strip()
        if q:
            stmt = stmt.where(
                or_(
                    Character.name.icontains(q, autoescape=True),
                    cast(Character.tags, String).icontains(q, autoescape=True),
                    Character.creator.icontains(q, autoescape=True),
                    Character.description.icontains(q, autoescape=True),
                )
            )
        stmt = stmt.order_by(func.lower(Character.name), Character.id)
        with self._read() as s:
            return list(s.exec(stmt).all())

    def get_character(self, character_id: int | None) -> Character | None:
        if character_id is None:
            return None
        with self._read() as s:
            return s.get(Character, character_id)

    def get_character_by_name(self, name: str) -> Character | None:
        with self._read() as s:
            return s.exec(select(Character).where(Character.name == clean_name(name))).first()

    def unique_name(self, name: str) -> str:
        """`name` cleaned, or "name (2)", "name (3)"... if taken."""
        with self._read() as s:
            return self._unique_name(s, name)

    def _unique_name(self, s: Session, name: str) -> str:
        name = clean_name(name)[:MAX_NAME] or "Unnamed"
        if not self._name_taken(s, name):
            return name
        m = _NUMBERED.match(name)
        base = m.group(1) if m else name
        n = 2
        while True:
            suffix = f" ({n})"
            candidate = base[: MAX_NAME - len(suffix)] + suffix
            if not self._name_taken(s, candidate):
                return candidate
            n += 1

    @staticmethod
    def _name_taken(s: Session, name: str, except_id: int | None = None) -> bool:
        stmt = select(Character.id).where(Character.name == name)
        if except_id is not None:
            stmt = stmt.where(Character.id != except_id)
        return s.exec(stmt).first() is not None

    def create_character(
        self, data: CharacterCreate | dict[str, Any], *, unique: bool = False
    ) -> Character:
        """Add a character. A taken name is refused, or with `unique` made "Name (2)"."""
        values = data.model_dump() if isinstance(data, SQLModel) else dict(data)
        if "name" not in values:
            raise StoreError("The character's name is empty. Give a name.")
        values = validate_character(values)
        with self._write() as s:
            if self._name_taken(s, values["name"]):
                if not unique:
                    raise StoreError(
                        f'A character named "{values["name"]}" already exists. Choose another name.'
                    )
                values["name"] = self._unique_name(s, values["name"])
            character = Character(**values)
            s.add(character)
            s.flush()
        return character

    def update_character(
        self, character_id: int, data: CharacterUpdate | dict[str, Any]
    ) -> Character:
        """Change the fields given (None and unset fields of a CharacterUpdate are kept)."""
        if isinstance(data, SQLModel):
            values = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
        else:
            values = dict(data)
        values = validate_character(values)
        old_avatar = ""
        with self._write() as s:
            character = self._get(s, Character, character_id, "character")
            if "name" in values and values["name"] != character.name:
                if self._name_taken(s, values["name"], except_id=character_id):
                    raise StoreError(
                        f'A character named "{values["name"]}" already exists. Choose another name.'
                    )
                s.exec(
                    update(Conversation)
                    .where(Conversation.character_id == character_id)
                    .values(character_name=values["name"])
                )
            if "avatar" in values and values["avatar"] != character.avatar:
                old_avatar = character.avatar
            for key, value in values.items():
                setattr(character, key, value)
            character.updated_at = utcnow()
            s.add(character)
        self.collect_avatar(old_avatar)
        return character

    def duplicate_character(self, character_id: int) -> Character:
        """A copy named "Name (2)" (or the next free number), with no chats."""
        with self._write() as s:
            original = self._get(s, Character, character_id, "character")
            values = original.model_dump(exclude={"id", "created_at", "updated_at"})
            values["name"] = self._unique_name(s, original.name)
            copy = Character(**json.loads(json.dumps(values, default=str)))
            s.add(copy)
            s.flush()
        return copy

    def delete_character(self, character_id: int, chats: str) -> None:
        """Delete a character. `chats="delete"` deletes its conversations too; `chats="keep"`
        keeps them, detached (character_id NULL, the name kept in `character_name`)."""
        if chats not in ("delete", "keep"):
            raise StoreError('Say what to do with the chats of the character: "delete" or "keep".')
        with self._write() as s:
            character = self._get(s, Character, character_id, "character")
            self._leave_groups(s, character_id)  # group chats go on with their other members
            if chats == "delete":
                conv_ids = select(Conversation.id).where(Conversation.character_id == character_id)
                s.exec(delete(ChatMessage).where(ChatMessage.conversation_id.in_(conv_ids)))
                s.exec(delete(Conversation).where(Conversation.character_id == character_id))
            else:
                s.exec(
                    update(Conversation)
                    .where(Conversation.character_id == character_id)
                    .values(character_id=None, character_name=character.name)
                )
            avatar = character.avatar
            s.delete(character)
        self.collect_avatar(avatar)

    def collect_avatar(self, rel: str) -> None:
        """Delete an avatar file that no character uses any more."""
        if not rel:
            return
        with self._read() as s:
            used = s.exec(select(Character.id).where(Character.avatar == rel)).first()
        if used is None:
            avatars.remove_avatar_file(rel)

    def user_name(self, *candidates: str | None) -> str:
        """The first usable name of `candidates`, else the saved user name, else "User"."""
        for name in (*candidates, self.setting_str("user_name")):
            if name and clean_name(name):
                return clean_name(name)
        return DEFAULT_USER

    def setting_str(self, key: str) -> str:
        value = self.get_setting(key, "")
        return value if isinstance(value, str) else ""

    # --- conversations ------------------------------------------------------------------

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
            raise StoreError(f"There is no character with id {character_id}.")
        uname = self.user_name(user_name, character.user_name)
        if title is None or not title.strip():
            title = f"{character.name} {datetime.now():%Y-%m-%d %H:%M}"
        title = check_line(title, "The title")
        greetings = [substitute(g, character.name, uname) for g in character.greetings]
        greetings = [g for g in greetings if g.strip()]
        with self._write() as s:
            if s.get(Character, character_id) is None:
                raise StoreError(f"There is no character with id {character_id}.")
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
                        role="char",
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
                    raise StoreError(f"There is no character with id {i}.")
            if group and group[0] is not None:
                character_id, character_name = ids[0], group[0].name
            if character_id is not None and s.get(Character, character_id) is None:
                raise StoreError(f"There is no character with id {character_id}.")
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
                group=_check_group(dict(GROUP_DEFAULTS)) if ids else {},
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

    # --- messages -----------------------------------------------------------------------

    def list_messages(self, conversation_id: int) -> list[ChatMessage]:
        stmt = (
            select(ChatMessage)
            .where(ChatMessage.conversation_id == conversation_id)
            .order_by(ChatMessage.position, ChatMessage.id)
        )
        with self._read() as s:
            return list(s.exec(stmt).all())

    def get_message(self, message_id: int) -> ChatMessage | None:
        with self._read() as s:
            return s.get(ChatMessage, message_id)

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
                    ChatMessage.conversation_id == conversation_id
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
            msg = self._get(s, ChatMessage, message_id, "message")
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

    def delete_message(self, message_id: int) -> None:
        """Delete one message; those after it move up one position."""
        with self._write() as s:
            msg = self._get(s, ChatMessage, message_id, "message")
            cid, pos = msg.conversation_id, msg.position
            s.delete(msg)
            s.flush()
            s.exec(
                update(ChatMessage)
                .where(ChatMessage.conversation_id == cid, ChatMessage.position > pos)
                .values(position=ChatMessage.position - 1)
            )
            self._touch(s, cid)

    def rewind(self, conversation_id: int, position: int) -> int:
        """Delete the messages at `position` and after; returns how many were deleted."""
        with self._write() as s:
            self._get(s, Conversation, conversation_id, "conversation")
            result = s.exec(
                delete(ChatMessage).where(
                    ChatMessage.conversation_id == conversation_id,
                    ChatMessage.position >= position,
                )
            )
            self._touch(s, conversation_id)
            return int(result.rowcount or 0)

    def _touch(self, s: Session, conversation_id: int) -> None:
        s.exec(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=utcnow())
        )

    # --- settings -----------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read() as s:
            row = s.get(AppSetting, key)
            return default if row is None else row.value

    def set_setting(self, key: str, value: Any) -> None:
        self.update_setting(key, lambda _old: value)

    def update_setting(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Set a setting to `change(its value)` in one write transaction, so that two callers
        changing it at once (two sessions, the API) never lose one another's change; returns
        the new value. An exception from `change` leaves the setting as it was."""
        if not isinstance(key, str) or not key or len(key) > MAX_SHORT:
            raise StoreError("A setting's key must be non-empty text of at most 200 characters.")
        with self._write() as s:
            row = s.get(AppSetting, key)
            new = change(default if row is None else row.value)
            value = check_json(new, f"The setting {key!r}")
            if row is None:
                s.add(AppSetting(key=key, value=value))
            else:
                row.value = value
                s.add(row)
        return value

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _get(s: Session, cls: Any, id_: int, what: str) -> Any:
        obj = s.get(cls, id_) if id_ is not None else None
        if obj is None:
            raise StoreError(f"There is no {what} with id {id_}.")
        return obj

    # --- lorebooks (World Info; core/lore.py reads their entries) ------------------------

    def list_lorebooks(self) -> list[Lorebook]:
        with self._read() as s:
            stmt = select(Lorebook).order_by(func.lower(Lorebook.name), Lorebook.id)
            return list(s.exec(stmt).all())

    def get_lorebook(self, lorebook_id: int | None) -> Lorebook | None:
        if lorebook_id is None:
            return None
        with self._read() as s:
            return s.get(Lorebook, lorebook_id)

    def get_lorebook_by_name(self, name: str) -> Lorebook | None:
        with self._read() as s:
            return s.exec(select(Lorebook).where(Lorebook.name == clean_name(name))).first()

    def create_lorebook(
        self,
        name: str,
        entries: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        description: str = "",
        is_global: bool = False,
        *,
        unique: bool = False,
    ) -> Lorebook:
        """Add a lorebook. A taken name is refused, or with `unique` made "Name (2)"."""
        values = _check_lorebook(
            {
                "name": name,
                "entries": entries or [],
                "settings": settings or {},
                "description": description,
                "is_global": is_global,
            }
        )
        with self._write() as s:
            taken = s.exec(select(Lorebook.name)).all()
            if values["name"] in taken:
                if not unique:
                    raise StoreError(
                        f'A lorebook named "{values["name"]}" already exists. Choose another name.'
                    )
                base, n = values["name"], 2
                while f"{base[: MAX_NAME - 5]} ({n})" in taken:
                    n += 1
                values["name"] = f"{base[: MAX_NAME - 5]} ({n})"
            book = Lorebook(**values)
            s.add(book)
            s.flush()
        return book

    def update_lorebook(self, lorebook_id: int, **fields: Any) -> Lorebook:
        """Change name, description, entries, settings or is_global of a lorebook."""
        values = _check_lorebook(fields)
        with self._write() as s:
            book = self._get(s, Lorebook, lorebook_id, "lorebook")
            if "name" in values and values["name"] != book.name:
                other = s.exec(select(Lorebook.id).where(Lorebook.name == values["name"])).first()
                if other is not None:
                    raise StoreError(
                        f'A lorebook named "{values["name"]}" already exists. Choose another name.'
                    )
            for key, value in values.items():
                setattr(book, key, value)
            book.updated_at = utcnow()
            s.add(book)
        return book

    def delete_lorebook(self, lorebook_id: int) -> None:
        """Delete a lorebook and detach it from every character and chat."""
        with self._write() as s:
            book = self._get(s, Lorebook, lorebook_id, "lorebook")
            for cls in (Character, Conversation):
                for row in s.exec(select(cls)).all():
                    if lorebook_id in (row.lorebook_ids or []):
                        row.lorebook_ids = [i for i in row.lorebook_ids if i != lorebook_id]
                        s.add(row)
            s.delete(book)

    def set_character_lorebooks(self, character_id: int, lorebook_ids: list[int]) -> Character:
        """Attach exactly these lorebooks to a character (besides its own card's book)."""
        ids = self._lorebook_ids(lorebook_ids)
        with self._write() as s:
            character = self._get(s, Character, character_id, "character")
            character.lorebook_ids = ids
            character.updated_at = utcnow()
            s.add(character)
        return character

    def set_conversation_lorebooks(
        self, conversation_id: int, lorebook_ids: list[int]
    ) -> Conversation:
        """Attach exactly these lorebooks to a chat."""
        ids = self._lorebook_ids(lorebook_ids)
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            conv.lorebook_ids = ids
            s.add(conv)
        return conv

    def _lorebook_ids(self, lorebook_ids: Any) -> list[int]:
        items = check_list(lorebook_ids, "The lorebooks")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise StoreError("The lorebooks must be a list of lorebook ids.")
        ids = list(dict.fromkeys(items))
        with self._read() as s:
            found = (
                set(s.exec(select(Lorebook.id).where(Lorebook.id.in_(ids))).all()) if ids else set()
            )
        missing = [i for i in ids if i not in found]
        if missing:
            raise StoreError(f"There is no lorebook with id {missing[0]}.")
        return ids

    # --- group chats (core/group.py: who speaks; core/chat/groups.py: their prompts) -------
    # A group chat is a conversation whose `members` lists its characters (2 or more when it
    # starts; character_id is the first). `group` holds its settings (GROUP_DEFAULTS): who speaks
    # next ("activation"), whether a member may answer itself, the auto mode's number of turns,
    # the muted members, and the members who joined after it started ("joined": their card is
    # fed once, before their first reply, instead of changing the chat's opening).

    def create_group_conversation(
        self,
        character_ids: list[int],
        title: str | None = None,
        model: str = "",
        sampling: dict[str, Any] | None = None,
        user_name: str | None = None,
        group: dict[str, Any] | None = None,
    ) -> Conversation:
        """Start a chat with two or more characters. Each member's first greeting becomes a
        message by that member (its alternates as versions), in the members' order."""
        ids = list(dict.fromkeys(int(i) for i in character_ids or []))
        if len(ids) < 2:
            raise StoreError("A group chat needs at least two characters. Choose two or more.")
        if len(ids) > MAX_GROUP:
            raise StoreError(f"A group chat can have at most {MAX_GROUP} characters.")
        sampling = check_dict(sampling, "The sampling settings")
        model = check_line(model, "The model name", 1000)
        settings = _check_group({**GROUP_DEFAULTS, **(group or {})})
        members = [self.get_character(i) for i in ids]
        missing = [i for i, c in zip(ids, members, strict=True) if c is None]
        if missing:
            raise StoreError(f"There is no character with id {missing[0]}.")
        chars = [c for c in members if c is not None]
        first = chars[0]
        uname = self.user_name(user_name, first.user_name)
        if title is None or not title.strip():
            title = f"{', '.join(c.name for c in chars)} {datetime.now():%Y-%m-%d %H:%M}"
        title = check_line(title[:MAX_SHORT], "The title")
        with self._write() as s:
            for c in chars:
                if s.get(Character, c.id) is None:
                    raise StoreError(f"There is no character with id {c.id}.")
            conv = Conversation(
                character_id=first.id,
                character_name=first.name,
                title=title,
                model=model,
                sampling=sampling,
                user_name=uname,
                members=ids,
                group=settings,
            )
            s.add(conv)
            s.flush()
            position = 0
            for c in chars:
                greetings = [substitute(g, c.name, uname) for g in c.greetings]
                greetings = [g for g in greetings if g.strip()]
                if not greetings:
                    continue
                s.add(
                    ChatMessage(
                        conversation_id=conv.id,
                        position=position,
                        role="char",
                        name=c.name,
                        character_id=c.id,
                        text=greetings[0],
                        alternatives=greetings,
                        chosen=0,
                        alt_meta=[{} for _ in greetings],
                    )
                )
                position += 1
        return conv

    def add_group_member(self, conversation_id: int, character_id: int) -> Conversation:
        """Add a character to a chat (a one-character chat becomes a group chat). Its card is
        fed once, before its first reply (group "joined"), so the chat's opening stays."""
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            character = self._get(s, Character, character_id, "character")
            members = list(conv.members or [])
            if not members:
                if conv.character_id is None:
                    raise StoreError(
                        "This chat's character was deleted: start a group chat instead."
                    )
                members = [conv.character_id]
            if character_id in members:
                raise StoreError(f'"{character.name}" is already in this chat.')
            if len(members) >= MAX_GROUP:
                raise StoreError(f"A group chat can have at most {MAX_GROUP} characters.")
            settings = {**GROUP_DEFAULTS, **(conv.group or {})}
            settings["joined"] = [*settings.get("joined", []), character_id]
            conv.members = [*members, character_id]
            conv.group = _check_group(settings)
            conv.updated_at = utcnow()
            s.add(conv)
        return conv

    def remove_group_member(self, conversation_id: int, character_id: int) -> Conversation:
        """Take a character out of a group chat (its messages stay, with its name). A member
        of the chat's opening leaves it too: the next reply feeds the chat again, once."""
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            members = list(conv.members or [])
            if character_id not in members:
                raise StoreError("That character is not in this chat.")
            if len(members) <= 1:
                raise StoreError("A group chat keeps at least one character.")
            members.remove(character_id)
            settings = {**GROUP_DEFAULTS, **(conv.group or {})}
            for key in ("muted", "joined"):
                settings[key] = [i for i in settings.get(key, []) if i != character_id]
            conv.members, conv.group = members, _check_group(settings)
            if conv.character_id == character_id:
                first = s.get(Character, members[0])
                conv.character_id = members[0] if first is not None else None
                conv.character_name = first.name if first is not None else conv.character_name
            conv.updated_at = utcnow()
            s.add(conv)
        return conv

    def set_member_muted(
        self, conversation_id: int, character_id: int, muted: bool
    ) -> Conversation:
        """Mute a member (it no longer speaks on its own; the user can still pick it) or
        unmute it."""
        conv = self.get_conversation(conversation_id)
        if conv is None:
            raise StoreError(f"There is no conversation with id {conversation_id}.")
        if character_id not in (conv.members or []):
            raise StoreError("That character is not in this chat.")
        ids = [i for i in (conv.group or {}).get("muted", []) if i != character_id]
        return self.update_group_settings(
            conversation_id, muted=[*ids, character_id] if muted else ids
        )

    def _leave_groups(self, s: Session, character_id: int) -> None:
        """A deleted character leaves the group chats it was in (with other members still
        there): their messages stay, the next member becomes the chat's character."""
        groups = select(Conversation).where(cast(Conversation.members, String) != "[]")
        for conv in s.exec(groups).all():
            members = list(conv.members or [])
            if character_id not in members or len(members) < 2:
                continue
            members.remove(character_id)
            settings = {**GROUP_DEFAULTS, **(conv.group or {})}
            for key in ("muted", "joined"):
                settings[key] = [i for i in settings.get(key, []) if i != character_id]
            conv.members, conv.group = members, settings
            if conv.character_id == character_id:
                first = s.get(Character, members[0])
                conv.character_id = members[0] if first is not None else None
                conv.character_name = first.name if first is not None else conv.character_name
            s.add(conv)
        s.flush()

    def update_group_settings(self, conversation_id: int, **settings: Any) -> Conversation:
        """Change a group chat's settings: activation ("natural", "list" or "manual"),
        allow_self (bool), auto_turns (1-50), muted (member ids)."""
        unknown = set(settings) - {"activation", "allow_self", "auto_turns", "muted"}
        if unknown:
            raise StoreError(f"Group chats have no setting(s) {', '.join(sorted(unknown))}.")
        with self._write() as s:
            conv = self._get(s, Conversation, conversation_id, "conversation")
            if not conv.members:
                raise StoreError("This chat is not a group chat.")
            merged = _check_group({**GROUP_DEFAULTS, **(conv.group or {}), **settings})
            merged["muted"] = [i for i in merged["muted"] if i in conv.members]
            conv.group = merged
            conv.updated_at = utcnow()
            s.add(conv)
        return conv


MAX_LORE_ENTRIES = 5000


def _check_lorebook(fields: dict[str, Any]) -> dict[str, Any]:
    """A lorebook's fields checked (any subset); raises StoreError naming the bad field."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "name":
            out[key] = check_name(value, "The lorebook's name")
        elif key == "description":
            out[key] = check_text(value, "The lorebook's description")
        elif key == "entries":
            items = check_list(value, "The lorebook's entries", MAX_LORE_ENTRIES)
            if not all(isinstance(e, dict) for e in items):
                raise StoreError("Each lorebook entry must be a JSON object.")
            out[key] = check_json(items, "The lorebook's entries")
        elif key == "settings":
            out[key] = check_dict(value, "The lorebook's settings")
        elif key == "is_global":
            out[key] = bool(value)
        else:
            raise StoreError(f"Lorebooks have no field {key!r}.")
    return out


# --- group chats ---------------------------------------------------------------------------

MAX_GROUP = 20  # characters in one group chat
GROUP_ACTIVATIONS = (
    "natural",
    "list",
    "manual",
)  # core.roleplay.group.ACTIVATIONS (a unit test checks)
GROUP_DEFAULTS: dict[str, Any] = {
    "activation": "natural",
    "allow_self": False,
    "auto_turns": 3,
    "muted": [],
    "joined": [],
}


def _check_group(settings: dict[str, Any]) -> dict[str, Any]:
    """A group chat's settings, checked; unknown keys are kept as they are."""
    out = dict(settings)
    if out.get("activation") not in GROUP_ACTIVATIONS:
        raise StoreError(
            f"Who speaks next must be one of {', '.join(GROUP_ACTIVATIONS)}, "
            f"not {out.get('activation')!r}."
        )
    out["allow_self"] = bool(out.get("allow_self"))
    turns = out.get("auto_turns")
    if isinstance(turns, bool) or not isinstance(turns, int) or not 1 <= turns <= 50:
        raise StoreError("The number of automatic turns must be a whole number from 1 to 50.")
    for key in ("muted", "joined"):
        ids = out.get(key) or []
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise StoreError(f"The group's {key} list must hold character ids.")
        out[key] = list(dict.fromkeys(ids))
    return check_dict(out, "The group settings")


def _set_at(items: list[Any], index: int, value: Any, length: int) -> list[Any]:
    """A copy of `items` padded with {} (or cut) to `length`, with `value` at `index` if given."""
    out = [x if isinstance(x, dict) else {} for x in list(items)[:length]]
    out += [{} for _ in range(length - len(out))]
    if value is not None and 0 <= index < length:
        out[index] = value
    return out
