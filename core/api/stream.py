"""Blocking generations served to asynchronous clients: server-sent events, disconnects, errors.

The engine's replies (`Engine.reply` / `Engine.complete`) and the chat service's turns
(`core.chat.Turn`) are blocking iterators of text pieces. Starlette wants async iterators. So:

    pieces = ThreadedPieces(turn, cancel=turn.cancel)   # starts iterating in its own thread
    async for piece in pieces: ...                      # read on the event loop
    pieces.stop()                                       # the client went away: cancel, close

    return EventStream(events(), on_close=pieces.stop)  # `data: <json>` events, then [DONE]

`EventStream` listens for the client's disconnect itself (whatever ASGI spec the server
speaks) and calls `on_close` at once: the engine sees the cancel event before its next token
and ends with stop reason "cancel"; the worker thread then closes the iterator, so a Turn's
reply is saved with what was said. An exception while streaming becomes one last event
`data: {"error": {...}}` (SillyTavern and the openai client both show it), then the stream ends
normally: never a half-open connection, never a traceback to the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core.api.errors import ApiError
from core.errors import AppError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # a reverse proxy must not hold the events back
}


def sse(data: Any) -> bytes:
    """One server-sent event: `data: <json>` and a blank line (a str is sent as it is)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def error_body(exc: BaseException) -> dict[str, Any]:
    """An exception in OpenAI's error shape: ApiError as it says, AppError (the app's own
    messages, written for users) as a server error with its message, anything else as a
    server error that names only its kind (the traceback goes to the log)."""
    if isinstance(exc, ApiError):
        return exc.body()
    if isinstance(exc, AppError):
        message = str(exc) or exc.__class__.__name__
    else:
        message = f"The generation failed ({exc.__class__.__name__}); the server's log has details."
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ThreadedPieces:
    """A blocking iterator read asynchronously: a worker thread (started at once) iterates
    `source` and hands each item to the event loop. Make it inside the event loop (an async
    route), since it hands items to the running loop.

    `stop()` (any thread, any time, idempotent): sets `cancel`, so an engine reply ends before
    its next token, and the worker stops reading and calls `source.close()` (in the worker, the
    only thread that ever touches `source`), so a Turn saves its reply. `done` is set when the
    worker has finished with `source` (ended, failed or closed). An exception raised by the
    source is raised again by the async iteration.
    """

    def __init__(
        self,
        source: Iterable[Any],
        cancel: threading.Event | None = None,
        name: str = "api-stream",
    ) -> None:
        self._source = source
        self.cancel = cancel if cancel is not None else threading.Event()
        self.done = threading.Event()
        self._stopping = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutdown): nobody reads
            self._stopping.set()

    def _run(self) -> None:
        it: Iterator[Any] | None = None
        try:
            if not self._stopping.is_set():
                it = iter(self._source)
                for item in it:
                    if self._stopping.is_set():
                        break
                    self._put(item)
                    if self._stopping.is_set():
                        break
            self._put(_END)
        except BaseException as e:  # handed to the reader, who says it to the client
            if not isinstance(e, Exception):
                log.warning("stream source ended by %r", e)
            self._put(_Failed(e))
        finally:
            self._close_source(it)
            self.done.set()

    def _close_source(self, it: Iterator[Any] | None) -> None:
        for obj in (self._source, it):
            close = getattr(obj, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing must not hide what happened before
                    log.exception("closing a stream source failed")
                return  # the source's own close closes its iterator too

    def stop(self) -> None:
        """The reader goes away: end the generation now (see the class)."""
        self.cancel.set()
        self._stopping.set()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._finished = True
            raise item.exc
        return item

    async def wait_done(self, timeout: float | None = None) -> bool:
        """Wait (off the event loop) until the worker has finished with the source."""
        return await asyncio.to_thread(self.done.wait, timeout)


async def merge(
    streams: list[ThreadedPieces], ends: bool = False
) -> AsyncIterator[tuple[int, Any]]:
    """Items of several streams as they come: (index of the stream, item); with `ends`, also
    (index, None) when that stream has ended. An exception of any stream is raised after the
    others are stopped."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, s: ThreadedPieces) -> None:
        try:
            async for item in s:
                await queue.put((i, item))
            await queue.put((i, _END))
        except Exception as e:
            await queue.put((i, _Failed(e)))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    left = len(streams)
    try:
        while left:
            i, item = await queue.get()
            if item is _END:
                left -= 1
                if ends:
                    yield i, None
            elif isinstance(item, _Failed):
                raise item.exc
            else:
                yield i, item
    finally:
        for s in streams:
            s.stop()
        for t in tasks:
            t.cancel()


async def until_disconnect(receive: Receive) -> None:
    """Returns when the client has gone away (http.disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(
    receive: Receive, work: Callable[[], Any], on_disconnect: Callable[[], None]
) -> Any:
    """Run the blocking `work` in a thread; if the client disconnects first, call
    `on_disconnect` (which should make `work` end soon), wait for `work`, and return its result.
    For answers that are not streamed: a client that gives up stops its generation too."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    watch = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            on_disconnect()
        return await task
    finally:
        watch.cancel()


class EventStream(Response):
    """A `text/event-stream` response: each item of `events` (a dict, a str, or bytes already
    framed) becomes one `data:` event, then `data: [DONE]` when `done`. The client's disconnect
    calls `on_close` at once (and stops reading `events`); so does the end of the stream, however
    it ends. An exception from `events` becomes a final error event."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[Any],
        on_close: Callable[[], None] | None = None,
        done: bool = True,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.done = done
        self.status_code = status_code
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def _produce(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for item in self.events:
                body = item if isinstance(item, bytes) else sse(item)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:
            raise  # the client is gone: nobody to tell
        except Exception as e:
            if not isinstance(e, AppError | ApiError):
                log.exception("an API stream failed")
            await send(
                {"type": "http.response.body", "body": sse(error_body(e)), "more_body": True}
            )
        if self.done:
            await send({"type": "http.response.body", "body": DONE, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        produce = asyncio.ensure_future(self._produce(send))
        watch = asyncio.ensure_future(until_disconnect(receive))
        try:
            await asyncio.wait({produce, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._close()  # at once: the generation stops before its next token
            for t in (produce, watch):
                if not t.done():
                    t.cancel()
            for t in (produce, watch):
                try:
                    await t
                except (asyncio.CancelledError, OSError):
                    pass  # cancelled by us, or the client went away while we wrote
                except Exception:
                    log.exception("an API stream failed")
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing an API stream failed")

    def _close(self) -> None:
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception:
                log.exception("stopping an API stream failed")
