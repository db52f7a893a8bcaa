"""The store: characters, conversations, messages, lorebooks and settings in one SQL database.

`open_store()` opens (and creates or migrates) `data_dir()/app.db`, or the SQLAlchemy URL given
or named by `$RP_DB_URL`. Every method is one short transaction in its own session, so a
`Store` is safe to share between threads (Streamlit sessions); the objects it returns are
detached copies that stay readable after it returns.

SQLite runs in WAL mode with foreign keys on and a busy timeout on every connection, and each
write transaction starts with BEGIN IMMEDIATE: two writers queue instead of failing, and a
reader never sees half a write.

`Store` is the one facade; its methods live by aggregate, one mixin a module: `characters`
(and their avatar files, the user's name), `conversations`, `messages`, `removals` (what a delete,
rewind or version removal keeps for an undo), `groups` (group chats), `lorebooks` and
`settings`, over the shared plumbing of `base` (engine, sessions).
A row that does not exist raises `NotFound`, data that changed under the caller `Conflict`
(both StoreErrors).
"""

from __future__ import annotations

from core.config import default_url
from core.store.base import StoreBase
from core.store.characters import CharactersMixin
from core.store.conversations import ConversationsMixin
from core.store.database import make_engine, upgrade_db
from core.store.groups import GROUP_ACTIVATIONS, GROUP_DEFAULTS, MAX_GROUP, GroupsMixin
from core.store.lorebooks import MAX_LORE_ENTRIES, LorebooksMixin
from core.store.messages import MessagesMixin
from core.store.removals import UNDO_KEEP, RemovalsMixin, Removed
from core.store.settings import SettingsMixin

# the limits and defaults of the aggregates, importable from here as before
__all__ = [
    "GROUP_ACTIVATIONS",
    "GROUP_DEFAULTS",
    "MAX_GROUP",
    "MAX_LORE_ENTRIES",
    "UNDO_KEEP",
    "Removed",
    "Store",
    "open_store",
]


class Store(
    CharactersMixin,
    ConversationsMixin,
    MessagesMixin,
    RemovalsMixin,
    GroupsMixin,
    LorebooksMixin,
    SettingsMixin,
    StoreBase,
):
    """All database operations of the app. Thread-safe: each call is its own transaction."""


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
