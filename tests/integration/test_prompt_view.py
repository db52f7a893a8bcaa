"""What the model saw (ChatService.prompt_view, `python -m core.chat prompt`): the text is exactly
what the engine feeds for that reply (its tokens, fed from the initial state, give the engine's
reference logits), and the counts are the reply's own (how many tokens came from the cache).
On the tiny RWKV-7 through the runtime, with a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.chat import conversation_context
from core.chat.context import to_message
from core.errors import StoreError
from core.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
SHORT = {"max_tokens": 5, "seed": 2, "temperature": 1.0, "top_p": 1.0}


def _chat_with_two_replies(rt: Runtime) -> tuple[int, list[Any]]:
    ch = rt.store.create_character(
        {
            "name": "Ada",
            "description": "{{char}} keeps the lighthouse.",
            "greetings": ["Evening, {{user}}."],
            "card_extra": {"post_history_instructions": "Stay brief."},
        }
    )
    rt.load()
    conv = rt.chat.new_chat(ch.id)
    rt.chat.set_sampling(conv.id, SHORT, "custom")
    replies = []
    for text in ("Any ships tonight?", "Tell me about the light."):
        rt.chat.send(conv.id, text)
        turn = rt.chat.reply(conv.id).consume()
        assert turn.message is not None
        replies.append((turn.message, turn.result))
    return conv.id, replies


def test_the_view_is_what_was_fed_with_the_replys_own_counts(rt: Runtime) -> None:
    conv_id, replies = _chat_with_two_replies(rt)
    engine = rt.load()
    messages = rt.store.list_messages(conv_id)
    for msg, res in replies:
        view = rt.chat.prompt_view(conv_id, msg.id)
        index = [m.id for m in messages].index(msg.id)
        history = [to_message(m) for m in messages[:index]]
        speaker = to_message(msg)
        speaker.text = ""
        ctx = conversation_context(rt.store, conv_id)
        assert view.text == engine.prompt_text(ctx, history, speaker)
        # the parts, tokenized one by one as the engine does, give its reference logits
        tokens = [t for _, part in view.parts for t in engine.backend.tokenize(part)]
        logits, _ = engine.backend.forward(tokens, engine.backend.initial_state())
        ref, _ = engine.reference_state(ctx, history, speaker)
        assert np.abs(logits - ref).max() < 1e-5
        assert view.recorded and view.prompt_tokens == res.prompt_tokens == len(tokens)
        assert view.fed_tokens == res.fed_tokens
        assert view.cached_tokens == res.prompt_tokens - res.fed_tokens
        kinds = [k for k, _ in view.parts]
        assert kinds[0] == "opening" and kinds[-2:] == ["before_reply", "reply_header"]
        assert view.parts[-2][1] == "Stay brief.\n\n"
    second = rt.chat.prompt_view(conv_id, replies[1][0].id)
    assert 0 < second.fed_tokens < second.prompt_tokens  # the rest came from the cache


def test_the_next_reply_and_a_greeting_have_counts_of_now(rt: Runtime) -> None:
    conv_id, _ = _chat_with_two_replies(rt)
    nxt = rt.chat.prompt_view(conv_id)
    assert nxt.message_id is None and nxt.text.endswith("Ada:") and nxt.fed_tokens is None
    greeting = rt.store.list_messages(conv_id)[0]
    view = rt.chat.prompt_view(conv_id, greeting.id)
    assert not view.recorded and view.cached_tokens is None and view.prompt_tokens > 0
    with pytest.raises(StoreError, match="no message with id 99999"):
        rt.chat.prompt_view(conv_id, 99999)


def test_the_command_line_prints_the_same_prompt(rt: Runtime, tiny_models: Any) -> None:
    conv_id, replies = _chat_with_two_replies(rt)
    last = replies[-1][0]
    view = rt.chat.prompt_view(conv_id, last.id)
    env = {**os.environ, "RP_MODEL": str(tiny_models(7))}
    out = subprocess.run(
        [sys.executable, "-m", "core.chat", "prompt", str(conv_id), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["text"] == view.text and got["message_id"] == last.id
    assert got["cached_tokens"] == view.cached_tokens
    missing = subprocess.run(
        [sys.executable, "-m", "core.chat", "prompt", "4242"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1
    assert "There is no chat with id 4242." in missing.stderr
    assert "Traceback" not in missing.stderr
