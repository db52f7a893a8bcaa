"""AppTest of "What the model saw" under a reply's more menu, and of the "auto" sampling preset
in the Chat page's sidebar, with the tiny RWKV-7 as the app's model."""

from __future__ import annotations

from pathlib import Path

from core import runtime
from core.engine.sampler import PRESETS
from tests.support.ui import check, open_app

CHAT = "pages/chat.py"


def _chat_with_a_reply() -> tuple[int, int]:
    rt = runtime.current()
    ch = rt.store.create_character(
        {
            "name": "Ada",
            "greetings": ["Evening."],
            "card_extra": {"post_history_instructions": "Answer in one line."},
        }
    )
    rt.load()
    conv = rt.chat.new_chat(ch.id)
    rt.chat.set_sampling(conv.id, {"max_tokens": 5, "seed": 4}, "custom")
    rt.chat.send(conv.id, "Any ships tonight?")
    msg = rt.chat.reply(conv.id).consume().message
    assert msg is not None
    return conv.id, msg.id


def test_what_the_model_saw_opens_under_the_reply(app_env: Path) -> None:
    conv_id, msg_id = _chat_with_a_reply()
    view = runtime.current().chat.prompt_view(conv_id, msg_id)
    at = open_app(CHAT, chat=str(conv_id))
    assert not at.code  # closed until asked for
    msgs = runtime.current().store.list_messages(conv_id)
    user_line = next(m.id for m in msgs if m.role == "user")
    assert f"promptview_{msgs[0].id}" in [b.key for b in at.button]  # the greeting has one
    assert f"promptview_{user_line}" not in [b.key for b in at.button]  # the user's line: none
    at.button(key=f"promptview_{msg_id}").click().run()
    check(at)
    assert [c.value for c in at.code] == [view.text]
    assert "Answer in one line." in at.code[0].value and at.code[0].value.endswith("Ada:")
    caption = f"{view.prompt_tokens} prompt tokens: {view.cached_tokens} from the cache, "
    assert any(c.value.startswith(caption) for c in at.caption)
    at.button(key=f"promptview_close_{msg_id}").click().run()
    check(at)
    assert not at.code


def test_the_auto_preset_shows_the_models_own_values(app_env: Path) -> None:
    conv_id, _ = _chat_with_a_reply()
    at = open_app(CHAT, chat=str(conv_id))
    at.selectbox(key=f"samp_{conv_id}_preset").set_value("auto").run()
    check(at)
    rwkv = PRESETS["rwkv"]  # the app's model is an RWKV-7
    assert at.slider(key=f"samp_{conv_id}_top_p").value == rwkv.top_p
    assert at.slider(key=f"samp_{conv_id}_presence_penalty").value == rwkv.presence_penalty
    saved = runtime.current().store.get_conversation(conv_id).sampling
    assert saved["preset"] == "auto" and saved["top_p"] == rwkv.top_p
