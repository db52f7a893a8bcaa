"""The chat service: every chat operation of every front end (the pages, the API).

chats = runtime.current().chat
conv = chats.new_chat(character_id)
chats.send(conv.id, "Hello!")
turn = chats.reply(conv.id)          # Op.NEW; or Op.REGEN / Op.CONTINUE, role=Role.NARRATOR
for piece in turn: ...               # streamed text; the reply is saved however it ends
turn.message                         # the saved message (None when nothing was said)

Every rule about a chat that a front end needs lives here, so the pages and the API never
decide one by themselves: which message a regenerate or continue may work on (`redo_target`),
whether a message was generated (`can_regenerate`), a chat's sampling with a request's
overrides (`params`), warming a chat's state, renaming, deleting, group members and settings.
Errors are `NotFound` (no such chat, message...) and `Conflict` (the chat changed, nothing to
regenerate...): the API maps them to 404 and 409, the pages show their messages.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import core.chat.groups as groups
from core.chat.card_fields import before_text, expand_greetings
from core.chat.context import conversation_context, prompt_messages, to_message
from core.chat.prompt_view import PromptView, prompt_view
from core.chat.saver import ReplySaver
from core.contracts import CONTINUE_NEW_VERSION, Op, ReplyMeta, Role
from core.engine.sampler import (
    AUTO_PRESET,
    DEFAULT_PRESET,
    PRESETS,
    SamplingParams,
    known_preset,
    model_preset,
)
from core.errors import Conflict, ModelError, NotFound
from core.prompt import CharacterContext, Message
from core.roleplay.lore import fire_lore
from core.store import ChatMessage, Conversation, Removed, Store

if TYPE_CHECKING:
    from core.engine import Engine, Reply, ReplyResult


class Turn:
    """One reply being generated: iterate it for the text pieces as they come. The reply is
    saved every couple of seconds while it streams and once more when it ends, however it ends
    (see ReplySaver). `close()` ends it at once (a Stop click, a client that went away) and
    returns when what was said is saved."""

    # a sentence for the front end to show beside the reply: the character's state file could
    # not be used and the reply was made without it (Engine.start_notice); "" when all is well
    notice: str = ""
    # this turn makes again a reply that repeated a recent message (`retry`)
    replaces_repeat: bool = False
    # what `retry` asks the chat service (set by ChatService.reply_as for group turns)
    _retry: Callable[[Turn], Turn | None] | None = None

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

    def retry(self, timeout: float = 30.0) -> Turn | None:
        """After this turn has ended: the turn that makes its reply again, or None. A group
        chat's reply (ChatService.reply_as) that repeats a recent message word for word, or
        nearly, is made again once, as a new version of the same message with another seed;
        a reply the user stopped, or one the chat has moved past, is left as it is. Front ends
        call it after every group turn and stream what it returns in the reply's place."""
        if self._retry is None:
            return None
        self.done.wait(timeout)
        return self._retry(self)

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
        return known_preset(self.store.get_setting("default_preset", DEFAULT_PRESET))

    def preset_sampling(self, name: str) -> dict[str, Any]:
        if name == AUTO_PRESET:
            return {"preset": name, **self.model_params().to_dict()}
        params = PRESETS.get(name, PRESETS[DEFAULT_PRESET])
        return {"preset": name, **params.to_dict()}

    def model_params(self) -> SamplingParams:
        """The "auto" preset: the loaded model family's values (RWKV's for RWKV models, the
        values a GGUF recommends in general.sampling.*, else those of small instruct models);
        the preset's placeholder values while no model is loaded."""
        engine = self._engine()
        if engine is None:
            return PRESETS[AUTO_PRESET]
        info = engine.info
        return model_preset(info.arch, info.backend, info.extra.get("sampling"))

    def params(self, conv: Conversation | None, **overrides: Any) -> SamplingParams:
        """A chat's sampling (the default preset's when it has none saved). A chat on the
        "auto" preset follows the loaded model: its saved seed, token limit and anything else
        the preset does not set are kept. Any other saved sampling (a preset or custom values
        the user chose) is used as saved. `overrides` (a request's max_tokens, seed...) replace
        the saved values for one reply."""
        data = conv.sampling if conv is not None and conv.sampling else None
        data = data or self.preset_sampling(self.default_preset())
        saved = SamplingParams.from_dict(data)
        if data.get("preset") == AUTO_PRESET:
            family = self.model_params()
            saved = replace(saved, **{f: getattr(family, f) for f in _FAMILY_FIELDS})
        if overrides:
            saved = SamplingParams.from_dict({**saved.to_dict(), **overrides})
        return saved.validated()

    def set_sampling(self, conversation_id: int, values: dict[str, Any], preset: str) -> None:
        p = SamplingParams.from_dict(values).validated()
        self.store.update_conversation(conversation_id, sampling={"preset": preset, **p.to_dict()})

    def new_chat(
        self, character_id: int, title: str | None = None, default_user: str | None = None
    ) -> Conversation:
        """Start a chat with a character: the character's sampling preset (else the default
        one), the user's name from Settings (else the character's, else `default_user`: the
        front end's word for "User" in its language), the loaded model's name; `title` if given
        (else the store's default)."""
        store = self.store
        engine = self._engine()
        model = ""
        if engine is not None:
            model = model_name(engine)
        character = store.get_character(character_id)
        preset = (character.sampling_preset if character is not None else "") or ""
        user_name = self._user_name(character, default_user)
        conv = store.create_conversation(
            character_id,
            model=model,
            sampling=self.preset_sampling(preset if preset in PRESETS else self.default_preset()),
            user_name=user_name,
        )
        expand_greetings(store, conv)  # {{time}}, {{random::..}}...: once, stored as fed
        if title and title.strip():
            conv = store.rename_conversation(conv.id, title)  # type: ignore[arg-type]
        return conv

    def _user_name(self, character: Any, default_user: str | None) -> str | None:
        """The user's name in a new chat: the one saved in Settings, else the character's
        (the store picks it), else `default_user` (None: the store's default, "User")."""
        saved = self.store.get_setting("user_name", "") or None
        if saved or (character is not None and character.user_name):
            return saved
        return default_user or None

    def conversation(self, conversation_id: int) -> Conversation:
        conv = self.store.get_conversation(conversation_id)
        if conv is None:
            raise NotFound(f"There is no chat with id {conversation_id}.")
        return conv

    def rename(self, conversation_id: int, title: str) -> Conversation:
        return self.store.rename_conversation(conversation_id, title)

    def delete_chat(self, conversation_id: int) -> None:
        self.conversation(conversation_id)
        self.store.delete_conversation(conversation_id)

    def import_chat(self, data: bytes, character_id: int) -> Conversation:
        """A SillyTavern JSONL chat (or this app's export) as a new chat of the character."""
        from core.roleplay.chat_io import import_jsonl

        return import_jsonl(self.store, data, character_id)

    # ------------------------------------------------------------------ messages
    def send(self, conversation_id: int, text: str, name: str = "") -> ChatMessage:
        """The user's message, added to the end of the chat."""
        return self.store.add_message(conversation_id, "user", text, name=name)

    def edit(self, message_id: int, text: str) -> ChatMessage:
        return self.store.edit_message(message_id, text)

    def delete(self, message_id: int) -> Removed:
        """Remove a message (the later ones move up); `undo(removed.token)` puts it back until
        the next compaction (core.store.removals)."""
        return self.store.delete_message(message_id)

    def delete_version(self, message_id: int, index: int) -> Removed:
        """Remove one version (0-based) of a message that has several, as SillyTavern deletes a
        swipe; Conflict "only_version" for its only one. Undone by `undo`."""
        return self.store.remove_version(message_id, index)

    def undo(self, token: str) -> Removed:
        """Put back what a delete, rewind or version removal took away (its `token`): the
        messages at their places, with their versions; a version at its index. NotFound when
        it was undone already or deleted for good (compaction). The state cache needs nothing:
        the same text makes the same keys, so its checkpoints are found again if still held."""
        return self.store.undo_removal(token)

    def message(self, message_id: int) -> ChatMessage:
        m = self.store.get_message(message_id)
        if m is None:
            raise NotFound(f"There is no message with id {message_id}.")
        return m

    def choose_version(self, message_id: int, index: int) -> ChatMessage:
        m = self.message(message_id)
        n = len(m.alternatives or [m.text])
        if not 0 <= index < n:
            raise NotFound(
                f"Message {message_id} has {n} version(s), numbered from 0; there is no "
                f"version {index}."
            )
        return self.store.select_alternative(message_id, index)

    def rewind_to(self, conversation_id: int, position: int) -> Removed:
        """Remove every message from `position` on (`.messages`: how many went); `undo` puts
        them back."""
        return self.store.rewind(conversation_id, position)

    def warm(self, conversation_id: int) -> None:
        """Prefill the chat's state so that its next reply starts at once."""
        self.engine().warm(
            conversation_context(self.store, conversation_id),
            prompt_messages(self.store, conversation_id),
        )

    def warm_in_background(self, conversation_id: int) -> threading.Thread:
        """`warm` on a thread of its own (a chat just opened): only a head start, so a failure
        is dropped (the reply prefills whatever is missing), and a reply that starts meanwhile
        ends it (Engine.warm)."""

        def run() -> None:
            try:
                self.warm(conversation_id)
            except Exception:
                pass

        # not a daemon: a prefill cut off by interpreter exit inside torch aborts the process
        thread = threading.Thread(target=run, daemon=False, name=f"warm-{conversation_id}")
        thread.start()
        return thread

    # ------------------------------------------------------------------ which message
    @staticmethod
    def can_regenerate(message: ChatMessage) -> bool:
        """A regenerate makes sense for a message by a character or the narrator, and for a
        user's line the model wrote; not for what the user typed."""
        return message.role != Role.USER or ReplyMeta.from_dict(message.meta).generated

    def redo_target(
        self, conversation_id: int, op: Op, target_id: int | None = None
    ) -> ChatMessage:
        """The message a regenerate, continue or several versions work on: the chat's last
        message. Conflict when the chat has none (code "no_message"), when `target_id` (the
        message the user saw) is no longer the last one ("not_last_message"), and for a
        regenerate of what the user typed ("not_generated")."""
        op = Op(op)
        what = "continued" if op == Op.CONTINUE else "regenerated"
        self.conversation(conversation_id)
        messages = self.store.list_messages(conversation_id)
        if not messages:
            raise Conflict(f"The chat has no message to be {what}.", "no_message")
        last = messages[-1]
        if target_id is not None and target_id != last.id:
            raise Conflict(
                f"Only the last message (id {last.id}) can be {what}, not {target_id}: the "
                "chat changed.",
                "not_last_message",
            )
        if op != Op.CONTINUE and not self.can_regenerate(last):
            raise Conflict(
                "The last message was written by the user, not generated: it cannot be "
                "regenerated. Ask for a reply instead.",
                "not_generated",
            )
        return last

    # ------------------------------------------------------------------ replies
    def continue_adds_version(self) -> bool:
        """The setting: "continue" adds a new version instead of extending the one shown."""
        return self.store.get_setting(CONTINUE_NEW_VERSION, False) is True

    def before_reply(
        self,
        conv: Conversation,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message,
    ) -> tuple[str, dict[str, Any]]:
        """The text fed just before a new reply's header, and what to record of it in the
        reply's meta. It is stored with the reply (meta "before") and fed again before it in
        every later turn, so the state invariant holds and later turns reuse the checkpoints.
        Lorebook entries that fire and the card's post-history instructions go here."""
        lore_text, lore_meta = fire_lore(self.store, conv, ctx, history, self._lore_tokens())
        card_text, card_meta = before_text(self.store, conv, ctx, speaker)  # post-history
        text = "\n".join(t for t in (lore_text, card_text) if t.strip())  # lore first
        return text, {**lore_meta, **card_meta}

    def _lore_tokens(self) -> Callable[[str], int] | None:
        """The loaded model's token count, for the lorebooks' token budget."""
        engine = self._engine()
        return None if engine is None else (lambda text: len(engine.backend.tokenize(text)))

    def reply(
        self,
        conversation_id: int,
        op: Op | str = Op.NEW,
        role: Role | str = Role.CHAR,
        name: str = "",
        target_id: int | None = None,
        params: SamplingParams | None = None,
        cancel: threading.Event | None = None,
        character_id: int | None = None,
        version_offset: int = 0,
    ) -> Turn:
        """Start a reply: Op.NEW (the next message, by `role`), Op.REGEN (a new version of the
        last message) or Op.CONTINUE (the last message's version shown, made longer in place;
        a new version instead with the setting `continue_adds_version`). `character_id`: the
        group chat's member who speaks (a new message; see reply_as). `target_id`, when given,
        must be the last message: a chat changed meanwhile is refused (Conflict), not silently
        rewritten. The returned Turn streams the text; nothing runs until it is iterated."""
        try:
            op, role = Op(op), Role(role)
        except ValueError as e:
            raise ValueError(f"unknown reply operation or speaker: {e}") from None
        if op == Op.VERSIONS:
            raise ValueError("several versions at once: use regenerate_versions")
        store = self.store
        engine = self.engine()
        conv = self.conversation(conversation_id)
        messages = store.list_messages(conversation_id)
        target: ChatMessage | None = None
        if op.on_last:
            if not messages:
                what = "continued" if op == Op.CONTINUE else "regenerated"
                raise Conflict(f"The chat has no message to be {what}.", "no_message")
            target = messages[-1]
            if target_id is not None and target.id != target_id:
                raise Conflict(
                    "The chat changed: that message is no longer the last one.",
                    "not_last_message",
                )
        history = [to_message(m) for m in messages]
        if op == Op.REGEN:
            history = history[:-1]
        if target is not None:
            speaker = Message(target.role, "", target.name)  # type: ignore[arg-type]
        else:
            speaker = Message(role, "", name)  # type: ignore[arg-type]
        ctx = conversation_context(store, conversation_id, speaker=speaker.name)
        # the character's state file: refused here, before anything is saved, when it does not
        # fit the model (ModelError); a notice when this model cannot use it
        notice = engine.start_notice(ctx)
        extra: dict[str, Any] = {}
        if op == Op.CONTINUE:
            speaker.before = history[-1].before  # the message keeps what was fed before it
            joined = ReplyMeta.from_dict(target.meta if target else None).extra.get("joined")
            if joined is not None:
                extra["joined"] = joined  # a group's late member stays fed
        else:
            speaker.before, extra = self.before_reply(conv, ctx, history, speaker)
            prior = messages[:-1] if op == Op.REGEN else messages
            speaker.before, extra = groups.join_before(store, conv, prior, speaker.before, extra)
        if speaker.before:
            extra["before"] = speaker.before
        cancel = cancel or threading.Event()
        done = threading.Event()
        box: dict[str, Any] = {}
        saver = ReplySaver(
            store,
            conversation_id,
            op,
            role=role,
            target=target,
            meta={"model": model_name(engine), **extra},
            name=name if target is None else "",
            character_id=character_id if target is None else None,
            new_version=op == Op.CONTINUE and self.continue_adds_version(),
        )

        def on_finish(res: ReplyResult) -> None:  # in the thread that reads the reply
            try:
                box["result"] = res
                counts = {"prompt_tokens": res.prompt_tokens, "fed_tokens": res.fed_tokens}
                saver.finish(res.text or "", {**res.meta(), **counts})
            except Exception as e:  # given to the front end; never lost silently
                box["error"] = e
            finally:
                done.set()

        params = params or self.params(conv)
        if params.seed is not None:  # the same place gives the same reply, the next one differs
            version = len(target.alternatives or [target.text]) if op == Op.REGEN and target else 0
            version += version_offset  # the i-th of several versions asked for at once
            place = target.position if target is not None else _next_position(messages)
            if op == Op.CONTINUE and target is not None:
                version = target.chosen
            params = replace(params, seed=place_seed(params.seed, place, version, op))
        reply = engine.reply(
            ctx,
            history,
            speaker,
            params,
            cancel=cancel,
            continue_last=op == Op.CONTINUE,
            on_finish=on_finish,
        )
        base = target.text if op == Op.CONTINUE and target is not None else ""
        turn = Turn(reply, saver, cancel, done, box, base)
        turn.notice = notice
        return turn

    # ------------------------------------------------------------------ what the model saw
    def prompt_view(self, conversation_id: int, message_id: int | None = None) -> PromptView:
        """The exact prompt of a reply (or of the next one) and its cached token count."""
        return prompt_view(self.store, self.engine(), conversation_id, message_id)

    # ------------------------------------------------------------------ group chats
    def new_group_chat(
        self, character_ids: list[int], default_user: str | None = None
    ) -> Conversation:
        """Start a chat with two or more characters (the first one's sampling preset; the
        user's name as in `new_chat`)."""
        store = self.store
        engine = self._engine()
        first = store.get_character(character_ids[0]) if character_ids else None
        preset = (first.sampling_preset if first is not None else "") or ""
        conv = store.create_group_conversation(
            character_ids,
            model=model_name(engine) if engine is not None else "",
            sampling=self.preset_sampling(preset if preset in PRESETS else self.default_preset()),
            user_name=self._user_name(first, default_user),
        )
        expand_greetings(store, conv)  # {{time}}, {{random::..}}...: once, stored as fed
        return conv

    def pick_speaker(
        self, conversation_id: int, rng: random.Random | None = None, auto: bool = False
    ) -> int | None:
        """The group member who speaks next by the chat's setting; None when nobody does
        (manual mode outside the auto mode, everyone muted...)."""
        return groups.pick_speaker(self.store, self.conversation(conversation_id), rng, auto)

    def start_auto(self, conversation_id: int) -> groups.AutoTalk:
        """The auto mode of a group chat, about to start (its first turn: `auto_turn`)."""
        return groups.start_auto(self.store, self.conversation(conversation_id))

    def auto_turn(
        self, auto: groups.AutoTalk, rng: random.Random | None = None
    ) -> tuple[groups.AutoTalk | None, int | None]:
        """The auto mode's next turn: its new state and the member who speaks, or (None, None)
        when it is over (stopped, its turns done, the chat changed, nobody may speak)."""
        conv = self.conversation(auto.conversation_id)
        return groups.next_auto_turn(self.store, conv, auto, rng)

    def reply_as(
        self,
        conversation_id: int,
        character_id: int,
        params: SamplingParams | None = None,
        cancel: threading.Event | None = None,
        guard: bool = True,
    ) -> Turn:
        """A new reply by a group chat's member (muted or not: the user may pick anyone). With
        `guard`, a reply that repeats a recent message is made again once (`Turn.retry`)."""
        who = groups.member(self.store, self.conversation(conversation_id), character_id)
        turn = self.reply(
            conversation_id,
            Op.NEW,
            role=Role.CHAR,
            name=who.name,
            params=params,
            cancel=cancel,
            character_id=who.id,
        )
        if guard:
            turn._retry = lambda t: self._retry_repeat(conversation_id, t, params)
        return turn

    def _retry_repeat(
        self, conversation_id: int, turn: Turn, params: SamplingParams | None
    ) -> Turn | None:
        """A regenerate of `turn`'s reply when it repeats one of the recent messages before it
        (core.chat.groups.repeats_recent); None when it does not, when it was stopped or
        failed, or when it is no longer the chat's last message. The regenerate is a new
        version of the message, drawn from another seed (place_seed counts versions; without
        a fixed seed every draw differs), and is not retried again."""
        res, msg = turn.result, turn.message
        if res is None or msg is None or turn.error is not None:
            return None
        if res.stop_reason in ("cancel", "closed", "error"):
            return None
        messages = self.store.list_messages(conversation_id)
        if not messages or messages[-1].id != msg.id:
            return None
        if not groups.repeats_recent(messages):
            return None
        again = self.reply(conversation_id, Op.REGEN, target_id=msg.id, params=params)
        again.replaces_repeat = True
        return again

    def add_member(self, conversation_id: int, character_id: int) -> Conversation:
        """Add a character to a chat (a chat with one character becomes a group chat)."""
        return self.store.add_group_member(conversation_id, character_id)

    def remove_member(self, conversation_id: int, character_id: int) -> Conversation:
        return self.store.remove_group_member(conversation_id, character_id)

    def mute_member(self, conversation_id: int, character_id: int, muted: bool) -> Conversation:
        return self.store.set_member_muted(conversation_id, character_id, muted)

    def set_group(self, conversation_id: int, **settings: Any) -> Conversation:
        """A group chat's settings: activation ("natural", "list", "manual"), allow_self,
        auto_turns (checked by the store)."""
        return self.store.update_group_settings(conversation_id, **settings)

    # ------------------------------------------------------------------ batched versions
    def regenerate_versions(
        self,
        conversation_id: int,
        n: int,
        params: SamplingParams | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Turn]:
        """`n` new versions of the last message at once, each saved as a version of it when
        it ends. With a seed, version i samples as the i-th regenerate made one after the other
        would (`place_seed` of the version it becomes), so each equals that regenerate made
        alone. Read them together (one thread each: `consume_versions`) and the engine decodes
        them in one batch."""
        if not 1 <= n <= MAX_VERSIONS:
            raise ValueError(f"between 1 and {MAX_VERSIONS} versions at once")
        last = self.redo_target(conversation_id, Op.VERSIONS)
        base = params or self.params(self.conversation(conversation_id))
        cancel = cancel or threading.Event()
        return [
            self.reply(
                conversation_id,
                Op.REGEN,
                target_id=last.id,
                params=base,
                cancel=cancel,
                version_offset=i,
            )
            for i in range(n)
        ]

    def consume_versions(self, turns: list[Turn]) -> list[ChatMessage | None]:
        """Read the versions to their ends, together; the messages as saved."""
        from core.engine.batch import consume_together

        consume_together(turns)
        return [t.message for t in turns]


MAX_VERSIONS = 8  # versions of one message generated at once (the model's batch)


# the sampling values the "auto" preset takes from the model family (the rest stays the chat's)
_FAMILY_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "penalty_decay",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
)


def _next_position(messages: list[ChatMessage]) -> int:
    return messages[-1].position + 1 if messages else 0


def place_seed(seed: int, position: int, version: int, op: Op | str = Op.NEW) -> int:
    """The seed of one reply: the chat's seed mixed with the reply's place (message position,
    version index, and whether it continues a message), so consecutive replies and regenerated
    versions draw different streams while the same place with the same seed gives the same
    reply."""
    data = f"{int(seed)}:{int(position)}:{int(version)}:{op == 'continue'}".encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 1


def model_name(engine: Engine) -> str:
    """The loaded model as chats record it: its file name, "embedded", or for a model server
    (core.engine.remote) "<model> @ <host:port>"."""
    if engine.info.backend == "remote":
        return str(engine.info.extra.get("label") or "remote")
    return Path(engine.info.path).name if engine.info.path else "embedded"
