"""Issue 23, "Chinese mode leaves English behind": a session switched to Chinese in Settings walks
every page (Settings, Home, Characters with the form and a lorebook, a chat with a reply, versions,
a stopped reply, what the model saw, a removal and its undo, a group chat with its auto mode
stopped) through AppTest, and collects every label, option, help text, placeholder and message
the pages draw. A string with a word in Latin script fails the test, unless the word is a proper
name, a file name or a code (the list below says which, and why).

What the user wrote (names, card fields, messages, the prompt) is data, not interface: the walk
writes it in Chinese, and leaves out the bodies of messages (the tiny model's words) and the
prompt's code block."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from tests.support.ui import check, click_during_reply, follow, open_app, store

# the fields of an element's proto that hold text a user reads
TEXT_FIELDS = {"label", "help", "body", "options", "placeholder", "caption"}

# Words in Latin script the Chinese interface keeps, each a proper name or a code:
PROPER = {
    "RWKV", "SillyTavern", "GGUF", "SmolLM2", "PyTorch", "TorchScript", "OpenAI", "Markdown",
    "World", "Info",  # SillyTavern's "World Info", the name of its lorebook files
    "English",  # the language's own name in the language picker
    "Top", "Min",  # sampling's "Top P", "Top K", "Min P": the parameters' names
    "DRY",  # the repetition penalty's name (koboldcpp, llama.cpp, SillyTavern)
    "WebP", "JPEG", "PNG", "GIF", "BMP", "JSON", "JSONL", "API", "CPU", "GPU", "CUDA", "JIT",
    "MB", "GB", "URL", "ChatML", "SHA", "ID",
    "Hugging", "Face", "Hub", "BlinkDL",  # where models come from, and their maker
    "localhost", "scheme", "host", "port",  # the form of an allowed origin: scheme://host[:port]
    "rwkv", "llama", "cpu", "cuda", "fp", "bf",  # back ends, architectures, rwkv strategies
}  # fmt: skip
CODE = [
    r"\w+://\S*",  # URLs
    r"(?<![\w.])/[\w./-]+",  # paths
    r"\{\{\w+\}\}",  # macros ({{user}}, {{char}}...)
    r":material/\w+:",  # icons
    r"\b[\w-]+\.(?:pth|gguf|json|jsonl|png|md|db|cpp)\b",  # file names, llama.cpp
    r"\.(?:pth|gguf|json|jsonl|png)\b",  # file types
    r"\b\w*[_\d]\w*\b",  # identifiers and versions: cuda_on, fp32, rwkv7, q4_1, V2, 17.2M
    r"\bRP_[A-Z_]+\b",  # environment variables
    r"\brp-[\w-]+",  # an API key's first letters
    r"\$\w+",  # environment variables: $HF_ENDPOINT
    r"\b[\w.-]+/[\w./-]+",  # a model's repository and file: BlinkDL/rwkv7-g1, owner/name
    r"\b[\w-]+\.(?:co|com|org|io)\b",  # a host's name, as the Hub's is shown
    r":\w+\[",  # Markdown's colour directives: :gray[...]
]
_CODE = re.compile("|".join(CODE))
_WORD = re.compile(r"[A-Za-z]{2,}")


def latin_words(text: str) -> list[str]:
    """The words of `text` in Latin script that are neither proper names nor codes."""
    text = _CODE.sub(" ", text.replace("\\", ""))
    return [w for w in _WORD.findall(text) if w not in PROPER]


def test_the_filter_flags_english_and_keeps_names_and_codes() -> None:
    assert latin_words("Built-in default (SmolLM2-135M)") == ["Built", "in", "default"]
    assert latin_words("1 thread") == ["thread"] and latin_words("Lore: 1 entries")
    assert latin_words('留空则为 "User"。') == ["User"]
    assert latin_words("tiny.pth · rwkv7 · 2 层 · rwkv 包（PyTorch），cpu fp32，1 个线程") == []
    assert latin_words("cuda_on") == [] and latin_words("http://127.0.0.1:8501/v1") == []
    assert latin_words("把 .pth（RWKV）或 .gguf 文件放进 /work/models") == []


# --- the walk ------------------------------------------------------------------------------------
def _strings(proto: Any) -> Iterator[str]:
    for fd, value in proto.ListFields():
        values = list(value) if fd.is_repeated else [value]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for v in values:
                yield from _strings(v)
        elif fd.type == FieldDescriptor.TYPE_STRING and fd.name in TEXT_FIELDS:
            yield from values


class Walk:
    """Every text the pages drew, with where it was."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self.data: set[str] = set()  # the user's data as the pages show it (message bodies)

    def collect(self, at: Any, where: str) -> None:
        check(at)
        for node in at._tree:
            proto = getattr(node, "proto", None)
            if proto is None or type(node).__name__ in ("Code", "Json"):
                continue  # the prompt as the model saw it: data
            for text in _strings(proto):
                if text.strip():
                    self.seen.setdefault(text, set()).add(f"{where}: {type(node).__name__}")

    def english(self) -> list[str]:
        return sorted(
            f"{sorted(where)[0]}: {text!r} -> {words}"
            for text, where in self.seen.items()
            if text not in self.data and (words := latin_words(text))
        )


def _data_strings() -> set[str]:
    from pages.ui_common import md_text

    s = store()
    out: set[str] = set()
    for conv in s.list_conversations(limit=100):
        for m in s.list_messages(conv.id):  # type: ignore[arg-type]
            out |= {md_text(t) for t in [m.text, *m.alternatives]}
    s.close()
    return out


NAMES = ("小雪", "阿明", "老王")


