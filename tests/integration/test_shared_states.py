"""A state cache folder shared by several servers ($RP_STATE_DIR): any server resumes any chat
from it without feeding the chat again; many writers and readers at once, in several processes,
never see a torn or foreign file; the size budget holds whoever writes; files are content-addressed
and their header is checked on read."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from core.engine import Engine
from core.engine import state_cache as sc
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message
from tests.support.forced import Watched

CTX = CharacterContext(
    name="Alice", user_name="Bob", persona="{{char}} is a cheerful cat who keeps a lighthouse."
)
HISTORY = [
    Message("char", "Hello {{user}}! Welcome to the lighthouse."),
    Message("user", "Hi Alice, how are you tonight?"),
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, seed=1)


def _server(tiny_models, folder: Path) -> tuple[Engine, Watched]:
    """One "server": its own load of the model and its own engine on the shared folder."""
    from core.backends.rwkv import RwkvBackend

    model = Watched(RwkvBackend(tiny_models(7), "cpu fp32"))
    engine = Engine(model, cache_dir=folder)  # type: ignore[arg-type]
    engine.share_checkpoints()
    return engine, model


def test_a_chat_goes_on_on_another_server_without_a_refeed(tiny_models, tmp_path: Path) -> None:
    """Turn 1 on server A, turn 2 on server B (round robin): B restores the checkpoint A left
    after its reply from the shared folder and feeds only the user's new message and the next
    header; its state is the one a feed of the whole transcript gives."""
    folder = tmp_path / "shared"
    a, model_a = _server(tiny_models, folder)
    b, model_b = _server(tiny_models, folder)
    res = a.reply(CTX, HISTORY, Message("char"), GREEDY).consume()
    assert res.text  # the reply's checkpoint is on disk when the reply ends (share_checkpoints)
    history = [*HISTORY, Message("char", res.text), Message("user", "Tell me about the lamp.")]
    new = b._build(CTX, history, Message("char"))
    before = model_b.fed
    logits, _ = b.state_for(CTX, history, Message("char"))
    fed = model_b.fed - before
    # the new message (its header and body) and the reply's header
    tail = sum(len(c.tokens) for c in new.chunks[-3:])
    assert fed == tail, (fed, tail, new.n_tokens)
    assert b.cache_stats()["hits_disk"] >= 1
    ref, _ = b.reference_state(CTX, history, Message("char"))
    assert np.abs(logits - ref).max() < 1e-4
    a.close()
    b.close()


def test_a_raw_completion_goes_on_on_another_server(tiny_models, tmp_path: Path) -> None:
    """/v1/completions resent whole: B finds the checkpoint A wrote after its reply, though B
    never saw that prompt's length (it looks for every prefix's file by name)."""
    folder = tmp_path / "shared"
    a, _ = _server(tiny_models, folder)
    b, model_b = _server(tiny_models, folder)
    prompt = "Bob: Hello there, Alice.\n\nAlice:"
    res = a.complete(prompt, GREEDY).consume()
    more = prompt + res.text + "\n\nBob: And the lamp?\n\nAlice:"
    before = model_b.fed
    again = b.complete(more, GREEDY).consume()
    assert again.fed_tokens < again.prompt_tokens // 2, (again.fed_tokens, again.prompt_tokens)
    assert model_b.fed - before <= again.fed_tokens + again.new_tokens
    a.close()
    b.close()


# --- the cache alone, many processes at once ---------------------------------------------------

SIZE = 50_000  # bytes of a state here


def _state_of(key: str) -> bytes:
    """The state a key stands for (what any writer of that key writes: content-addressed)."""
    seed = int(key[:8], 16)
    return np.random.default_rng(seed).integers(0, 255, SIZE, dtype=np.uint8).tobytes()


def _cache(folder: Path, disk_mb: float = 1000) -> sc.StateCache:
    cache = sc.StateCache(lambda s: s, lambda b: b, folder, 0.001, disk_mb)
    cache.shared = True
    return cache


def _worker(folder: str, seed: int, rounds: int, out: multiprocessing.Queue) -> None:
    """Writes and reads random keys of a small set (so that writers collide on keys), each read
    checked against the key's own content."""
    rng = np.random.default_rng(seed)
    cache = _cache(Path(folder))
    keys = [sc.chain_key(sc.root_key("shared-test"), [i]) for i in range(40)]
    bad = hits = 0
    for _ in range(rounds):
        key = keys[int(rng.integers(len(keys)))]
        if rng.random() < 0.5:
            data = _state_of(key)
            logits = np.frombuffer(data[:64], np.float32).copy()
            cache._write_disk(key, sc.Checkpoint(logits, data, 1))
        else:
            cp = cache._read_disk(key)
            if cp is not None:
                hits += 1
                bad += cp.state != _state_of(key)
    out.put((bad, hits, cache.damaged))


