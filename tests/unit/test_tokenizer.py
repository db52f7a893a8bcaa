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


def test_the_vocabulary_is_read_as_python_reads_its_literals_and_without_the_ast_module() -> None:
    """The file's tokens are Python literals; ast.literal_eval reads them the same way, but
    CPython 3.11's ast module breaks ("SystemError: AST constructor recursion depth mismatch")
    when two threads use it at once, and Streamlit parses each page script with it while a
    model loads on another thread. Here a thread parses scripts with ast, the garbage collector
    running Python code in between, while the vocabulary is read: neither may fail."""
    import ast
    import gc
    import threading

    from core.backends import tokenizer

    path = tokenizer._vocab_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    expected = []
    for line in lines:
        tok = ast.literal_eval(line[line.index(" ") : line.rindex(" ")].strip())
        expected.append(
            (int(line[: line.index(" ")]), tok.encode() if isinstance(tok, str) else tok)
        )
    tokenizer.vocab_entries.cache_clear()
    assert tokenizer.vocab_entries() == tuple(expected)

    class Garbage:
        def __del__(self) -> None:
            sum(range(10))

    def churn(phase: str, _info: dict) -> None:
        if phase == "start":
            for _ in range(200):
                Garbage()

    source = (Path(__file__).resolve().parents[2] / "pages" / "settings.py").read_text()
    failures: list[str] = []
    done = threading.Event()

    def pages() -> None:
        while not done.is_set():
            try:
                ast.parse(source)
            except SystemError as e:
                failures.append(f"page: {e}")

    gc.callbacks.append(churn)
    parser = threading.Thread(target=pages)
    parser.start()
    try:
        for _ in range(2):
            tokenizer.vocab_entries.cache_clear()
            try:
                tokenizer.vocab_entries()
            except SystemError as e:
                failures.append(f"vocabulary: {e}")
    finally:
        done.set()
        parser.join()
        gc.callbacks.remove(churn)
    assert not failures, failures[:3]