def test_every_page_in_chinese_has_no_english_left(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walk = Walk()
    at = open_app()
    s = store()
    for ch in s.list_characters():  # the bundled English cards: their text is data
        s.delete_character(ch.id, chats="delete")  # type: ignore[arg-type]
    ids = []
    for name in NAMES:
        fields = {"name": name, "description": f"{name}是一只雪狐。", "greetings": ["你好。"]}
        ids.append(s.create_character(fields).id)
    book = s.create_lorebook("雪国", entries=[], description="北方的故事")
    s.set_character_lorebooks(ids[0], [book.id])  # type: ignore[arg-type]
    s.close()

    # Settings: the session switches to Chinese there, as a user does
    at.switch_page("pages/settings.py").run()
    at.radio(key="set_language").set_value("zh").run()
    walk.collect(at, "settings")
    at.text_input(key="api_key_name").input("手机")
    next(b for b in at.button if (b.key or "").startswith("FormSubmitter:api_key")).click().run()
    walk.collect(at, "settings, a key made")

    # Characters: the list, the form for a new one, a character's form with its lorebooks
    at.switch_page("pages/characters.py").run()
    walk.collect(at, "characters")
    at.button(key="new_character").click().run()
    walk.collect(at, "characters, new")
    at.button(key=f"edit_{ids[0]}").click().run()
    walk.collect(at, "characters, edit")
    at.selectbox(key="lore_book_id").set_value(book.id).run()
    walk.collect(at, "characters, lorebook")

    # Home: the model, the characters, a group chat's form, recent chats
    at.switch_page("pages/home.py").run()
    walk.collect(at, "home")

    # a chat: a message, a reply, a second version, a reply stopped, what the model saw
    at.button(key=f"home_chat_{ids[0]}").click().run()
    follow(at, "pages/chat.py")
    walk.collect(at, "chat, opened")
    conv = store().list_conversations(ids[0])[0]
    at.number_input(key=f"samp_{conv.id}_max_tokens").set_value(8).run()
    at.chat_input(key="chat_input").set_value("讲个故事吧。").run()
    walk.collect(at, "chat, a reply")
    reply = store().list_messages(conv.id)[-1]  # type: ignore[arg-type]
    at.button(key=f"regen_{reply.id}").click().run()
    walk.collect(at, "chat, two versions")
    at.button(key=f"promptview_{reply.id}").click().run()
    walk.collect(at, "chat, what the model saw")
    click_during_reply(monkeypatch, "stop_gen")
    at.chat_input(key="chat_input").set_value("再讲一个。").run()
    walk.collect(at, "chat, a reply stopped")
    at.button(key=f"del_{reply.id}").click().run()
    walk.collect(at, "chat, a message deleted")
    at.button(key="undo_btn").click().run()
    walk.collect(at, "chat, undone")
    assert "你好" in " ".join(s.value for s in at.chat_message[0].markdown)

    # a group chat: its header, settings, members, the auto mode stopped at its second turn
    at.switch_page("pages/home.py").run()
    at.multiselect(key="group_new_pick").set_value(ids).run()
    at.button(key="group_new_start").click().run()
    follow(at, "pages/chat.py")
    walk.collect(at, "group chat")
    group = next(c for c in store().list_conversations(ids[0]) if c.members)
    assert group.user_name == "用户"  # the default user's name, in Chinese
    at.number_input(key=f"samp_{group.id}_max_tokens").set_value(8).run()
    click_during_reply(monkeypatch, "stop_gen", reply=2)
    at.button(key="group_auto").click().run()
    walk.collect(at, "group chat, auto mode stopped")

    walk.data = _data_strings()
    assert len(walk.seen) > 250, len(walk.seen)  # the walk saw the pages
    english = walk.english()
    assert not english, "English left in the Chinese interface:\n" + "\n".join(english)


def test_on_llama_cpp_the_model_line_says_what_runs(
    app_env: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A GGUF runs on llama.cpp: the model line says so, in Chinese, with the file's type and
    threads, and nothing of the rwkv package (its strategy "cpu fp32" was shown before)."""
    from core.models.convert import convert
    from core.settings import ModelChoice
    from pages.ui_common import rwkv_options_apply

    models = tmp_path / "models"
    models.mkdir()
    gguf = convert(tiny_model, models / "tiny.gguf", "f32", models_dir=models)
    monkeypatch.setenv("RP_MODEL", str(gguf))
    s = store()
    s.set_setting("language", "zh")
    s.close()
    at = open_app()
    line = next(t.value for t in at.text if ".gguf" in t.value)
    assert re.search(r" · llama\.cpp，GGUF F32，\d+ 个线程$", line), line
    assert "cpu" not in line and not latin_words(line), line
    # Settings shows the rwkv package's options only where it runs the model
    at.switch_page("pages/settings.py").run()
    check(at)
    keys = {w.key for w in [*at.selectbox, *at.checkbox]}
    assert not keys & {"set_strategy", "set_cuda_on", "set_jit_on"}, keys
    assert "cpu fp32" not in [o for b in at.selectbox for o in b.options]
    at.selectbox(key="set_backend").set_value("rwkv").run()  # the user asks for the package
    assert {"set_strategy", "set_cuda_on", "set_jit_on"} <= {
        w.key for w in [*at.selectbox, *at.checkbox]
    }
    assert not rwkv_options_apply(ModelChoice(path=str(gguf)))
    assert not rwkv_options_apply(ModelChoice(path=""))  # the embedded model: llama.cpp
    assert rwkv_options_apply(ModelChoice(path=str(tiny_model)))
    assert rwkv_options_apply(ModelChoice(path=str(gguf), backend="rwkv"))
