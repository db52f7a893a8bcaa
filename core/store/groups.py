"""Group chats: a conversation whose `members` lists its characters, and its `group` settings.

core.roleplay.group decides who speaks; core.chat.groups builds their prompts. Here: the rules
of a group's settings (`check_group`, `GROUP_DEFAULTS`, `MAX_GROUP`), starting a group chat,
members joining, leaving and muted, and a deleted character leaving its groups (`leave_groups`,
called by the character's deletion in the same transaction).

A group chat has 2 or more members when it starts; character_id is the first. `group` holds who
speaks next ("activation"), whether a member may answer itself, the auto mode's number of turns,
the muted members, and the members who joined after it started ("joined": their card is fed
once, before their first reply, instead of changing the chat's opening).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, cast
from sqlmodel import Session, select

from core.contracts import Role
from core.errors import NotFound, StoreError
from core.store.base import StoreBase
from core.store.models import Character, ChatMessage, Conversation, utcnow
from core.store.validation import MAX_SHORT, check_dict, check_line
from core.text import substitute

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


def check_group(settings: dict[str, Any]) -> dict[str, Any]:
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


def leave_groups(s: Session, character_id: int) -> None:
    """A deleted character leaves the group chats it was in (with other members still
    there): their messages stay, the next member becomes the chat's character. In the
    caller's transaction `s`."""
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


class GroupsMixin(StoreBase):
    """create_group_conversation, add_group_member, remove_group_member, set_member_muted,
    update_group_settings."""

    if TYPE_CHECKING:  # reads of the other aggregates, composed with this one in Store

        def get_character(self, character_id: int | None) -> Character | None: ...

        def get_conversation(self, conversation_id: int | None) -> Conversation | None: ...

        def user_name(self, *candidates: str | None) -> str: ...

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
        settings = check_group({**GROUP_DEFAULTS, **(group or {})})
        members = [self.get_character(i) for i in ids]
        missing = [i for i, c in zip(ids, members, strict=True) if c is None]
        if missing:
            raise NotFound(f"There is no character with id {missing[0]}.")
        chars = [c for c in members if c is not None]
        first = chars[0]
        uname = self.user_name(user_name, first.user_name)
        if title is None or not title.strip():
            title = f"{', '.join(c.name for c in chars)} {datetime.now():%Y-%m-%d %H:%M}"
        title = check_line(title[:MAX_SHORT], "The title")
        with self._write() as s:
            for c in chars:
                if s.get(Character, c.id) is None:
                    raise NotFound(f"There is no character with id {c.id}.")
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
                        role=Role.CHAR,
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
            conv.group = check_group(settings)
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
            conv.members, conv.group = members, check_group(settings)
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
            raise NotFound(f"There is no conversation with id {conversation_id}.")
        if character_id not in (conv.members or []):
            raise StoreError("That character is not in this chat.")
        ids = [i for i in (conv.group or {}).get("muted", []) if i != character_id]
        return self.update_group_settings(
            conversation_id, muted=[*ids, character_id] if muted else ids
        )

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
            merged = check_group({**GROUP_DEFAULTS, **(conv.group or {}), **settings})
            merged["muted"] = [i for i in merged["muted"] if i in conv.members]
            conv.group = merged
            conv.updated_at = utcnow()
            s.add(conv)
        return conv
