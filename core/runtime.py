"""The process's store and model, shared by every front end (the pages and the API).

    rt = runtime.current()        # the runtime of this data directory ($RP_DATA_DIR, $RP_DB_URL)
    rt.store                      # the Store (opened once: checked, seeded, backed up daily)
    rt.start_loading()            # load the current model choice in the background
    rt.engine()                   # the loaded Engine, or None (never loads, never waits)
    rt.state()                    # "ready", "loading", "failed", "unloaded" or "idle"
    rt.wait_engine()              # for a reply: the engine, once a load in progress ends
    rt.load()                     # load now (raises ModelError), or return the loaded one
    rt.require_engine()           # for a reply: the engine, or ModelUnavailable saying why not
    rt.retry()                    # forget an unload or a failure, and load in the background
    rt.settings                   # the AppSettings (core/settings.py): typed, checked, applied
    rt.password_policy(address)   # which password is in force and what it guards

The server starts loading at once (`preload_lifespan`, st.App's lifespan in Home.py), and every
page run asks again (`start_loading` returns at once when there is nothing to do), so pages draw
while the model loads and only a reply waits for it.
    rt.chat                       # the ChatService: every chat operation of every front end

One model is loaded per process, whatever the number of data directories (tests open several):
loading another releases the first. No streamlit import here: pages wrap these calls in their
own messages and spinners.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.auth import PasswordPolicy, password_policy
from core.cli_args import cli_args, resolve_model_path
from core.config import data_dir, default_url, state_dir
from core.errors import AppError, ModelError, ModelUnavailable
from core.settings import AppSettings, ModelChoice

if TYPE_CHECKING:
    from core.chat import ChatService
    from core.engine import Engine
    from core.store import Store

log = logging.getLogger(__name__)

UNLOADED = "The model was unloaded in Settings. Load it there, then try again."
EngineKey = tuple[str, str, str, bool, bool, str]  # a choice's key and the data directory


@dataclass
class _Loaded:
    """The one model of the process. `lock` guards the two fields and is held only to read or
    swap them; `loading` is held for a whole load, so that loads run one at a time while
    `Runtime.engine()` answers at once."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    loading: threading.Lock = field(default_factory=threading.Lock)
    key: EngineKey | None = None
    engine: Engine | None = None


_MODEL = _Loaded()


