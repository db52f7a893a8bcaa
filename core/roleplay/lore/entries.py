"""A lorebook's entries and settings as SillyTavern's World Info keeps them: defaults, cleaning
of what a file or a user gives, and the names shown for them."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

from core.errors import AppError
from core.store import MAX_LORE_ENTRIES

DEFAULT_SCAN_DEPTH = 2
DEFAULT_BUDGET = 1024  # tokens (see the module's docstring)
MAX_RECURSION = 3
MAX_ENTRIES = MAX_LORE_ENTRIES  # entries in one book (the store's); a file with more is refused
MAX_FILE_BYTES = 5_000_000  # a World Info file (the store's JSON limit)

AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = 0, 1, 2, 3
LOGIC_NAMES = {AND_ANY: "AND ANY", NOT_ALL: "NOT ALL", NOT_ANY: "NOT ANY", AND_ALL: "AND ALL"}

# SillyTavern's positions: before=0, after=1, ANTop=2, ANBottom=3, atDepth=4, EMTop=5, EMBottom=6.
# Here every position is fed before the reply (see the module's docstring); it is kept as given.
POSITION_BEFORE, POSITION_AFTER = 0, 1

# a new entry as SillyTavern's editor makes one (newWorldInfoEntryTemplate)
ENTRY_DEFAULTS: dict[str, Any] = {
    "key": [],
    "keysecondary": [],
    "comment": "",
    "content": "",
    "constant": False,
    "vectorized": False,
    "selective": True,
    "selectiveLogic": AND_ANY,
    "addMemo": False,
    "order": 100,
    "position": POSITION_BEFORE,
    "disable": False,
    "excludeRecursion": False,
    "preventRecursion": False,
    "delayUntilRecursion": False,
    "probability": 100,
    "useProbability": True,
    "depth": 4,
    "group": "",
    "groupOverride": False,
    "groupWeight": 100,
    "scanDepth": None,
    "caseSensitive": None,
    "matchWholeWords": None,
    "useGroupScoring": None,
    "automationId": "",
    "role": None,
    "sticky": None,
    "cooldown": None,
    "delay": None,
    "ignoreBudget": False,
}

# book settings (Lorebook.settings) and their defaults
SETTINGS_DEFAULTS: dict[str, Any] = {
    "scan_depth": DEFAULT_SCAN_DEPTH,
    "token_budget": None,  # None: DEFAULT_BUDGET
    "recursive": False,
    "case_sensitive": False,
    "match_whole_words": False,
}

_REGEX_KEY = re.compile(r"^/([\w\W]+?)/([a-z]*)$")
_JS_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")


class LoreError(AppError):
    """A lorebook file or entry that cannot be used; the message says what is wrong."""


# --- entries --------------------------------------------------------------------------------


def _bool(value: Any, default: bool) -> bool:
    return value if isinstance(value, bool) else default


def _int(value: Any, default: int) -> int:
    """`value` as a whole number, else `default`: a number, or text that reads as one ("7",
    "7.0"). Text too large for one ("1e999", 400 digits: infinite as a float) is `default`."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return default
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return default


def _keys(value: Any) -> list[str]:
    """Keys as a list of non-empty strings ("a, b" as two keys, as SillyTavern's editor)."""
    if isinstance(value, str):
        value = value.split(",") if not _REGEX_KEY.match(value.strip()) else [value]
    if not isinstance(value, list):
        return []
    return [str(k).strip() for k in value if isinstance(k, str | int | float) and str(k).strip()]


def normalize_entry(raw: Any, uid: int) -> dict[str, Any]:
    """An entry with every field SillyTavern knows (defaults where missing), its unknown
    fields kept as they came. Raises LoreError when `raw` is not an object."""
    if not isinstance(raw, dict):
        raise LoreError(f"Entry {uid} is not a JSON object.")
    entry = {**copy.deepcopy(ENTRY_DEFAULTS), **copy.deepcopy(raw)}
    entry["uid"] = _int(raw.get("uid"), uid)
    entry["key"] = _keys(entry.get("key"))
    entry["keysecondary"] = _keys(entry.get("keysecondary"))
    for text in ("comment", "content", "group", "automationId"):
        if not isinstance(entry.get(text), str):
            entry[text] = "" if entry.get(text) is None else str(entry[text])
    for flag in ("constant", "selective", "disable", "useProbability", "excludeRecursion"):
        entry[flag] = _bool(entry.get(flag), ENTRY_DEFAULTS[flag])
    entry["order"] = _int(entry.get("order"), 100)
    entry["selectiveLogic"] = _int(entry.get("selectiveLogic"), AND_ANY)
    if entry["selectiveLogic"] not in LOGIC_NAMES:
        entry["selectiveLogic"] = AND_ANY
    p = entry.get("probability")
    entry["probability"] = 100 if p is None else max(0, min(100, _int(p, 100)))
    for opt in ("caseSensitive", "matchWholeWords"):
        if not isinstance(entry.get(opt), bool):
            entry[opt] = None
    sd = entry.get("scanDepth")
    entry["scanDepth"] = None if sd is None or isinstance(sd, bool) else max(0, _int(sd, 0))
    return entry


def new_entry(uid: int, **fields: Any) -> dict[str, Any]:
    return normalize_entry(fields, uid)


def next_uid(entries: Sequence[dict[str, Any]]) -> int:
    return max((_int(e.get("uid"), -1) for e in entries), default=-1) + 1


def entry_title(entry: dict[str, Any]) -> str:
    """How an entry is named to a user: its comment (memo), else its first key, else its uid."""
    if str(entry.get("comment") or "").strip():
        return str(entry["comment"]).strip()
    keys = _keys(entry.get("key"))
    return keys[0] if keys else f"#{entry.get('uid', '?')}"


def normalize_settings(raw: Any) -> dict[str, Any]:
    out = dict(SETTINGS_DEFAULTS)
    if isinstance(raw, dict):
        out.update(raw)
    out["scan_depth"] = max(0, _int(out.get("scan_depth"), DEFAULT_SCAN_DEPTH))
    tb = out.get("token_budget")
    out["token_budget"] = None if tb in (None, "", 0) else max(1, _int(tb, DEFAULT_BUDGET))
    for flag in ("recursive", "case_sensitive", "match_whole_words"):
        out[flag] = _bool(out.get(flag), SETTINGS_DEFAULTS[flag])
    return out
