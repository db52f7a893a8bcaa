"""The engine on a real tiny RWKV-7: streaming, stopping, cancelling, caching, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message
from tests.support.forced import ForcedBackend, Watched

CTX = CharacterContext(name="Alice", user_name="Bob", persona="{{char}} is a cheerful cat.")
P = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=40)


def _history() -> list[Message]:
    return [Message("char", "Hello {{user}}!"), Message("user", "Hi, how are you?")]


def test_reply_stops_at_the_users_line_and_streams_only_the_reply(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    fb.say(" I am fine, thank you.\nBob: and I write the user's lines")
    reply = eng.reply(CTX, _history(), Message("char"), P)
    pieces = list(reply)
    res = reply.result
    assert "".join(pieces) == res.text == "I am fine, thank you."
    assert res.stop_reason == "stop" and res.stop_string == "\nBob:"
    assert res.prompt_tokens > 0 and res.new_tokens > 5 and res.ttft_s > 0


def test_chinese_blank_line_split_across_tokens_ends_the_reply(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    fb.say(" 你好。\n\n阿明：多余的话")
    res = eng.reply(CTX, _history(), Message("char"), P).consume()
    assert res.text == "你好。" and res.stop_reason == "stop"


def test_token_limit_keeps_the_text_and_says_why(rwkv7_backend) -> None:
    eng = Engine(rwkv7_backend)
    res = eng.reply(
        CTX, _history(), Message("char"), SamplingParams(seed=1, max_tokens=5)
    ).consume()
    assert res.stop_reason == "length" and res.new_tokens == 5 and res.text


def test_cancel_at_any_token_keeps_what_was_streamed(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    fb.say(" one two three four five six seven")
    cancel = threading.Event()
    finished = []
    reply = eng.reply(CTX, _history(), Message("char"), P, cancel=cancel, on_finish=finished.append)
    shown = ""
    for piece in reply:
        shown += piece
        if "two" in shown:
            cancel.set()
    assert reply.result.stop_reason == "cancel"
    assert finished == [reply.result] and reply.result.text.startswith(shown)
    assert "five" not in reply.result.text


def test_a_consumer_that_goes_away_still_gets_on_finish(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    fb.say(" alpha beta gamma delta epsilon")
    finished = []
    reply = eng.reply(CTX, _history(), Message("char"), P, on_finish=finished.append)
    it = iter(reply)
    first = next(it) + next(it)
    reply.close()  # what Streamlit does when the user presses stop (the script reruns)
    assert len(finished) == 1 and finished[0].stop_reason == "closed"
    assert finished[0].text.startswith(first.strip()) and not eng.busy


def test_the_first_token_cannot_end_the_reply_empty(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    fb.script = [261, 261, 261]  # "\n\n" forced three times: banned while nothing was said
    res = eng.reply(
        CTX, _history(), Message("char"), SamplingParams(seed=3, max_tokens=8)
    ).consume()
    assert res.text.strip() != ""


def test_same_seed_same_reply_and_regenerate_costs_no_prefill(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    a = eng.reply(CTX, _history(), Message("char"), P).consume()
    before = fb.forwards
    b = eng.reply(CTX, _history(), Message("char"), P).consume()
    assert a.text == b.text
    assert b.fed_tokens == 0  # the prompt state came from the cache
    assert fb.forwards - before <= b.new_tokens + 1  # only decode steps (+ the reply's checkpoint)


def test_next_turn_feeds_only_the_new_message(rwkv7_backend) -> None:
    eng = Engine(rwkv7_backend)
    hist = _history()
    r1 = eng.reply(CTX, hist, Message("char"), P).consume()
    hist += [Message("char", r1.text), Message("user", "Tell me a story.")]
    r2 = eng.reply(CTX, hist, Message("char"), P).consume()
    user_chunk = len(rwkv7_backend.tokenize("Bob:")) + len(
        rwkv7_backend.tokenize(" Tell me a story.\n\n")
    )
    assert r2.fed_tokens == user_chunk + len(rwkv7_backend.tokenize("Alice:"))


def test_continue_extends_the_last_message(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    hist = [*_history(), Message("char", "Once upon a time")]
    fb.say(" there was a cat.\n\n")
    res = eng.reply(CTX, hist, Message("char"), P, continue_last=True).consume()
    assert res.text == "Once upon a time there was a cat."
    stored = [*hist[:-1], Message("char", res.text), Message("user", "nice")]
    a, _ = eng.state_for(CTX, stored, Message("char"))
    b, _ = eng.reference_state(CTX, stored, Message("char"))
    assert np.abs(a - b).max() < 1e-4


def test_user_and_narrator_can_be_made_to_speak(rwkv7_backend) -> None:
    fb = ForcedBackend(rwkv7_backend)
    eng = Engine(fb)
    fb.say(" I walk in.\nAlice: hi")
    res = eng.reply(CTX, _history(), Message("user"), P).consume()
    assert res.text == "I walk in."
    assert eng.prompt_text(CTX, _history(), Message("narrator")).endswith("\n\nNarrator:")


def test_two_callers_at_once_never_mix_states(rwkv7_backend) -> None:
    eng = Engine(rwkv7_backend)
    h1 = _history()
    h2 = [Message("char", "Hello {{user}}!"), Message("user", "Completely different words.")]
    solo = [eng.reply(CTX, h, Message("char"), P).consume().text for h in (h1, h2)]
    eng.clear_cache()
    out: dict[int, str] = {}
    go = threading.Barrier(2)

    def run(i: int, h: list[Message]) -> None:
        go.wait()
        reply = eng.reply(CTX, h, Message("char"), P)
        text = ""
        for piece in reply:
            text += piece
        out[i] = reply.result.text

    threads = [threading.Thread(target=run, args=(i, h)) for i, h in enumerate((h1, h2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [out[0], out[1]] == solo and not eng.busy


def test_checkpoints_survive_a_restart_and_respect_the_disk_budget(
    rwkv7_backend, tmp_path: Path
) -> None:
    cache = tmp_path / "states"
    eng = Engine(rwkv7_backend, cache_dir=cache)
    hist = _history()
    r = eng.reply(CTX, hist, Message("char"), P).consume()
    hist += [Message("char", r.text), Message("user", "again")]
    eng.flush()
    reopened = Engine(rwkv7_backend, cache_dir=cache)  # a new process, the same data directory
    res = reopened.reply(CTX, hist, Message("char"), P).consume()
    assert res.fed_tokens == len(rwkv7_backend.tokenize("Bob:")) + len(
        rwkv7_backend.tokenize(" again\n\n")
    ) + len(rwkv7_backend.tokenize("Alice:"))
    for text in ("one more", "and another", "and the last"):
        hist += [Message("char", res.text or "ok"), Message("user", text)]
        res = reopened.reply(CTX, hist, Message("char"), P).consume()
    reopened.flush()
    assert reopened.cache_stats()["disk_entries"] >= 4  # one per reply
    size = eng.cache_stats()["disk_bytes"]
    assert size > 0
    reopened.set_cache_budget(64, size / 2**20 / 2)
    assert 0 < reopened.cache_stats()["disk_bytes"] <= size / 2
    reopened.clear_cache()
    assert reopened.cache_stats()["disk_entries"] == 0


def test_a_damaged_checkpoint_file_is_only_a_miss(rwkv7_backend, tmp_path: Path) -> None:
    cache = tmp_path / "states"
    eng = Engine(rwkv7_backend, cache_dir=cache)
    eng.warm(CTX, _history())
    eng.flush()
    files = list(cache.glob("*.state"))
    assert files  # the prefill left a checkpoint on disk to damage
    for f in files:
        f.write_bytes(b"garbage")
    fresh = Engine(rwkv7_backend, cache_dir=cache)
    a, _ = fresh.state_for(CTX, _history(), Message("char"))
    b, _ = fresh.reference_state(CTX, _history(), Message("char"))
    assert np.abs(a - b).max() < 1e-4
    assert fresh.cache_stats()["misses"] >= 1
    fresh.flush()
    assert all(f.read_bytes() != b"garbage" for f in cache.glob("*.state"))  # none is kept


@pytest.mark.parametrize("version", [4, 5, 6])
def test_engine_runs_older_versions(tiny_models, version: int) -> None:
    from core.backends.rwkv import RwkvBackend

    eng = Engine(RwkvBackend(tiny_models(version), "cpu fp32"))
    res = eng.reply(
        CTX, _history(), Message("char"), SamplingParams(seed=1, max_tokens=6)
    ).consume()
    assert res.new_tokens >= 1
    hist = [*_history(), Message("char", res.text or "ok"), Message("user", "more")]
    a, _ = eng.state_for(CTX, hist, Message("char"))
    b, _ = eng.reference_state(CTX, hist, Message("char"))
    assert np.abs(a - b).max() < 1e-4


def test_a_reply_that_cannot_start_does_not_leave_the_engine_busy(rwkv7_backend) -> None:
    eng = Engine(rwkv7_backend)
    with pytest.raises(ValueError, match="nothing to continue"):
        eng.reply(CTX, [], Message("char"), P, continue_last=True).consume()
    assert not eng.busy


# --- a long prefill (issue 21: 400 messages took 34 s, and a client that left did not stop it) ---


def _many(n: int) -> list[Message]:
    """A chat of `n` short messages, as a client resending a long chat gives it."""
    return [
        Message("user" if i % 2 else "char", f"Message {i}: the tide is turning.") for i in range(n)
    ]


def test_cancel_is_seen_between_the_chunks_of_a_long_prefill(rwkv7_backend) -> None:
    cancel = threading.Event()
    model = Watched(rwkv7_backend, on_call=cancel.set)  # cancelled during the first model call
    eng = Engine(model)
    history = _many(400)
    prompt_tokens = len(eng.backend.tokenize(eng.prompt_text(CTX, history, Message("char"))))
    res = eng.reply(CTX, history, Message("char"), P, cancel=cancel).consume()
    assert res.stop_reason == "cancel" and res.text == "" and res.new_tokens == 0
    assert model.calls == 1 and model.fed < prompt_tokens / 4, (model.calls, model.fed)
    assert not eng.busy
    # a raw completion's prompt too
    cancel.clear()
    model.calls = model.fed = 0
    prompt = "The tide is turning. " * 2000
    res = eng.complete(prompt, P, cancel=cancel).consume()
    assert res.stop_reason == "cancel" and model.calls == 1 and model.fed < 2000


def test_a_long_prefill_keeps_a_bounded_number_of_checkpoints(rwkv7_backend) -> None:
    model = Watched(rwkv7_backend)
    eng = Engine(model)
    kept: list[str] = []
    real_put = eng.cache.put

    def put(key, cp, disk=False, **kw) -> None:
        kept.append(key)
        real_put(key, cp, disk, **kw)

    eng.cache.put = put  # type: ignore[method-assign]
    history = _many(1000)
    eng.warm(CTX, history)
    assert 0 < len(kept) <= 16, len(kept)

    def tokens(text: str) -> int:
        return len(eng.backend.tokenize(text))

    # what later turns need is among them: the next reply feeds only its header
    fmt, speaker = eng.format, Message("char")
    res = eng.reply(CTX, history, speaker, SamplingParams(seed=1, max_tokens=2)).consume()
    assert res.fed_tokens == tokens(fmt.header(speaker, CTX))
    # the last message edited: only it (and the header) is fed again, to the right state
    last = Message(history[-1].role, "Changed.")
    edited = [*history[:-1], last]
    eng.settle()  # the reply's own checkpoint is made after it, on the model thread
    model.fed = 0
    cached, _ = eng.state_for(CTX, edited, speaker)
    want = fmt.header(last, CTX), fmt.body(last.text, last, CTX), fmt.header(speaker, CTX)
    assert model.fed == sum(map(tokens, want))
    fresh, _ = eng.reference_state(CTX, edited, speaker)
    assert np.abs(cached - fresh).max() < 1e-4


def test_a_reply_ends_a_warm_in_progress(rwkv7_backend) -> None:
    """A chat opened warms its state in the background (a head start); a reply that starts
    meanwhile ends the warm instead of feeding beside it (a 50,000-message chat imported, then
    opened: the warm fed the whole chat while the reply fed it too)."""
    held, go = threading.Event(), threading.Event()

    def hold_first() -> None:
        if not held.is_set():
            held.set()
            assert go.wait(60)

    model = Watched(rwkv7_backend, on_call=hold_first)  # the warm's first slice waits for `go`
    eng = Engine(model)
    history = _many(1000)
    ended: list[BaseException | None] = []

    def warm() -> None:
        try:
            eng.warm(CTX, history)
            ended.append(None)
        except BaseException as e:
            ended.append(e)

    t = threading.Thread(target=warm)
    t.start()
    assert held.wait(60)  # the warm is feeding its first slice
    reply = eng.reply(CTX, _history(), Message("char"), SamplingParams(seed=1, max_tokens=2))
    done = threading.Thread(target=reply.consume)
    done.start()  # it starts (and ends the warm), then waits for the model thread
    for _ in range(3000):  # polls, not a timing assert: until the reply has started
        warming = getattr(eng, "_warming", ())
        if not warming or all(e.is_set() for e in warming):
            break
        threading.Event().wait(0.01)
    go.set()
    t.join(60)
    done.join(60)
    assert len(ended) == 1 and type(ended[0]).__name__ == "PrefillCancelled"
    assert reply.result.new_tokens == 2
    prompt = len(eng.backend.tokenize(eng.prompt_text(CTX, history, Message("char"))))
    assert model.fed < prompt / 4  # the warm stopped after its first slice


def test_the_last_reply_long_enough_leaves_its_decode_speed(rwkv7_backend) -> None:
    """Settings shows it beside the thread count (core.settings.threads_advice)."""
    eng = Engine(rwkv7_backend)
    assert eng.last_speed is None
    res = eng.reply(CTX, _history(), Message("char"), SamplingParams(seed=1, max_tokens=12))
    res = res.consume()
    speed = eng.last_speed
    assert speed is not None and speed.tokens == res.new_tokens == 12
    assert speed.tok_s == res.tok_s > 0 and speed.threads == rwkv7_backend.info.extra["threads"]
    # a reply too short to tell keeps the last measure
    eng.reply(CTX, _history(), Message("char"), SamplingParams(seed=1, max_tokens=3)).consume()
    assert eng.last_speed == speed
    # raw completions count too
    done = eng.complete("Once upon a time", SamplingParams(seed=2, max_tokens=9)).consume()
    assert eng.last_speed is not None and eng.last_speed.tokens == done.new_tokens == 9
