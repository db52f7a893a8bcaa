"""Persistence: characters, conversations, messages, lorebooks and settings in one SQL database.

`models` holds the SQLModel tables, `validation` what a value must be to be stored, `database`
the engine and the Alembic migrations (`migrations/`, append-only), `store` the Store with one
short transaction per method: one facade composed of a mixin per aggregate (`characters`,
`conversations`, `messages`, `groups`, `lorebooks`, `settings`) over `base` (the engine and
its sessions). A missing row raises NotFound, data changed under the caller Conflict (both
StoreErrors). The store knows nothing of models, prompts or card formats.
"""

from core.config import default_url
from core.errors import Conflict, NotFound, StoreError
from core.store.database import db_revision, known_revisions, make_engine, upgrade_db
from core.store.models import (
    ROLES,
    AppSetting,
    Character,
    CharacterCreate,
    CharacterUpdate,
    ChatMessage,
    Conversation,
    Lorebook,
    Removal,
    Role,
)
from core.store.removals import UNDO_KEEP, Removed
from core.store.store import Store, open_store
from core.store.validation import (
    MAX_ITEMS,
    MAX_LORE_ENTRIES,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_TEXT,
    clean_name,
    validate_character,
)

__all__ = [
    "MAX_ITEMS",
    "MAX_LORE_ENTRIES",
    "MAX_MESSAGE",
    "MAX_NAME",
    "MAX_TEXT",
    "UNDO_KEEP",
    "ROLES",
    "AppSetting",
    "Character",
    "CharacterCreate",
    "CharacterUpdate",
    "ChatMessage",
    "Conflict",
    "Conversation",
    "Lorebook",
    "NotFound",
    "Removal",
    "Removed",
    "Role",
    "Store",
    "StoreError",
    "clean_name",
    "db_revision",
    "default_url",
    "known_revisions",
    "make_engine",
    "open_store",
    "upgrade_db",
    "validate_character",
]
