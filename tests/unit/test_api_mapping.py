"""OpenAI-style requests -> engine inputs (core/api/mapping.py): the messages of a chat as the
app's prompt (opening, named speakers, narrator lines, a prefill), the sampling fields and their
aliases, and the refusals, each naming its parameter."""

from __future__ import annotations

import pytest

from core.api.errors import ApiError
from core.api.mapping import (
    MAX_TOKENS_LIMIT,
    map_messages,
    parse_generation,
    refuse_unsupported,
)
from core.engine.sampler import PRESETS, SamplingParams
from core.prompt import CharacterContext, Message, RoleplayFormat, speaker_name

BASE = PRESETS["roleplay"]
VOCAB = 65536


def _prompt(body: dict) -> str:
    """The prompt text the RWKV role-play format makes of a request."""
    chat = map_messages(body)
    fmt, ctx = RoleplayFormat(), chat.ctx
    text = fmt.opening(ctx)
    for i, m in enumerate(chat.history):
        last_open = chat.continue_last and i == len(chat.history) - 1
        text += fmt.header(m, ctx)
        text += fmt.open_body(m.text, m, ctx) if last_open else fmt.body(m.text, m, ctx)
    if not chat.continue_last:
        text += fmt.header(chat.speaker, ctx)
    return text


def test_a_sillytavern_chat_maps_onto_the_role_play_prompt() -> None:
    """Main prompt, description, example dialogue (system messages named example_user /
    example_assistant), the greeting and the chat with their names (SillyTavern's "Completion
    object" names), and a later system message as a narrator line."""
    body = {
        "messages": [
            {"role": "system", "content": "Write Seraphina's next reply."},
            {"role": "system", "content": "Seraphina is a guardian of the forest."},
            {"role": "system", "content": "[Example Chat]"},
            {"role": "system", "name": "example_user", "content": "Who are you?"},
            {"role": "system", "name": "example_assistant", "content": "*smiles* A friend."},
            {"role": "system", "content": "[Start a new Chat]"},
            {"role": "assistant", "name": "Seraphina", "content": "You are awake!"},
            {"role": "user", "name": "Bob", "content": "Where am I?"},
            {"role": "system", "content": "The wind rises."},
        ]
    }
    assert _prompt(body) == (
        "Write Seraphina's next reply.\nSeraphina is a guardian of the forest.\n"
        "[Example Chat]\nBob: Who are you?\nSeraphina: *smiles* A friend.\n"
        "[Start a new Chat]\n\n"
        "Seraphina: You are awake!\n\nBob: Where am I?\n\nNarrator: The wind rises.\n\n"
        "Seraphina:"
    )


