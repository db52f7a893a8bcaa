"""AppTest of a character's RWKV state file on the Characters page (upload in the form, what the
character has, a refused file, removal, an imported card without its file) and of the Chat
page's notice when a chat runs without it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.support.state_file import state_file
from tests.support.ui import check, create_character, errors, form_save, open_app, store

PAGE = "pages/characters.py"


def _edit(at, cid: int):
    at.button(key=f"edit_{cid}").click().run()
    return check(at)


def _shown(elements) -> list[str]:
    """Texts as the user reads them (the page escapes markdown in what it shows)."""
    return [e.value.replace("\\", "") for e in elements]


def _captions(at) -> str:
    return "\n".join(_shown(at.caption))


def test_upload_a_state_file_in_the_form_then_remove_it(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Fox")
    cid = store().get_character_by_name("Fox").id
    _edit(at, cid)
    assert "No state file" in _captions(at)
    data = state_file(seed=1)
    at.file_uploader(key=f"cf_{cid}_state_file").set_value(
        ("../tuned.pth", data, "application/octet-stream")
    )  # a widget of the form: sent with the form
    form_save(at).run()
    check(at)
    assert not errors(at)
    sha = hashlib.sha256(data).hexdigest()
    assert (app_env / "state_files" / f"{sha}.pth").read_bytes() == data
    _edit(at, cid)
    shown = _captions(at)
    assert "Current: tuned.pth, 2 layers, 2 heads of 64 (width 128)" in shown, shown
    assert sha[:12] in shown
    at.checkbox(key=f"cf_{cid}_remove_state_file").check()
    form_save(at).run()
    check(at)
    assert not (app_env / "state_files" / f"{sha}.pth").exists()
    ext = store().get_character(cid).extensions
    assert "state_file" not in (ext.get("rwkv_roleplay") or {})


def test_a_file_for_another_model_size_is_flagged_in_the_form(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Big")
    cid = store().get_character_by_name("Big").id
    _edit(at, cid)
    at.file_uploader(key=f"cf_{cid}_state_file").set_value(
        ("big.pth", state_file(layers=3), "application/octet-stream")
    )
    form_save(at).run()
    check(at)
    _edit(at, cid)
    warnings = _shown(at.warning)
    assert any(
        "big.pth was made for a model with 3 layers" in w and "has 2 layers" in w for w in warnings
    ), warnings


def test_a_wrong_state_file_gets_a_message_and_nothing_is_lost(app_env: Path) -> None:
    at = open_app(PAGE)
    create_character(at, "Fox", description="kept")
    cid = store().get_character_by_name("Fox").id
    _edit(at, cid)
    at.text_area(key=f"cf_{cid}_description").input("typed")
    at.file_uploader(key=f"cf_{cid}_state_file").set_value(
        ("model.pth", b"PK\x03\x04 not really", "application/octet-stream")
    )
    form_save(at).run()
    check(at)  # a message, never a traceback
    errs = _shown(at.error)
    assert errs and errs[0].startswith("Could not do that:") and "model.pth" in errs[0], errs
    assert "not a PyTorch .pth file" in errs[0]
    assert store().get_character(cid).description == "kept"
    folder = app_env / "state_files"
    assert not folder.exists() or not any(folder.iterdir())
    assert at.text_area(key=f"cf_{cid}_description").value == "typed"  # the form keeps it


def test_an_imported_card_without_its_file_says_so(app_env: Path) -> None:
    at = open_app(PAGE)
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Tuned",
            "first_mes": "Hi.",
            "extensions": {
                "rwkv_roleplay": {
                    "state_file": {"name": "tuned.pth", "sha256": "ab" * 32, "layers": 2}
                }
            },
        },
    }
    at.file_uploader(key="card_upload_0").set_value(
        [("tuned.json", json.dumps(card).encode(), "application/json")]
    )
    at.run()
    at.button(key="import_cards_btn").click().run()
    check(at)
    assert store().get_character_by_name("Tuned") is not None  # imported all the same
    warnings = _shown(at.warning)
    assert any("tuned.pth" in w and "not in this app's data folder" in w for w in warnings)


def test_the_chat_says_when_it_runs_without_the_file(app_env: Path) -> None:
    from core import runtime
    from core.roleplay.state_files import REF_KEY

    at = open_app()
    rt = runtime.current()
    ch = rt.store.create_character(
        {
            "name": "Tuned",
            "greetings": ["Hi."],
            "extensions": {"rwkv_roleplay": {REF_KEY: {"name": "gone.pth", "sha256": "cd" * 32}}},
        }
    )
    conv = rt.chat.new_chat(ch.id)
    rt.chat.set_sampling(conv.id, {"max_tokens": 4, "seed": 1}, "custom")
    at.query_params["chat"] = str(conv.id)
    at.switch_page("pages/chat.py").run()
    check(at)
    at.chat_input(key="chat_input").set_value("hello").run()
    check(at)
    assert not errors(at), errors(at)
    infos = _shown(at.info)
    assert any("gone.pth" in i and "runs without it" in i for i in infos), infos
    assert len(rt.store.list_messages(conv.id)) == 3  # the greeting, the message, the reply
