"""AppTest of the Characters page: the form, avatar upload, duplicate, delete, import, export."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from tests.support import FIXTURES
from tests.support.ui import (
    check,
    create_character,
    errors,
    form_save,
    open_app,
    store,
)

PAGE = "pages/characters.py"


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="PNG")
    return out.getvalue()


def test_create_character_through_the_form(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(
        at,
        "Aria",
        description="A cheerful bard.",
        greeting="Hello, {{user}}!",
        alts="Hi again!\n---\nWelcome back!",
        example="{{user}}: hi\n{{char}}: hello",
    )
    assert not errors(at)
    assert any("Saved Aria" in s.value for s in at.success)
    ch = store().get_character_by_name("Aria")
    assert ch is not None
    assert ch.description == "A cheerful bard."
    assert ch.greetings == ["Hello, {{user}}!", "Hi again!", "Welcome back!"]
    assert ch.example_dialogue.startswith("{{user}}: hi")
    # the new character is listed with its buttons
    assert at.button(key=f"chat_{ch.id}") is not None
    assert at.button(key=f"edit_{ch.id}") is not None


def test_refused_input_shows_an_error_and_keeps_the_form(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Bo", description="first")
    at.button(key="new_character").click().run()
    at.text_input(key="cf_new_name").input("Bo")
    at.text_area(key="cf_new_description").input("typed text must survive")
    form_save(at).run()
    check(at)
    errs = errors(at)
    assert errs and errs[0].startswith("Could not do that:") and "already exists" in errs[0]
    # the form is still there with what was typed
    assert at.text_area(key="cf_new_description").value == "typed text must survive"
    assert at.text_input(key="cf_new_name").value == "Bo"
    # an empty name is refused too, without a traceback
    at.text_input(key="cf_new_name").input("   ")
    form_save(at).run()
    check(at)
    assert errors(at)


def test_edit_with_avatar_upload_and_preview(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Cy", description="old")
    cid = store().get_character_by_name("Cy").id
    at.button(key=f"edit_{cid}").click().run()
    check(at)
    at.file_uploader(key=f"cf_{cid}_avatar").set_value(("me.png", _png(), "image/png"))
    at.run()
    check(at)
    previews = [c for img in at.get("image") for c in img.captions]
    assert "new avatar" in previews  # the preview of the picture, before saving
    at.text_area(key=f"cf_{cid}_description").input("new description")
    form_save(at).run()
    check(at)
    ch = store().get_character(cid)
    assert ch.description == "new description"
    assert ch.avatar.startswith("avatars/") and (app_env / ch.avatar).is_file()


def test_a_broken_avatar_is_refused_with_a_message(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Di")
    cid = store().get_character_by_name("Di").id
    at.button(key=f"edit_{cid}").click().run()
    at.file_uploader(key=f"cf_{cid}_avatar").set_value(("x.png", b"not a picture", "image/png"))
    at.run()
    form_save(at).run()
    check(at)
    assert errors(at) and "picture" in errors(at)[0]
    assert store().get_character(cid).avatar == ""


def test_a_refused_save_leaves_no_picture_and_a_removed_one_goes(app_env: Path) -> None:
    """The picture and the row are one save (CharacterService): a name that is taken refuses
    both, and no file is left in avatars/; "remove picture" deletes the file."""
    at = open_app(PAGE)
    create_character(at, "Gil")
    folder = app_env / "avatars"  # the bundled characters' pictures may be there already
    before = set(folder.iterdir()) if folder.is_dir() else set()
    at.button(key="new_character").click().run()
    at.file_uploader(key="cf_new_avatar").set_value(("me.png", _png(), "image/png"))
    at.run()
    at.text_input(key="cf_new_name").input("Gil")
    form_save(at).run()
    check(at)
    assert errors(at) and "already exists" in errors(at)[0]
    assert (set(folder.iterdir()) if folder.is_dir() else set()) == before
    # the same picture on the existing character, then removed again
    cid = store().get_character_by_name("Gil").id
    at.button(key=f"edit_{cid}").click().run()
    at.file_uploader(key=f"cf_{cid}_avatar").set_value(("me.png", _png(), "image/png"))
    at.run()
    form_save(at).run()
    check(at)
    avatar = store().get_character(cid).avatar
    assert avatar and (app_env / avatar).is_file()
    at.button(key=f"edit_{cid}").click().run()
    at.file_uploader(key=f"cf_{cid}_avatar").set_value(None)
    at.run()
    at.checkbox(key=f"cf_{cid}_remove_avatar").check()
    form_save(at).run()
    check(at)
    assert store().get_character(cid).avatar == "" and not (app_env / avatar).exists()


def test_duplicate_and_delete_keeping_chats(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Eve", greeting="Hi.")
    s = store()
    cid = s.get_character_by_name("Eve").id
    conv = s.create_conversation(cid)
    at.button(key=f"dup_{cid}").click().run()
    check(at)
    copy = s.get_character_by_name("Eve (2)")
    assert copy is not None
    # delete the original, keeping its chats
    at.radio(key=f"del_chats_{cid}").set_value("keep")
    at.button(key=f"del_{cid}").click().run()
    check(at)
    assert s.get_character(cid) is None
    kept = s.get_conversation(conv.id)
    assert kept is not None and kept.character_id is None and kept.character_name == "Eve"
    # delete the copy with its chats
    conv2 = s.create_conversation(copy.id)
    at.radio(key=f"del_chats_{copy.id}").set_value("delete")
    at.button(key=f"del_{copy.id}").click().run()
    check(at)
    assert s.get_character(copy.id) is None and s.get_conversation(conv2.id) is None


def test_search(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Zed Unique", description="a zebra keeper")
    at.text_input(key="char_search").input("zebra").run()
    check(at)
    names = [m.value for m in at.markdown if m.value.startswith("**")]
    assert names == ["**Zed Unique**"]
    at.text_input(key="char_search").input("nothing-matches-this").run()
    assert any("No character matches" in i.value for i in at.info)


def test_import_cards_and_export(app_env: Path) -> None:
    at = open_app(PAGE)
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {"name": "Imported One", "description": "from a card", "first_mes": "Yo."},
    }
    old = {"user": "me", "bot": "小雪", "greeting": "你好", "bot_persona": "一只猫"}
    at.file_uploader(key="card_upload_0").set_value(
        [
            ("card.json", json.dumps(card).encode(), "application/json"),
            ("小雪.json", json.dumps(old, ensure_ascii=False).encode(), "application/json"),
            ("bad.json", b"{not json", "application/json"),
        ]
    )
    at.run()
    at.button(key="import_cards_btn").click().run()
    check(at)
    s = store()
    assert s.get_character_by_name("Imported One") is not None
    assert s.get_character_by_name("小雪") is not None
    # the bad file is named (markdown-escaped), the others are imported
    assert any(e.startswith("Could not import bad") for e in errors(at))
    ch = s.get_character_by_name("Imported One")
    dl_ids = [d.proto.id for d in at.get("download_button")]
    assert any(f"export_png_{ch.id}" in i for i in dl_ids)
    assert any(f"export_json_{ch.id}" in i for i in dl_ids)


def test_page_in_chinese(app_env: Path) -> None:
    s = store()
    s.set_setting("language", "zh")
    at = open_app(PAGE)
    assert at.title[0].value == "角色"
    assert at.button(key="new_character").label == "新建角色"


def test_import_real_cards_made_by_others(app_env: Path) -> None:
    files = sorted((FIXTURES / "cards").glob("*.png"))
    assert len(files) == 3
    files += [FIXTURES / "seed-chars" / "小雪.json"]
    at = open_app(PAGE)
    at.file_uploader(key="card_upload_0").set_value(
        [
            (f.name, f.read_bytes(), "image/png" if f.suffix == ".png" else "application/json")
            for f in files
        ]
    )
    at.run()
    at.button(key="import_cards_btn").click().run()
    check(at)
    assert not errors(at), errors(at)
    s = store()
    assert s.get_character_by_name("Seraphina") is not None
    assert s.get_character_by_name("小雪") is not None
    assert s.get_character_by_name("Seraphina").avatar  # the card's picture became the avatar


def test_system_prompt_and_post_history_are_edited_in_the_form(app_env: Path) -> None:
    """The card's system prompt and post-history instructions (which imported cards keep) can
    be written and changed in the form, where the chat's prompt reads them
    (core/chat/card_fields.py, tested with the prompt in test_card_fields.py); cleared, they go."""
    from core.chat import card_fields

    at = open_app(PAGE)
    create_character(at, "Vera", description="A spy.")
    cid = store().get_character_by_name("Vera").id
    at.button(key=f"edit_{cid}").click().run()
    check(at)
    at.text_area(key=f"cf_{cid}_system").input("Write as {{char}}. {{original}}")
    at.text_area(key=f"cf_{cid}_post").input("[Stay in character.]")
    form_save(at).run()
    check(at)
    ch = store().get_character(cid)
    assert card_fields.system_prompt(ch) == "Write as {{char}}. {{original}}"
    assert card_fields.post_history(ch) == "[Stay in character.]"
    at.button(key=f"edit_{cid}").click().run()
    assert at.text_area(key=f"cf_{cid}_system").value == "Write as {{char}}. {{original}}"
    at.text_area(key=f"cf_{cid}_post").input("")
    form_save(at).run()
    check(at)
    ch = store().get_character(cid)
    assert card_fields.post_history(ch) == "" and "post_history_instructions" not in ch.card_extra
    assert card_fields.system_prompt(ch) == "Write as {{char}}. {{original}}"