def test_the_same_chat_one_turn_later_renders_the_same_prefix() -> None:
    """What makes the state cache serve a client that resends the whole chat every turn."""
    turn1 = [
        {"role": "system", "content": "A story."},
        {"role": "user", "content": "Hi"},
    ]
    turn2 = [*turn1, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Go"}]
    first, second = _prompt({"messages": turn1}), _prompt({"messages": turn2})
    assert second.startswith(first + " Hello.\n\n")


def test_names_from_request_fields_then_messages_then_defaults() -> None:
    msgs = [{"role": "user", "content": "a"}]
    ctx = map_messages({"messages": msgs}).ctx
    assert (ctx.user_name, ctx.name) == ("User", "Assistant")
    chat = map_messages({"messages": msgs, "user_name": "Ann", "assistant_name": "Rex"})
    assert (chat.ctx.user_name, chat.ctx.name) == ("Ann", "Rex")
    assert chat.speaker == Message("char")
    # SillyTavern sanitises a non-Latin name to underscores: that is no name at all
    named = [{"role": "user", "name": "__", "content": "a"}]
    assert map_messages({"messages": named}).ctx.user_name == "User"
    # a second named assistant (a group chat) keeps its name
    group = [
        {"role": "assistant", "name": "Rex", "content": "a"},
        {"role": "assistant", "name": "Lina", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    chat = map_messages({"messages": group})
    assert [m.name for m in chat.history] == ["", "Lina", ""]
    assert chat.ctx.name == "Rex"


def test_a_trailing_assistant_message_is_continued_and_an_empty_one_names_the_speaker() -> None:
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"}]
    chat = map_messages({"messages": msgs})
    assert chat.continue_last and chat.speaker.text == "Well,"
    assert _prompt({"messages": msgs}).endswith("Assistant: Well,")
    msgs[-1] = {"role": "assistant", "name": "Lina", "content": ""}
    chat = map_messages({"messages": msgs})
    assert not chat.continue_last and speaker_name(chat.speaker, chat.ctx) == "Lina"
    assert [m.role for m in chat.history] == ["user"]


def test_content_parts_are_joined_and_images_refused() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    chat = map_messages({"messages": [{"role": "user", "content": parts}]})
    assert chat.history[0].text == "one\ntwo"
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(ApiError) as e:
        map_messages({"messages": [{"role": "user", "content": image}]})
    assert e.value.status == 400 and e.value.param == "messages[0].content"
    assert "text only" in e.value.message


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ("hi", "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "tool", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": "x", "name": 5}], "messages[0].name"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(messages, param) -> None:
    with pytest.raises(ApiError) as e:
        map_messages({"messages": messages})
    assert e.value.status == 400 and e.value.param == param


def test_openai_fields_and_the_defaults_of_the_preset() -> None:
    gen = parse_generation({}, BASE, VOCAB)
    assert gen.params == BASE and gen.n == 1 and not gen.stream and gen.stops == []
    body = {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.1,
        "max_tokens": 50,
        "seed": 7,
        "n": 3,
        "stop": "END",
        "stream": True,
        "logit_bias": {"11": -100, "261": 5},
        "stream_options": {"include_usage": True},
    }
    gen = parse_generation(body, BASE, VOCAB)
    p = gen.params
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.7, 0.9, 40, 0.05)
    assert (p.presence_penalty, p.frequency_penalty, p.max_tokens, p.seed) == (0.3, 0.1, 50, 7)
    assert p.logit_bias == ((11, -100.0), (261, 5.0))
    assert gen.n == 3 and gen.stream and gen.include_usage and gen.stops == ["END"]
    # each alternative its own seed stream
    assert [gen.params_for(i).seed for i in range(3)] == [7, 8, 9]


def test_the_aliases_of_text_completion_clients() -> None:
    """An ooba-type body from SillyTavern: max_new_tokens, rep_pen, stopping_strings,
    sampler_seed -1 (random), top_k 0 (off), and dozens of fields we do not use."""
    body = {
        "prompt": "x",
        "max_new_tokens": 120,
        "temperature": 1.0,
        "top_p": 1,
        "typical_p": 1,
        "sampler_seed": -1,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "top_k": 0,
        "stopping_strings": ["\nUser:", "\nBob:"],
        "stop": ["\nUser:"],
        "dry_multiplier": 0,
        "mirostat_mode": 0,
        "ban_eos_token": False,
        "grammar_string": "",
        "rep_pen_range": 0,
    }
    gen = parse_generation(body, BASE, VOCAB)
    p = gen.params
    assert p.max_tokens == 120 and p.seed is None and p.top_k == 0 and p.min_p == 0.1
    assert p.presence_penalty == pytest.approx(0.2)  # 2 x (1.1 - 1): the stronger one wins
    assert gen.stops == ["\nUser:", "\nBob:"]
    # llama.cpp's n_predict -1 means "no limit": the default
    assert parse_generation({"n_predict": -1}, BASE, VOCAB).params.max_tokens == BASE.max_tokens
    assert parse_generation({"max_length": 33}, BASE, VOCAB).params.max_tokens == 33


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens"),
        ({"max_new_tokens": 100000}, "max_new_tokens"),
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"stop": 3}, "stop"),
        ({"stop": ["a", 3]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"70000": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"dry_multiplier": -1}, "dry_multiplier"),
        ({"dry_multiplier": "0.8"}, "dry_multiplier"),
        ({"dry_allowed_length": 2.5}, "dry_allowed_length"),
        ({"dry_sequence_breakers": [1, 2]}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": {"a": 1}}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ["x"] * 33}, "dry_sequence_breakers"),
        ({"dry_penalty_last_n": "all"}, "dry_penalty_last_n"),
    ],
)
def test_wrong_types_and_ranges_are_refused_naming_the_field(body, param) -> None:
    with pytest.raises(ApiError) as e:
        parse_generation(body, BASE, VOCAB)
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize(
    ("body", "chat", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, True, "tools"),
        ({"functions": [{"name": "f"}]}, True, "tools"),
        ({"tool_choice": "required"}, True, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, True, "response_format"),
        ({"response_format": {"type": "json_object"}}, True, "response_format"),
        ({"logprobs": True}, True, "logprobs"),
        ({"logprobs": 5}, False, "logprobs"),
        ({"echo": True}, False, "echo"),
        ({"suffix": "end"}, False, "suffix"),
        ({"grammar_string": "root ::= x"}, False, "grammar_string"),
        ({"json_schema": {"type": "object"}}, False, "json_schema"),
    ],
)
def test_what_we_cannot_honour_is_refused(body, chat, param) -> None:
    with pytest.raises(ApiError) as e:
        refuse_unsupported(body, chat)
    assert e.value.status == 400 and e.value.param == param
    assert e.value.code == "unsupported_parameter"


