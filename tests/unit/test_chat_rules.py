"""The chat service's rules, fast: a real SQLite store in the test's data directory and a fake
engine that "says" a scripted text (no model). What a front end asks the service (which message
a regenerate may change, whether a message was generated, a request's sampling overrides,
renaming, deleting, versions), and that both front ends get the same answers: the pages and the
API call these methods and decide nothing themselves. The same operations on real tiny models
are in tests/integration/test_chat_service.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from core.backends.base import ModelInfo
from core.chat import ChatService
from core.contracts import Op, ReplyMeta, Role
from core.engine.engine import Reply, ReplyResult
from core.errors import AppError, Conflict, ModelError, NotFound
from core.store import Store
from tests.support.db_fixtures import open_test_store


@dataclass
class FakeEngine:
    """Says `text` for every reply, in two pieces, and reports it like the engine does."""

    text: str = "Hello there."
    calls: list[dict[str, Any]] = field(default_factory=list)
    info: ModelInfo = field(
        default_factory=lambda: ModelInfo(
            path="/models/fake.gguf",
            backend="llama",
            arch="rwkv7",
            n_layer=1,
            n_embd=8,
            n_vocab=16,
            n_params=0,
            strategy="",
            load_s=0.0,
            identity="fake",
        )
    )

    def start_notice(self, ctx: Any) -> str:
        """No state file in these chats: nothing to say (Engine.start_notice)."""
        return ""

    def reply(
        self,
        ctx: Any,
        history: list[Any],
        speaker: Any,
        params: Any,
        cancel: threading.Event | None = None,
        continue_last: bool = False,
        on_finish: Callable[[ReplyResult], None] | None = None,
    ) -> Reply:
        self.calls.append({"history": history, "speaker": speaker, "params": params})
        holder: list[ReplyResult] = []
        base = history[-1].text if continue_last else ""

        def gen() -> Iterator[str]:
            said = ""
            try:
                for piece in (self.text[:5], self.text[5:]):
                    said += piece
                    yield piece
            finally:
                text = (base + " " + said).strip() if continue_last else said
                res = ReplyResult(text=text, stop_reason="stop", prompt_tokens=10, new_tokens=3)
                holder.append(res)
                if on_finish is not None:
                    on_finish(res)

        return Reply(gen(), holder)


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_test_store()
    yield s
    s.close()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def chats(store: Store, engine: FakeEngine) -> ChatService:
    return ChatService(lambda: store, lambda: engine)  # type: ignore[arg-type, return-value]


def _chat(store: Store, chats: ChatService, greeting: str = "Hi, I am Ada.") -> int:
    ch = store.create_character({"name": "Ada", "greetings": [greeting]})
    return chats.new_chat(ch.id).id  # type: ignore[arg-type]


def test_a_reply_is_saved_with_its_meta_and_counts_as_generated(
    store: Store, chats: ChatService
) -> None:
    cid = _chat(store, chats)
    chats.send(cid, "Hello!")
    turn = chats.reply(cid).consume()
    msg = turn.message
    assert msg is not None and msg.text == "Hello there." and msg.role == Role.CHAR
    meta = ReplyMeta.from_dict(msg.meta)
    assert meta.tokens == 3 and meta.stop == "stop" and meta.generated
    assert meta.model == "fake.gguf"
    assert chats.can_regenerate(msg)


def test_only_what_the_user_typed_cannot_be_regenerated(store: Store, chats: ChatService) -> None:
    cid = _chat(store, chats)
    typed = chats.send(cid, "Hello!")
    assert not chats.can_regenerate(typed)
    with pytest.raises(Conflict) as e:
        chats.redo_target(cid, Op.REGEN)
    assert e.value.code == "not_generated"
    assert chats.redo_target(cid, Op.CONTINUE).id == typed.id  # continue is allowed
    said = chats.reply(cid, Op.NEW, role=Role.USER).consume().message  # the model wrote it
    assert said is not None and said.role == Role.USER and chats.can_regenerate(said)
    assert chats.redo_target(cid, Op.REGEN, said.id).id == said.id
    greeting = store.list_messages(cid)[0]
    assert chats.can_regenerate(greeting)  # a character's line, even never generated


def test_a_regenerate_of_a_message_that_is_no_longer_the_last_is_a_conflict(
    store: Store, chats: ChatService, engine: FakeEngine
) -> None:
    cid = _chat(store, chats)
    first = chats.reply(cid).consume().message
    assert first is not None
    chats.send(cid, "And then?")
    for op in (Op.REGEN, Op.CONTINUE, Op.VERSIONS):
        with pytest.raises(Conflict) as e:
            chats.redo_target(cid, op, first.id)
        assert e.value.code == "not_last_message"
    with pytest.raises(Conflict):
        chats.reply(cid, Op.REGEN, target_id=first.id)
    assert len(engine.calls) == 1  # refused before the model was asked


def test_an_empty_chat_has_nothing_to_regenerate(store: Store, chats: ChatService) -> None:
    ch = store.create_character({"name": "Quiet"})
    cid = chats.new_chat(ch.id).id  # type: ignore[arg-type]
    assert store.list_messages(cid) == []
    with pytest.raises(Conflict) as e:
        chats.redo_target(cid, Op.REGEN)
    assert e.value.code == "no_message"
    with pytest.raises(Conflict):
        chats.reply(cid, Op.CONTINUE)


def test_missing_rows_are_not_found(store: Store, chats: ChatService) -> None:
    with pytest.raises(NotFound):
        chats.conversation(4242)
    with pytest.raises(NotFound):
        chats.redo_target(4242, Op.REGEN)
    with pytest.raises(NotFound):
        chats.message(4242)
    with pytest.raises(NotFound):
        chats.delete_chat(4242)


def test_a_regenerate_adds_a_version_and_choosing_checks_the_index(
    store: Store, chats: ChatService, engine: FakeEngine
) -> None:
    cid = _chat(store, chats)
    msg = chats.reply(cid).consume().message
    assert msg is not None
    engine.text = "Another take."
    again = chats.reply(cid, Op.REGEN, target_id=msg.id).consume().message
    assert again is not None and again.id == msg.id
    assert again.alternatives == ["Hello there.", "Another take."] and again.chosen == 1
    assert chats.choose_version(msg.id, 0).text == "Hello there."
    with pytest.raises(NotFound, match="has 2 version"):
        chats.choose_version(msg.id, 2)


def test_continue_extends_the_last_message(store: Store, chats: ChatService) -> None:
    cid = _chat(store, chats)
    msg = chats.reply(cid).consume().message
    assert msg is not None
    turn = chats.reply(cid, Op.CONTINUE, target_id=msg.id)
    assert turn.base_text == "Hello there."
    longer = turn.consume().message
    assert longer is not None and longer.text == "Hello there. Hello there."
    assert ReplyMeta.from_dict(longer.meta).continued
    assert longer.id == msg.id and longer.alternatives == [longer.text]  # in place


def test_continue_adds_a_version_when_the_setting_says_so(store: Store, chats: ChatService) -> None:
    from core.settings import AppSettings

    cid = _chat(store, chats)
    msg = chats.reply(cid).consume().message
    assert msg is not None
    settings = AppSettings(lambda: store, lambda: None)
    assert settings.continue_new_version() is False and not chats.continue_adds_version()
    settings.set_continue_new_version(True)
    assert chats.continue_adds_version()
    longer = chats.reply(cid, Op.CONTINUE, target_id=msg.id).consume().message
    assert longer is not None
    assert longer.alternatives == ["Hello there.", "Hello there. Hello there."]
    assert longer.chosen == 1
    settings.set_continue_new_version(False)
    again = chats.reply(cid, Op.CONTINUE, target_id=msg.id).consume().message
    assert again is not None and len(again.alternatives) == 2  # extended in place
    with pytest.raises(AppError):
        settings.set_continue_new_version("yes")  # type: ignore[arg-type]


def test_a_requests_overrides_change_one_reply_not_the_chat(
    store: Store, chats: ChatService, engine: FakeEngine
) -> None:
    cid = _chat(store, chats)
    conv = chats.conversation(cid)
    saved = chats.params(conv)
    chats.reply(cid, params=chats.params(conv, max_tokens=7, seed=5)).consume()
    used = engine.calls[-1]["params"]
    assert used.max_tokens == 7 and used.temperature == saved.temperature
    assert chats.params(chats.conversation(cid)) == saved


def test_new_chat_with_a_title_rename_and_delete(store: Store, chats: ChatService) -> None:
    ch = store.create_character({"name": "Ada", "greetings": ["Hi."]})
    conv = chats.new_chat(ch.id, title="Our story")  # type: ignore[arg-type]
    assert chats.conversation(conv.id).title == "Our story"  # type: ignore[arg-type]
    assert chats.rename(conv.id, "Part two").title == "Part two"  # type: ignore[arg-type]
    chats.delete_chat(conv.id)  # type: ignore[arg-type]
    assert store.get_conversation(conv.id) is None


def test_no_model_is_a_model_error(store: Store) -> None:
    chats = ChatService(lambda: store, lambda: None)
    cid = _chat(store, chats)
    with pytest.raises(ModelError):
        chats.reply(cid)


def test_reply_meta_reads_what_the_store_keeps() -> None:
    meta = {"tokens": 12, "tok_s": 3.5, "stop": "cancel", "before": "lore", "lore": [1]}
    m = ReplyMeta.from_dict(meta)
    assert m.generated and m.stopped_by_user and m.before == "lore"
    assert m.extra == {"lore": [1]}
    assert m.to_dict() == meta
    assert not ReplyMeta.from_dict({}).generated
    assert not ReplyMeta.from_dict({"tokens": True}).generated  # a bool is not a count
    assert ReplyMeta.from_dict({"stop": "interrupted"}).generated  # saved mid-reply
    assert ReplyMeta.from_dict(None) == ReplyMeta()


def _group(store: Store, chats: ChatService, turns: int = 3) -> tuple[int, list[int]]:
    ids = [
        store.create_character({"name": n, "greetings": [f"{n} here."]}).id for n in ("Ada", "Ben")
    ]
    conv = chats.new_group_chat(ids)  # type: ignore[arg-type]
    chats.set_group(conv.id, activation="list", auto_turns=turns)  # type: ignore[arg-type]
    return conv.id, ids  # type: ignore[return-value]


def test_the_auto_mode_goes_on_while_each_turn_adds_its_reply(
    store: Store, chats: ChatService
) -> None:
    cid, (ada, ben) = _group(store, chats, turns=3)
    auto = chats.start_auto(cid)
    spoke = []
    for _ in range(5):
        auto, who = chats.auto_turn(auto)
        if auto is None:
            break
        assert who is not None
        spoke.append(who)
        chats.reply_as(cid, who).consume()
    assert spoke == [ada, ben, ada]  # three turns, in turn, then over
    assert auto is None


@pytest.mark.parametrize("stop_at", [1, 2, 3])
def test_a_stop_ends_the_auto_mode_at_any_turn(
    store: Store, chats: ChatService, stop_at: int
) -> None:
    cid, _ = _group(store, chats, turns=3)
    auto = chats.start_auto(cid)
    turns = 0
    while True:
        step, who = chats.auto_turn(auto)
        if step is None:
            break
        auto, turns = step, turns + 1
        chats.reply_as(cid, who).consume()  # type: ignore[arg-type]
        if turns == stop_at:
            auto = auto.stop()  # the Stop click, whether the reply ended or was cut
    assert turns == stop_at
    assert chats.auto_turn(auto) == (None, None)


def test_the_auto_mode_ends_when_the_chat_did_not_grow_or_changed(
    store: Store, chats: ChatService
) -> None:
    cid, _ = _group(store, chats, turns=5)
    auto, who = chats.auto_turn(chats.start_auto(cid))
    assert auto is not None and who is not None
    # the turn's reply said nothing (stopped at once, an error): the next turn does not start
    assert chats.auto_turn(auto) == (None, None)
    # a message the user added meanwhile ends it too (their message is a turn of theirs)
    auto, who = chats.auto_turn(chats.start_auto(cid))
    assert auto is not None
    chats.reply_as(cid, who).consume()  # type: ignore[arg-type]
    chats.send(cid, "Wait!")
    assert chats.auto_turn(auto) == (None, None)
    # everyone muted: nobody may speak
    for member in store.get_conversation(cid).members:
        chats.mute_member(cid, member, True)
    assert chats.auto_turn(chats.start_auto(cid)) == (None, None)
