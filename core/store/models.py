"""Database tables: characters, conversations, messages, lorebooks and app settings.

Each table has a `...Base` with the fields a user may set, the table class itself
(`table=True`), and for characters a `CharacterCreate` / `CharacterUpdate` that pages build from
forms. JSON columns hold lists and dicts; they are always replaced, never mutated in place.

The schema is owned by the Alembic revisions in `core/store/migrations/versions`: a change here
needs a new revision there (a migration test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Index
from sqlmodel import Field, SQLModel

# who a message is by: the contracts' words, importable from here as before (a message's `role`
# column stays a plain str: a Role is one, and the table holds its value)
from core.contracts import ROLES as ROLES
from core.contracts import Role as Role


def utcnow() -> datetime:
    """Now, in UTC. SQLite keeps no time zone: stored times read back as naive UTC datetimes."""
    return datetime.now(UTC)


# --- characters ---------------------------------------------------------------------------


class CharacterBase(SQLModel):
    name: str
    description: str = ""  # description / persona
    personality: str = ""
    scenario: str = ""
    # first greeting, then the alternates; [] when the character has none
    greetings: list[str] = Field(default_factory=list, sa_type=JSON)
    example_dialogue: str = ""
    user_name: str = ""  # the user's name in this role play; "" = the app's default
    avatar: str = ""  # path relative to data_dir(), e.g. "avatars/ab12....png"; "" = none
    stop_strings: list[str] = Field(default_factory=list, sa_type=JSON)
    sampling_preset: str = ""
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    creator_notes: str = ""
    creator: str = ""
    character_version: str = ""
    # card fields kept as they came: the lorebook, `data.extensions`, every other field of the
    # card's `data` object we have no column for, and unknown keys beside `data`
    character_book: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    extensions: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    card_extra: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    card_top: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # lorebooks (table lorebooks) attached to this character, besides its own character_book
    lorebook_ids: list[int] = Field(default_factory=list, sa_type=JSON)


class Character(CharacterBase, table=True):
    __tablename__ = "characters"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class CharacterCreate(CharacterBase):
    """What a form or an importer gives to `Store.create_character`."""


class CharacterUpdate(SQLModel):
    """Fields to change; those left unset (or None) keep their value. `avatar=""` removes it."""

    name: str | None = None
    description: str | None = None
    personality: str | None = None
    scenario: str | None = None
    greetings: list[str] | None = None
    example_dialogue: str | None = None
    user_name: str | None = None
    avatar: str | None = None
    stop_strings: list[str] | None = None
    sampling_preset: str | None = None
    tags: list[str] | None = None
    creator_notes: str | None = None
    creator: str | None = None
    character_version: str | None = None
    character_book: dict[str, Any] | None = None
    extensions: dict[str, Any] | None = None
    card_extra: dict[str, Any] | None = None
    card_top: dict[str, Any] | None = None
    lorebook_ids: list[int] | None = None


# --- conversations -------------------------------------------------------------------------


class ConversationBase(SQLModel):
    title: str = ""
    model: str = ""  # the model file / name used
    sampling: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    user_name: str = ""  # the user's name in this chat
    # a group chat's characters (ids, in the order they joined); [] for a one-character chat,
    # whose character is character_id. character_id is then the group's first member.
    members: list[int] = Field(default_factory=list, sa_type=JSON)
    # a group chat's settings: who speaks next ("activation"), muted members, self-replies...
    group: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # lorebooks (table lorebooks) attached to this chat
    lorebook_ids: list[int] = Field(default_factory=list, sa_type=JSON)


class Conversation(ConversationBase, table=True):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_updated_at", "updated_at"),)

    id: int | None = Field(default=None, primary_key=True)
    # NULL once the character was deleted with chats="keep"; its name stays in character_name
    character_id: int | None = Field(default=None, foreign_key="characters.id", index=True)
    character_name: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# --- messages ------------------------------------------------------------------------------


class ChatMessage(SQLModel, table=True):
    """One message. `text` is always `alternatives[chosen]` (the version shown and fed)."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_position", "conversation_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversations.id")
    position: int  # 0, 1, 2, ... within the conversation
    role: str  # a Role: "user" | "char" | "narrator"
    name: str = ""  # speaker name; "" = the default for the role
    # which character spoke (group chats: whose name and avatar); None = the chat's character
    character_id: int | None = Field(default=None)
    text: str = ""
    alternatives: list[str] = Field(default_factory=list, sa_type=JSON)
    chosen: int = 0
    alt_meta: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)  # per alternative
    # the tokens fed for `text` (nothing writes them yet: the engine re-tokenizes); cleared
    # whenever `text` changes, so they can never belong to another text
    tokens: list[int] | None = Field(default=None, sa_type=JSON)
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # of the chosen version
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # removed (deleted, rewound) but kept for an undo until the next compaction: every read of
    # a chat's messages skips such a row; `position` is then where it goes back
    # (no foreign key: SQLite adds one only by copying the table; the store keeps them paired)
    removal_id: int | None = Field(default=None, index=True)


class Removal(SQLModel, table=True):
    """What one delete, rewind or "delete this version" removed, kept for an undo (`token`)
    until the next compaction. The removed messages point at it (`ChatMessage.removal_id`); a
    removed version is kept here whole (`data`: message_id, index, text, meta, chosen)."""

    __tablename__ = "removals"

    id: int | None = Field(default=None, primary_key=True)  # also the order of removals
    token: str = Field(unique=True, index=True)
    conversation_id: int = Field(foreign_key="conversations.id", index=True)
    kind: str  # "delete", "rewind", "version"
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow)


# --- lorebooks ------------------------------------------------------------------------------


class LorebookBase(SQLModel):
    name: str
    description: str = ""
    # entries as SillyTavern World Info keeps them (core/lore.py reads and writes them)
    entries: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    # book settings: scan_depth, token_budget, recursive, case_sensitive, match_whole_words
    settings: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    is_global: bool = False  # used in every chat


class Lorebook(LorebookBase, table=True):
    __tablename__ = "lorebooks"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# --- settings ------------------------------------------------------------------------------


class AppSetting(SQLModel, table=True):
    __tablename__ = "app_settings"

    key: str = Field(primary_key=True)
    value: Any = Field(default=None, sa_type=JSON, nullable=True)
