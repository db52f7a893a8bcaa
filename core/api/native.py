"""The app's own endpoints under /api/: its saved characters and chats, for a custom front end.

Every operation goes through the chat service (core/chat/service.py) and the store of the
runtime, like the pages: what is done here shows in the pages, and back.

    GET    /api/characters                     id, name, description, greetings, avatar_url
    GET    /api/characters/{id}/avatar         the character's picture (PNG)
    GET    /api/characters/{id}/chats          the character's chats, newest first
    POST   /api/characters/{id}/chats          a new chat (the greeting is its first message)
    GET    /api/chats/{id}                     one chat
    DELETE /api/chats/{id}
    GET    /api/chats/{id}/messages            the messages, each with its versions
    POST   /api/chats/{id}/messages            {"text", "reply"?, "stream"?}: the user's message,
                                               then the character's reply
    POST   /api/chats/{id}/regenerate          a new version of the last message
    POST   /api/chats/{id}/continue            the last message, made longer
    POST   /api/chats/{id}/reply               {"role": "char"|"narrator"|"user", "name"?}
    PUT    /api/messages/{id}                  {"text"}: edit the chosen version
    POST   /api/messages/{id}/versions/{index} choose a version (from 0)
    DELETE /api/messages/{id}

A reply counts in the same limit of generations running at once as /v1 (core/api/admission.py):
beyond it, a 429 before the user's message is stored. A reply is returned whole, or with
"stream": true as server-sent events: `{"delta": "..."}`
pieces, then one last `{"done": true, "message": {...}, "stop_reason": ...}` event (an error is
one `{"error": {...}}` event instead). A client that goes away stops the reply; what was said is
saved (the service's Turn saves however a reply ends; core/api/stream.py stops it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from core.api.admission import admission_for
from core.api.config import ApiConfig
from core.api.errors import ApiError, read_json
from core.api.stream import EventStream, ThreadedPieces, run_unless_disconnected
from core.chat.service import ChatService, Turn
from core.contracts import ROLES, Op, Role
from core.errors import NotFound
from core.roleplay.avatars import avatar_path
from core.runtime import Runtime
from core.store import MAX_MESSAGE, Character, ChatMessage, Conversation
from core.text import NARRATOR_NAME

log = logging.getLogger(__name__)

SETTLE_S = 30.0  # at most this long a write waits for the chat's replies still going
MAX_ID = 2**62  # larger ids cannot exist (SQLite integers), and would overflow a query
MAX_LIST = 1000  # chats listed at most per request
MAX_REPLY_TOKENS = 8192

_T = TypeVar("_T")


# ------------------------------------------------------------------------------ shapes
def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def character_json(c: Character, base_url: str) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "greetings": len([g for g in c.greetings if g.strip()]),
        "avatar_url": f"{base_url}api/characters/{c.id}/avatar" if c.avatar else None,
    }


def chat_json(conv: Conversation, n_messages: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": conv.id,
        "title": conv.title,
        "character_id": conv.character_id,
        "character_name": conv.character_name,
        "user_name": conv.user_name,
        "model": conv.model,
        "created_at": _time(conv.created_at),
        "updated_at": _time(conv.updated_at),
    }
    if n_messages is not None:
        out["messages"] = n_messages
    return out


def message_json(m: ChatMessage, conv: Conversation | None = None) -> dict[str, Any]:
    """A message: its role, the speaker's name as shown, its text (the chosen version), every
    version, which one is chosen, and its meta (tokens, speed, how it stopped)."""
    name = m.name
    if not name and conv is not None:
        if m.role == "char":
            name = conv.character_name
        elif m.role == "user":
            name = conv.user_name
    if not name and m.role == "narrator":
        name = NARRATOR_NAME
    return {
        "id": m.id,
        "chat_id": m.conversation_id,
        "position": m.position,
        "role": m.role,
        "name": name,
        "text": m.text,
        "versions": list(m.alternatives or [m.text]),
        "chosen": m.chosen,
        "meta": m.meta or {},
        "created_at": _time(m.created_at),
        "updated_at": _time(m.updated_at),
    }


# ------------------------------------------------------------------------------ checks
def _id(request: Request, key: str, what: str) -> int:
    raw = request.path_params[key]
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(400, f"The {what} id must be a whole number, not {raw!r}.", param=key)
    value = int(raw)
    if value >= MAX_ID:
        raise ApiError(404, f"There is no {what} with id {value}.")
    return value


def _fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400,
            f"Unknown field(s): {', '.join(unknown)}. Known: {', '.join(sorted(allowed))}.",
            param=unknown[0],
        )


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"`{key}` must be true or false.", param=key)
    return value


def _text(body: dict[str, Any], key: str = "text") -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ApiError(400, f"`{key}` must be a string.", param=key)
    if not value.strip():
        raise ApiError(400, f"`{key}` is empty.", param=key)
    if len(value) > MAX_MESSAGE:
        raise ApiError(400, f"`{key}` is longer than {MAX_MESSAGE} characters.", param=key)
    return value


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"`{key}` must be a whole number from {low} to {high}.", param=key)
    return value


# ------------------------------------------------------------------------------ the endpoints
class NativeApi:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.admission = admission_for(config)  # one count with /v1
        # each chat's replies still going: a reply whose client went away saves its end a
        # moment later, and must not undo a write that came after it (issue 24)
        self._turns: dict[int, list[Turn]] = {}
        self._turns_lock = threading.Lock()

    def _settled(self, chat_id: int) -> None:
        """Wait (in the thread pool, at most SETTLE_S) until the chat's replies still going have
        saved their end (one whose client went away stops at its next token; the server may
        not have seen it go yet), so that this write comes after it. Found by the chaos run
        (seed 305): a choice of version acknowledged after a streamed regenerate was cut off
        was undone by that regenerate's last save, which made its own version the chosen one."""
        with self._turns_lock:
            turns = [t for t in self._turns.get(chat_id, []) if not t.done.is_set()]
            if turns:
                self._turns[chat_id] = turns
            else:
                self._turns.pop(chat_id, None)
        for turn in turns:
            turn.done.wait(SETTLE_S)

    def _message_chat(self, message_id: int) -> int:
        return self.svc.message(message_id).conversation_id  # type: ignore[return-value]

    @property
    def rt(self) -> Runtime:
        return self.config.runtime()

    @property
    def svc(self) -> ChatService:
        return self.rt.chat

    # --- lookups (in the thread pool) ---
    def _character(self, character_id: int) -> Character:
        c = self.rt.store.get_character(character_id)
        if c is None:
            raise NotFound(f"There is no character with id {character_id}.")
        return c

    def _chat(self, chat_id: int) -> Conversation:
        conv = self.rt.store.get_conversation(chat_id)
        if conv is None:
            raise NotFound(f"There is no chat with id {chat_id}.")
        return conv

    def _message_out(self, m: ChatMessage | None) -> dict[str, Any] | None:
        if m is None:
            return None
        return message_json(m, self.rt.store.get_conversation(m.conversation_id))

    # --- characters ---
    async def characters(self, request: Request) -> Response:
        base = str(request.base_url)
        found = await run_in_threadpool(self.rt.store.list_characters)
        return JSONResponse({"data": [character_json(c, base) for c in found]})

    async def avatar(self, request: Request) -> Response:
        character_id = _id(request, "id", "character")
        c = await run_in_threadpool(self._character, character_id)
        path = avatar_path(c.avatar) if c.avatar else None  # only files in data/avatars
        if path is None or not path.is_file():
            raise ApiError(404, f"The character {c.name!r} has no picture.")
        media = "image/png" if path.suffix.lower() == ".png" else "application/octet-stream"
        if path.suffix.lower() in (".jpg", ".jpeg"):
            media = "image/jpeg"
        elif path.suffix.lower() == ".webp":
            media = "image/webp"
        return FileResponse(path, media_type=media, headers={"cache-control": "no-cache"})

    async def character_chats(self, request: Request) -> Response:
        character_id = _id(request, "id", "character")
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
            raise ApiError(400, f"`limit` must be a whole number from 1 to {MAX_LIST}.", "limit")

        def work() -> list[dict[str, Any]]:
            self._character(character_id)
            convs = self.rt.store.list_conversations(character_id, limit=int(raw))
            return [chat_json(c) for c in convs]

        return JSONResponse({"data": await run_in_threadpool(work)})

    async def new_chat(self, request: Request) -> Response:
        character_id = _id(request, "id", "character")
        body = await _optional_json(request)
        _fields(body, {"title"})
        title = body.get("title")
        if title is not None and not isinstance(title, str):
            raise ApiError(400, "`title` must be a string.", param="title")

        def work() -> dict[str, Any]:
            self._character(character_id)
            conv = self.svc.new_chat(character_id, title=title)
            messages = self.rt.store.list_messages(conv.id)  # type: ignore[arg-type]
            return {
                **chat_json(conv, len(messages)),
                "greeting": message_json(messages[0], conv) if messages else None,
            }

        return JSONResponse(await run_in_threadpool(work), status_code=201)

    # --- chats ---
    async def chat(self, request: Request) -> Response:
        chat_id = _id(request, "id", "chat")

        def work() -> dict[str, Any]:
            conv = self._chat(chat_id)
            return chat_json(conv, len(self.rt.store.list_messages(chat_id)))

        return JSONResponse(await run_in_threadpool(work))

    async def delete_chat(self, request: Request) -> Response:
        chat_id = _id(request, "id", "chat")

        await run_in_threadpool(self.svc.delete_chat, chat_id)
        return JSONResponse({"id": chat_id, "deleted": True})

    async def messages(self, request: Request) -> Response:
        chat_id = _id(request, "id", "chat")

        def work() -> list[dict[str, Any]]:
            conv = self._chat(chat_id)
            return [message_json(m, conv) for m in self.rt.store.list_messages(chat_id)]

        return JSONResponse({"data": await run_in_threadpool(work)})

    async def post_message(self, request: Request) -> Response:
        chat_id = _id(request, "id", "chat")
        body = await read_json(request)
        _fields(body, {"text", "name", "reply", "stream", "max_tokens", "seed"})
        text = _text(body)
        name = body.get("name", "")
        if not isinstance(name, str):
            raise ApiError(400, "`name` must be a string.", param="name")
        reply = _bool(body, "reply", True)
        stream = _bool(body, "stream", False)
        if not reply and stream:
            raise ApiError(400, "`stream` needs `reply`: there is no reply to stream.", "stream")
        params = self._overrides(body)

        def work() -> tuple[dict[str, Any], Turn | None]:
            self._settled(chat_id)
            conv = self._chat(chat_id)
            if reply:
                self.rt.require_engine()  # refused before the message is stored, not after
            msg = self.svc.send(chat_id, text, name=name)
            turn = self._turn(chat_id, Op.NEW, params) if reply else None
            return message_json(msg, conv), turn

        if not reply:
            sent, _ = await run_in_threadpool(work)
            return JSONResponse({"message": sent}, status_code=201)
        (sent, turn), release = await self._admitted(work)
        assert turn is not None
        return await self._answer(request, turn, {"user_message": sent}, stream, release)

    async def regenerate(self, request: Request) -> Response:
        return await self._redo(request, Op.REGEN)

    async def continue_(self, request: Request) -> Response:
        return await self._redo(request, Op.CONTINUE)

    async def _redo(self, request: Request, op: Op) -> Response:
        chat_id = _id(request, "id", "chat")
        body = await _optional_json(request)
        _fields(body, {"message_id", "stream", "max_tokens", "seed"})
        stream = _bool(body, "stream", False)
        target_id = _int(body, "message_id", 0, MAX_ID)
        params = self._overrides(body)

        def work() -> Turn:
            self._settled(chat_id)
            last = self.svc.redo_target(chat_id, op, target_id)
            self.rt.require_engine()
            return self._turn(chat_id, op, params, target_id=last.id)

        turn, release = await self._admitted(work)
        return await self._answer(request, turn, {}, stream, release)

    async def reply(self, request: Request) -> Response:
        chat_id = _id(request, "id", "chat")
        body = await _optional_json(request)
        _fields(body, {"role", "name", "stream", "max_tokens", "seed"})
        role = body.get("role", Role.CHAR)
        if role not in ROLES:
            raise ApiError(400, f"`role` must be one of {', '.join(ROLES)}.", param="role")
        name = body.get("name", "")
        if not isinstance(name, str):
            raise ApiError(400, "`name` must be a string.", param="name")
        stream = _bool(body, "stream", False)
        params = self._overrides(body)

        def work() -> Turn:
            self._settled(chat_id)
            self._chat(chat_id)
            self.rt.require_engine()
            return self._turn(chat_id, Op.NEW, params, role=role, name=name.strip())

        turn, release = await self._admitted(work)
        return await self._answer(request, turn, {}, stream, release)

    # --- messages ---
    async def edit(self, request: Request) -> Response:
        message_id = _id(request, "id", "message")
        body = await read_json(request)
        _fields(body, {"text"})
        text = _text(body)

        def work() -> dict[str, Any] | None:
            self._settled(self._message_chat(message_id))
            return self._message_out(self.svc.edit(message_id, text))

        return JSONResponse({"message": await run_in_threadpool(work)})

    async def choose(self, request: Request) -> Response:
        message_id = _id(request, "id", "message")
        raw = request.path_params["index"]
        if not raw.isascii() or not raw.isdigit():
            raise ApiError(400, f"The version must be a number from 0, not {raw!r}.", "index")
        index = int(raw)

        def work() -> dict[str, Any] | None:
            self._settled(self._message_chat(message_id))
            return self._message_out(self.svc.choose_version(message_id, index))

        return JSONResponse({"message": await run_in_threadpool(work)})

    async def remove_message(self, request: Request) -> Response:
        message_id = _id(request, "id", "message")

        def work() -> None:
            self._settled(self._message_chat(message_id))
            self.svc.delete(message_id)

        await run_in_threadpool(work)
        return JSONResponse({"id": message_id, "deleted": True})

    # --- replies ---
    async def _admitted(self, work: Callable[[], _T]) -> tuple[_T, Callable[[], None]]:
        """`work` (which stores what the reply needs and starts it) run in the thread pool once
        the reply is counted in (a 429 before anything is stored); the count's release, for
        when the reply is over. A `work` that fails is counted out at once."""
        release = self.admission.admit()
        try:
            return await run_in_threadpool(work), release
        except BaseException:
            release()
            raise

    def _overrides(self, body: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        max_tokens = _int(body, "max_tokens", 1, MAX_REPLY_TOKENS)
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        seed = _int(body, "seed", 0, 2**63 - 1)
        if seed is not None:
            out["seed"] = seed
        return out

    def _turn(
        self,
        chat_id: int,
        op: Op,
        overrides: dict[str, int],
        role: Role | str = Role.CHAR,
        name: str = "",
        target_id: int | None = None,
    ) -> Turn:
        params = self.svc.params(self._chat(chat_id), **overrides) if overrides else None
        turn = self.svc.reply(chat_id, op, role=role, name=name, target_id=target_id, params=params)
        with self._turns_lock:
            self._turns.setdefault(chat_id, []).append(turn)
        return turn

    def _finished(self, turn: Turn) -> dict[str, Any]:
        res = turn.result
        out: dict[str, Any] = {
            "message": self._message_out(turn.message),
            "stop_reason": res.stop_reason if res is not None else "cancel",
        }
        if res is not None:
            out["usage"] = {
                "prompt_tokens": res.prompt_tokens,
                "cached_tokens": res.prompt_tokens - res.fed_tokens,
                "completion_tokens": res.new_tokens,
            }
        if turn.error is not None:
            out["error"] = ApiError(500, f"The reply could not be saved: {turn.error}").body()[
                "error"
            ]
        return out

    async def _answer(
        self,
        request: Request,
        turn: Turn,
        first: dict[str, Any],
        stream: bool,
        release: Callable[[], None],
    ) -> Response:
        """The reply, streamed or whole; `release` (its admission) once it is over."""
        if stream:  # the client's disconnect stops the reply (stream.py); the Turn saves it
            pieces = ThreadedPieces(turn, cancel=turn.cancel, name="api-reply")

            def close() -> None:
                pieces.stop()
                release()

            return EventStream(self._events(turn, pieces, first), on_close=close, done=False)
        try:
            await run_unless_disconnected(request.receive, turn.consume, turn.cancel.set)
        finally:
            release()
        out = await run_in_threadpool(self._finished, turn)
        if "error" in out:
            return JSONResponse({**first, **out}, status_code=500)
        return JSONResponse({**first, **out})

    async def _events(
        self, turn: Turn, pieces: ThreadedPieces, first: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        if first:
            yield first
        async for piece in pieces:
            yield {"delta": piece}
        await pieces.wait_done(30.0)  # the reply is saved
        yield {"done": True, **await run_in_threadpool(self._finished, turn)}


async def _optional_json(request: Request) -> dict[str, Any]:
    """The body's JSON object; no body is {} (for POSTs whose fields are all optional)."""
    headers = request.headers
    length = headers.get("content-length")
    if length == "0" or (length is None and "transfer-encoding" not in headers):
        return {}
    return await read_json(request)


def routes(config: ApiConfig) -> list[Route]:
    api = NativeApi(config)
    return [
        Route("/api/characters", api.characters, methods=["GET"]),
        Route("/api/characters/{id}/avatar", api.avatar, methods=["GET"]),
        Route("/api/characters/{id}/chats", api.character_chats, methods=["GET"]),
        Route("/api/characters/{id}/chats", api.new_chat, methods=["POST"]),
        Route("/api/chats/{id}", api.chat, methods=["GET"]),
        Route("/api/chats/{id}", api.delete_chat, methods=["DELETE"]),
        Route("/api/chats/{id}/messages", api.messages, methods=["GET"]),
        Route("/api/chats/{id}/messages", api.post_message, methods=["POST"]),
        Route("/api/chats/{id}/regenerate", api.regenerate, methods=["POST"]),
        Route("/api/chats/{id}/continue", api.continue_, methods=["POST"]),
        Route("/api/chats/{id}/reply", api.reply, methods=["POST"]),
        Route("/api/messages/{id}", api.edit, methods=["PUT"]),
        Route("/api/messages/{id}", api.remove_message, methods=["DELETE"]),
        Route("/api/messages/{id}/versions/{index}", api.choose, methods=["POST"]),
    ]
