"""What the engine needs to know of a saved conversation: its character context and its
transcript as Messages. The store keeps rows; the engine takes a CharacterContext and a list of
Messages; this module turns one into the other, so that neither knows of the other."""

from __future__ import annotations

from functools import partial

from core.chat.card_fields import expand_opening, system_prompt
from core.errors import NotFound
from core.prompt import CharacterContext, Message, StartState
from core.prompt.roleplay import example_lines
from core.roleplay import state_files
from core.roleplay.lore import with_constant_lore
from core.store import Character, ChatMessage, Conversation, Store
from core.text import DEFAULT_CHAR, bare_name, normalize, substitute


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
        system_prompt=system_prompt(character),  # the card's; {{original}} = the usual opening
        start_state=start_state(character),
    )


def start_state(character: Character) -> StartState | None:
    """The character's RWKV state file as the engine takes it (None when it has none). A file
    that is not in the data folder, or a malformed reference, becomes a StartState with its
    problem: the chat runs without it and says so (Engine.start_notice)."""
    try:
        ref = state_files.reference(character.extensions)
    except state_files.StateFileError as e:
        return StartState("state.pth", "", lambda: [], problem=str(e))
    if ref is None:
        return None
    problem = ""
    if not state_files.is_present(ref.sha256):
        problem = (
            f"{character.name}'s state file {ref.name} is not in this app's data folder (a card "
            "imported without it?): upload it again in the character's form."
        )
    return StartState(
        ref.name, ref.sha256, partial(state_files.load_state_file, ref), problem=problem
    )


def conversation_context(store: Store, conversation_id: int, speaker: str = "") -> CharacterContext:
    """The character context of a chat (a bare one if its character was deleted). In a group
    chat, `speaker` (the name of the member who replies) chooses the stop strings."""
    conv = store.get_conversation(conversation_id)
    if conv is None:
        raise NotFound(f"There is no conversation with id {conversation_id}.")
    character = store.get_character(conv.character_id)
    if conv.members:  # a group chat: one opening for all its members
        ctx = group_context(store, conv, speaker)
    elif character is not None:
        ctx = character_context(store, character, conv.user_name or None)
    else:
        ctx = CharacterContext(
            name=conv.character_name or DEFAULT_CHAR,
            user_name=store.user_name(conv.user_name),
            user_persona=store.setting_str("user_persona"),
        )
    with_constant_lore(store, conv, ctx)  # lorebooks' constant entries: in the opening
    ctx = expand_opening(ctx, conv)  # macros: the chat's own clock and dice, same every time
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


# --- group chats ------------------------------------------------------------------------------


def group_members(store: Store, conv: Conversation) -> list[Character]:
    """A group chat's characters that still exist, in the chat's fixed order."""
    found = [store.get_character(i) for i in conv.members or []]
    return [c for c in found if c is not None]


def group_label(names: list[str]) -> str:
    """ "Ada", "Ada and Ben", "Ada, Ben and Cy": the group as the opening names it."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def group_context(store: Store, conv: Conversation, speaker: str = "") -> CharacterContext:
    """A group chat's context, SillyTavern's "join" card mode: one opening with the cards of
    the members the chat started with, in their fixed order, muted ones too, so that it stays
    the same whoever speaks and the state cache keeps working. Members who joined later are
    not in it: their card is fed once, before their first reply (core/chat/groups.py). A chat
    that started with one character keeps that character's own opening.

    `speaker` (a member's name) changes only the stop strings, never the prompt's text: a
    reply ends where it starts another member's line (or the user's), and the speaker's card's
    own stop strings apply."""
    members = group_members(store, conv)
    joined = set((conv.group or {}).get("joined", []))
    opening = [c for c in members if c.id not in joined]
    first = opening[0] if opening else None
    user = store.user_name(conv.user_name or None, first.user_name if first else None)
    if first is not None and len(opening) == 1:
        ctx = character_context(store, first, conv.user_name or None)
    elif first is not None:
        ctx = joined_context(opening, user, store.setting_str("user_persona"))
    else:
        ctx = CharacterContext(
            name=conv.character_name or DEFAULT_CHAR,
            user_name=user,
            user_persona=store.setting_str("user_persona"),
        )
    me = next((c for c in members if c.name == speaker), None)
    stops = list(me.stop_strings) if me is not None else []
    for c in members:
        if c.name != speaker:
            name = bare_name(c.name)
            stops += [f"\n{name}:", f"\n{name}\uff1a"]
    ctx.stop_strings = list(dict.fromkeys(stops))
    return ctx


def joined_context(members: list[Character], user: str, user_persona: str = "") -> CharacterContext:
    """The context of a group chat that started with `members` (two or more): named after all
    of them, with each one's card, the scenarios (each once) and the user's persona."""
    scenarios = (normalize(substitute(c.scenario, c.name, user)) for c in members)
    return CharacterContext(
        name=group_label([c.name for c in members]),
        user_name=user,
        persona=_group_persona(members, user),
        scenario="\n".join(dict.fromkeys(x for x in scenarios if x)),
        user_persona=user_persona,
    )


def _group_persona(members: list[Character], user: str) -> str:
    """Each member's description and personality, then every member's example lines, each
    with {{char}} standing for that member."""
    lines: list[str] = []
    for c in members:
        if c.description.strip():
            lines.append(f"About {c.name}: {normalize(substitute(c.description, c.name, user))}")
        if c.personality.strip():
            text = normalize(substitute(c.personality, c.name, user))
            lines.append(f"{c.name}'s personality: {text}")
    for c in members:
        examples = example_lines(
            CharacterContext(name=c.name, user_name=user, example_dialogue=c.example_dialogue)
        )
        if examples:
            lines.append(normalize(examples))
    return "\n".join(lines)


def group_join_note(character: Character, user: str) -> str:
    """What is fed once before the first reply of a member who joined a group chat late."""
    lines = [f"{character.name} joins the scene."]
    for text, fmt in (
        (character.description, "About {name}: {text}"),
        (character.personality, "{name}'s personality: {text}"),
        (character.scenario, "{text}"),
    ):
        if text.strip():
            lines.append(
                fmt.format(name=character.name, text=substitute(text, character.name, user))
            )
    return normalize("\n".join(lines))
