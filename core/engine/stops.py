"""Stop strings and safe streaming over the decoded text of a reply (docs/ARCHITECTURE.md,
"Stopping").

Tokens arrive as bytes. The scanner decodes everything so far, finds the first stop string, and
tells how much text is safe to show: never half a UTF-8 character (a `\\ufffd` at the end), never a
tail that could still grow into a stop string, and never whitespace that trimming may drop.

The start of a reply counts as the start of a line, so a reply that opens with another speaker's
`Name:` ends there, and one that opens by repeating its own speaker's `Name:` loses that prefix
(also a part of the name: "Ada:" or "Ada Reyes:" for "Captain Ada Reyes", see `name_prefixes`).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.prompt import normalize

COLONS = (":", "\uff1a")  # ASCII and full-width


def name_prefixes(name: str) -> list[str]:
    """The `Name:` openings a reply by `name` loses: the full name and every run of its words
    ("Captain Ada Reyes" -> "Captain Ada Reyes:", "Ada Reyes:", "Ada:", "Reyes:", ...), each with
    an ASCII and a full-width colon, longest first. A name without spaces (林晚) gives itself."""
    words = name.split()
    runs = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}
    runs.add(name.strip())
    return [r + c for r in sorted((r for r in runs if r), key=len, reverse=True) for c in COLONS]


class StopScanner:
    name_prefixes = staticmethod(name_prefixes)  # for callers that hold only the class

    def __init__(
        self,
        stops: Sequence[str],
        strip_leading: bool = True,
        strip_prefixes: Sequence[str] = (),
    ) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._longest = max((len(s) for s in self.stops), default=0)
        self._strip_leading = strip_leading  # False for a continuation: it keeps its first space
        self._prefixes = [p for p in strip_prefixes if p] if strip_leading else []
        self._data = bytearray()
        self._text = ""
        self._start: int | None = None  # where the reply's own text begins, fixed once shown
        self._shown = 0  # characters of the reply already handed out
        self.cut: int | None = None  # index in the decoded text where a stop string starts
        self.stop_string: str | None = None

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    @property
    def empty(self) -> bool:
        """No visible character yet (only whitespace, a repeated own name, or nothing)."""
        start = self._body_start(self._text)
        return start is None or not self._text[start:].strip()

    def _body_start(self, text: str) -> int | None:
        """Index where the reply proper starts; None while a leading own-name prefix may still
        be forming (so nothing can be shown yet)."""
        if self._start is not None:
            return self._start
        if not self._strip_leading:
            return 0
        i = len(text) - len(text.lstrip())
        rest = text[i:]
        for p in self._prefixes:
            if rest.startswith(p):
                j = i + len(p)
                return j + len(text[j:]) - len(text[j:].lstrip())
            if rest and p.startswith(rest):
                return None
        return i

    def push(self, data: bytes) -> str:
        """Add a token's bytes; return the newly safe text (may be empty)."""
        if self.stopped:
            return ""
        self._data += data
        self._text = text = self._data.decode("utf-8", errors="replace")
        start = self._body_start(text)
        if start is None:
            return ""
        body = text[start:]
        lead = "\n" if self._strip_leading else ""  # the reply starts a line
        scan = lead + body
        best: tuple[int, str] | None = None
        for s in self.stops:
            i = scan.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            end = max(best[0] - len(lead), 0)
            self.cut, self.stop_string = start + end, best[1]
        else:
            end = len(body)
            while end > 0 and body[end - 1] == "\ufffd":  # maybe half a character
                end -= 1
            end = max(end - self._partial_stop_len(scan[: len(lead) + end]), 0)
        visible = body[:end].rstrip()
        if len(visible) <= self._shown:
            return ""
        self._start = start
        piece = visible[self._shown :]
        self._shown = len(visible)
        return piece

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def final_text(self) -> str:
        """The reply as kept: text before the stop, no half character, trimmed."""
        text = self._text
        start = self._body_start(text)
        if start is None:  # only the beginning of a repeated own name: nothing was said
            return ""
        end = self.cut if self.cut is not None else len(text)
        body = text[start:end]
        while body.endswith("\ufffd"):
            body = body[:-1]
        # a continuation keeps its leading space: the caller joins and normalises it
        return normalize(body) if self._strip_leading else body.rstrip()
