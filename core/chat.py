"""The chat service: every chat operation of every front end (the pages, the API).

    svc = runtime.current().chat
    conv = svc.new_chat(character_id)
    svc.send(conv.id, "Hello!")
    turn = svc.reply(conv.id)            # "new"; or op="regen" / "continue", role="narrator"
    for piece in turn: ...               # streamed text; the reply is saved however it ends
    turn.message                         # the saved message (None when nothing was said)

The store keeps rows; the engine takes a CharacterContext and a list of Messages. This module
turns one into the other, so that neither the store nor the engine knows of the other, and it
saves each reply while it is generated (ReplySaver) and when it ends: finished, stopped, cut by
max_tokens, or interrupted by the client going away.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.engine.sampler import DEFAULT_PRESET, PRESETS, SamplingParams
from core.errors import ModelError, StoreError
from core.prompt import CharacterContext, Message
from core.store import Character, ChatMessage, Conversation, Store
from core.text import DEFAULT_CHAR, normalize

if TYPE_CHECKING:
    from core.engine import Engine, Reply, ReplyResult

SAVE_EVERY_S = 2.0  # a reply in progress is saved this often: a crash loses at most this much


def character_context(
    store: Store, character: Character, user_name: str | None = None
) -> CharacterContext:
    """What the engine needs to open a chat with `character`."""
    return CharacterContext(
        name=character.name,
        user_name=store.user_name(user_name, character.user_name),
        persona=character.description,
        personality=character.personality,
        scenario=character.scenario,
        example_dialogue=character.example_dialogue,
        user_persona=store.setting_str("user_persona"),
        stop_strings=list(character.stop_strings),
    )


def conversation_context(store: Store, conversation_id: int) -> CharacterContext:
    """The character context of a chat (a bare one if its character was deleted)."""
    conv = store.get_conversation(conversation_id)
    if conv is None:
        raise StoreError(f"There is no conversation with id {conversation_id}.")
    character = store.get_character(conv.character_id)
    if character is not None:
        return character_context(store, character, conv.user_name or None)
    return CharacterContext(
        name=conv.character_name or DEFAULT_CHAR,
        user_name=store.user_name(conv.user_name),
        user_persona=store.setting_str("user_persona"),
    )


def prompt_messages(store: Store, conversation_id: int) -> list[Message]:
    """The transcript as the engine reads it (the chosen version of each message)."""
    return [
        Message(role=m.role, text=m.text, name=m.name)  # type: ignore[arg-type]
        for m in store.list_messages(conversation_id)
    ]


class ReplySaver:
    """Saves a reply while it is generated, so that a crash (kill -9, a power cut) loses at most
    its last couple of seconds.

    `op` is "new" (a new message by `role`), "regen" or "continue" (a new version of `target`).
    The first save, `every_s` seconds into the reply, creates the message or the version with
    meta stop "interrupted"; later saves rewrite it in place, and `finish` writes the final text
    with its real stop reason. A reply cut short by a crash is then a shorter stored message,
    shown as interrupted. The engine rebuilds a reply's checkpoint from the stored text, so the
    state invariant holds for it like for any other message.
    """

    def __init__(
        self,
        store: Store,
        conversation_id: int,
        op: str,
        role: str = "char",
        target: ChatMessage | None = None,
        meta: dict[str, Any] | None = None,
        name: str = "",
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if op not in ("new", "regen", "continue") or (op != "new" and target is None):
            raise ValueError(f"unknown reply operation {op!r} (or no message to change)")
        self.store, self.conversation_id, self.op, self.role = store, conversation_id, op, role
        self.name = name  # the speaker's name when it is not the role's default
        self.target = target
        self.meta = {**(meta or {}), **({"continued": True} if op == "continue" else {})}
        self.every_s = SAVE_EVERY_S if every_s is None else every_s
        self._clock = clock
        self._last = clock()
        self._base = target.text if op == "continue" and target is not None else ""
        self._streamed = ""
        self.message: ChatMessage | None = None  # as last saved
        self._version = 0  # the version of `message` this reply writes

    def track(self, pieces: Iterable[str]) -> Iterator[str]:
        """The engine's text pieces, passed on; the text so far is saved every `every_s` s."""
        for piece in pieces:
            self._streamed += piece
            if self._clock() - self._last >= self.every_s:
                self._save(normalize(self._base + self._streamed), {"stop": "interrupted"})
                self._last = self._clock()
            yield piece

    def finish(self, text: str, meta: dict[str, Any]) -> ChatMessage | None:
        """The final save (the engine's on_finish): `text` as stored and the reply's meta (for
        continue, `meta["tokens"]` counts the new tokens only). None when nothing was said."""
        if self.op == "continue" and self.target is not None:
            old = (self.target.meta or {}).get("tokens")
            meta = {**meta, "tokens": int(old or 0) + int(meta.get("tokens") or 0)}
        self._save(text, meta)
        return self.message

    def _save(self, text: str, meta: dict[str, Any]) -> None:
        if not text.strip() or (self.op == "continue" and text == self._base):
            return  # nothing said (yet)
        meta = {**self.meta, **meta}
        if self.message is not None:
            self.message = self.store.set_version(self.message.id, self._version, text, meta)
        elif self.op == "new":
            self.message = self.store.add_message(
                self.conversation_id, self.role, text, name=self.name, meta=meta
            )
        else:
            assert self.target is not None
            self.message = self.store.add_alternative(self.target.id, text, meta=meta)
            self._version = self.message.chosen


