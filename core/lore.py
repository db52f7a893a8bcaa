"""Lorebooks (SillyTavern World Info): which entries fire for a reply, and the files they come in.

Entries are kept as SillyTavern's World Info keeps them (`uid`, `key`, `keysecondary`, `content`,
`constant`, `selective`, `selectiveLogic`, `order`, `disable`, `probability`, `useProbability`,
`caseSensitive`, `matchWholeWords`, `scanDepth`, ...), in the table `lorebooks` or, for a
character's own book, converted on the fly from the card's V2 `character_book`.

Activation follows SillyTavern (its public/scripts/world-info.js):

- An entry fires when one of its keys is found in the scan text: the last `scan_depth` messages
  (default 2; the user's new message is one of them). A key is plain text, or `/regex/flags`.
  Plain keys match ignoring case unless `caseSensitive`; with `matchWholeWords` a one-word key
  must stand as a word, `(?:^|\\W)key(?:$|\\W)` (a key of several words is searched as is). Entry
  values of None inherit the book's settings (`case_sensitive`, `match_whole_words`,
  `scan_depth`).
- With `selective` and secondary keys, `selectiveLogic` decides: AND_ANY (0) one of them is
  found too, NOT_ALL (1) not all of them, NOT_ANY (2) none of them, AND_ALL (3) all of them.
- `constant` entries always fire; `disable`d ones never. With `useProbability`, an entry that
  matched fires with `probability` percent, rolled on a generator seeded by the caller (so one
  reply is reproducible).
- Order: entries that fired are fed by ascending `order` (a larger order goes later, closer to
  the reply). The token budget is filled by descending order (the later, stronger entries
  first); the first entry that does not fit ends the filling, as in SillyTavern; entries with
  `ignoreBudget` always go. Tokens are counted with the engine's tokenizer when one is given,
  else estimated (UTF-8 bytes / 3, rounded up). The default budget is DEFAULT_BUDGET tokens: our
  context is unbounded (the state carries the whole chat), so SillyTavern's "25 % of the
  context" has nothing to be a share of; a book's `token_budget` setting raises or lowers it.
- Recursion (a book's `recursive` setting): the content of entries that fired is scanned for
  further keys, at most MAX_RECURSION rounds; `excludeRecursion` entries are not activated by
  recursion, `preventRecursion` entries' content is not scanned, `delayUntilRecursion` entries
  are activated only by recursion. SillyTavern's groups, timed effects (sticky, cooldown,
  delay) and vector matching are kept in the entries but not applied.
- A key that is a bad regular expression is skipped and noted (`LoreResult.errors`), never raised.

Placement for a recurrent state (issue 11): the entries that fire for a reply are fed as one
chunk just before that reply's header and stored with it (the message's meta "before", see
`ChatService.before_reply`), so the transcript never changes behind the state cache; constant
entries go in the chat's opening (`constant_lore`), which changes only when a book is edited.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import AppError
from core.macros import expand
from core.prompt import CharacterContext, Message
from core.store import Conversation, Lorebook, Store
from core.text import substitute

DEFAULT_SCAN_DEPTH = 2
DEFAULT_BUDGET = 1024  # tokens (see the module's docstring)
MAX_RECURSION = 3
MAX_ENTRIES = 5000  # entries in one book (a file with more is refused)
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
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            return default
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
        return json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        msg = getattr(e, "msg", "too deeply nested")
        line = getattr(e, "lineno", "?")
        raise LoreError(f"The {what} is not valid JSON ({msg}, line {line}).") from None


@dataclass
class ParsedBook:
    """A book read from a file, ready for `Store.create_lorebook`."""

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
    if len(raw) > MAX_ENTRIES:
        raise LoreError(f"The file has {len(raw):,} entries; the limit is {MAX_ENTRIES:,}.")
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
    user did not write here, and a chat must not fail on it."""
    if not isinstance(book, dict):
        return [], normalize_settings({})
    raw = book.get("entries")
    entries: list[dict[str, Any]] = []
    for i, e in enumerate(raw if isinstance(raw, list) else []):
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


# --- activation -----------------------------------------------------------------------------


@dataclass
class Book:
    """Entries to activate, with their book's settings. `source` says where the book comes from
    ("character", "attached", "chat", "global") and `id` its lorebook id (None: a card's book)."""

    name: str
    entries: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "attached"
    id: int | None = None


@dataclass
class Fired:
    book: str
    uid: int
    title: str
    content: str
    order: int
    constant: bool
    book_id: int | None = None

    def meta(self) -> dict[str, Any]:
        return {"book": self.book, "book_id": self.book_id, "uid": self.uid, "title": self.title}


@dataclass
class LoreResult:
    fired: list[Fired] = field(default_factory=list)  # fed order (ascending `order`)
    left_out: list[Fired] = field(default_factory=list)  # matched, but over the token budget
    errors: list[str] = field(default_factory=list)  # keys skipped (bad regular expressions)

    def text(self, constant: bool = False) -> str:
        """The content of the entries that fired (only constants, or only the others)."""
        return "\n".join(
            f.content.strip() for f in self.fired if f.constant == constant and f.content.strip()
        )


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 3)


