"""The chat service and the runtime without Streamlit: every chat operation a front end uses,
on the tiny RWKV-7 model and a real SQLite file (the test's own data directory)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import runtime
from core.chat import ChatService, conversation_context, prompt_messages
from core.errors import ModelError, StoreError
from core.prompt import CharacterContext, Message
from core.runtime import ModelChoice, Runtime
from core.store import Conversation

SHORT = {"max_tokens": 6, "seed": 1, "temperature": 1.0, "top_p": 0.9}


def _chat(rt: Runtime, greeting: str = "Hello there.") -> Conversation:
    ch = rt.store.create_character({"name": "Ada", "greetings": [greeting]})
    conv = rt.chat.new_chat(ch.id)
    rt.chat.set_sampling(conv.id, SHORT, "custom")
    return conv


def _said(turn: Any) -> str:
    return "".join(turn)


# --- the runtime ------------------------------------------------------------------------------


def test_model_choice_precedence_and_loading(rt: Runtime, tiny_models: Any) -> None:
    env_path = str(tiny_models(7))
    assert rt.choice().path == env_path  # $RP_MODEL when nothing is saved
    assert rt.engine() is None  # never loads by itself
    other = ModelChoice(path=str(tiny_models(6)), backend="rwkv")
    rt.store.set_setting("model", other.to_dict())
    assert rt.choice() == other  # the saved setting wins over $RP_MODEL
    rt.choose(ModelChoice(path=env_path))
    assert rt.choice().path == env_path  # chosen in this run wins over the setting
    assert rt.store.get_setting("model")["path"] == env_path  # and is saved
    engine = rt.load()
    assert rt.engine() is engine and rt.load() is engine  # loaded once
    rt.unload()
    assert rt.engine() is None and rt.unloaded
    rt.start_loading()  # an unload on purpose is kept
    assert not rt.loading and rt.engine() is None


def test_background_load_and_a_bad_file(rt: Runtime, data_dir: Path) -> None:
    rt.start_loading()
    engine = rt.wait_loaded(timeout=120)
    assert engine is not None and rt.failure() is None
    bad = data_dir / "broken.pth"
    bad.write_bytes(b"not a model")
    rt.choose(ModelChoice(path=str(bad)))
    assert rt.engine() is None  # the old model does not stand in for the new choice
    with pytest.raises(ModelError):
        rt.load()
    assert rt.failure()  # the reason, for the pages to show
    rt.start_loading()  # a failed choice is not retried behind the user's back
    assert not rt.loading
    with pytest.raises(ModelError, match="No model is loaded"):
        rt.chat.reply(_chat(rt).id)


def test_one_model_per_process(rt: Runtime, tiny_models: Any, tmp_path: Path, monkeypatch) -> None:
    first = rt.load()
    monkeypatch.setenv("RP_DATA_DIR", str(tmp_path / "other"))
    other = runtime.current()
    assert other is not rt
    second = other.load(ModelChoice(path=str(tiny_models(7))))
    assert second is not first and rt.engine() is None  # loading another released the first


# --- the chat service -------------------------------------------------------------------------


def test_new_chat_takes_the_greeting_preset_and_user_name(rt: Runtime) -> None:
    rt.store.set_setting("user_name", "Sam")
    ch = rt.store.create_character(
        {"name": "Ada", "greetings": ["Hi {{user}}!", "Hey!"], "sampling_preset": "precise"}
    )
    conv = rt.chat.new_chat(ch.id)
    msgs = rt.store.list_messages(conv.id)
    assert [m.text for m in msgs] == ["Hi Sam!"] and msgs[0].alternatives == ["Hi Sam!", "Hey!"]
    assert conv.sampling["preset"] == "precise" and conv.user_name == "Sam"
    assert rt.chat.params(conv).to_dict() == rt.chat.params(rt.chat.conversation(conv.id)).to_dict()
    with pytest.raises(StoreError):
        rt.chat.conversation(10_000)


def test_send_and_reply_is_saved_with_its_meta(rt: Runtime) -> None:
    rt.load()
    conv = _chat(rt)
    rt.chat.send(conv.id, "How are you?")
    turn = rt.chat.reply(conv.id)
    shown = _said(turn)
    turn.done.wait(30)
    msgs = rt.store.list_messages(conv.id)
    assert [m.role for m in msgs] == ["char", "user", "char"]
    saved = msgs[-1]
    assert turn.message is not None and turn.message.id == saved.id
    assert saved.text.strip() and shown.strip() and saved.text.strip() == shown.strip()
    assert saved.meta["stop"] in ("stop", "eos", "length") and saved.meta["model"]
    assert 0 < saved.meta["tokens"] <= SHORT["max_tokens"]
    assert turn.result is not None and turn.error is None


def test_regenerate_continue_and_versions(rt: Runtime) -> None:
    rt.load()
    conv = _chat(rt)
    rt.chat.send(conv.id, "Tell me a story.")
    first = rt.chat.reply(conv.id).consume().message
    assert first is not None
    regen = rt.chat.reply(conv.id, "regen", target_id=first.id).consume().message
    assert regen is not None and regen.id == first.id
    assert len(regen.alternatives) == 2 and regen.chosen == 1
    cont = rt.chat.reply(conv.id, "continue", target_id=first.id).consume().message
    assert cont is not None and cont.text.startswith(regen.text) and cont.meta.get("continued")
    back = rt.chat.choose_version(first.id, 0)
    assert back.text == first.text
    rt.chat.send(conv.id, "And then?")
    with pytest.raises(StoreError, match="changed"):  # the chat moved on since the click
        rt.chat.reply(conv.id, "regen", target_id=first.id)


def test_reply_by_another_speaker_and_a_named_one(rt: Runtime) -> None:
    rt.load()
    conv = _chat(rt)
    narr = rt.chat.reply(conv.id, role="narrator").consume().message
    named = rt.chat.reply(conv.id, role="char", name="Bob").consume().message
    assert narr is not None and narr.role == "narrator"
    assert named is not None and (named.role, named.name) == ("char", "Bob")
    with pytest.raises(ValueError):
        rt.chat.reply(conv.id, role="villain")


def test_closing_a_turn_mid_stream_saves_what_was_said(rt: Runtime) -> None:
    rt.load()
    conv = _chat(rt)
    rt.chat.set_sampling(conv.id, {**SHORT, "max_tokens": 200}, "custom")
    rt.chat.send(conv.id, "Talk for a while.")
    for seed in range(20):  # a stream that has shown text and not ended (some end at once)
        rt.chat.set_sampling(conv.id, {**SHORT, "max_tokens": 200, "seed": seed}, "custom")
        turn = rt.chat.reply(conv.id)
        shown = next(iter(turn), "")
        if shown.strip():
            break
        turn.close()
    turn.close()
    saved = turn.message
    assert saved is not None and saved.meta["stop"] in ("cancel", "closed")
    assert saved.text.strip() == shown.strip()
    assert rt.store.list_messages(conv.id)[-1].id == saved.id


def test_a_turn_never_started_closes_at_once(rt: Runtime) -> None:
    rt.load()
    conv = _chat(rt)
    turn = rt.chat.reply(conv.id)
    done = threading.Event()
    threading.Thread(target=lambda: (turn.close(timeout=60), done.set()), daemon=True).start()
    assert done.wait(5)  # not the 60 s wait for a reply that never ran
    assert turn.message is None and len(rt.store.list_messages(conv.id)) == 1


def test_edit_delete_rewind(rt: Runtime) -> None:
    conv = _chat(rt)
    a = rt.chat.send(conv.id, "one")
    rt.chat.send(conv.id, "two")
    rt.chat.send(conv.id, "three")
    assert rt.chat.edit(a.id, "ONE").text == "ONE"
    rt.chat.delete(a.id)
    assert [m.text for m in rt.store.list_messages(conv.id)] == ["Hello there.", "two", "three"]
    assert rt.chat.rewind_to(conv.id, 2).messages == 1
    assert [m.text for m in rt.store.list_messages(conv.id)] == ["Hello there.", "two"]


def test_bad_sampling_is_refused_and_the_saved_one_kept(rt: Runtime) -> None:
    conv = _chat(rt)
    with pytest.raises((ValueError, TypeError, StoreError)):
        rt.chat.set_sampling(conv.id, {**SHORT, "temperature": "hot"}, "custom")
    assert rt.chat.conversation(conv.id).sampling["max_tokens"] == SHORT["max_tokens"]


class _Lore(ChatService):
    """The service with a fixed text fed before each new reply (as lore would be)."""

    def before_reply(self, conv, ctx, history, speaker):  # type: ignore[no-untyped-def]
        return f"[Note {len(history)}: the tavern is on fire.]", {"note": True}


def test_text_fed_before_a_reply_is_stored_and_fed_again(rt: Runtime) -> None:
    engine = rt.load()
    svc = _Lore(lambda: rt.store, rt.engine)
    conv = _chat(rt)
    svc.send(conv.id, "What is that smell?")
    reply = svc.reply(conv.id).consume().message
    assert reply is not None and reply.meta["before"] == "[Note 2: the tavern is on fire.]"
    assert reply.meta["note"] is True
    svc.send(conv.id, "Run!")
    ctx: CharacterContext = conversation_context(rt.store, conv.id)
    history = prompt_messages(rt.store, conv.id)
    assert history[2].before == reply.meta["before"]
    assert "[Note 2: the tavern is on fire.]" in engine.prompt_text(ctx, history, Message("char"))
    # the invariant: the state the next reply starts from (through the cache, which holds the
    # reply's checkpoint) equals feeding the stored transcript, note included, from scratch
    speaker = Message("char", before="[Note 4: the tavern is on fire.]")
    cached, _ = engine.state_for(ctx, history, speaker)
    fresh, _ = engine.reference_state(ctx, history, speaker)
    np.testing.assert_allclose(cached, fresh, atol=1e-4)
    cont = svc.reply(conv.id, "continue").consume().message  # keeps what was fed before it
    assert cont is not None and cont.meta.get("before", "") == ""  # the user's message had none


# --- a chat of 50,000 imported messages (issue 21) -------------------------------------------


def test_a_chat_of_50000_imported_messages_stops_during_its_prefill(
    sqlite_store: Any, rwkv7_backend: Any
) -> None:
    """Issue 21: a 50,000-message JSONL import took the same path as 10,000 API messages: its
    first reply's prefill ran on, whatever the Stop button said. Stopped during the prefill,
    the reply ends at the next slice, saved as cancelled, with nothing said. (On SQLite only:
    it tests the prefill, and takes 45 s on either database.)"""
    store = sqlite_store
    import json

    from core.engine import Engine
    from tests.support.forced import Watched

    cancel = threading.Event()
    model = Watched(rwkv7_backend, on_call=cancel.set)  # Stop, during the first model call
    engine = Engine(model)
    svc = ChatService(lambda: store, lambda: engine)
    ch = store.create_character({"name": "Tide", "greetings": ["Hello."]})
    lines = [json.dumps({"user_name": "Bob", "character_name": "Tide"})]
    lines += [
        json.dumps({"name": "Bob" if i % 2 else "Tide", "is_user": i % 2 == 1, "mes": f"Line {i}."})
        for i in range(50_000)
    ]
    conv = svc.import_chat("\n".join(lines).encode(), ch.id)
    turn = svc.reply(conv.id, cancel=cancel).consume()
    assert turn.result is not None and turn.result.stop_reason == "cancel"
    assert turn.result.text == "" and turn.error is None
    assert model.calls == 1 and model.fed <= 256, (model.calls, model.fed)
    assert len(store.list_messages(conv.id)) == 50_000  # nothing saved for a reply never begun
