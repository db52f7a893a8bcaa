"""Every card field reaches the prompt, macros are evaluated once and stored as fed, each reply's
seed comes from its place, and the "auto" preset follows the model family: through the chat
service and the runtime, on the tiny RWKV-7 and on the embedded model (a copy with its authors'
sampling values written into it), with a real SQLite file."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import gguf
import pytest

from core import runtime
from core.backends.embedded import embedded_model_path, missing_message
from core.backends.gguf_file import inspect_gguf
from core.chat import conversation_context, prompt_messages
from core.engine.sampler import PRESETS, SamplingParams, model_preset
from core.prompt import Message
from core.roleplay.cards import import_card
from core.runtime import Runtime
from tests.support.required import unavailable

SHORT = {"max_tokens": 6, "seed": 1, "temperature": 1.0, "top_p": 1.0}


def _card(**data: Any) -> bytes:
    base = {
        "name": "Ada",
        "description": "{{char}} is a ship's captain who talks to {{user}} like an old friend.",
        "personality": "calm, dry",
        "scenario": "A storm off the cape.",
        "first_mes": "Welcome aboard, {{user}}.",
        "mes_example": "",
        "alternate_greetings": [],
        "system_prompt": "",
        "post_history_instructions": "",
        "extensions": {},
    }
    base.update(data)
    return json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": base}).encode()


def _chat(rt: Runtime, **card: Any) -> int:
    ch = import_card(rt.store, _card(**card), "ada.json")
    rt.load()
    conv = rt.chat.new_chat(ch.id)
    rt.chat.set_sampling(conv.id, SHORT, "custom")
    return conv.id


def _reply(rt: Runtime, conv_id: int, **kw: Any) -> Any:
    turn = rt.chat.reply(conv_id, **kw).consume()
    assert turn.error is None and turn.message is not None
    return turn.message


def test_system_prompt_wraps_the_usual_opening(rt: Runtime) -> None:
    conv_id = _chat(rt, system_prompt="Rules for {{char}}.\n{{original}}\nNever break the story.")
    rt.store.set_setting("user_persona", "{{user}} is a stowaway.")
    ctx = conversation_context(rt.store, conv_id)
    text = rt.load().prompt_text(ctx, prompt_messages(rt.store, conv_id), Message("char"))
    opening = text.split("Ada: Welcome aboard")[0]
    # the card's system prompt, with the opening the app would write in place of {{original}}
    assert opening.startswith("Rules for Ada.\n")
    assert opening.rstrip().endswith("Never break the story.")
    for field in (
        "Ada is a ship's captain who talks to User",
        "calm, dry",
        "A storm off the cape.",
        "User is a stowaway.",
    ):
        assert field in opening  # personality, scenario and the user's persona
    assert "{{" not in text


def test_post_history_and_depth_prompt_are_fed_before_the_reply_and_stored(rt: Runtime) -> None:
    conv_id = _chat(
        rt,
        post_history_instructions="Answer {{user}} in one line. Luck: {{roll:d1000000}}.",
        extensions={"depth_prompt": {"prompt": "{{char}} hides a map.", "depth": 4}},
    )
    rt.chat.send(conv_id, "Where are we headed?")
    reply = _reply(rt, conv_id)
    before = reply.meta["before"]
    # the depth prompt first, then the post-history instructions, macros evaluated
    assert re.fullmatch(r"Ada hides a map\.\nAnswer User in one line\. Luck: \d+\.", before)
    assert reply.meta["depth_prompt"] == 4 and reply.meta["post_history"] is True
    view = rt.chat.prompt_view(conv_id, reply.id)
    # after the history (the user's message), just before the reply's header
    assert view.text.endswith(f"User: Where are we headed?\n\n{before}\n\nAda:")
    # stored as fed: the next turn feeds the same text before that reply, not a new roll
    rt.chat.send(conv_id, "And then?")
    second = _reply(rt, conv_id)
    later = rt.chat.prompt_view(conv_id, second.id).text
    assert f"{before}\n\nAda: {reply.text}\n\n" in later
    assert later.count("Ada hides a map.") == 2  # one before each of Ada's replies
    # a narrator line is not the character speaking: no card instructions before it
    narr = _reply(rt, conv_id, role="narrator")
    assert "before" not in (narr.meta or {})


def test_greetings_are_versions_and_their_macros_are_stored_as_fed(rt: Runtime) -> None:
    conv_id = _chat(
        rt,
        first_mes="Fair winds, {{user}}! It is {{weekday}}. Dice: {{roll:d1000000}}.",
        alternate_greetings=["{{random::Ahoy::Avast}}, {{user}}!"],
    )
    first = rt.store.list_messages(conv_id)[0]
    assert len(first.alternatives) == 2 and first.text == first.alternatives[0]
    assert re.fullmatch(r"Fair winds, User! It is \w+day\. Dice: \d+\.", first.alternatives[0])
    assert first.alternatives[1] in ("Ahoy, User!", "Avast, User!")
    # read again: the same text (evaluated once, when the chat was created)
    assert rt.store.list_messages(conv_id)[0].alternatives == first.alternatives


def test_each_reply_draws_from_its_own_place(rt: Runtime) -> None:
    ch = import_card(rt.store, _card(), "ada.json")
    rt.load()

    def run() -> tuple[str, str, str]:
        conv_id = rt.chat.new_chat(ch.id).id
        rt.chat.set_sampling(conv_id, SHORT, "custom")
        rt.chat.send(conv_id, "Tell me a story.")
        one = _reply(rt, conv_id)
        two = _reply(rt, conv_id, op="regen")
        assert two.id == one.id and len(two.alternatives) == 2
        rt.chat.send(conv_id, "Tell me a story.")
        three = _reply(rt, conv_id)
        return one.text, two.alternatives[1], three.text

    first, regen, later = run()
    assert regen != first  # a regenerated version is not the same reply again
    assert run() == (first, regen, later)  # the same places with the same seed: same replies


def test_the_auto_preset_follows_the_rwkv_family_and_a_users_choice_wins(rt: Runtime) -> None:
    ch = rt.store.create_character({"name": "Ada", "greetings": ["Hi."]})
    rt.load()
    conv = rt.chat.new_chat(ch.id)
    assert conv.sampling["preset"] == "auto"
    got = rt.chat.params(rt.chat.conversation(conv.id))
    assert _values(got) == _values(PRESETS["rwkv"])  # RWKV's recommended values
    # the chat's own seed and token limit stay when it follows the model
    rt.chat.set_sampling(conv.id, {**conv.sampling, "seed": 9, "max_tokens": 42}, "auto")
    got = rt.chat.params(rt.chat.conversation(conv.id))
    assert (got.seed, got.max_tokens) == (9, 42) and _values(got) == _values(PRESETS["rwkv"])
    # a preset or values the user chose are used as chosen
    rt.chat.set_sampling(conv.id, PRESETS["creative"].to_dict(), "creative")
    assert _values(rt.chat.params(rt.chat.conversation(conv.id))) == _values(PRESETS["creative"])
    custom = {**PRESETS["rwkv"].to_dict(), "temperature": 1.7}
    rt.chat.set_sampling(conv.id, custom, "custom")
    assert rt.chat.params(rt.chat.conversation(conv.id)).temperature == 1.7


def _values(p: SamplingParams) -> dict[str, Any]:
    skip = {"seed", "max_tokens", "logit_bias"}
    return {f.name: getattr(p, f.name) for f in fields(p) if f.name not in skip}


RECOMMENDED = {"temp": 0.55, "top_p": 0.85, "top_k": 33, "min_p": 0.07}


def test_a_gguf_with_its_authors_sampling_values_gets_them(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    src = embedded_model_path()
    if src is None:
        unavailable(missing_message())
    dst = data_dir / "smol-with-sampling.gguf"
    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    f32, i32 = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.INT32
    new = {
        f"general.sampling.{k}": MetadataDetails(i32 if k == "top_k" else f32, v)
        for k, v in RECOMMENDED.items()
    }
    copy_with_new_metadata(reader, writer, new, [])
    writer.close()
    got = inspect_gguf(dst).sampling
    assert got.keys() == RECOMMENDED.keys()
    assert all(abs(got[k] - v) < 1e-6 for k, v in RECOMMENDED.items())

    monkeypatch.setenv("RP_MODEL", str(dst))
    for var in ("RP_DB_URL", "RP_BACKEND", "RP_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    runtime.reset()
    try:
        rt = runtime.current()
        engine = rt.load()
        ch = rt.store.create_character({"name": "Ada", "greetings": ["Hi."]})
        conv = rt.chat.new_chat(ch.id)
        p = rt.chat.params(rt.chat.conversation(conv.id))
        assert (p.top_k, round(p.temperature, 4), round(p.top_p, 4), round(p.min_p, 4)) == (
            33,
            0.55,
            0.85,
            0.07,
        )
        assert p.presence_penalty == PRESETS["instruct"].presence_penalty  # the rest: instruct
        assert engine.info.extra["sampling"].keys() == RECOMMENDED.keys()
    finally:
        runtime.reset()
    # the embedded model itself has none: it gets the values for small instruct models
    assert inspect_gguf(src).sampling == {}
    assert model_preset("llama", "llama", {}) == PRESETS["instruct"]
    assert model_preset("rwkv7", "llama", RECOMMENDED) == PRESETS["rwkv"]  # an RWKV GGUF