class Turn:
    """One reply being generated: iterate it for the text pieces as they come. The reply is
    saved every couple of seconds while it streams and once more when it ends, however it ends
    (see ReplySaver). `close()` ends it at once (a Stop click, a client that went away) and
    returns when what was said is saved."""

    def __init__(
        self,
        reply: Reply,
        saver: ReplySaver,
        cancel: threading.Event,
        done: threading.Event,
        box: dict[str, Any],
        base_text: str,
    ) -> None:
        self._reply = reply
        self._saver = saver
        self.cancel = cancel
        self.done = done  # set once the reply's end is saved (or failed to be)
        self._box = box
        self.base_text = base_text  # for "continue": the message's text before the new part
        self._it: Iterator[str] = iter(reply)
        self._pieces = saver.track(self._it)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self, timeout: float = 10.0) -> None:
        self.cancel.set()
        if inspect.isgenerator(self._it) and inspect.getgeneratorstate(self._it) == "GEN_CREATED":
            self.done.set()  # never started: nothing was said, nothing to save
        self._pieces.close()  # type: ignore[attr-defined]
        close = getattr(self._it, "close", None)
        if close is not None:
            close()  # the engine's generator: its `finally` saves what was said
        self.done.wait(timeout)

    def consume(self) -> Turn:
        """Read the reply to its end (a client that does not stream)."""
        for _ in self._pieces:
            pass
        self.done.wait()
        return self

    @property
    def result(self) -> ReplyResult | None:
        return self._box.get("result")

    @property
    def error(self) -> BaseException | None:
        """What went wrong while saving the reply's end (shown by the front end)."""
        return self._box.get("error")

    @property
    def message(self) -> ChatMessage | None:
        """The reply as saved (None while nothing was said)."""
        return self._saver.message