def test_what_clients_send_empty_passes() -> None:
    """SillyTavern sends `logit_bias: {}`, empty grammar strings, `tool_choice: "auto"`..."""
    for body in (
        {"logit_bias": {}, "grammar_string": "", "json_schema": {}, "logprobs": False},
        {"tool_choice": "auto", "tools": []},
        {"response_format": {"type": "text"}},
    ):
        refuse_unsupported(body, chat=True)


def test_logit_bias_reaches_the_sampler() -> None:
    """A bias of +100 on one token makes it the pick; -100 bans the favourite."""
    import numpy as np

    from core.engine.sampler import sample

    logits = np.zeros(VOCAB, np.float32)
    logits[42] = 5.0
    rng = np.random.default_rng(0)
    p = SamplingParams(temperature=1.0, top_p=1.0, logit_bias=((7, 100.0),)).validated()
    assert sample(logits, p, rng) == 7
    greedy = SamplingParams(temperature=0.0, logit_bias=[[42, -100]]).validated()
    assert greedy.logit_bias == ((42, -100.0),)
    assert sample(logits, greedy, rng) != 42
    # a stored chat's sampling (JSON) keeps working with and without the field
    assert SamplingParams.from_dict({"logit_bias": [[3, 2.5]]}).validated().logit_bias == (
        (3, 2.5),
    )


def test_a_system_prompt_replaces_the_opening_verbatim() -> None:
    chat = map_messages({"messages": [{"role": "system", "content": "Line one\nLine two"}]})
    assert chat.ctx == CharacterContext(
        name="Assistant", user_name="User", system_prompt="Line one\nLine two"
    )
    assert chat.history == [] and chat.speaker == Message("char")


def test_ban_eos_token_bans_the_end_of_text_token() -> None:
    """SillyTavern's "Ban EOS Token" (ban_eos_token; vLLM's ignore_eos) honoured through the
    logit bias, beside the request's own biases."""
    assert parse_generation({"ban_eos_token": False}, BASE, VOCAB, eos=0).params.logit_bias == ()
    gen = parse_generation({"ban_eos_token": True, "logit_bias": {"5": 2}}, BASE, VOCAB, eos=0)
    assert gen.params.logit_bias == ((0, -100.0), (5, 2.0))
    assert parse_generation({"ignore_eos": True}, BASE, VOCAB, eos=7).params.logit_bias == (
        (7, -100.0),
    )


def test_too_many_messages_in_one_request_are_refused_saying_so() -> None:
    """Issue 21: 1,000 messages took 139 s and 10,000 got no answer in 300 s; a request has at
    most MAX_MESSAGES, and one with more is a 400 that says the limit."""
    from core.api.mapping import MAX_MESSAGES

    assert 1000 <= MAX_MESSAGES <= 10_000
    many = [{"role": "user", "content": "hi"}] * MAX_MESSAGES
    assert len(map_messages({"messages": many}).history) == MAX_MESSAGES
    with pytest.raises(ApiError) as e:
        map_messages({"messages": [*many, {"role": "user", "content": "one more"}]})
    err = e.value
    assert err.status == 400 and err.param == "messages"
    assert f"{MAX_MESSAGES + 1:,} messages" in err.message and f"{MAX_MESSAGES:,}" in err.message


