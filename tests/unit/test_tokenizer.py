"""pyrwkv-tokenizer against the rwkv package's own trie tokenizer, id for id."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from core.backends.tokenizer import world_tokenizer

CORPUS = [
    "Hello, world! How are you today?",
    "你好。\n\n我是小雪，很高兴认识你！",
    "日本語のテキスト：こんにちは、元気ですか？カタカナとひらがな。",
    "Emoji 🎉🐱‍👤👩‍👩‍👧 and flags 🇨🇳🇯🇵 and ZWJ sequences",
    "runs of newlines\n\n\n\n\nand\r\n CRLF \t tabs   and    spaces",
    "User: hi\n\nAssistant: hello\n\nUser:",
    "Mixed 中文 and English, 日本語 too. 1234567890 +-*/= <script>alert(1)</script>",
    "Ελληνικά, русский, العربية, עברית, हिन्दी, 한국어",
    "\ufffd broken char and \x00 nul \u200b zero width",
    "",
    " leading space",
    "trailing newline\n",
]


@pytest.fixture(scope="module")
def trie():
    spec = importlib.util.find_spec("rwkv")
    assert spec is not None and spec.origin is not None
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(Path(spec.origin).parent / "rwkv_vocab_v20230424.txt"))


@pytest.mark.parametrize("text", CORPUS)
def test_same_ids_as_the_rwkv_package(trie, text: str) -> None:
    tok = world_tokenizer()
    ids = tok.encode(text)
    assert ids == trie.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_newline_facts_from_the_design_notes() -> None:
    tok = world_tokenizer()
    assert tok.encode("\n") == [11] and tok.encode("\n\n") == [261]
    ids = tok.encode("你好。\n\n")
    assert ids[-1] == 11 and tok.token_bytes(ids[-2]) == "。\n".encode()  # no 261 here


def test_half_characters_are_visible_as_bytes() -> None:
    tok = world_tokenizer()
    ids = tok.encode("🎉")
    pieces = [tok.token_bytes(i) for i in ids]
    assert b"".join(pieces) == "🎉".encode()
    if len(pieces) > 1:  # split across tokens: the first part alone is not valid UTF-8
        with pytest.raises(UnicodeDecodeError):
            pieces[0].decode("utf-8")