def _compile_key(key: str, case: bool, whole: bool) -> re.Pattern[str] | str:
    """A key as a regular expression, or as a string to search for (plain text)."""
    m = _REGEX_KEY.match(key)
    if m:
        pattern, flags_text = m.group(1), m.group(2)
        flags = 0
        for ch in flags_text:
            flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}.get(ch, 0)
        return re.compile(_JS_NAMED_GROUP.sub("(?P<", pattern), flags)
    if whole and len(key.split()) == 1:
        return re.compile(r"(?:^|\W)" + re.escape(key) + r"(?:$|\W)", 0 if case else re.IGNORECASE)
    return key if case else key.lower()


class _Matcher:
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self._cache: dict[tuple[str, bool, bool], re.Pattern[str] | str | None] = {}

    def found(self, key: str, text: str, case: bool, whole: bool, where: str) -> bool:
        ck = (key, case, whole)
        if ck not in self._cache:
            try:
                self._cache[ck] = _compile_key(key, case, whole)
            except (re.error, RecursionError, OverflowError) as e:
                self._cache[ck] = None
                self.errors.append(
                    f"{where}: the key {key!r} is not a valid regular expression ({e})."
                )
        pat = self._cache[ck]
        if pat is None:
            return False
        if isinstance(pat, str):
            return pat in (text if case else text.lower())
        return pat.search(text) is not None


def activate(
    books: Sequence[Book],
    messages: Sequence[str],
    *,
    char: str = "",
    user: str = "",
    count_tokens: Callable[[str], int] | None = None,
    seed: int | None = None,
    budget: int | None = None,
    max_recursion: int = MAX_RECURSION,
) -> LoreResult:
    """The entries of `books` that fire for the chat whose messages' texts are `messages`
    (oldest first; the user's new message last). See the module's docstring for the rules."""
    result = LoreResult()
    matcher = _Matcher(result.errors)
    rng = random.Random(seed)
    count = count_tokens or estimate_tokens
    if budget is None:
        budgets = [
            normalize_settings(b.settings)["token_budget"]
            for b in books
            if normalize_settings(b.settings)["token_budget"]
        ]
        budget = max(budgets) if budgets else DEFAULT_BUDGET

    cands: list[tuple[Book, dict[str, Any], dict[str, Any]]] = []
    for book in books:
        s = normalize_settings(book.settings)
        for raw in book.entries:
            try:
                e = normalize_entry(raw, _int(raw.get("uid"), 0) if isinstance(raw, dict) else 0)
            except LoreError as err:
                result.errors.append(f"{book.name}: {err}")
                continue
            if not e["disable"]:
                cands.append((book, s, e))

    def sub(text: str) -> str:
        return substitute(text, char, user) if (char or user) else text

    scans: dict[int, str] = {}

    def scan_text(depth: int) -> str:
        if depth not in scans:
            scans[depth] = "\n".join(messages[-depth:]) if depth > 0 else ""
        return scans[depth]

    def matches(book: Book, s: dict[str, Any], e: dict[str, Any], extra: str) -> bool:
        depth = e["scanDepth"] if e["scanDepth"] is not None else s["scan_depth"]
        text = scan_text(depth)
        if extra:
            text = f"{text}\n{extra}" if text else extra
        case = e["caseSensitive"] if e["caseSensitive"] is not None else s["case_sensitive"]
        whole = e["matchWholeWords"]
        whole = whole if whole is not None else s["match_whole_words"]
        where = f"{book.name} / {entry_title(e)}"

        def hit(key: str) -> bool:
            return matcher.found(sub(key), text, case, whole, where)

        if not any([hit(k) for k in e["key"]]):  # every key checked: bad regexes all noted
            return False
        second = e["keysecondary"]
        if not (e["selective"] and second):
            return True
        found = [hit(k) for k in second]
        logic = e["selectiveLogic"]
        if logic == AND_ANY:
            return any(found)
        if logic == NOT_ALL:
            return not all(found)
        if logic == NOT_ANY:
            return not any(found)
        return all(found)  # AND_ALL

    chosen: dict[int, tuple[Book, dict[str, Any], dict[str, Any]]] = {}
    rolled: set[int] = set()
    for i, (_book, _s, e) in enumerate(cands):
        if e["constant"]:
            chosen[i] = cands[i]
    recursion_text = ""
    for round_ in range(max_recursion + 1):
        new: list[int] = []
        for i, (book, s, e) in enumerate(cands):
            if i in chosen or i in rolled:
                continue
            if round_ > 0 and (not s["recursive"] or e["excludeRecursion"]):
                continue
            if round_ == 0 and s["recursive"] and e.get("delayUntilRecursion") is True:
                continue  # fires only on what other entries' content says
            if not e["key"] or not matches(book, s, e, recursion_text if round_ else ""):
                continue
            rolled.add(i)
            if e["useProbability"] and e["probability"] < 100:
                if rng.random() * 100 >= e["probability"]:
                    continue
            chosen[i] = cands[i]
            new.append(i)
        more = [
            cands[i][2]["content"]
            for i in new
            if cands[i][1]["recursive"] and not cands[i][2].get("preventRecursion")
        ]
        if not more:
            break
        recursion_text = "\n".join(filter(None, [recursion_text, *more]))

    # the budget: strongest (largest order) first; constants are in the opening and count too
    ranked = sorted(chosen.items(), key=lambda kv: (-kv[1][2]["order"], kv[0]))
    used = 0
    full = False
    kept: list[tuple[int, Fired]] = []
    for i, (book, _s, e) in ranked:
        f = Fired(
            book.name,
            e["uid"],
            entry_title(e),
            sub(e["content"]),
            e["order"],
            e["constant"],
            book.id,
        )
        cost = count(f.content) if f.content.strip() else 0
        if not e.get("ignoreBudget") and (full or used + cost > budget):
            full = True
            result.left_out.append(f)
            continue
        if not e.get("ignoreBudget"):
            used += cost
        kept.append((i, f))
    kept.sort(key=lambda kv: (kv[1].order, kv[0]))
    result.fired = [f for _, f in kept]
    return result


