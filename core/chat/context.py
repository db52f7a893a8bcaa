"""What the engine needs to know of a saved conversation: its character context and its
transcript as Messages. The store keeps rows; the engine takes a CharacterContext and a list of
Messages; this module turns one into the other, so that neither knows of the other."""

from __future__ import annotations

from core.errors import StoreError
from core.lore import with_constant_lore
from core.prompt import CharacterContext, Message
from core.store import Character, ChatMessage, Store
from core.text import DEFAULT_CHAR


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
        ctx = character_context(store, character, conv.user_name or None)
    else:
        ctx = CharacterContext(
            name=conv.character_name or DEFAULT_CHAR,
            user_name=store.user_name(conv.user_name),
            user_persona=store.setting_str("user_persona"),
        )
    with_constant_lore(store, conv, ctx)  # lorebooks' constant entries: in the opening
    return ctx


def prompt_messages(store: Store, conversation_id: int) -> list[Message]:
    """The transcript as the engine reads it (the chosen version of each message)."""
    return [to_message(m) for m in store.list_messages(conversation_id)]


def to_message(m: ChatMessage) -> Message:
    """A stored message as the engine reads it: its chosen version, and the text fed before
    it when it was generated (meta "before")."""
    before = (m.meta or {}).get("before")
    return Message(
        role=m.role,  # type: ignore[arg-type]
        text=m.text,
        name=m.name,
        before=before if isinstance(before, str) else "",
    )
