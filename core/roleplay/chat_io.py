"""Conversations to and from files: Markdown (export) and SillyTavern chat JSONL (both ways).

SillyTavern's JSONL: a first line with the chat's header ({"user_name", "character_name",
"create_date", "chat_metadata"}), then one message a line ({"name", "is_user", "is_system",
"send_date", "mes", "swipes", "swipe_id", "extra"}). Our own fields travel in
`extra["rwkv_roleplay"]` (role, meta of each version) so an export imports back unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from core.errors import AppError, NotFound
from core.store import MAX_ITEMS, Store, StoreError
from core.store.groups import MAX_GROUP
from core.store.models import Character, ChatMessage, Conversation
from core.store.validation import MAX_SHORT
from core.text import NARRATOR_NAME, loads_json

MAX_CHAT_BYTES = 50 * 1024 * 1024
MAX_CHAT_MESSAGES = 100_000
EXT_KEY = "rwkv_roleplay"


class ChatIOError(AppError):
    """A chat file could not be read; the message says why."""


def _conversation(store: Store, conv_id: int) -> tuple[Conversation, list[ChatMessage]]:
    conv = store.get_conversation(conv_id)
    if conv is None:
        raise NotFound(f"There is no conversation with id {conv_id}.")
    return conv, store.list_messages(conv_id)


def _names(store: Store, conv: Conversation) -> tuple[str, str]:
    character = store.get_character(conv.character_id)
    char = character.name if character is not None else conv.character_name or "Assistant"
    return char, conv.user_name or "User"


def _speaker(msg: ChatMessage, char: str, user: str) -> str:
    if msg.name:
        return msg.name
    return {"user": user, "char": char}.get(msg.role, NARRATOR_NAME)


def _member_names(store: Store, conv: Conversation) -> list[str]:
    """A group chat's characters by name (those deleted since are left out)."""
    found = [store.get_character(i) for i in conv.members]
    return [c.name for c in found if c is not None]


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_markdown(store: Store, conv_id: int) -> str:
    """The chat as Markdown: a title, who and when, then each message's chosen version."""
    conv, messages = _conversation(store, conv_id)
    char, user = _names(store, conv)
    lines = [f"# {conv.title or char}", ""]
    info = [f"Character: {char}", f"User: {user}", f"Started: {conv.created_at:%Y-%m-%d %H:%M} UTC"]
    if conv.members:  # a group chat: all its characters
        info[0] = f"Characters: {', '.join(_member_names(store, conv))}"
    if conv.model:
        info.append(f"Model: {conv.model}")
    lines += [" · ".join(info), ""]
    for msg in messages:
        speaker = _speaker(msg, char, user)
        text = msg.text.replace("\r\n", "\n")
        if msg.role == "narrator":
            lines += [f"*{speaker}:*", "", text, ""]
        else:
            lines += [f"**{speaker}:**", "", text, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def export_jsonl(store: Store, conv_id: int) -> str:
    """The chat as a SillyTavern chat file (JSON lines)."""
    conv, messages = _conversation(store, conv_id)
    char, user = _names(store, conv)
    header = {
        "user_name": user,
        "character_name": char,
        "create_date": _iso(conv.created_at),
        "chat_metadata": {
            EXT_KEY: {"title": conv.title, "model": conv.model, "sampling": conv.sampling}
        },
    }
    if conv.members:  # a group chat: its characters' names, in order
        header["chat_metadata"][EXT_KEY]["members"] = _member_names(store, conv)
    lines = [json.dumps(header, ensure_ascii=False)]
    for msg in messages:
        alts = list(msg.alternatives) or [msg.text]
        entry: dict[str, Any] = {
            "name": _speaker(msg, char, user),
            "is_user": msg.role == "user",
            "is_system": False,
            "send_date": _iso(msg.created_at),
            "mes": msg.text,
            "extra": {EXT_KEY: {"role": msg.role, "name": msg.name, "alt_meta": msg.alt_meta}},
        }
        if msg.role == "narrator":
            entry["extra"]["type"] = "narrator"
        if msg.role != "user" or len(alts) > 1:
            entry["swipes"] = alts
            entry["swipe_id"] = msg.chosen
            entry["swipe_info"] = [{"send_date": entry["send_date"], "extra": {}} for _ in alts]
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _parse_date(value: Any) -> datetime | None:
    """ISO 8601 or epoch milliseconds, as an aware UTC datetime; None when unreadable
    (SillyTavern also writes dates like "July 20, 2023 2:00am", not worth guessing at)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)
        if isinstance(value, str) and value:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def import_jsonl(store: Store, data: str | bytes, character_id: int | None) -> Conversation:
    """Import a SillyTavern chat file as a new conversation (all of it or nothing).

    With `character_id` the chat belongs to that character; with None, to the character named in
    the file's header if one has that name, else to no character (its name kept for display).
    """
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_CHAT_BYTES:
            raise ChatIOError(f"The chat file is larger than {MAX_CHAT_BYTES // 2**20} MB.")
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ChatIOError("The chat file is not UTF-8 text.") from None
    if len(data) > MAX_CHAT_BYTES:
        raise ChatIOError(f"The chat file is larger than {MAX_CHAT_BYTES // 2**20} MB.")

    header: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    for lineno, line in enumerate(data.lstrip("\ufeff").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = loads_json(line)
        except json.JSONDecodeError as e:
            raise ChatIOError(f"Line {lineno} of the chat file is not valid JSON: {e}.") from None
        except ValueError:  # json's other refusal: an integer of over 4300 digits
            msg = f"Line {lineno} of the chat file has a number too long to read."
            raise ChatIOError(msg) from None
        except RecursionError:
            raise ChatIOError(f"Line {lineno} of the chat file is nested too deeply.") from None
        if not isinstance(obj, dict):
            raise ChatIOError(f"Line {lineno} of the chat file is not a JSON object.")
        if "mes" not in obj:
            if not messages and not header and ("user_name" in obj or "character_name" in obj):
                header = obj
                continue
            raise ChatIOError(f"Line {lineno} of the chat file has no message text ('mes').")
        if len(messages) >= MAX_CHAT_MESSAGES:
            raise ChatIOError(f"The chat has more than {MAX_CHAT_MESSAGES:,} messages.")
        messages.append(_message(obj, lineno))
    if not header and not messages:
        raise ChatIOError("The chat file is empty.")

    meta = header.get("chat_metadata")
    ours = meta.get(EXT_KEY) if isinstance(meta, dict) else None
    ours = ours if isinstance(ours, dict) else {}
    char_name = _text(header.get("character_name"))
    character = store.get_character(character_id) if character_id is not None else None
    if character_id is not None and character is None:
        raise NotFound(f"There is no character with id {character_id}.")
    if character is None and char_name:
        character = store.get_character_by_name(char_name)
    if character is not None:
        char_name = character.name
    members = _members(store, ours.get("members"), character)
    if members:
        char_name = members[0].name
    # a title of its own beside the chat it came from (the app's export carries its title)
    title = _text(ours.get("title")) or char_name or "Chat"
    title = f"{' '.join(title.split())[: MAX_SHORT - len(IMPORTED)]}{IMPORTED}"
    user_name = _text(header.get("user_name"))
    defaults = {"char": {char_name, _text(header.get("character_name"))}, "user": {user_name}}
    by_name = {c.name: c.id for c in members}
    for m in messages:
        if members and m["role"] == "char":  # a group chat: each member's messages are theirs
            m["character_id"] = by_name.get(m["name"] or char_name)
        elif m["name"] in defaults.get(m["role"], set()):
            m["name"] = ""  # a speaker named as the chat's default is stored as "" (the default)
    try:
        return store.import_conversation(
            character_id=character.id if character is not None else None,
            character_name=char_name,
            title=title,
            user_name=user_name,
            model=_text(ours.get("model")),
            sampling=ours.get("sampling") if isinstance(ours.get("sampling"), dict) else None,
            messages=messages,
            created_at=_parse_date(header.get("create_date")),
            members=[c.id for c in members if c.id is not None] or None,
        )
    except StoreError as e:
        raise ChatIOError(f"The chat cannot be imported: {e}") from None


IMPORTED = " (imported)"  # after an imported chat's title


def _members(store: Store, names: Any, chosen: Character | None) -> list[Character]:
    """A group chat's characters from the names our export writes, those this app has (by
    name, in order): two or more make the import a group chat again. With fewer, or when the
    user chose a character that is not among them, it is a one-character chat as before."""
    if not isinstance(names, list):
        return []
    found: dict[int, Character] = {}
    for name in names[:MAX_GROUP]:
        c = store.get_character_by_name(name) if isinstance(name, str) and name else None
        if c is not None and c.id is not None:
            found.setdefault(c.id, c)
    members = list(found.values())
    if len(members) < 2 or (chosen is not None and chosen.id not in found):
        return []
    if chosen is not None:  # the character chosen on import leads the group
        members.sort(key=lambda c: c.id != chosen.id)
    return members


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _message(obj: dict[str, Any], lineno: int) -> dict[str, Any]:
    text = obj.get("mes")
    if not isinstance(text, str):
        raise ChatIOError(f"Line {lineno}: the message text ('mes') is not text.")
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    ours = extra.get(EXT_KEY) if isinstance(extra.get(EXT_KEY), dict) else {}
    role = ours.get("role")
    if role not in ("user", "char", "narrator"):
        if obj.get("is_user"):
            role = "user"
        elif obj.get("is_system") or extra.get("type") == "narrator":
            role = "narrator"
        else:
            role = "char"
    swipes = obj.get("swipes")
    alternatives = [s for s in swipes if isinstance(s, str)] if isinstance(swipes, list) else []
    alternatives = alternatives[:MAX_ITEMS] or [text]
    chosen = obj.get("swipe_id")
    alt_meta = ours.get("alt_meta") if isinstance(ours.get("alt_meta"), list) else None
    # our own export: the name we stored (often ""); else the speaker named in the file
    name = ours["name"] if isinstance(ours.get("name"), str) else _text(obj.get("name"))
    if role == "narrator" and name == NARRATOR_NAME:
        name = ""
    return {
        "role": role,
        "name": name,
        "text": text,
        "alternatives": alternatives,
        "chosen": chosen if isinstance(chosen, int) and not isinstance(chosen, bool) else 0,
        "alt_meta": alt_meta,
        "created_at": _parse_date(obj.get("send_date")),
    }
