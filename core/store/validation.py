"""What the store accepts: limits, cleaning of names and text, and checks with messages that
say what is wrong with which field. Every value written to the database passes through here."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from core.errors import StoreError
from core.roleplay import avatars
from core.text import bare_name

# limits: each is checked with a message that says what is too long and by how much
MAX_TEXT = 100_000  # characters in one text field (persona, scenario, greeting, example...)
MAX_MESSAGE = 100_000  # characters in one chat message
MAX_NAME = 100  # characters in a character's or user's name
MAX_SHORT = 200  # one-line fields: creator, version, preset, title, tag
MAX_ITEMS = 200  # greetings, tags, alternatives
MAX_STOP_STRINGS = 50
MAX_JSON_CHARS = 5_000_000  # lorebook, extensions, unknown card fields, settings, meta
MAX_LORE_ENTRIES = 5000  # entries of one lorebook, a card's own (character_book) included

_TEXT_FIELDS = {
    "description": "The description",
    "personality": "The personality",
    "scenario": "The scenario",
    "example_dialogue": "The example dialogue",
    "creator_notes": "The creator notes",
}
_SHORT_FIELDS = {
    "creator": "The creator",
    "character_version": "The character version",
    "sampling_preset": "The sampling preset",
}
_DICT_FIELDS = {"extensions", "card_extra", "card_top"}

# control characters: removed from text (except tab and newlines), from names entirely, together
# with invisible direction overrides that could disguise a name
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAME_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)


# --- cleaning and checking ------------------------------------------------------------------


def clean_name(name: str) -> str:
    """A name safe to show and to use anywhere: one line, no control characters, no path
    separators (`/` and `\\` become `-`), no leading dots, runs of spaces collapsed, no trailing
    colons (a speaker's `Name:` header would read "Name::", core.text.bare_name)."""
    name = unicodedata.normalize("NFC", str(name))
    name = _NAME_CONTROL.sub(" ", name)
    name = name.replace("/", "-").replace("\\", "-")
    name = re.sub(r"\s+", " ", name).strip()
    return bare_name(name.lstrip(". "))


def clean_text(text: str) -> str:
    """Text as stored: verbatim, except control characters other than tab, CR and LF."""
    return _TEXT_CONTROL.sub("", str(text))


def check_name(value: Any, label: str = "The name", allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{label} must be text.")
    name = clean_name(value)
    if not name and not allow_empty:
        raise StoreError(f"{label} is empty. Give a name.")
    if len(name) > MAX_NAME:
        raise StoreError(f"{label} is {len(name):,} characters long; the limit is {MAX_NAME}.")
    return name


def check_text(value: Any, label: str, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise StoreError(f"{label} must be text.")
    text = clean_text(value)
    if len(text) > limit:
        raise StoreError(
            f"{label} is {len(text):,} characters long; the limit is {limit:,}. Shorten it."
        )
    return text


def check_line(value: Any, label: str, limit: int = MAX_SHORT) -> str:
    text = check_text(value, label, limit * 4)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        raise StoreError(f"{label} is {len(text):,} characters long; the limit is {limit}.")
    return text


def check_list(value: Any, label: str, limit: int = MAX_ITEMS) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise StoreError(f"{label} must be a list.")
    if len(value) > limit:
        raise StoreError(f"{label} has {len(value):,} entries; the limit is {limit}.")
    return value


def check_json(value: Any, label: str) -> Any:
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{label} cannot be stored: {e}.") from None
    if size > MAX_JSON_CHARS:
        raise StoreError(
            f"{label} is {size:,} characters of JSON; the limit is {MAX_JSON_CHARS:,}."
        )
    return json.loads(json.dumps(value, ensure_ascii=False))  # a deep, plain copy


def check_dict(value: Any, label: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StoreError(f"{label} must be a JSON object.")
    return check_json(value, label)


def validate_character(values: dict[str, Any]) -> dict[str, Any]:
    """Check and clean character fields (any subset); raises StoreError naming the bad field."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            out[key] = check_name(value, "The character's name")
        elif key == "user_name":
            out[key] = check_name(value or "", "The user's name", allow_empty=True)
        elif key in _TEXT_FIELDS:
            out[key] = check_text(value, _TEXT_FIELDS[key])
        elif key in _SHORT_FIELDS:
            out[key] = check_line(value, _SHORT_FIELDS[key])
        elif key == "greetings":
            items = check_list(value, "The greetings")
            out[key] = [check_text(g, f"Greeting {i + 1}") for i, g in enumerate(items)]
        elif key == "stop_strings":
            items = check_list(value, "The stop strings", MAX_STOP_STRINGS)
            stops = [check_text(s, f"Stop string {i + 1}", MAX_SHORT) for i, s in enumerate(items)]
            out[key] = list(dict.fromkeys(s for s in stops if s))
        elif key == "tags":
            items = check_list(value, "The tags")
            tags = [check_line(t, f"Tag {i + 1}") for i, t in enumerate(items)]
            out[key] = list(dict.fromkeys(t for t in tags if t))
        elif key == "avatar":
            rel = value or ""
            if rel and (not isinstance(rel, str) or avatars.avatar_path(rel) is None):
                raise StoreError("The avatar file was not found. Upload the picture again.")
            out[key] = rel
        elif key == "character_book":
            if value is not None and not isinstance(value, dict):
                raise StoreError("The lorebook (character_book) must be a JSON object.")
            entries = value.get("entries") if value is not None else None
            if isinstance(entries, list | dict) and len(entries) > MAX_LORE_ENTRIES:
                raise StoreError(
                    f"The lorebook (character_book) has {len(entries):,} entries; the limit "
                    f"is {MAX_LORE_ENTRIES:,}."
                )
            out[key] = None if value is None else check_json(value, "The lorebook")
        elif key in _DICT_FIELDS:
            out[key] = check_dict(value, key)
        elif key == "lorebook_ids":
            items = check_list(value, "The lorebooks")
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                raise StoreError("The lorebooks must be a list of lorebook ids.")
            out[key] = list(dict.fromkeys(items))
        else:
            raise StoreError(f"Characters have no field {key!r}.")
    return out


def json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
