"""The lorebook editor's table: entries as rows of text cells and back."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from core.roleplay.lore.entries import (
    LOGIC_NAMES,
    _int,
    _keys,
    new_entry,
    next_uid,
    normalize_entry,
)

# --- the editor's table ---------------------------------------------------------------------

ROW_COLUMNS = (
    "uid",
    "enabled",
    "constant",
    "key",
    "secondary",
    "logic",
    "content",
    "order",
    "probability",
    "comment",
)
_KEY_TOKEN = re.compile(r"\s*(/(?:\\.|[^/\\])+/[a-z]*(?=\s*(?:,|$))|[^,]*)\s*(?:,|$)")


def split_keys(text: Any) -> list[str]:
    """ "a, b, /c,d/i" -> ["a", "b", "/c,d/i"]: commas part keys, except inside a /regex/."""
    if isinstance(text, list):
        return _keys(text)
    if not isinstance(text, str):
        return []
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _KEY_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        if m.group(1).strip():
            out.append(m.group(1).strip())
        pos = m.end()
    return out


def entry_row(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as one row of the editor's table (keys as comma-separated text)."""
    e = normalize_entry(entry, _int(entry.get("uid"), 0))
    return {
        "uid": e["uid"],
        "enabled": not e["disable"],
        "constant": e["constant"],
        "key": ", ".join(e["key"]),
        "secondary": ", ".join(e["keysecondary"]),
        "logic": LOGIC_NAMES[e["selectiveLogic"]],
        "content": e["content"],
        "order": e["order"],
        "probability": e["probability"],
        "comment": e["comment"],
    }


def _cell(value: Any) -> Any:
    """A table cell, None for an empty one (NaN, NaT, pandas' NA)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def _from_row(row: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    r = {k: _cell(row.get(k)) for k in ROW_COLUMNS}
    out = dict(entry)
    if r["enabled"] is not None:
        out["disable"] = not bool(r["enabled"])
    if r["constant"] is not None:
        out["constant"] = bool(r["constant"])
    out["key"] = split_keys(r["key"] or "")
    out["keysecondary"] = split_keys(r["secondary"] or "")
    if out["keysecondary"]:
        out["selective"] = True
    logic = {v: k for k, v in LOGIC_NAMES.items()}.get(str(r["logic"] or ""))
    if logic is not None:
        out["selectiveLogic"] = logic
    out["content"] = str(r["content"] or "")
    out["comment"] = str(r["comment"] or "")
    if r["order"] is not None:
        out["order"] = _int(r["order"], 100)
    if r["probability"] is not None:
        out["probability"] = max(0, min(100, _int(r["probability"], 100)))
    return normalize_entry(out, _int(out.get("uid"), 0))


def filter_entries(entries: Sequence[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """The entries whose keys, content or comment contain `query` (any case)."""
    q = (query or "").strip().lower()
    if not q:
        return list(entries)
    out = []
    for e in entries:
        hay = " ".join([*_keys(e.get("key")), *_keys(e.get("keysecondary"))])
        hay += f" {e.get('content', '')} {e.get('comment', '')}"
        if q in hay.lower():
            out.append(e)
    return out


def add_entry(
    entries: Sequence[dict[str, Any]],
    keys: str,
    content: str,
    comment: str = "",
    constant: bool = False,
) -> list[dict[str, Any]]:
    """The entries and, at the end, a new one as the editor's add form makes it: `keys` as
    typed ("a, b, /c,d/i", see split_keys), the next free uid. `entries` is left as it was."""
    entry = new_entry(
        next_uid(entries), key=split_keys(keys), content=content, comment=comment, constant=constant
    )
    return [*entries, entry]


def apply_rows(
    entries: Sequence[dict[str, Any]], shown: Sequence[int], rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The book's entries after the table was edited. `shown` are the uids the table showed (a
    search shows a part): a shown entry whose row is gone was deleted, rows without a known uid
    are new entries (an empty one is dropped), the entries not shown stay as they were."""
    shown_set = set(shown)
    rows_by_uid: dict[int, dict[str, Any]] = {}
    new_rows: list[dict[str, Any]] = []
    for row in rows:
        uid = _cell(row.get("uid"))
        uid = _int(uid, -1) if uid is not None else -1
        if uid in shown_set and uid not in rows_by_uid:
            rows_by_uid[uid] = row
        else:
            new_rows.append(row)
    out: list[dict[str, Any]] = []
    for e in entries:
        uid = _int(e.get("uid"), -1)
        if uid not in shown_set:
            out.append(e)
        elif uid in rows_by_uid:
            out.append(_from_row(rows_by_uid[uid], e))
    for row in new_rows:
        fields = _from_row(row, new_entry(next_uid(out)))
        if fields["key"] or fields["content"].strip() or fields["constant"]:
            out.append(fields)
    return out
