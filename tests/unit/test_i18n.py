"""Strings, flags and text safety helpers of the app (no Streamlit run needed)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from core.cli_args import CliArgs, parse_args, resolve_model_path
from core.i18n import LANGS, STRINGS, t
from tests.support import REPO

UI_FILES = [REPO / "Home.py", *sorted((REPO / "pages").glob("*.py"))]


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_every_string_in_both_languages_with_same_fields() -> None:
    for key, entry in STRINGS.items():
        assert set(entry) == set(LANGS), key
        for lang in LANGS:
            assert entry[lang].strip(), (key, lang)
        assert _fields(entry["en"].split("|")[-1]) == _fields(entry["zh"]), key


def test_every_key_used_by_the_pages_exists() -> None:
    used: set[str] = set()
    dynamic = {
        "preset_": ["roleplay", "chat", "creative", "precise", "greedy", "custom", "none"]
        + ["rwkv", "instruct", "auto"],
        "samp_": [
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "penalty_decay",
            "max_tokens",
            "seed",
        ],
        "backend_": ["auto", "rwkv", "llama"],
        "api_notes_": ["auto", "reply", "depth"],
        "export_": ["png", "json", "markdown", "jsonl"],
        "chats_": ["keep", "delete"],
    }
    for path in UI_FILES:
        src = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"""\bT\(\s*["']([a-z0-9_]+)["']""", src))
        used |= set(re.findall(r"""show_error\([^,()\n]+,\s*["']([a-z0-9_]+)["']""", src))
        for prefix in re.findall(r"""\bT\(f["']([a-z_]+)\{""", src):
            assert prefix in dynamic, f"{path.name}: dynamic key T(f'{prefix}...')"
            used |= {prefix + x for x in dynamic[prefix]}
    missing = sorted(k for k in used if k not in STRINGS)
    assert not missing, missing


def test_chinese_is_really_chinese() -> None:
    assert t("new_chat", "zh") == "新对话"
    assert t("nav_settings", "zh") == "设置"
    assert t("meta_tokens", "en", n=42) == "42 tokens"
    assert t("meta_tokens", "zh", n=42) == "42 个词元"


def test_fallbacks_never_raise() -> None:
    assert t("no_such_key", "zh") == "no_such_key"
    assert t("new_chat", "fr") == "New chat"
    assert t("meta_tokens", "en") == "{n} tokens"  # missing field: the template, not a crash
    assert t("meta_tokens", "en", m=1) == "{n} tokens"


def test_old_flags_after_double_dash() -> None:
    args, warnings = parse_args(
        [
            "--",
            "--model",
            "models/x.pth",
            "--strategy",
            "cuda fp16i8",
            "--cuda_on",
            "1",
            "--jit_on",
            "0",
        ]
    )
    assert args == CliArgs(model="models/x.pth", strategy="cuda fp16i8", cuda_on=True, jit_on=False)
    assert args.any_model_flag
    assert warnings == []


def test_gradio_flags_are_accepted_and_reported() -> None:
    args, warnings = parse_args(["--listen", "--port", "7860", "--lang", "zh", "--share"])
    assert args.lang == "zh"
    assert set(args.ignored) == {"--port", "--listen", "--share"}
    assert any("--server.port" in w for w in warnings)
    assert not args.any_model_flag


def test_bad_flags_never_stop_the_app() -> None:
    args, warnings = parse_args(["--cuda_on", "maybe", "--model", "a.pth", "--bogus", "x"])
    assert args.model == "a.pth" and args.cuda_on is None
    assert any("cuda_on" in w for w in warnings)
    assert any("--bogus" in w for w in warnings)
    args, warnings = parse_args(["--backend", "tensorflow"])
    assert args.backend is None and warnings


def test_model_path_without_extension_like_the_old_app(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "RWKV-x.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("RWKV-x") == str((tmp_path / "RWKV-x.pth").resolve())
    assert resolve_model_path("RWKV-x.pth") == str((tmp_path / "RWKV-x.pth").resolve())
    assert resolve_model_path("missing") == "missing"
    assert resolve_model_path(None) is None


def test_pytest_argv_is_not_taken_for_flags() -> None:
    import core.cli_args as ca

    ca._CACHE = None
    try:
        args, warnings = ca.cli_args()
        assert args == CliArgs() and warnings == []
    finally:
        ca._CACHE = None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\nb", "a  \nb"),
        ("$5 and $6", "\\$5 and \\$6"),
        ("![x](http://example.com/a.png)", "!\\[x](http://example.com/a.png)"),
        ("back\\slash", "back\\\\slash"),
        ("*smiles*", "*smiles*"),
    ],
)
def test_message_markdown_is_neutralised(text: str, expected: str) -> None:
    from pages.ui_common import md_text

    assert md_text(text) == expected


def test_stream_neutralises_images_split_across_pieces() -> None:
    from pages.ui_common import StreamText, md_text

    pieces = ["look ", "!", "[x](http://e/a.png)", " end!", "\n$1"]
    for interval in (0.0, 60.0):  # every piece on its own; all pieces coalesced
        out = list(StreamText(pieces, interval=interval))
        assert "".join(out) == md_text("".join(pieces))
        assert not any(chunk.endswith("!") for chunk in out[:-1])
    assert len(list(StreamText(pieces, interval=60.0))) == 2  # the first piece, then the rest


def test_names_are_escaped_for_markdown() -> None:
    from pages.ui_common import md_inline

    assert md_inline("**x** [a](b)") == "\\*\\*x\\*\\* \\[a\\]\\(b\\)"


def test_password_hash_round_trip() -> None:
    from core.auth import check_password, hash_password

    h = hash_password("s3cret")
    assert h.startswith("pbkdf2_sha256$") and "s3cret" not in h
    assert check_password("s3cret", h)
    assert not check_password("s3cret!", h)
    assert check_password("plain", "plain") and not check_password("x", "plain")
    assert not check_password("x", "pbkdf2_sha256$broken")


def test_plurals_pick_their_form_by_n_in_english_and_chinese_has_one() -> None:
    from core.i18n import plural

    assert t("meta_tokens", "en", n=1) == "1 token"
    assert t("meta_tokens", "en", n=0) == "0 tokens"
    assert t("meta_tokens", "en", n=2) == "2 tokens"
    assert t("lore_fired", "en", n=1) == "Lore: 1 entry"
    assert t("threads_in_use", "en", n=1) == "The model computes with 1 thread."
    assert t("meta_tokens", "zh", n=1) == "1 个词元"
    assert plural("a|b", None) == "b" and plural("plain", 1) == "plain"
    for key, entry in STRINGS.items():
        assert "|" not in entry["zh"], key
        forms = entry["en"].split("|")
        assert len(forms) <= 2, key
        if len(forms) == 2:  # each form says the same thing: the same fields, n among them
            assert _fields(forms[0]) == _fields(forms[1]) == _fields(entry["zh"]), key
            assert "n" in _fields(forms[0]), key
