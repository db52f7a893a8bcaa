"""Lorebook files: SillyTavern World Info JSON in and out, and a card's V2 `character_book`."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.roleplay.lore.entries import (
    AND_ANY,
    DEFAULT_SCAN_DEPTH,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    POSITION_BEFORE,
    LoreError,
    _int,
    normalize_entry,
    normalize_settings,
)
from core.store import Lorebook
from core.text import loads_json

# --- files: SillyTavern World Info JSON -----------------------------------------------------


def _load_json(data: bytes | str | dict[str, Any], what: str) -> Any:
    if isinstance(data, dict):
        return data
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise LoreError(f"The {what} is {len(data):,} bytes; the limit is {MAX_FILE_BYTES:,}.")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise LoreError(f"The {what} is not UTF-8 text (is it the right file?).") from None
    if len(data) > MAX_FILE_BYTES:
        raise LoreError(f"The {what} is {len(data):,} characters; the limit is {MAX_FILE_BYTES:,}.")
    try:
        return loads_json(data)  # lone surrogates (half an emoji) become U+FFFD
    except json.JSONDecodeError as e:
        raise LoreError(f"The {what} is not valid JSON ({e.msg}, line {e.lineno}).") from None
    except ValueError:  # json's other refusal: an integer of over 4300 digits
        raise LoreError(f"The {what} cannot be read: a number in it has too many digits.") from None
    except RecursionError:
        raise LoreError(f"The {what} is not valid JSON (too deeply nested).") from None


def _check_count(entries: Any, what: str) -> None:
    """A book's entries counted before any is read: more than MAX_ENTRIES is refused."""
    if isinstance(entries, list | dict) and len(entries) > MAX_ENTRIES:
        raise LoreError(f"{what} has {len(entries):,} entries; the limit is {MAX_ENTRIES:,}.")


@dataclass
class ParsedBook:
    """A book read from a file, ready to be stored (`LoreService.import_file`)."""

    name: str
    description: str
    entries: list[dict[str, Any]]
    settings: dict[str, Any]


def parse_world_info(data: bytes | str | dict[str, Any], name: str = "") -> ParsedBook:
    """A SillyTavern World Info file ({"entries": {"0": {...}, ...}}); a V2 `character_book`
    object (entries as a list, with `keys`) is accepted too. Raises LoreError with a sentence."""
    obj = _load_json(data, "World Info file")
    if not isinstance(obj, dict) or "entries" not in obj:
        raise LoreError(
            'This is not a World Info file: it has no "entries". Export a lorebook from '
            "SillyTavern's World Info panel, or a character card's lorebook."
        )
    raw = obj["entries"]
    _check_count(raw, "The file")  # in either form, before normalizing (issue 21)
    if isinstance(raw, list):  # a V2 character_book
        entries, settings = from_character_book(obj)
        return ParsedBook(
            str(obj.get("name") or name or "Lorebook"),
            str(obj.get("description") or ""),
            entries,
            settings,
        )
    if not isinstance(raw, dict):
        raise LoreError('The file\'s "entries" must be an object of entries.')
    entries = []
    for i, (k, e) in enumerate(raw.items()):
        uid = _int(k, i)
        entry = normalize_entry(e, uid)
        entry["_key"] = k if str(entry["uid"]) != k else None
        if entry["_key"] is None:
            del entry["_key"]
        entries.append(entry)
    extra = {k: v for k, v in obj.items() if k != "entries"}  # written back as they came
    given = obj.get("settings")
    settings = normalize_settings(given if isinstance(given, dict) else {})
    if extra:
        settings["file_extra"] = extra
    return ParsedBook(
        str(obj.get("name") or name or "Lorebook").strip() or "Lorebook",
        str(obj.get("description") or ""),
        entries,
        settings,
    )


def export_world_info(book: Lorebook | ParsedBook) -> dict[str, Any]:
    """The book as a SillyTavern World Info file (what `parse_world_info` reads back)."""
    out: dict[str, Any] = {}
    extra = (book.settings or {}).get("file_extra")
    if isinstance(extra, dict):
        out.update(copy.deepcopy(extra))
    entries: dict[str, Any] = {}
    for i, e in enumerate(book.entries or []):
        entry = copy.deepcopy(e)
        key = entry.pop("_key", None)
        entries[str(key if key is not None else entry.get("uid", i))] = entry
    out["entries"] = entries
    return out


def world_info_bytes(book: Lorebook | ParsedBook) -> bytes:
    return json.dumps(export_world_info(book), ensure_ascii=False, indent=2).encode("utf-8")


def world_info_filename(name: str) -> str:
    safe = re.sub(r"[^\w\- ]+", "_", name).strip() or "lorebook"
    return f"{safe}.json"


# --- V2 character_book ----------------------------------------------------------------------

