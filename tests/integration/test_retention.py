"""Checkpoint retention (docs/ARCHITECTURE.md, "The state cache"): over a disk budget, every
chat keeps its tip and the state before its last reply, and loses them only after every plain
checkpoint has gone; a chat's later turn hands its old ones back to the LRU. On the tiny RWKV-7
(rwkv back end), a real engine and real files."""

from __future__ import annotations

import json

from core.engine import Engine
from core.engine import state_cache as sc
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message
from tests.support.forced import Watched

P = SamplingParams(temperature=1.0, top_p=0.5, seed=3, max_tokens=6)


def _ctx(i: int) -> CharacterContext:
    return CharacterContext(name=f"Cat{i}", user_name="Bob", persona="{{char}} is a cat.")


def _play(eng: Engine, chats: int, turns: int) -> list[tuple[CharacterContext, list[Message]]]:
    """`chats` chats of `turns` turns each, one after the other."""
    out = []
    for c in range(chats):
        ctx, hist = _ctx(c), [Message("char", f"Hello {c}!")]
        eng.warm(ctx, hist)
        for t in range(turns):
            hist.append(Message("user", f"chat {c} turn {t}: tell me more"))
            res = eng.reply(ctx, hist, Message("char"), P).consume()
            hist.append(Message("char", res.text or "ok"))
        out.append((ctx, hist))
    eng.flush()
    return out


def _checkpoint_mb(rwkv7_backend) -> float:
    """One checkpoint file's size in MB (state, logits, header)."""
    state = len(rwkv7_backend.state_to_bytes(rwkv7_backend.initial_state()))
    return (state + 4 * rwkv7_backend.info.n_vocab + 200) / 2**20


def test_every_chat_reopens_at_no_cost_within_the_disk_budget(rwkv7_backend, tmp_path) -> None:
    """Six chats of five turns write 66 checkpoints; the budget holds 15. Plain LRU kept only
    the last chats' files, and reopening the first ones fed them whole. With the policy every
    chat's tip and the state before its last reply survive (12 files)."""
    cache = tmp_path / "states"
    budget = 15 * _checkpoint_mb(rwkv7_backend)
    eng = Engine(rwkv7_backend, cache_dir=cache, disk_budget_mb=budget)
    chats = _play(eng, chats=6, turns=5)
    stats = eng.cache_stats()
    assert stats["disk_bytes"] <= budget * 2**20
    assert stats["chats_kept"] == 6
    eng.flush()  # (close would close the shared model)

    watched = Watched(rwkv7_backend)
    reopened = Engine(watched, cache_dir=cache, disk_budget_mb=budget)  # a restart
    for ctx, hist in reversed(chats):
        reopened.warm(ctx, hist)
        assert watched.fed == 0, f"{ctx.name}'s chat was fed again on reopening"
        reopened.state_for(ctx, hist[:-1], Message("char"))  # regenerate its last reply
        assert watched.fed == 0, f"{ctx.name}'s last reply cannot be regenerated at once"
    # the next turn of the oldest chat feeds only its new message and the reply's header
    ctx, hist = chats[0]
    res = reopened.reply(ctx, [*hist, Message("user", "and now?")], Message("char"), P).consume()
    fmt, nxt = reopened.format, Message("user", "and now?")
    texts = [fmt.header(nxt, ctx), fmt.body(nxt.text, nxt, ctx), fmt.header(Message("char"), ctx)]
    assert res.fed_tokens == sum(len(rwkv7_backend.tokenize(t)) for t in texts)


def test_a_later_turn_unpins_the_chats_old_checkpoints(rwkv7_backend, tmp_path) -> None:
    cache = tmp_path / "states"
    eng = Engine(rwkv7_backend, cache_dir=cache)
    ((ctx, hist),) = _play(eng, chats=1, turns=3)
    pins = json.loads((cache / sc.PINS_FILE).read_text())
    tips = [k for k, v in pins.items() if v["kind"] == "tip"]
    befores = [k for k, v in pins.items() if v["kind"] == "before"]
    assert len(tips) == 1 and len(befores) == 1  # one chat: its tip and its last reply's start
    tip = eng._build(ctx, hist, None).chunks[-1].key
    before = eng._build(ctx, hist[:-1], Message("char")).chunks[-1].key
    assert tips == [tip] and befores == [before] and pins[tip]["before"] == before
    assert (cache / f"{tip}.state").is_file() and (cache / f"{before}.state").is_file()

    # versions of the last reply: the newest VERSIONS_KEPT tips stay pinned, one before
    for seed in range(sc.VERSIONS_KEPT + 1):
        eng.reply(
            ctx, hist[:-1], Message("char"), SamplingParams(seed=10 + seed, max_tokens=4)
        ).consume()
    eng.flush()
    pins = json.loads((cache / sc.PINS_FILE).read_text())
    assert [k for k, v in pins.items() if v["kind"] == "before"] == [before]
    assert sum(v["kind"] == "tip" for v in pins.values()) == sc.VERSIONS_KEPT


def test_eviction_takes_plain_checkpoints_first_then_befores_then_tips(
    rwkv7_backend, tmp_path
) -> None:
    cache = tmp_path / "states"
    mb = _checkpoint_mb(rwkv7_backend)
    eng = Engine(rwkv7_backend, cache_dir=cache, disk_budget_mb=100 * mb)
    chats = _play(eng, chats=3, turns=2)
    files = {p.stem for p in cache.glob("*.state")}
    pins = json.loads((cache / sc.PINS_FILE).read_text())
    assert len(pins) == 6 and len(files) > 6  # plain checkpoints beside the pins
    eng.set_cache_budget(64, 7 * mb)  # room for the pins only
    assert {p.stem for p in cache.glob("*.state")} == set(pins)
    eng.set_cache_budget(64, 3.5 * mb)  # the befores go, every tip stays
    left = {p.stem for p in cache.glob("*.state")}
    assert left == {k for k, v in pins.items() if v["kind"] == "tip"}
    eng.set_cache_budget(64, 2.5 * mb)  # then the least recently used chat's tip
    tips = [eng._build(ctx, hist, None).chunks[-1].key for ctx, hist in chats]
    assert {p.stem for p in cache.glob("*.state")} == set(tips[1:])
    assert set(json.loads((cache / sc.PINS_FILE).read_text())) == set(tips[1:])


def test_settings_say_how_many_chats_the_budget_keeps(rwkv7_backend, tmp_path) -> None:
    mb = _checkpoint_mb(rwkv7_backend)
    eng = Engine(rwkv7_backend, cache_dir=tmp_path / "states", disk_budget_mb=40 * mb)
    _play(eng, chats=2, turns=1)
    cap = eng.cache_capacity()
    assert not cap["grows"] and abs(cap["checkpoint_bytes"] / 2**20 - mb) < 0.01
    assert cap["chats"] in (39, 40) and cap["chats_with_regen"] in (19, 20)
    assert cap["kept"] == 2