def test_dry_fields_as_sillytavern_koboldcpp_and_llama_cpp_send_them() -> None:
    """SillyTavern sends its breakers as JSON text (`replaceMacrosInList`), llama.cpp's own
    clients as a list, text-generation-webui's users without the brackets."""
    base = PRESETS["precise"]  # DRY off
    assert parse_generation({}, base, VOCAB).params.dry_multiplier == 0.0
    st = {
        "dry_multiplier": 0.8,
        "dry_base": 1.75,
        "dry_allowed_length": 2,
        "dry_sequence_breakers": '["\\n", ":", "\\"", "*"]',
        "dry_penalty_last_n": 0,
    }
    p = parse_generation(st, base, VOCAB).params
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_range) == (0.8, 1.75, 2, 0)
    assert p.dry_sequence_breakers == ("\n", ":", '"', "*")
    as_list = {"dry_multiplier": 2, "dry_sequence_breakers": ["\n", "END", "\n", ""]}
    assert parse_generation(as_list, base, VOCAB).params.dry_sequence_breakers == ("\n", "END")
    ooba = {"dry_sequence_breakers": '"\\n", ":"'}
    assert parse_generation(ooba, base, VOCAB).params.dry_sequence_breakers == ("\n", ":")
    plain = {"dry_sequence_breakers": "###"}
    assert parse_generation(plain, base, VOCAB).params.dry_sequence_breakers == ("###",)
    assert parse_generation({"dry_penalty_last_n": 512}, base, VOCAB).params.dry_range == 512
    assert parse_generation({"dry_penalty_last_n": -1}, base, VOCAB).params.dry_range == 0
    # a base below 1 turns it off, as llama.cpp reads it; allowed length 0 counts as 1
    off = parse_generation({"dry_multiplier": 0.8, "dry_base": 0.5}, base, VOCAB).params
    assert off.dry_multiplier == 0.0
    assert parse_generation({"dry_allowed_length": 0}, base, VOCAB).params.dry_allowed_length == 1
    # not given: the preset's values stand
    on = parse_generation({}, PRESETS["roleplay"], VOCAB).params
    assert on.dry_multiplier == PRESETS["roleplay"].dry_multiplier > 0


def _with_note(chat: list[dict], note: str, depth: int) -> list[dict]:
    """`chat` (after an opening of one system message) with `note` at `depth`, as SillyTavern
    injects its Author's Note."""
    at = max(1, len(chat) - depth)
    return [*chat[:at], {"role": "system", "content": note}, *chat[at:]]


def test_a_note_at_a_depth_goes_next_to_the_reply_and_out_of_the_transcript() -> None:
    """With notes at the reply (the API setting, on for RWKV by default), a system message
    among the last messages is the speaker's note, not a narrator line of the transcript: one
    turn later the transcript before the reply is the same, whatever depth the note was at."""
    chat = [{"role": "system", "content": "A story."}, {"role": "assistant", "content": "Hi."}]
    for i in range(4):
        chat += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    chat.append({"role": "user", "content": "last"})
    body = {"messages": _with_note(chat, "[Be terse.]", 4)}
    on = map_messages(body, notes_at_reply=True)
    assert on.speaker.note == "[Be terse.]" and on.speaker.role == "char"
    assert all(m.role != "narrator" for m in on.history)
    plain = map_messages({"messages": chat})
    assert [(m.role, m.text) for m in on.history] == [(m.role, m.text) for m in plain.history]
    off = map_messages(body)  # off: where the client put it, a narrator line
    assert [m.role for m in off.history][-5] == "narrator" and not off.speaker.note
    # a prefill: the note goes before the message continued, and out of its stored form
    pre = map_messages(
        {"messages": [*_with_note(chat, "[N]", 2), {"role": "assistant", "content": "Well"}]},
        notes_at_reply=True,
    )
    assert pre.continue_last and pre.speaker.note == "[N]" and pre.speaker.text == "Well"
    # a system message deeper than NOTE_MAX_DEPTH stays at its place
    deep = map_messages({"messages": _with_note(chat, "[old]", 9)}, notes_at_reply=True)
    assert deep.speaker.note == "[old]"
    older = [*_with_note(chat, "[old]", 9), *[{"role": "user", "content": "x"}] * 4]
    assert not map_messages({"messages": older}, notes_at_reply=True).speaker.note
