"""Text rules shared by the store and the prompt formats: the default speaker names, how a
message's text is normalised before it is fed, the {{char}} / {{user}} placeholders, and JSON
read from users' files."""

from __future__ import annotations

import json
import re
from typing import Any

NARRATOR_NAME = "Narrator"
DEFAULT_USER = "User"
DEFAULT_CHAR = "Assistant"

_NEWLINES = re.compile(r"\n\s*\n+")
NAME_END = ":\uff1a"  # the colons (ASCII, full-width) that end a transcript's `Name:` header


def bare_name(name: str) -> str:
    """A speaker's name as the transcript's `Name:` headers and stop strings use it: without
    outer spaces and trailing colons. "Bob:" would make the header "Bob::", and the model's
    "\nBob:" would then not match the user's stop string "\nBob::"."""
    return name.strip().rstrip(NAME_END + " \t").strip()


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


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _repair(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_repair(v) for v in value]
    if isinstance(value, dict):
        return {_repair(k): _repair(v) for k, v in value.items()}
    return value


def loads_json(text: str) -> Any:
    """json.loads for a user's file, with lone UTF-16 surrogates (an escape like \\ud83d without
    its pair, left where JavaScript cut an emoji in half) replaced by U+FFFD: neither SQLite nor a
    UTF-8 file can store them. Raises ValueError (not JSON, or an integer of over 4300 digits) or
    RecursionError (nested too deep)."""
    value = json.loads(text)
    return _repair(value) if _SURROGATE_ESCAPE.search(text) else value
