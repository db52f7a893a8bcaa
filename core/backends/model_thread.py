"""The one thread that runs every model call.

The models compute with OpenMP thread teams (llama.cpp's ggml and torch), and a team belongs to
the OS thread that calls in. Two browser sessions calling from their own threads made two teams
whose idle workers spin while the other team works: on two cores both chats together got 0.6 of
one chat's speed. One calling thread keeps one team (measured: 1.0, see bench/two_sessions.py).
The queue also serialises the calls, which keeps the states of concurrent chats apart.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

_T = TypeVar("_T")
_jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = (
    queue.SimpleQueue()
)
_closed = False  # set at exit (`_drain`): nothing more is queued


def _run(fn: Callable[..., Any], args: tuple[Any, ...], fut: Future[Any]) -> None:
    if fut.set_running_or_notify_cancel():
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the caller, raised there
            fut.set_exception(e)


def _model_loop() -> None:
    while True:
        _run(*_jobs.get())


def run_pending() -> None:
    """On the model thread: run the jobs waiting in its queue now. A long job (the batch loop of
    core/engine/batch.py) calls this between its steps, so a plain call waits one step at most."""
    assert threading.current_thread() is _model_thread
    while True:
        try:
            job = _jobs.get_nowait()
        except queue.Empty:
            return
        _run(*job)


def submit(fn: Callable[..., _T], *args: Any) -> Future[_T]:
    """Queue `fn(*args)` for the model thread without waiting for it. While the interpreter
    shuts down nothing is queued (the future fails at once): see `_drain`."""
    fut: Future[_T] = Future()
    if _closed or sys.is_finalizing():
        fut.set_exception(RuntimeError("the process is exiting: no more model calls"))
        return fut
    _jobs.put((fn, args, fut))
    return fut


def is_model_thread() -> bool:
    return threading.current_thread() is _model_thread


# A daemon thread that lives as long as the process: it is never joined or torn down, so the
# thread-local pools of torch and OpenMP that belong to it are never destroyed under it at exit.
_model_thread = threading.Thread(target=_model_loop, name="model", daemon=True)
_model_thread.start()


def on_model_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run `fn(*args)` on the model thread and wait for it (at once when already there)."""
    if threading.current_thread() is _model_thread:
        return fn(*args)
    return submit(fn, *args).result()


@atexit.register
def _drain() -> None:
    """At exit, let the model thread finish what is queued (a reply's checkpoint, say), then
    queue nothing more. A model call still running when the interpreter shuts down (one queued
    by a generator that the final collection closes, for instance) is torn down inside torch's
    C++ frames, which aborts the process ("terminate called without an active exception")."""
    global _closed
    if _model_thread.is_alive() and not is_model_thread():
        try:
            submit(lambda: None).result(timeout=60)
        except Exception:  # a stuck model: exit anyway
            pass
    _closed = True


class OnModelThread:
    """A back end whose model and state calls all run on the model thread (tokenizing does not
    need it). Torch work in any other thread leaves that thread an OpenMP team of its own, and
    from then on the model's parallel regions were 2.7 times slower (measured: a 600-token
    prefill of the 0.1B shape took 1.2 s with one team, 3.2-4.2 s once a second thread had
    cloned a state)."""

    _ROUTED = frozenset(
        (
            "forward",
            "advance",
            "initial_state",
            "copy_state",
            "state_to_bytes",
            "state_from_bytes",
            "state_with_wkv",
            "prefix_state",
        )
    )

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in self._ROUTED and callable(attr):
            return lambda *args: on_model_thread(attr, *args)
        return attr