class ChatService:
    """Every chat operation, for any front end. `store` and `engine` are called when needed:
    the store can be reopened (a restore) and the model loaded or unloaded meanwhile."""

    def __init__(self, store: Callable[[], Store], engine: Callable[[], Engine | None]) -> None:
        self._store = store
        self._engine = engine

    @property
    def store(self) -> Store:
        return self._store()

    def engine(self) -> Engine:
        engine = self._engine()
        if engine is None:
            raise ModelError("No model is loaded. Load one in Settings.")
        return engine

    # ------------------------------------------------------------------ chats and sampling
    def default_preset(self) -> str:
        name = self.store.get_setting("default_preset", DEFAULT_PRESET)
        return name if name in PRESETS else DEFAULT_PRESET

    def preset_sampling(self, name: str) -> dict[str, Any]:
        params = PRESETS.get(name, PRESETS[DEFAULT_PRESET])
        return {"preset": name, **params.to_dict()}

    def params(self, conv: Conversation | None) -> SamplingParams:
        """A chat's sampling (the default preset's when it has none saved)."""
        data = conv.sampling if conv is not None and conv.sampling else None
        return SamplingParams.from_dict(
            data or self.preset_sampling(self.default_preset())
        ).validated()

    def set_sampling(self, conversation_id: int, values: dict[str, Any], preset: str) -> None:
        p = SamplingParams.from_dict(values).validated()
        self.store.update_conversation(conversation_id, sampling={"preset": preset, **p.to_dict()})

    def new_chat(self, character_id: int) -> Conversation:
        """Start a chat with a character: the character's sampling preset (else the default
        one), the user's name from Settings, the loaded model's name."""
        store = self.store
        engine = self._engine()
        model = ""
        if engine is not None:
            model = model_name(engine)
        character = store.get_character(character_id)
        preset = (character.sampling_preset if character is not None else "") or ""
        user_name = store.get_setting("user_name", "") or None
        return store.create_conversation(
            character_id,
            model=model,
            sampling=self.preset_sampling(preset if preset in PRESETS else self.default_preset()),
            user_name=user_name,
        )

    def conversation(self, conversation_id: int) -> Conversation:
        conv = self.store.get_conversation(conversation_id)
        if conv is None:
            raise StoreError(f"There is no conversation with id {conversation_id}.")
        return conv

    # ------------------------------------------------------------------ messages
    def send(self, conversation_id: int, text: str, name: str = "") -> ChatMessage:
        """The user's message, added to the end of the chat."""
        return self.store.add_message(conversation_id, "user", text, name=name)

    def edit(self, message_id: int, text: str) -> ChatMessage:
        return self.store.edit_message(message_id, text)

    def delete(self, message_id: int) -> None:
        self.store.delete_message(message_id)

    def choose_version(self, message_id: int, index: int) -> ChatMessage:
        return self.store.select_alternative(message_id, index)

    def rewind(self, conversation_id: int, position: int) -> int:
        """Delete every message from `position` on; returns how many went."""
        return self.store.rewind(conversation_id, position)

    def warm(self, conversation_id: int) -> None:
        """Prefill the chat's state so that its next reply starts at once."""
        self.engine().warm(
            conversation_context(self.store, conversation_id),
            prompt_messages(self.store, conversation_id),
        )

    # ------------------------------------------------------------------ replies
    def reply(
        self,
        conversation_id: int,
        op: str = "new",
        role: str = "char",
        name: str = "",
        target_id: int | None = None,
        params: SamplingParams | None = None,
        cancel: threading.Event | None = None,
    ) -> Turn:
        """Start a reply: "new" (the next message, by `role`), "regen" (a new version of the
        last message) or "continue" (the last message, made longer). `target_id`, when given,
        must be the last message: a chat changed meanwhile is refused, not silently rewritten.
        The returned Turn streams the text; nothing runs until it is iterated."""
        store = self.store
        engine = self.engine()
        conv = self.conversation(conversation_id)
        if op not in ("new", "regen", "continue"):
            raise ValueError(f"unknown reply operation {op!r}")
        if role not in ("char", "narrator", "user"):
            raise ValueError(f"unknown speaker {role!r}")
        messages = store.list_messages(conversation_id)
        target: ChatMessage | None = None
        if op != "new":
            if not messages:
                raise StoreError("The chat has no message to regenerate or continue.")
            target = messages[-1]
            if target_id is not None and target.id != target_id:
                raise StoreError("The chat changed: that message is no longer the last one.")
        history = [Message(m.role, m.text, m.name) for m in messages]  # type: ignore[arg-type]
        if op == "regen":
            history = history[:-1]
        if target is not None:
            speaker = Message(target.role, "", target.name)  # type: ignore[arg-type]
        else:
            speaker = Message(role, "", name)  # type: ignore[arg-type]
        ctx = conversation_context(store, conversation_id)
        cancel = cancel or threading.Event()
        done = threading.Event()
        box: dict[str, Any] = {}
        saver = ReplySaver(
            store,
            conversation_id,
            op,
            role=role,
            target=target,
            meta={"model": model_name(engine)},
            name=name if target is None else "",
        )

        def on_finish(res: ReplyResult) -> None:  # in the thread that reads the reply
            try:
                box["result"] = res
                saver.finish(res.text or "", res.meta())
            except Exception as e:  # given to the front end; never lost silently
                box["error"] = e
            finally:
                done.set()

        reply = engine.reply(
            ctx,
            history,
            speaker,
            params or self.params(conv),
            cancel=cancel,
            continue_last=op == "continue",
            on_finish=on_finish,
        )
        base = target.text if op == "continue" and target is not None else ""
        return Turn(reply, saver, cancel, done, box, base)


def model_name(engine: Engine) -> str:
    """The loaded model as chats record it: its file name, or "embedded"."""
    return Path(engine.info.path).name if engine.info.path else "embedded"