def test_writers_and_readers_in_several_processes_never_see_a_torn_file(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(folder), i, 300, out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(bad == 0 and damaged == 0 for bad, _, damaged in results), results
    assert sum(hits for _, hits, _ in results) > 100
    assert not list(folder.glob("*.tmp-*"))  # every temporary file was renamed
    assert {p.stem for p in folder.glob("*.state")} <= {
        sc.chain_key(sc.root_key("shared-test"), [i]) for i in range(40)
    }


def test_the_budget_holds_with_two_writers_and_evicts_the_least_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers write to one folder with a budget of 20 files: each counts the folder again
    (not only its own writes), and the files read most recently stay."""
    monkeypatch.setattr(sc, "RESCAN_S", 0.0)
    folder = tmp_path / "shared"
    per_file = SIZE + 64 + 200  # state, logits, header and digest
    budget_mb = 20 * per_file / 2**20
    caches = [_cache(folder, budget_mb), _cache(folder, budget_mb)]
    root = sc.root_key("budget")
    keys = [sc.chain_key(root, [i]) for i in range(60)]
    for i, key in enumerate(keys):
        data = _state_of(key)
        caches[i % 2]._write_disk(key, sc.Checkpoint(np.zeros(16, np.float32), data, 1))
        if i >= 1:  # the first key is read again and again: recently used
            os.utime(folder / f"{keys[0]}.state", (time.time() + 10, time.time() + 10))
    files = list(folder.glob("*.state"))
    assert sum(f.stat().st_size for f in files) <= caches[0].disk_budget
    assert (folder / f"{keys[0]}.state").exists()
    assert (folder / f"{keys[-1]}.state").exists()
    assert not (folder / f"{keys[1]}.state").exists()


def test_a_file_under_another_keys_name_is_refused(tmp_path: Path) -> None:
    """Content-addressed: a checkpoint copied (or synced) under another key's name is whole and
    its digest is right, but its header names its own key: a counted miss, deleted."""
    folder = tmp_path / "shared"
    cache = _cache(folder)
    root = sc.root_key("names")
    one, two = sc.chain_key(root, [1]), sc.chain_key(root, [2])
    cache._write_disk(one, sc.Checkpoint(np.zeros(4, np.float32), _state_of(one), 1))
    (folder / f"{two}.state").write_bytes((folder / f"{one}.state").read_bytes())
    assert cache.get(two) is None and cache.damaged == 1
    assert not (folder / f"{two}.state").exists()
    assert cache.get(one) is not None


def test_a_temporary_file_left_by_a_dead_writer_is_removed_later(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    cache = _cache(folder)
    key = sc.chain_key(sc.root_key("tmp"), [1])
    old = folder / f"{key}.tmp-999999-deadbeef0000"
    old.write_bytes(b"half a checkpoint")
    os.utime(old, (time.time() - 2 * sc.STALE_TMP_S,) * 2)
    young = folder / f"{key}.tmp-999998-deadbeef0001"
    young.write_bytes(b"being written")
    cache._write_disk(key, sc.Checkpoint(np.zeros(4, np.float32), _state_of(key), 1))
    cache.set_budget(1, 1000)  # any eviction pass
    assert not old.exists() and young.exists()


def test_rp_state_dir_names_the_shared_folder(
    data_dir: Path, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import runtime
    from core.config import state_dir

    assert state_dir() == (data_dir / "states", False)
    monkeypatch.setenv("RP_STATE_DIR", str(tmp_path / "nfs" / "states"))
    monkeypatch.setenv("RP_MODEL", str(tiny_models(7)))
    monkeypatch.delenv("RP_DB_URL", raising=False)
    assert state_dir() == ((tmp_path / "nfs" / "states").resolve(), True)
    runtime.reset()
    try:
        engine = runtime.current().load()
        assert engine.cache.dir == (tmp_path / "nfs" / "states").resolve()
        assert engine._shared and engine.cache.shared
    finally:
        runtime.reset()
