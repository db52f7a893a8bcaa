"""Text rules shared by the store and the prompt formats: the default speaker names, how a
message's text is normalised before it is fed, and the {{char}} / {{user}} placeholders."""

from __future__ import annotations

import re

NARRATOR_NAME = "Narrator"
DEFAULT_USER = "User"
DEFAULT_CHAR = "Assistant"

_NEWLINES = re.compile(r"\n\s*\n+")


def normalize(text: str) -> str:
    """One message's text as fed: CRLF to LF, no blank lines inside, no outer whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _NEWLINES.sub("\n", text).strip()


def substitute(text: str, char: str, user: str) -> str:
    """Replace {{char}} / {{user}} (any case, SillyTavern's <BOT>/<USER> too)."""
    for pat, value in (
        (r"\{\{\s*char\s*\}\}", char),
        (r"\{\{\s*user\s*\}\}", user),
        (r"<BOT>", char),
        (r"<USER>", user),
    ):
        text = re.sub(pat, lambda _m, v=value: v, text, flags=re.IGNORECASE)
    return text
