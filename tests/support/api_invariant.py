"""The state invariant for API requests (docs/ARCHITECTURE.md, "The state invariant";
core/api): a client that keeps the chat itself and resends it whole every turn, as SillyTavern
does, through the API's own mapping of messages (core.api.mapping.map_messages) and the engine
calls the endpoints make; and a text-completion client that resends its whole transcript.

After every request, the state the next chat completion starts from gives the logits of its
prompt fed from scratch, and after a reply the client kept as it came, it feeds exactly the new
user message and the next reply's header (the reply's own checkpoint, rebuilt from its text).

With `notes` (the API setting `api_notes_at_reply`), the client also sends a note at depth 2
once a "note" op set one (SillyTavern's Author's Note), a place that moves every turn: the note
is fed next to the reply and the turn still feeds only the new message, the note and the
header.

A raw completion must start from the state of its prompt's tokens fed from scratch: with
greedy sampling its tokens equal those picked from the reference logits, and it feeds exactly
the tokens after the longest prefix the engine checkpointed (the ends of earlier prompts, and
of the replies to them).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from core.api.mapping import ChatInput, map_messages
from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.prompt import normalize
from tests.support.invariant import SEED, WORDS, Counted

api_op = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(WORDS), SEED),
    st.tuples(st.just("regen"), SEED),
    st.tuples(st.just("prefill"), st.sampled_from(WORDS), SEED),
    st.tuples(st.just("system"), st.sampled_from(WORDS)),
    st.tuples(st.just("raw"), st.sampled_from(WORDS), SEED),
)
# with notes at a depth: the note set or changed (a narrator line would be a note while recent)
note_op = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(WORDS), SEED),
    st.tuples(st.just("regen"), SEED),
    st.tuples(st.just("prefill"), st.sampled_from(WORDS), SEED),
    st.tuples(st.just("note"), st.sampled_from(WORDS)),
)
NOTE_DEPTH = 2

# the leading block SillyTavern sends: the card as system messages, the example dialogue as
# system messages named example_user / example_assistant
OPENING: list[dict[str, Any]] = [
    {"role": "system", "content": "{{char}} is a snow fox."},
    {"role": "system", "name": "example_user", "content": "hi"},
    {"role": "system", "name": "example_assistant", "content": "*yips*"},
    {"role": "assistant", "name": "小雪", "content": "Welcome, Bob."},
]
GREEDY = SamplingParams(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=3)


def check_api_invariant(
    backend: Any, ops: list[tuple], tol: float = 1e-4, notes: bool = False
) -> None:
    counted = Counted(backend)
    cache_dir = Path(tempfile.mkdtemp(prefix="states-"))
    tok = backend.tokenize
    try:
        eng = Engine(counted, cache_dir=cache_dir)
        fmt = eng.format
        msgs: list[dict[str, Any]] = [dict(m) for m in OPENING]
        raw = "小雪: Welcome, Bob.\n\nBob:"
        stored: set[tuple[int, ...]] = set()  # raw token prefixes the engine checkpointed
        kept = False  # the last request was a reply the client kept as it came
        seen: set[str] = set()  # prompts whose state was checked (so cached) before
        seen_history: set[str] = set()  # their transcripts before the note and the header

        note = ""  # the note the client puts at NOTE_DEPTH ("" for none)

        def mapped(messages: list[dict[str, Any]]) -> ChatInput:
            """The request the client sends for its transcript `messages` (with its note at
            its depth, never inside the opening), as the endpoint maps it."""
            if note:
                at = max(len(OPENING), len(messages) - NOTE_DEPTH)
                messages = [*messages[:at], {"role": "system", "content": note}, *messages[at:]]
            body = {"messages": messages, "user_name": "Bob"}
            return map_messages(body, notes_at_reply=notes)

        def fresh_tokens(m: ChatInput) -> int:
            """What a turn after a kept reply feeds: the new message, the note, the header."""
            new = m.history[-1]
            texts = [fmt.header(new, m.ctx), fmt.body(new.text, new, m.ctx)]
            if m.speaker.note:
                texts.append(fmt.note(m.speaker.note, m.ctx))
            texts.append(fmt.header(m.speaker, m.ctx))
            return sum(len(tok(t)) for t in texts)

        def chat(seed: int) -> tuple[ChatInput, Any]:
            """One chat completion as the endpoint makes it."""
            m = mapped(msgs)
            params = SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_tokens=6)
            r = eng.reply(m.ctx, m.history, m.speaker, params, continue_last=m.continue_last)
            for _ in r:
                pass
            return m, r.result

        for o in ops:
            kind = o[0]
            was_kept, kept = kept, False
            if kind in ("say", "regen", "prefill"):
                if kind == "say":
                    msgs.append({"role": "user", "name": "Bob", "content": o[1]})
                elif kind == "regen":
                    # a new version of the reply to the user's last message
                    if msgs[-1]["role"] != "assistant" or msgs[-2]["role"] != "user":
                        continue
                    msgs.pop()
                else:
                    msgs.append({"role": "assistant", "name": "小雪", "content": o[1]})
                m, res = chat(o[-1])
                if kind == "say" and was_kept:
                    want = fresh_tokens(m)
                    assert res.fed_tokens == want, f"fed {res.fed_tokens}, not {want}: {msgs}"
                if kind == "prefill":
                    base = normalize(o[1])  # the client appends what was added
                    added = res.text[len(base) :] if res.text.startswith(base) else ""
                    msgs[-1]["content"] = o[1] + added
                    kept = res.text == normalize(msgs[-1]["content"]) and bool(res.text)
                elif res.text:
                    msgs.append({"role": "assistant", "name": "小雪", "content": res.text})
                    kept = True
            elif kind == "system":
                msgs.append({"role": "system", "content": o[1]})
            elif kind == "note":
                note = o[1]  # not in the transcript: the next turn feeds the same, the new note
                kept = was_kept
            elif kind == "raw":
                prompt = raw + " " + o[1]
                tokens = tok(prompt)
                prefix = max((len(s) for s in stored if tuple(tokens[: len(s)]) == s), default=0)
                r = eng.complete(prompt, GREEDY)
                for _ in r:
                    pass
                res = r.result
                assert res.fed_tokens == len(tokens) - prefix, (
                    f"raw completion fed {res.fed_tokens}, not {len(tokens) - prefix}: {prompt!r}"
                )
                picked, text = greedy(backend, tokens, GREEDY.max_tokens)
                assert res.text == text, f"raw completion {res.text!r}, from scratch {text!r}"
                stored.add(tuple(tokens))
                fed_back = picked[:-1] if len(picked) == GREEDY.max_tokens else picked
                if fed_back:
                    stored.add(tuple(tokens + fed_back))
                raw = prompt + res.text
            # the state the next chat completion starts from
            nxt = mapped([*msgs, {"role": "user", "name": "Bob", "content": "next?"}])
            key = eng.prompt_text(nxt.ctx, nxt.history, nxt.speaker)
            eng.settle()  # a reply's checkpoint is made after it ends: not this feed's tokens
            before = counted.fed
            cached, _ = eng.state_for(nxt.ctx, nxt.history, nxt.speaker)
            # the transcript before the reply's note and header: checked before with another
            # note, its state is cached up to the new message
            before_note = "".join(c.text for c in eng._build(nxt.ctx, nxt.history, None).chunks)
            if kept:  # after a kept reply: only the new message (its note) and the header
                want = 0 if key in seen else fresh_tokens(nxt)  # seen: cached
                if key not in seen and before_note in seen_history:
                    head = [fmt.note(nxt.speaker.note, nxt.ctx)] if nxt.speaker.note else []
                    head.append(fmt.header(nxt.speaker, nxt.ctx))
                    want = sum(len(tok(t)) for t in head)
                fed = counted.fed - before
                assert fed == want, f"after {o}, the next state fed {fed}, not {want}: {msgs}"
            fresh_logits, _ = eng.reference_state(nxt.ctx, nxt.history, nxt.speaker)
            diff = float(np.abs(cached - fresh_logits).max())
            assert diff <= tol, f"after {o}: logits differ by {diff}: {msgs}"
            seen.add(key)
            seen_history.add(before_note)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def greedy(backend: Any, tokens: list[int], n: int) -> tuple[list[int], str]:
    """Up to `n` greedy tokens after `tokens` fed from the initial state (stopping at the end of
    text token, which is not kept), and their text as a raw completion keeps it."""
    logits, state = backend.forward(tokens, backend.initial_state())
    eos = backend.eos_token()
    picked: list[int] = []
    for i in range(n):
        t = int(np.argmax(logits))
        if t == eos:
            break
        picked.append(t)
        if i < n - 1:
            logits, state = backend.forward([t], state)
    text = b"".join(backend.token_bytes(t) for t in picked).decode("utf-8", errors="replace")
    return picked, text.rstrip("\ufffd").rstrip()
