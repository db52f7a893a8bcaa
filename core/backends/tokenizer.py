"""The RWKV World tokenizer: ids from `pyrwkv-tokenizer` (Rust, same ids as the rwkv package's
trie tokenizer, 20x faster), bytes from the vocabulary file so that partial UTF-8 is visible."""

from __future__ import annotations

import codecs
import functools
from pathlib import Path

import pyrwkv_tokenizer

WORLD_VOCAB_SIZE = 65536


def _vocab_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("rwkv")
    if spec is None or spec.origin is None:
        raise RuntimeError("the rwkv package is not installed")
    return Path(spec.origin).parent / "rwkv_vocab_v20230424.txt"


def _literal(text: str) -> bytes:
    """A token of the vocabulary file, written there as a Python str or bytes literal, as UTF-8
    bytes. Read without the `ast` module: CPython 3.11's ast fails ("SystemError: AST
    constructor recursion depth mismatch") when two threads use it at once, and Streamlit parses
    every page script with it while a model loads (or converts) on another thread."""
    is_bytes = text[:1] in ("b", "B")
    body = text[1:] if is_bytes else text
    if len(body) < 2 or body[0] not in "'\"" or body[-1] != body[0]:
        raise ValueError(f"not a string literal: {text[:40]!r}")
    inner = body[1:-1]
    if is_bytes:
        return codecs.escape_decode(inner.encode("latin-1"))[0]
    # non-Latin-1 characters become \u escapes first, so that one decoder reads every escape
    decoded = codecs.decode(inner.encode("latin-1", "backslashreplace"), "unicode_escape")
    return decoded.encode("utf-8")


@functools.cache
def vocab_entries() -> tuple[tuple[int, bytes], ...]:
    """The World vocabulary file's (id, token bytes), in the file's order; read once."""
    entries = []
    with open(_vocab_file(), encoding="utf-8") as f:
        for line in f:
            idx = int(line[: line.index(" ")])
            entries.append((idx, _literal(line[line.index(" ") : line.rindex(" ")].strip())))
    return tuple(entries)


class WorldTokenizer:
    """Encode text to World ids; decode ids to raw bytes (which may end mid-character)."""

    def __init__(self) -> None:
        self._enc = pyrwkv_tokenizer.RWKVTokenizer()
        table: list[bytes] = [b""] * WORLD_VOCAB_SIZE
        for idx, tok in vocab_entries():
            table[idx] = tok
        self._bytes = table

    def encode(self, text: str) -> list[int]:
        return list(self._enc.encode(text)) if text else []

    def decode_bytes(self, tokens: list[int]) -> bytes:
        t = self._bytes
        return b"".join(t[i] for i in tokens)

    def token_bytes(self, token: int) -> bytes:
        return self._bytes[token]

    def decode(self, tokens: list[int]) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")


@functools.cache
def world_tokenizer() -> WorldTokenizer:
    """One shared instance: it is read-only after construction."""
    return WorldTokenizer()