class Runtime:
    """The store and the model of one data directory, and what the user chose for them."""

    def __init__(self, data: Path, db_url: str = "") -> None:
        self.data = data
        self.db_url = db_url or default_url(data)  # (no store import)
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self.override: ModelChoice | None = None  # chosen in Settings (or the API) this run
        self.unloaded = False  # the user unloaded the model on purpose
        self.failed: dict[EngineKey, str] = {}  # key -> why it could not be loaded
        self._loading: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._chat: ChatService | None = None
        self.settings = AppSettings(lambda: self.store, self.engine)
        self.started = time.monotonic()

    # ------------------------------------------------------------------ the store
    @property
    def store(self) -> Store:
        """The Store; raises StoreError (naming the file) when the database cannot be opened."""
        with self._store_lock:
            if self._store is None:
                from core.roleplay.cards import open_app_store
                from core.store.backup import check_database, daily_backup

                check_database(self.db_url)  # damage is named at start, not met later
                opened = open_app_store(self.db_url)
                daily_backup(self.db_url)
                try:  # what was removed over a day ago (kept for an undo) goes for good now,
                    opened.compact_removals()  # after the day's backup, which still holds it
                except AppError:
                    log.warning("compacting removed messages", exc_info=True)
                self._store = opened
            return self._store

    def close_store(self) -> None:
        """Close the store (before its file is replaced); the next use opens it again."""
        with self._store_lock:
            if self._store is not None:
                self._store.close()
            self._store = None

    def password_policy(self, listen_address: str | None) -> PasswordPolicy:
        """The password rule (core.auth.password_policy) for a server listening on
        `listen_address`: $RP_PASSWORD, else the password saved in Settings. Raises the store's
        AppError when the saved one is needed and cannot be read: callers stay shut."""
        env = os.environ.get("RP_PASSWORD", "")
        saved = "" if env else self.settings.password_hash()
        return password_policy(env, saved, listen_address)

    @property
    def chat(self) -> ChatService:
        from core.chat import ChatService

        if self._chat is None:
            self._chat = ChatService(lambda: self.store, self.engine)
        return self._chat

    # ------------------------------------------------------------------ the model choice
    def choice(self) -> ModelChoice:
        """The model to use: the one chosen in Settings this run, else the flags after `--`,
        else the saved setting, else $RP_MODEL, else the embedded default."""
        if self.override is not None:
            return self.override
        cli, _ = cli_args()
        base = self.settings.model()
        if base is None:
            env = os.environ.get("RP_MODEL", "")
            if env.startswith(("http://", "https://")):  # a model server: RP_MODEL_KEY, _NAME
                base = ModelChoice.server(
                    env, os.environ.get("RP_MODEL_KEY", ""), os.environ.get("RP_MODEL_NAME", "")
                )
            else:
                backend = os.environ.get("RP_BACKEND", "auto") or "auto"
                base = ModelChoice(path=env, backend=backend)
        if base.remote:  # a model server, unless flags after `--` name a model file
            if not cli.any_model_flag:
                return base
            base = ModelChoice()
        if cli.any_model_flag:
            return ModelChoice(
                path=resolve_model_path(cli.model) or base.path if cli.model else base.path,
                backend=cli.backend or base.backend,
                strategy=cli.strategy or base.strategy,
                cuda_on=base.cuda_on if cli.cuda_on is None else cli.cuda_on,
                jit_on=base.jit_on if cli.jit_on is None else cli.jit_on,
            )
        return base

    def choose(self, choice: ModelChoice) -> None:
        """Make `choice` the model of this run and save it as the setting."""
        self.override = choice
        self.unloaded = False
        self.failed.pop(self._key(choice), None)
        self.settings.set_model(choice)

    def _key(self, choice: ModelChoice) -> EngineKey:
        return (*choice.key, str(self.data))

    # ------------------------------------------------------------------ the model
    def engine(self) -> Engine | None:
        """The engine if the current choice is loaded, else None. Never loads."""
        if self.unloaded:
            return None
        key = self._key(self.choice())
        with _MODEL.lock:
            return _MODEL.engine if _MODEL.key == key else None

    def failure(self) -> str | None:
        """Why the current choice could not be loaded, if it was tried and failed."""
        return self.failed.get(self._key(self.choice()))

    @property
    def loading(self) -> bool:
        thread = self._loading
        return thread is not None and thread.is_alive()

    def load(self, choice: ModelChoice | None = None) -> Engine:
        """The engine of `choice` (default: the current one), loaded now if it is not; raises
        ModelError (or another AppError) when it cannot be. Loading another model releases the
        one loaded before. Loads run one at a time; `engine()` never waits for one."""
        choice = choice or self.choice()
        key = self._key(choice)
        self.unloaded = False
        with _MODEL.loading:
            with _MODEL.lock:
                if _MODEL.key == key and _MODEL.engine is not None:
                    return _MODEL.engine
                _release()
            try:
                engine = self._open(choice)
            except AppError as e:
                self.failed[key] = str(e)
                raise
            except Exception as e:  # a back end failing in an unexpected way: said, not raised raw
                self.failed[key] = str(e) or e.__class__.__name__
                raise ModelError(self.failed[key]) from e
            self.failed.pop(key, None)
            with _MODEL.lock:
                _MODEL.key, _MODEL.engine = key, engine
            return engine

    def start_loading(self) -> None:
        """Load the current choice in a background thread (pages render meanwhile and say the
        model is loading), unless it is loaded, loading, unloaded on purpose or failed. Never
        waits: the store is opened and the choice read on that thread when they are not yet
        (the server calls this at start, before any page)."""
        with self._start_lock:
            if self.unloaded or self.loading:
                return
            if self._store is not None and (self.engine() is not None or self.failure()):
                return

            def run() -> None:
                try:
                    if self.engine() is not None or self.failure():
                        return
                    self.load()
                except AppError:
                    pass  # kept in self.failed (or the store's own error): the pages say why
                except Exception:  # never a traceback on a thread nobody reads
                    pass
                if self.unloaded:  # unloaded while it loaded: it stays unloaded
                    self.unload()

            # not a daemon: a load cut off by interpreter exit inside torch aborts the process
            self._loading = threading.Thread(target=run, name="model-load", daemon=False)
            self._loading.start()

    def retry(self) -> None:
        """Forget an unload on purpose and the failures of past loads (the current choice's
        among them), and load the current choice in the background (a Load or retry button)."""
        self.unloaded = False
        self.failed.clear()
        self.start_loading()

    def wait_loaded(self, timeout: float | None = None) -> Engine | None:
        thread = self._loading
        if thread is not None:
            thread.join(timeout)
        return self.engine()

    def wait_engine(self, timeout: float | None = None) -> Engine | None:
        """The engine for a reply: the loaded one, or the one being loaded once it is ready
        (started now when nothing loads it yet); None when it is unloaded or failed."""
        self.start_loading()
        return self.wait_loaded(timeout)

    def require_engine(self) -> Engine:
        """The engine for a reply: the loaded one, else the current choice loaded now (waiting
        for a load in progress, or starting one). ModelUnavailable when there is none: code
        "model_unloaded" when the user unloaded it on purpose, "model_not_loaded" when the
        choice failed to load (before, and then it is not tried again until `retry`, or now)."""
        engine = self.engine()
        if engine is not None:
            return engine
        if self.unloaded:
            raise ModelUnavailable(UNLOADED, "model_unloaded")
        failure = self.failure()
        if failure:
            raise ModelUnavailable(_could_not_load(failure), "model_not_loaded")
        engine = self.wait_engine()
        if engine is not None:
            return engine
        if self.unloaded:  # unloaded while it loaded
            raise ModelUnavailable(UNLOADED, "model_unloaded")
        raise ModelUnavailable(_could_not_load(self.failure()), "model_not_loaded")

    def state(self) -> str:
        """ "ready", "loading", "failed" (see failure()), "unloaded" (on purpose) or "idle"."""
        if self.engine() is not None:
            return "ready"
        if self.loading:
            return "loading"
        if self.unloaded:
            return "unloaded"
        return "failed" if self.failure() else "idle"

    def unload(self) -> None:
        """Release the model (it stays unloaded: no page loads it again until asked to)."""
        self.unloaded = True
        with _MODEL.lock:
            if _MODEL.key is not None and _MODEL.key[-1] == str(self.data):
                _release()

    def _open(self, choice: ModelChoice) -> Engine:
        from core.backends.loader import load_backend
        from core.engine import Engine

        if choice.remote:  # a model server: reached, and its key accepted, or a ModelError
            from core.engine.remote import RemoteEngine

            remote = RemoteEngine(
                choice.url, choice.api_key, choice.remote_model, choice.timeout_s
            ).connect()
            return remote  # type: ignore[return-value]  # an Engine's surface (see its module)

        backend = load_backend(
            choice.path or None,
            backend=choice.backend,
            strategy=choice.strategy,
            cuda_on=choice.cuda_on,
            jit_on=choice.jit_on,
            n_threads=self.settings.threads(),
        )
        folder, shared = state_dir(self.data)
        engine = Engine(backend, cache_dir=folder)
        if shared:  # $RP_STATE_DIR: other servers resume this one's chats from it
            engine.share_checkpoints()
        engine.set_cache_budget(*self.settings.cache_budget())
        return engine


