"""A character's RWKV state file through the app's services: CharacterService stores it (checked,
named by its sha256, private) with a reference on the character; a chat with the character
starts from it; a wrong file is refused and nothing saved is lost; a card export carries the
reference, not the bytes, and an import without the file says so and still works."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.chat.context import conversation_context
from core.errors import ModelError
from core.prompt import Message
from core.roleplay import state_files
from core.roleplay.cards import export_card, import_card
from core.roleplay.characters import CharacterService
from core.roleplay.state_files import StateFileError
from core.runtime import Runtime
from core.store import Store
from tests.support.db_fixtures import open_test_store
from tests.support.state_file import package_state, state_file


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


SHORT = {"max_tokens": 6, "seed": 1, "temperature": 1.0, "top_p": 0.9}


def stored(data_dir: Path) -> set[str]:
    folder = data_dir / state_files.STATE_DIR_NAME
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_state_file_is_stored_privately_under_its_hash(store: Store, data_dir: Path) -> None:
    service = CharacterService(store)
    data = state_file(seed=1)
    sha = hashlib.sha256(data).hexdigest()
    ch = service.save(None, {"name": "Fox"}, state_file=(data, "../../tuned\u202e.pth"))
    assert stored(data_dir) == {f"{sha}.pth"}  # never the uploaded name as a path
    path = data_dir / "state_files" / f"{sha}.pth"
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ref, problem = service.state_file(store.get_character(ch.id))
    assert problem == "" and ref is not None
    assert (ref.name, ref.sha256, ref.layers, ref.heads, ref.head_size, ref.nbytes) == (
        "tuned.pth",
        sha,
        2,
        2,
        64,
        len(data),
    )
    # the chat's context starts from it
    ctx = conversation_context(store, store.create_conversation(ch.id).id)
    assert ctx.start_state is not None and ctx.start_state.sha256 == sha
    wkv = ctx.start_state.load()
    assert len(wkv) == 2 and wkv[0].shape == (2, 64, 64)


def test_a_refused_file_writes_nothing_and_keeps_what_was_saved(
    store: Store, data_dir: Path
) -> None:
    service = CharacterService(store)
    good = state_file(seed=1)
    ch = service.save(None, {"name": "Fox"}, state_file=(good, "good.pth"))
    before = store.get_character(ch.id)
    for bad, words in (
        (b"not a torch file", "not a PyTorch .pth file"),
        (state_file(layers=2)[:-100], "not a PyTorch .pth file"),  # truncated
    ):
        with pytest.raises(StateFileError, match=words):
            service.save(ch.id, {"description": "changed"}, state_file=(bad, "bad.pth"))
        after = store.get_character(ch.id)
        assert after.description == before.description == ""  # the row is untouched
        assert after.extensions == before.extensions
        assert stored(data_dir) == {f"{hashlib.sha256(good).hexdigest()}.pth"}
    # a refused row (a taken name) leaves no new file behind
    service.save(None, {"name": "Taken"})
    other = state_file(seed=2)
    with pytest.raises(Exception, match="already exists"):
        service.save(None, {"name": "Taken"}, state_file=(other, "other.pth"))
    assert stored(data_dir) == {f"{hashlib.sha256(good).hexdigest()}.pth"}


def test_files_are_shared_by_copies_and_deleted_when_unused(store: Store, data_dir: Path) -> None:
    service = CharacterService(store)
    a, b = state_file(seed=1), state_file(seed=2)
    sha_a, sha_b = (hashlib.sha256(x).hexdigest() for x in (a, b))
    ch = service.save(None, {"name": "Fox"}, state_file=(a, "a.pth"))
    copy = service.duplicate(ch.id)
    assert state_files.reference(copy.extensions).sha256 == sha_a
    # the copy gets another file: both stay, each used
    service.save(copy.id, {}, state_file=(b, "b.pth"))
    assert stored(data_dir) == {f"{sha_a}.pth", f"{sha_b}.pth"}
    # the same bytes again for the first: stored once
    twin = service.save(None, {"name": "Twin"}, state_file=(a, "a-again.pth"))
    service.delete(ch.id, chats="delete")  # Twin still uses a
    assert stored(data_dir) == {f"{sha_a}.pth", f"{sha_b}.pth"}
    service.save(twin.id, {}, remove_state_file=True)  # nobody uses a any more
    assert stored(data_dir) == {f"{sha_b}.pth"}
    assert state_files.reference(store.get_character(twin.id).extensions) is None
    service.save(copy.id, {}, state_file=(a, "a.pth"))  # replaced: b is unused
    assert stored(data_dir) == {f"{sha_a}.pth"}


def _character_with(rt: Runtime, data: bytes, name: str = "Fox"):
    service = CharacterService(rt.store)
    ch = service.save(None, {"name": name, "greetings": ["Hello."]}, state_file=(data, "fox.pth"))
    conv = rt.chat.new_chat(ch.id)
    rt.chat.set_sampling(conv.id, SHORT, "custom")
    return ch, conv


def test_a_chat_starts_from_the_characters_state_file(rt: Runtime) -> None:
    data = state_file(seed=3)
    ch, conv = _character_with(rt, data)
    engine = rt.load()
    rt.chat.send(conv.id, "hi there")
    turn = rt.chat.reply(conv.id)
    assert turn.notice == ""
    assert "".join(turn) is not None and turn.consume().message is not None
    # the state the next reply starts from is the package's own forward from the file's state
    ctx = conversation_context(rt.store, conv.id)
    history = [Message(m.role, m.text, m.name) for m in rt.store.list_messages(conv.id)]
    logits, _ = engine.state_for(ctx, history, Message("char"))
    text = engine.prompt_text(ctx, history, Message("char"))
    backend = engine.raw_backend
    ref, _ = backend.model.forward(backend.tokenize(text), package_state(backend, data))
    assert float(np.abs(logits - ref.float().numpy()).max()) <= 1e-4


def test_a_file_that_does_not_fit_the_model_refuses_the_reply(rt: Runtime) -> None:
    ch, conv = _character_with(rt, state_file(layers=3, heads=2, head_size=64))
    rt.load()
    rt.chat.send(conv.id, "hi there")
    count = len(rt.store.list_messages(conv.id))
    with pytest.raises(ModelError) as e:
        rt.chat.reply(conv.id)
    msg = str(e.value)
    assert "fox.pth" in msg and "3 layers and 2 heads of 64 (width 128)" in msg, msg
    assert "2 layers and 2 heads of 64 (width 128)" in msg, msg
    assert len(rt.store.list_messages(conv.id)) == count  # nothing saved, nothing lost


def test_a_card_carries_the_reference_and_an_import_without_the_file_says_so(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = state_file(seed=4)
    sha = hashlib.sha256(data).hexdigest()
    ch, _ = _character_with(rt, data)
    card_json = export_card(rt.store, ch.id, "json")
    card = json.loads(card_json)
    ref = card["data"]["extensions"]["rwkv_roleplay"]["state_file"]
    assert ref["name"] == "fox.pth" and ref["sha256"] == sha
    png = export_card(rt.store, ch.id, "png")
    for blob in (card_json, png):  # the reference, never the bytes
        assert len(blob) < len(data) and base64.b64encode(data[:300]) not in blob
    # the same card on another data folder: kept, reported missing, the chat runs without it
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.setenv("RP_DATA_DIR", str(other))
    store = open_test_store()
    try:
        service = CharacterService(store)
        imported = import_card(store, png, "fox.png")
        assert state_files.reference(imported.extensions).sha256 == sha
        got, problem = service.state_file(imported)
        assert got is not None and "fox.pth" in problem
        assert "not in this app's data folder" in problem
        conv = store.create_conversation(imported.id)
        ctx = conversation_context(store, conv.id)
        assert ctx.start_state is not None and ctx.start_state.problem
        engine = rt.load()
        notice = engine.start_notice(ctx)
        assert "upload it again" in notice and notice.endswith("This chat runs without it.")
        logits, _ = engine.state_for(ctx, [Message("user", "hi")], Message("char"))
        assert logits.shape == (65536,)
        # uploaded again: found by its hash, the chat uses it
        service.save(imported.id, {}, state_file=(data, "fox.pth"))
        ctx = conversation_context(store, conv.id)
        assert ctx.start_state is not None and not ctx.start_state.problem
        assert engine.start_notice(ctx) == "" and service.state_file(imported)[1] == ""
    finally:
        store.close()


def test_a_malformed_reference_in_a_card_is_reported_not_used(store: Store) -> None:
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Odd",
            "extensions": {"rwkv_roleplay": {"state_file": {"sha256": "../../etc/passwd"}}},
        },
    }
    ch = import_card(store, json.dumps(card).encode(), "odd.json")
    ref, problem = CharacterService(store).state_file(ch)
    assert ref is None and "malformed" in problem
    ctx = conversation_context(store, store.create_conversation(ch.id).id)
    assert ctx.start_state is not None and "malformed" in ctx.start_state.problem