_V2_BOOK_KEYS = ("name", "description", "scan_depth", "token_budget", "recursive_scanning")


def from_character_book(book: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A V2 `character_book` as World Info entries and book settings (SillyTavern's
    convertCharacterBook). Malformed entries are skipped, not raised: a card's book is data the
    user did not write here, and a chat must not fail on it. Only the first MAX_ENTRIES are
    read (a card stored before the import refused more: `character_book_size` says so)."""
    if not isinstance(book, dict):
        return [], normalize_settings({})
    raw = book.get("entries")
    entries: list[dict[str, Any]] = []
    for i, e in enumerate(raw[:MAX_ENTRIES] if isinstance(raw, list) else []):
        if not isinstance(e, dict):
            continue
        ext = e.get("extensions") if isinstance(e.get("extensions"), dict) else {}
        pos = e.get("position")
        fields = {
            "uid": _int(e.get("id"), i) if e.get("id") is not None else i,
            "key": e.get("keys", []),
            "keysecondary": e.get("secondary_keys") or [],
            "comment": e.get("comment") or e.get("name") or "",
            "content": e.get("content") or "",
            "constant": bool(e.get("constant", False)),
            "selective": bool(e.get("selective", False)),
            "order": _int(e.get("insertion_order"), 100),
            "position": ext.get("position", POSITION_BEFORE if pos == "before_char" else 1),
            "disable": not bool(e.get("enabled", True)),
            "excludeRecursion": bool(ext.get("exclude_recursion", False)),
            "preventRecursion": bool(ext.get("prevent_recursion", False)),
            "probability": ext.get("probability", 100),
            "useProbability": ext.get("useProbability", True),
            "depth": ext.get("depth", 4),
            "selectiveLogic": ext.get("selectiveLogic", AND_ANY),
            "group": ext.get("group", ""),
            "scanDepth": ext.get("scan_depth"),
            "caseSensitive": ext.get("case_sensitive", e.get("case_sensitive")),
            "matchWholeWords": ext.get("match_whole_words"),
        }
        entries.append(normalize_entry(fields, i))
    settings = normalize_settings(
        {
            "scan_depth": book.get("scan_depth", DEFAULT_SCAN_DEPTH),
            "token_budget": book.get("token_budget"),
            "recursive": bool(book.get("recursive_scanning", False)),
        }
    )
    return entries, settings


def character_book_size(book: Any) -> int:
    """How many entries a V2 `character_book` has (read or not)."""
    raw = book.get("entries") if isinstance(book, dict) else None
    return len(raw) if isinstance(raw, list) else 0


def to_character_book(
    entries: Sequence[dict[str, Any]], settings: dict[str, Any], base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """World Info entries as a V2 `character_book` (SillyTavern's
    convertWorldInfoToCharacterBook). `base`, the card's book as it was, keeps its other fields
    and each entry's unknown fields (matched by id)."""
    base = copy.deepcopy(base) if isinstance(base, dict) else {}
    old = {
        e.get("id"): e
        for e in base.get("entries", [])
        if isinstance(e, dict) and e.get("id") is not None
    }
    s = normalize_settings(settings)
    book = {k: v for k, v in base.items() if k != "entries"}
    book["scan_depth"] = s["scan_depth"]
    if s["token_budget"] is not None:
        book["token_budget"] = s["token_budget"]
    book["recursive_scanning"] = s["recursive"]
    book.setdefault("extensions", {})
    out = []
    for e in entries:
        e = normalize_entry(e, _int(e.get("uid"), 0))
        prev = old.get(e["uid"], {})
        ext = dict(prev.get("extensions") or {}) if isinstance(prev, dict) else {}
        ext.update(
            {
                "position": e["position"],
                "exclude_recursion": e["excludeRecursion"],
                "prevent_recursion": bool(e.get("preventRecursion")),
                "probability": e["probability"],
                "useProbability": e["useProbability"],
                "depth": e.get("depth", 4),
                "selectiveLogic": e["selectiveLogic"],
                "group": e["group"],
                "scan_depth": e["scanDepth"],
                "case_sensitive": e["caseSensitive"],
                "match_whole_words": e["matchWholeWords"],
            }
        )
        item = dict(prev) if isinstance(prev, dict) else {}
        item.update(
            {
                "id": e["uid"],
                "keys": list(e["key"]),
                "secondary_keys": list(e["keysecondary"]),
                "comment": e["comment"],
                "content": e["content"],
                "constant": e["constant"],
                "selective": e["selective"],
                "insertion_order": e["order"],
                "enabled": not e["disable"],
                "position": "before_char" if e["position"] == POSITION_BEFORE else "after_char",
                "extensions": ext,
            }
        )
        if isinstance(e["caseSensitive"], bool):
            item["case_sensitive"] = e["caseSensitive"]
        out.append(item)
    book["entries"] = out
    return book