@asynccontextmanager
async def preload_lifespan(
    _app: object, after_load: Callable[[], object] | None = None
) -> AsyncIterator[None]:
    """st.App's lifespan: when the server starts, open the store and load the model in the
    background, so the first page finds both (or at least draws at once and says the model is
    loading) instead of waiting for them. `after_load` runs on a thread once the load has ended
    (Home.py builds the API there). The objects of the start are frozen out of the garbage
    collector's sight (see _after_load)."""
    gc.freeze()  # what the server's imports made
    rt = current()
    rt.start_loading()
    threading.Thread(
        target=_after_load, args=(rt, after_load), name="after-load", daemon=True
    ).start()
    yield


def _after_load(rt: Runtime, then: Callable[[], object] | None) -> None:
    """Once the load has ended: `then`, and the freeze. Streamlit runs a full collection after
    every page run, holding the GIL (the server's too): scanning the ~150,000 objects made by the
    server's imports and the loading thread's (Streamlit, SQLAlchemy, Alembic, llama.cpp, the
    API, the model) took 0.1 to 0.3 s a run. They live as long as the process, so they are
    frozen (gc.freeze) and the collections skip them. What the load left as garbage is collected
    first: nothing dead is frozen."""
    rt.wait_loaded()
    if then is not None:
        try:
            then()
        except Exception:  # whoever needs it next will meet the error again, and say it
            log.warning("after the model's load", exc_info=True)
    gc.collect()
    gc.freeze()


def _could_not_load(failure: str | None) -> str:
    reason = f" {failure}" if failure else ""
    return f"The model could not be loaded:{reason} Choose another in Settings."


def _release() -> None:
    """Close the process's model (with _MODEL.lock held)."""
    engine, _MODEL.engine, _MODEL.key = _MODEL.engine, None, None
    if engine is not None:
        try:
            engine.close()
        except Exception:
            pass


_RUNTIMES: dict[tuple[str, str], Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def current() -> Runtime:
    """The runtime of the data directory and database this process is set to."""
    data = data_dir()
    db_url = os.environ.get("RP_DB_URL", "")
    key = (str(data), db_url)
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = Runtime(data, db_url)
        return rt


def reset() -> None:
    """Forget every runtime and release the model (tests: a fresh process per test)."""
    with _RUNTIMES_LOCK:
        runtimes = list(_RUNTIMES.values())
        _RUNTIMES.clear()
    for rt in runtimes:
        thread = rt._loading
        if thread is not None:
            thread.join()
        try:
            rt.close_store()
        except AppError:
            pass
    with _MODEL.lock:
        _release()
