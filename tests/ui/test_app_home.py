"""AppTest of Home: the model, the characters, one click to chat, recent chats; the old flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.ui import (
    chat_texts,
    check,
    errors,
    follow,
    open_app,
    store,
)


def test_home_shows_model_characters_and_starts_a_chat(app_env: Path, tiny_model: Path) -> None:
    s = store()
    ch = s.create_character({"name": "Hana", "greetings": ["Welcome, {{user}}!"]})
    at = open_app()
    assert at.title[0].value == "RWKV Role Play"
    summary = [t.value for t in at.text if "rwkv7" in t.value]
    assert summary and tiny_model.name in summary[0] and "2 layers" in summary[0]
    assert "Hana" in [t.value for t in at.text]
    assert any(img for img in at.get("image"))  # characters are shown with their pictures
    at.button(key=f"home_chat_{ch.id}").click().run()
    check(at)
    conv = s.list_conversations(ch.id)[0]
    assert at.query_params["chat"] == str(conv.id)
    assert "Welcome, User!" in chat_texts(at)
    assert at.chat_input(key="chat_input") is not None
    assert conv.sampling["preset"] == "auto"  # the default preset: the model family's values


def test_a_characters_own_preset_is_used(app_env: Path) -> None:
    s = store()
    ch = s.create_character({"name": "Pia", "greetings": ["Hi."], "sampling_preset": "precise"})
    at = open_app()
    at.button(key=f"home_chat_{ch.id}").click().run()
    check(at)
    sampling = s.list_conversations(ch.id)[0].sampling
    assert sampling["preset"] == "precise" and sampling["top_k"] == 40


def test_recent_chats_resume(app_env: Path) -> None:
    s = store()
    ch = s.create_character({"name": "Ivo", "greetings": ["Hey."]})
    old = s.create_conversation(ch.id, title="Old chat")
    s.add_message(old.id, "user", "what we said before")
    at = open_app()
    assert any(t.value == "Old chat" for t in at.text)
    at.button(key=f"home_resume_{old.id}").click().run()
    check(at)
    follow(at, "pages/chat.py")
    assert "what we said before" in chat_texts(at)
    at.run()  # still the same chat on the next run
    assert "what we said before" in chat_texts(at)


def test_empty_data_dir_offers_to_create_a_character(app_env: Path, monkeypatch: Any) -> None:
    from core.roleplay import cards

    monkeypatch.setattr(cards, "character_dirs", lambda: [])  # no bundled characters
    at = open_app()
    assert any("no characters" in i.value for i in at.info)
    assert any(
        p.proto.page.endswith("characters.py") or "characters" in p.proto.page
        for p in at.get("page_link")
    )


def test_old_command_line_flags_choose_the_model(
    app_env: Path, tiny_model: Path, monkeypatch: Any
) -> None:
    import core.cli_args as ca

    monkeypatch.delenv("RP_MODEL")
    monkeypatch.setattr(
        ca,
        "_CACHE",
        ca.parse_args(
            [
                "--model",
                str(tiny_model.with_suffix("")),
                "--strategy",
                "cpu fp32",
                "--cuda_on",
                "0",
                "--jit_on",
                "1",
                "--listen",
            ]
        ),
    )
    at = open_app()
    assert any(tiny_model.name in t.value and "cpu fp32" in t.value for t in at.text)
    assert not errors(at)
    monkeypatch.setattr(ca, "_CACHE", None)


def test_home_in_chinese(app_env: Path) -> None:
    store().set_setting("language", "zh")
    at = open_app()
    assert at.title[0].value == "RWKV 角色扮演"
    assert [s.value for s in at.subheader] == ["角色", "最近的对话"]