# --- the books of a chat --------------------------------------------------------------------


def character_book(character: Any) -> Book | None:
    """A character's own book (the card's V2 character_book), or None."""
    cb = getattr(character, "character_book", None)
    if not isinstance(cb, dict):
        return None
    entries, settings = from_character_book(cb)
    if not entries:
        return None
    name = str(cb.get("name") or "").strip() or f"{character.name}"
    return Book(name, entries, settings, source="character")


def _as_book(lb: Lorebook, source: str) -> Book:
    return Book(lb.name, list(lb.entries or []), dict(lb.settings or {}), source, lb.id)


def books_for_conversation(store: Store, conv: Conversation) -> list[Book]:
    """Every book a chat uses: its characters' own books and attached books, the chat's books,
    the global books; each lorebook once."""
    out: list[Book] = []
    seen: set[int] = set()

    def add_ids(ids: Iterable[Any], source: str) -> None:
        for i in ids or []:
            if not isinstance(i, int) or i in seen:
                continue
            lb = store.get_lorebook(i)
            if lb is not None:
                seen.add(i)
                out.append(_as_book(lb, source))

    char_ids = [conv.character_id, *(getattr(conv, "members", None) or [])]
    for cid in dict.fromkeys(c for c in char_ids if isinstance(c, int)):
        ch = store.get_character(cid)
        if ch is None:
            continue
        own = character_book(ch)
        if own is not None:
            out.append(own)
        add_ids(ch.lorebook_ids, "attached")
    add_ids(getattr(conv, "lorebook_ids", None) or [], "chat")
    add_ids([lb.id for lb in store.list_lorebooks() if lb.is_global], "global")
    return out


def constant_lore(store: Store, conv: Conversation | None, ctx: CharacterContext) -> str:
    """The text of the constant entries of a chat's books, for its opening."""
    if conv is None:
        return ""
    books = books_for_conversation(store, conv)
    if not any(e.get("constant") for b in books for e in b.entries if isinstance(e, dict)):
        return ""
    only_constant = [
        Book(
            b.name, [e for e in b.entries if isinstance(e, dict) and e.get("constant")], b.settings
        )
        for b in books
    ]
    return activate(only_constant, [], char=ctx.name, user=ctx.user_name).text(constant=True)


def with_constant_lore(store: Store, conv: Conversation | None, ctx: CharacterContext) -> None:
    """Put a chat's constant entries in its opening: after the persona (description)."""
    text = constant_lore(store, conv, ctx)
    if text:
        ctx.persona = f"{ctx.persona.rstrip()}\n{text}" if ctx.persona.strip() else text


def reply_seed(conv: Conversation, position: int) -> int:
    """The seed of a reply's probability rolls: the chat's sampling seed (if any), its id and
    the reply's place, so a reply's lore is reproducible and two replies roll differently."""
    base = (conv.sampling or {}).get("seed")
    raw = f"{base if isinstance(base, int) else ''}:{conv.id}:{position}".encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


def fire_lore(
    store: Store,
    conv: Conversation,
    ctx: CharacterContext,
    history: Sequence[Message],
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The lore fed before a new reply, and what the reply's meta records of it ("lore": the
    entries that fired, "lore_errors": keys skipped). Constant entries are not here: they are
    in the opening. Never raises for a book's content."""
    books = books_for_conversation(store, conv)
    if not books:
        return "", {}
    texts = [m.text for m in history]
    seed = reply_seed(conv, len(history))
    res = activate(
        books,
        texts,
        char=ctx.name,
        user=ctx.user_name,
        count_tokens=count_tokens,
        seed=seed,
    )
    fired = [f for f in res.fired if not f.constant]
    # macros ({{time}}, {{random::a::b}}, {{roll:d6}}...) evaluated now: the text is stored as fed
    text = expand(res.text(constant=False), ctx.name, ctx.user_name, rng=random.Random(seed))
    meta: dict[str, Any] = {}
    if fired:
        meta["lore"] = [f.meta() for f in fired]
    if res.errors:
        meta["lore_errors"] = res.errors[:20]
    return text, meta


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
