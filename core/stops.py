"""Stop strings and safe streaming over the decoded text of a reply (DESIGN.md "Stopping").

Tokens arrive as bytes. The scanner decodes everything so far, finds the first stop string, and
tells how much text is safe to show: never half a UTF-8 character (a `\\ufffd` at the end), never a
tail that could still grow into a stop string, and never whitespace that trimming may drop.
"""

from __future__ import annotations

from core.prompt import normalize


class StopScanner:
    def __init__(self, stops: list[str], strip_leading: bool = True) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._longest = max((len(s) for s in self.stops), default=0)
        self._data = bytearray()
        self._text = ""
        self._scanned = 0  # stop search resumes a little before here
        self._strip_leading = strip_leading
        self._shown = 0  # characters of visible text already handed out
        self.cut: int | None = None  # index in the decoded text where a stop string starts
        self.stop_string: str | None = None

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    @property
    def empty(self) -> bool:
        """No visible character yet (only whitespace or nothing)."""
        return not self._visible_upto(len(self._text)).strip()

    def push(self, data: bytes) -> str:
        """Add a token's bytes; return the newly safe text (may be empty)."""
        if self.stopped:
            return ""
        self._data += data
        self._text = self._data.decode("utf-8", errors="replace")
        text = self._text
        start = max(0, self._scanned - self._longest)
        best: tuple[int, str] | None = None
        for s in self.stops:
            i = text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        self._scanned = len(text)
        if best is not None:
            self.cut, self.stop_string = best
            end = best[0]
        else:
            end = len(text)
            while end > 0 and text[end - 1] == "\ufffd":  # maybe half a character
                end -= 1
            end -= self._partial_stop_len(text[:end])
        return self._take(end)

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _visible_upto(self, end: int) -> str:
        text = self._text[:end]
        return text.lstrip() if self._strip_leading else text

    def _take(self, end: int) -> str:
        visible = self._visible_upto(end).rstrip()
        if len(visible) <= self._shown:
            return ""
        piece = visible[self._shown :]
        self._shown = len(visible)
        return piece

    def final_text(self) -> str:
        """The reply as kept: text before the stop, no half character, trimmed."""
        end = self.cut if self.cut is not None else len(self._text)
        text = self._text[:end]
        while text.endswith("\ufffd"):
            text = text[:-1]
        # a continuation keeps its leading space: the caller joins and normalises it
        return normalize(text) if self._strip_leading else text.rstrip()

    def shown_text(self) -> str:
        return self._visible_upto(len(self._text)).rstrip()[: self._shown]
