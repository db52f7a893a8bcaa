"""Which entries fire for a reply (the rules are in the package's docstring). Pure: books and
message texts in, the entries that fired out.

What one activation may cost is bounded, whatever the books hold (issue 21): a key that is a
regular expression is matched by the `regex` package with a time limit (REGEX_TIMEOUT_S; the
stdlib's `re` has none, and `/(a+)+$/` on forty a's and a "!" never ended, holding the GIL),
releasing the GIL while it runs; all of them together have REGEX_BUDGET_S, after which the rest
are not tried. A regular expression too large written out (MAX_REGEX_SIZE: the package writes
out counted repeats) is not compiled, and one activation compiles MAX_REGEX_TOTAL at most. At
most MAX_KEY_CHECKS keys are looked for, in scan texts of at most MAX_SCAN_CHARS (the end of the
chat). Every key skipped is said in `LoreResult.errors`, which the reply's meta keeps
("lore_errors", shown under it)."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from core.roleplay.lore.entries import (
    _JS_NAMED_GROUP,
    _REGEX_KEY,
    AND_ANY,
    DEFAULT_BUDGET,
    MAX_RECURSION,
    NOT_ALL,
    NOT_ANY,
    LoreError,
    _int,
    entry_title,
    normalize_entry,
    normalize_settings,
)
from core.text import substitute

REGEX_TIMEOUT_S = 0.1  # one regular-expression key on one scan text (the package's own limit)
REGEX_BUDGET_S = 1.0  # every regular-expression key of one activation, together
MAX_KEY_CHECKS = 100_000  # keys looked for in one activation (every round of recursion counted)
MAX_SCAN_CHARS = 200_000  # characters scanned: the end of the last `scan_depth` messages
# a regular expression's size as the `regex` package compiles it: it writes out a counted repeat
# ("a{1000}" as 1,000 a's, nested ones multiplied, some 260 bytes each), and
# /((a{1000}){1000}){1000}/ took every byte of memory until the kernel killed the process; a key
# larger than MAX_REGEX_SIZE is refused unread, and one activation compiles MAX_REGEX_TOTAL at most
MAX_REGEX_SIZE = 10_000
MAX_REGEX_TOTAL = 250_000
_QUANTIFIER = re.compile(r"\{(\d*)(?:,(\d*))?\}")

# --- activation -----------------------------------------------------------------------------


@dataclass
class Book:
    """Entries to activate, with their book's settings. `source` says where the book comes from
    ("character", "attached", "chat", "global") and `id` its lorebook id (None: a card's book).
    `normalized`: the entries are already as `normalize_entry` makes them (a card's book,
    converted once), so activation reads them as they are and never changes them. `notes`: what
    reading the book left out, said with the reply like a broken key."""

    name: str
    entries: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "attached"
    id: int | None = None
    normalized: bool = False
    notes: list[str] = field(default_factory=list)


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


_JS_FLAGS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL}


def regex_size(pattern: str, limit: int = MAX_REGEX_SIZE) -> int:
    """An upper bound of how many elements `regex` makes of `pattern` when it writes out its
    counted repeats (each atom times the minimum counts of the repeats around it), stopping
    once over `limit`. A rough reading of the syntax: any mistake in it only overestimates."""
    stack: list[list[int]] = [[0, 0]]  # per open group: [largest branch so far, this branch]
    last = 0  # the size of the last atom (what a quantifier applies to)
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            if pattern[i - 1 : i] in ("p", "P", "N", "x") and pattern[i : i + 1] == "{":
                i = pattern.find("}", i) + 1 or n
            last = 1
        elif ch == "[":
            j = i + 1 + (pattern[i + 1 : i + 2] == "^")
            j += pattern[j : j + 1] == "]"  # a ] first is a member
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i, last = j + 1, 1
        elif ch == "(":
            stack.append([0, 0])
            i, last = i + 1, 0
            continue
        elif ch == ")" and len(stack) > 1:
            best, this = stack.pop()
            i, last = i + 1, max(best, this)
        elif ch == "|":
            top = stack[-1]
            top[0], top[1] = max(top[0], top[1]), 0
            i, last = i + 1, 0
            continue
        elif ch in "*+?":
            i += 1
            continue  # a loop, not written out
        elif ch == "{" and (m := _QUANTIFIER.match(pattern, i)) and (m.group(1) or m.group(2)):
            times = max(1, int(m.group(1) or 0)) if len(m.group(1)) < 7 else limit + 1
            stack[-1][1] += min(last * (times - 1), limit + 1)
            i, last = m.end(), 0
            if stack[-1][1] > limit:
                return limit + 1
            continue
        else:
            i, last = i + 1, 1
        stack[-1][1] += last
        if stack[-1][1] > limit:
            return limit + 1
    return max(max(b, t) for b, t in stack)


_UNTRIED = object()  # a key left out by a bound of the activation


def _compile_key(key: str, case: bool, whole: bool) -> Any:
    """A key as a compiled pattern (a `regex` one for a `/regex/flags` key, matched with a time
    limit; an `re` one for a whole word, linear), or as a string to search for (plain text)."""
    m = _REGEX_KEY.match(key)
    if m:
        pattern, flags_text = m.group(1), m.group(2)
        flags = 0
        for ch in flags_text:
            flags |= _JS_FLAGS.get(ch, 0)
        # not kept in the package's own cache (500 patterns): only for this activation
        return regex.compile(_JS_NAMED_GROUP.sub("(?P<", pattern), flags, cache_pattern=False)
    if whole and len(key.split()) == 1:
        return re.compile(r"(?:^|\W)" + re.escape(key) + r"(?:$|\W)", 0 if case else re.IGNORECASE)
    return key if case else key.lower()


class _Matcher:
    """Looks for keys in scan texts, within the activation's bounds (the module's docstring)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self._cache: dict[tuple[str, bool, bool], Any] = {}
        self._slow: set[tuple[str, bool, bool]] = set()  # regex keys that ran out of time
        self._lower: dict[int, tuple[str, str]] = {}  # id(text) -> (text, its lower case)
        self.regex_s = 0.0  # seconds spent in regular-expression keys so far
        self.regex_size = 0  # elements of the regular expressions compiled so far
        self.checks = 0  # keys looked for so far
        self.untried = 0  # keys not looked for: a bound was reached
        self.bounds: set[str] = set()  # which bounds were reached

    def _lowered(self, text: str) -> str:
        hit = self._lower.get(id(text))
        if hit is None or hit[0] is not text:
            hit = self._lower[id(text)] = (text, text.lower())  # the text kept: its id stays
        return hit[1]

    def _untried(self, bound: str) -> bool:
        self.untried += 1
        self.bounds.add(bound)
        return False

    def _compiled(self, key: str, case: bool, whole: bool, where: str) -> Any:
        """The key's pattern (None: a broken key, said once; _UNTRIED: over the bounds)."""
        m = _REGEX_KEY.match(key)
        size = regex_size(m.group(1)) if m else 0
        if size > MAX_REGEX_SIZE:
            self.errors.append(
                f"{where}: the key {key!r} is too large a regular expression (over "
                f"{MAX_REGEX_SIZE:,} elements written out) and was skipped."
            )
            return None
        if self.regex_size + size > MAX_REGEX_TOTAL:
            return _UNTRIED
        try:
            pattern = _compile_key(key, case, whole)
        except (re.error, regex.error, RecursionError, OverflowError, ValueError) as e:
            self.errors.append(f"{where}: the key {key!r} is not a valid regular expression ({e}).")
            return None
        self.regex_size += size
        return pattern

    def found(self, key: str, text: str, case: bool, whole: bool, where: str) -> bool:
        if self.checks >= MAX_KEY_CHECKS:
            return self._untried("checks")
        self.checks += 1
        ck = (key, case, whole)
        if ck not in self._cache:
            self._cache[ck] = self._compiled(key, case, whole, where)
        pat = self._cache[ck]
        if pat is _UNTRIED:
            return self._untried("size")
        if pat is None or ck in self._slow:
            return False
        if isinstance(pat, str):
            return pat in (text if case else self._lowered(text))
        if isinstance(pat, re.Pattern):  # a whole word: linear
            return pat.search(text) is not None
        left = REGEX_BUDGET_S - self.regex_s
        if left <= 0:
            return self._untried("time")
        t0 = time.perf_counter()
        try:
            limit = min(REGEX_TIMEOUT_S, left)
            return pat.search(text, timeout=limit, concurrent=True) is not None
        except TimeoutError:
            self._slow.add(ck)
            self.errors.append(
                f"{where}: the key {key!r} took too long to match (over {REGEX_TIMEOUT_S} s) "
                "and was skipped."
            )
            return False
        finally:
            self.regex_s += time.perf_counter() - t0

    def bounds_note(self) -> str | None:
        """What the bounds left out, in one sentence (None: nothing)."""
        if not self.untried:
            return None
        why = {
            "checks": f"this reply's books ask for more than {MAX_KEY_CHECKS:,} key checks",
            "time": f"regular-expression keys took over {REGEX_BUDGET_S} s in all",
            "size": f"regular-expression keys are over {MAX_REGEX_TOTAL:,} elements in all",
        }
        reasons = "; ".join(why[b] for b in sorted(self.bounds))
        return f"{self.untried:,} keys were not tried: {reasons}."


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
        result.errors.extend(book.notes)
        s = normalize_settings(book.settings)
        for raw in book.entries:
            if book.normalized:
                if not raw["disable"]:
                    cands.append((book, s, raw))
                continue
            try:
                e = normalize_entry(raw, _int(raw.get("uid"), 0) if isinstance(raw, dict) else 0)
            except LoreError as err:
                result.errors.append(f"{book.name}: {err}")
                continue
            if not e["disable"]:
                cands.append((book, s, e))

    subs: dict[str, str] = {}

    def sub(text: str) -> str:
        if not (char or user):
            return text
        if text not in subs:
            subs[text] = substitute(text, char, user)
        return subs[text]

    scans: dict[tuple[int, str], str] = {}  # one string per scan text: searched, lowered once

    def scan_text(depth: int, extra: str) -> str:
        if (depth, extra) not in scans:
            text = "\n".join(messages[-depth:]) if depth > 0 else ""
            if extra:
                text = f"{text}\n{extra}" if text else extra
            scans[(depth, extra)] = text[-MAX_SCAN_CHARS:]
        return scans[(depth, extra)]

    def matches(book: Book, s: dict[str, Any], e: dict[str, Any], extra: str) -> bool:
        depth = e["scanDepth"] if e["scanDepth"] is not None else s["scan_depth"]
        text = scan_text(depth, extra)
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
        recursion_text = "\n".join(filter(None, [recursion_text, *more]))[-MAX_SCAN_CHARS:]

    note = matcher.bounds_note()
    if note:
        result.errors.append(note)

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
