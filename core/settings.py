"""The app's settings, in one place: what the pages and the API read and change.

    cfg = runtime.current().settings   # an AppSettings over the runtime's store and model
    cfg.user_name(); cfg.set_user("Kai", "A wandering cartographer.")
    cfg.set_threads(2)                 # saved, and applied to the loaded model at once

Getters give the default when a setting is unset, of the wrong type, or cannot be read (the
page that next uses the store says why), except `password_hash`, which raises: the password
gate stays shut when it cannot read the password. Setters check their value (SettingError
saying why), save it, and where the setting applies to the loaded model (threads, the state
cache's budgets) apply it in the same call. API keys and allowed origins are core/access.py's
rules, reached from here.

Imports nothing heavy at its top: the runtime, which Home.py imports before the server
answers, builds one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.auth import hash_password
from core.contracts import CONTINUE_NEW_VERSION as _CONTINUE_NEW_VERSION
from core.errors import AppError, StoreError
from core.i18n import LANGS
from core.models.hub import DEFAULT_HUB

if TYPE_CHECKING:
    from core.engine import Engine
    from core.engine.engine import DecodeSpeed
    from core.store import Store

# the settings' keys in the store ("api_keys" and "api_cors_origins": core/access.py)
USER_NAME = "user_name"
USER_PERSONA = "user_persona"
LANGUAGE = "language"
DEFAULT_PRESET = "default_preset"
PASSWORD = "password"
MODEL = "model"
THREADS = "threads"
CACHE_MEM_MB = "cache_mem_mb"
CACHE_DISK_MB = "cache_disk_mb"
HUB_ENDPOINT = "hub_endpoint"  # where model downloads come from ("" = $HF_ENDPOINT, else the Hub)
MEM_BANDWIDTH = "memory_bandwidth"  # bytes/s, measured once (core/models/machine.py)
GPU_BANDWIDTH = "gpu_bandwidth"  # bytes/s of the GPU's memory, measured once where there is one
# "continue" adds a new version instead of extending the one shown (the key is the chat
# service's too, hence its home in core.contracts)
CONTINUE_NEW_VERSION = _CONTINUE_NEW_VERSION
# where the API feeds a client's notes at a depth (core/api/mapping.py): "auto" (next to the
# reply for RWKV models, where the client put them for others), "reply", "depth"
API_NOTES = "api_notes_at_reply"
API_NOTES_CHOICES = ("auto", "reply", "depth")

STRATEGIES = (
    "cpu fp32",
    "cpu bf16",
    "cpu fp16",
    "cuda fp16",
    "cuda fp16i8",
    "cuda fp16i8 *10 -> cuda fp16",
    "cuda fp16i8 *10 -> cpu fp32",
    "cuda bf16",
)
DEFAULT_STRATEGY = "cpu fp32"
LOCAL_BACKENDS = ("auto", "rwkv", "llama")  # what runs a model file here
REMOTE = "remote"  # a model server (OpenAI-compatible): core/engine/remote.py
BACKENDS = (*LOCAL_BACKENDS, REMOTE)
DEFAULT_REMOTE_TIMEOUT_S = 300
DEFAULT_CACHE_MEM_MB = 512
DEFAULT_CACHE_DISK_MB = 2048
MAX_CACHE_MEM_MB = 1_000_000
MAX_CACHE_DISK_MB = 10_000_000
MAX_USER_NAME = 100  # as a character's name (core.store.validation.MAX_NAME)


class SettingError(AppError):
    """A value a setting cannot take; the message says why."""


@dataclass(frozen=True)
class ThreadsAdvice:
    """What Settings says beside the thread count (`AppSettings.threads_advice`)."""

    count: int  # the threads the model computes with (the setting, else the automatic count)
    cpus: int  # the CPUs this process may run on
    # the count reaches the CPUs in use: the thread team waits for its slowest member, and any
    # other busy program makes it collapse (issue 23: 14.4 -> 2.7 tok/s at 2 threads on a busy
    # 2-core machine)
    crowded: bool
    speed: DecodeSpeed | None  # how fast the last reply decoded (None: none yet)


@dataclass(frozen=True)
class ModelChoice:
    path: str = ""  # "" = the embedded default model
    backend: str = "auto"  # "auto" | "rwkv" | "llama" | "remote" (a model server)
    strategy: str = DEFAULT_STRATEGY  # rwkv strategy string
    cuda_on: bool = False  # RWKV_CUDA_ON (rwkv back end)
    jit_on: bool = True  # RWKV_JIT_ON (rwkv back end)
    # a model server (backend "remote"): its address, API key, model name ("" = the first it
    # lists) and how long it may say nothing before a reply gives up
    url: str = ""
    api_key: str = ""
    remote_model: str = ""
    timeout_s: float = DEFAULT_REMOTE_TIMEOUT_S

    @property
    def remote(self) -> bool:
        return self.backend == REMOTE

    @property
    def key(self) -> tuple[str, str, str, bool, bool]:
        if self.remote:  # another address, model, key or time-out is another "load"
            secret = hashlib.sha256(self.api_key.encode()).hexdigest()[:12]
            where = f"{self.url}\0{self.remote_model}\0{secret}"
            return (where, self.backend, str(self.timeout_s), False, False)
        return (self.path, self.backend, self.strategy, self.cuda_on, self.jit_on)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "backend": self.backend,
            "strategy": self.strategy,
            "cuda_on": self.cuda_on,
            "jit_on": self.jit_on,
        }
        if self.remote:
            out |= {
                "url": self.url,
                "api_key": self.api_key,
                "remote_model": self.remote_model,
                "timeout_s": self.timeout_s,
            }
        return out

    @classmethod
    def from_dict(cls, d: object) -> ModelChoice:
        d = d if isinstance(d, dict) else {}
        backend = d.get("backend") if d.get("backend") in BACKENDS else "auto"
        timeout = d.get("timeout_s")
        return cls(
            path=str(d.get("path") or ""),
            backend=backend,
            strategy=str(d.get("strategy") or DEFAULT_STRATEGY),
            cuda_on=bool(d.get("cuda_on", False)),
            jit_on=bool(d.get("jit_on", True)),
            url=str(d.get("url") or ""),
            api_key=str(d.get("api_key") or ""),
            remote_model=str(d.get("remote_model") or ""),
            timeout_s=float(timeout)
            if _number(timeout) and timeout > 0
            else DEFAULT_REMOTE_TIMEOUT_S,
        )

    @classmethod
    def server(
        cls, url: str, api_key: str = "", model: str = "", timeout_s: float = 0
    ) -> ModelChoice:
        """A model server (OpenAI-compatible) at `url`; SettingError when `url` is not an http(s)
        address or the time-out is not a positive number of seconds."""
        from urllib.parse import urlsplit

        url = (url or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingError(
                f"{url!r} is not the address of a model server: give one such as "
                "http://127.0.0.1:8080/v1."
            )
        if not _number(timeout_s) or timeout_s < 0 or timeout_s > 86400:
            raise SettingError(f"The time-out must be 1 to 86400 seconds, not {timeout_s!r}.")
        return cls(
            backend=REMOTE,
            url=url,
            api_key=(api_key or "").strip(),
            remote_model=(model or "").strip(),
            timeout_s=float(timeout_s) or DEFAULT_REMOTE_TIMEOUT_S,
        )

    def label(self, embedded: str = "embedded") -> str:
        if self.remote:
            from urllib.parse import urlsplit

            return f"{self.remote_model or 'model'} @ {urlsplit(self.url).netloc or self.url}"
        return Path(self.path).name if self.path else embedded


def check_endpoint(url: str) -> str:
    """`url` as an endpoint of the Hub's API (scheme and host, maybe a path; no trailing "/");
    SettingError when it is not an http(s) address."""
    from urllib.parse import urlsplit

    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SettingError(
            f"{url!r} is not a web address: give one such as {DEFAULT_HUB} or a mirror's "
            "(https://hf-mirror.com)."
        )
    return url


def _number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


class AppSettings:
    """The settings of one store. `engine()` gives the loaded model, or None (nothing to apply
    a change to: the next load reads the setting)."""

    def __init__(self, store: Callable[[], Store], engine: Callable[[], Engine | None]) -> None:
        self._store = store
        self._engine = engine

    def get(self, key: str, default: Any = None) -> Any:
        """A setting's value; `default` when it is unset (None) or cannot be read."""
        try:
            value = self._store().get_setting(key, default)
        except AppError:
            return default
        return default if value is None else value

    def _set(self, key: str, value: Any) -> None:
        self._store().set_setting(key, value)

    # ------------------------------------------------------------------ the user
    def user_name(self) -> str:
        value = self.get(USER_NAME, "")
        return value if isinstance(value, str) else ""

    def user_persona(self) -> str:
        value = self.get(USER_PERSONA, "")
        return value if isinstance(value, str) else ""

    def set_user(self, name: str, persona: str) -> None:
        """The user's name (outer spaces dropped; "" = the default name) and persona."""
        name, persona = name or "", persona or ""
        if not isinstance(name, str) or not isinstance(persona, str):
            raise SettingError("Your name and persona must be text.")
        name = name.strip()
        if len(name) > MAX_USER_NAME:
            raise SettingError(f"Your name is longer than {MAX_USER_NAME} characters.")
        self._set(USER_NAME, name)
        self._set(USER_PERSONA, persona)

    # ------------------------------------------------------------------ language and sampling
    def language(self) -> str | None:
        """The interface language of new browser sessions; None when none was chosen."""
        value = self.get(LANGUAGE)
        return value if value in LANGS else None

    def set_language(self, code: str) -> None:
        if code not in LANGS:
            raise SettingError(f"Unknown language {code!r}: choose one of {', '.join(LANGS)}.")
        self._set(LANGUAGE, code)

    def default_preset(self) -> str:
        """The sampling preset of new chats (a name of core.engine.sampler.PRESETS)."""
        from core.engine.sampler import DEFAULT_PRESET as DEFAULT
        from core.engine.sampler import known_preset

        return known_preset(self.get(DEFAULT_PRESET, DEFAULT))

    def set_default_preset(self, name: str) -> None:
        from core.engine.sampler import PRESETS

        if name not in PRESETS:
            raise SettingError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
        self._set(DEFAULT_PRESET, name)

    def continue_new_version(self) -> bool:
        """Whether "continue" adds a new version of the message (the app's old way) instead of
        extending the version shown (the default, as SillyTavern does)."""
        return self.get(CONTINUE_NEW_VERSION, False) is True

    def set_continue_new_version(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise SettingError("Say yes or no: whether continue adds a new version.")
        self._set(CONTINUE_NEW_VERSION, on)

    def api_notes(self) -> str:
        """Where the API feeds notes that a client puts at a depth (SillyTavern's Author's
        Note): one of API_NOTES_CHOICES."""
        v = self.get(API_NOTES, "auto")
        return v if v in API_NOTES_CHOICES else "auto"

    def set_api_notes(self, choice: str) -> None:
        if choice not in API_NOTES_CHOICES:
            raise SettingError(f"Choose one of {', '.join(API_NOTES_CHOICES)}, not {choice!r}.")
        self._set(API_NOTES, choice)

    def api_notes_at_reply(self, arch: str) -> bool:
        """Whether the API moves notes at a depth next to the reply for a model of `arch`:
        "auto" does for RWKV (a recurrent state would read the messages after a note that
        moves every turn again, each turn), not for other models."""
        choice = self.api_notes()
        return choice == "reply" or (choice == "auto" and arch.startswith("rwkv"))

    # ------------------------------------------------------------------ the password
    def password_hash(self) -> str:
        """The saved password's hash; "" when none is saved. Raises (the store's AppError) when
        the setting cannot be read: the gate stays shut (Runtime.password_policy)."""
        value = self._store().get_setting(PASSWORD, "")
        if value is None or isinstance(value, str):
            return value or ""
        # not what set_password writes: a damaged row, which may have held a password
        raise StoreError(
            f"The saved password is not text but {type(value).__name__}: the database is "
            "damaged. Restore a backup, or remove the password setting."
        )

    def has_password(self) -> bool:
        """A password is saved in Settings (False when it cannot be read)."""
        try:
            return bool(self.password_hash())
        except AppError:
            return False

    def set_password(self, password: str) -> None:
        """Save `password` (its hash: core.auth.hash_password), the app's from now on unless
        $RP_PASSWORD is set."""
        if not password:
            raise SettingError("The password is empty.")
        self._set(PASSWORD, hash_password(password))

    def remove_password(self) -> None:
        self._set(PASSWORD, "")

    # ------------------------------------------------------------------ the model
    def model(self) -> ModelChoice | None:
        """The model saved as the app's choice; None when none was saved."""
        value = self.get(MODEL)
        return ModelChoice.from_dict(value) if isinstance(value, dict) else None

    def set_model(self, choice: ModelChoice) -> None:
        if not isinstance(choice, ModelChoice) or choice.backend not in BACKENDS:
            raise SettingError(f"Not a model choice: {choice!r}.")
        self._set(MODEL, choice.to_dict())

    def threads(self) -> int | None:
        """The threads a model computes with; None: automatic (unset or 0)."""
        value = self.get(THREADS, 0)
        return value if isinstance(value, int) and value > 0 else None

    def set_threads(self, n: int) -> None:
        """Save the thread count (0 = automatic) and give it to the loaded model at once,
        between two of its calls."""
        from core.backends.loader import set_threads
        from core.backends.threads import usable_cpus

        most = usable_cpus()
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= most:
            raise SettingError(f"The thread count must be 0 (automatic) to {most}, not {n!r}.")
        self._set(THREADS, n)
        engine = self._engine()
        if engine is not None:
            set_threads(engine.raw_backend, n or None)

    def threads_advice(self) -> ThreadsAdvice:
        """The thread count in force, whether it reaches the CPUs in use (a warning: more
        threads help only with idle cores to run them), and the last reply's decode speed, so
        that a change can be judged by what it does."""
        from core.backends.threads import resolve_threads, usable_cpus

        cpus = usable_cpus()
        count = resolve_threads(self.threads())
        engine = self._engine()
        speed = engine.last_speed if engine is not None else None
        return ThreadsAdvice(count, cpus, cpus > 1 and count >= cpus, speed)

    # ------------------------------------------------------------------ the state cache
    def cache_budget(self) -> tuple[float, float]:
        """The state cache's budgets in MB: (memory, disk)."""
        mem = self.get(CACHE_MEM_MB, DEFAULT_CACHE_MEM_MB)
        disk = self.get(CACHE_DISK_MB, DEFAULT_CACHE_DISK_MB)
        return (
            float(mem) if _number(mem) else float(DEFAULT_CACHE_MEM_MB),
            float(disk) if _number(disk) else float(DEFAULT_CACHE_DISK_MB),
        )

    def set_cache_budget(self, mem_mb: int, disk_mb: int) -> None:
        """Save the budgets and apply them to the loaded model's cache at once."""
        for what, value, most in (
            ("memory", mem_mb, MAX_CACHE_MEM_MB),
            ("disk", disk_mb, MAX_CACHE_DISK_MB),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
                raise SettingError(f"The {what} budget must be 0 to {most} MB, not {value!r}.")
        self._set(CACHE_MEM_MB, mem_mb)
        self._set(CACHE_DISK_MB, disk_mb)
        engine = self._engine()
        if engine is not None:
            engine.set_cache_budget(float(mem_mb), float(disk_mb))

    # ------------------------------------------------------------------ downloads (core/models/)
    def hub_endpoint_setting(self) -> str:
        """The download endpoint saved in Settings; "" when none was (then $HF_ENDPOINT, else
        the Hub: `hub_endpoint`)."""
        value = self.get(HUB_ENDPOINT, "")
        return value if isinstance(value, str) else ""

    def hub_endpoint(self) -> str:
        """Where model files are listed and downloaded from: the address saved in Settings, else
        $HF_ENDPOINT (a mirror, as huggingface_hub reads it), else https://huggingface.co."""
        saved = self.hub_endpoint_setting()
        if saved:
            return saved
        env = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
        return env or DEFAULT_HUB

    def set_hub_endpoint(self, url: str) -> str:
        """Save the download endpoint ("" = back to $HF_ENDPOINT or the Hub); returns it as
        saved. SettingError when it is not an http(s) address."""
        value = check_endpoint(url) if (url or "").strip() else ""
        self._set(HUB_ENDPOINT, value)
        return value

    def memory_bandwidth(self) -> float | None:
        """The memory bandwidth measured on this machine, bytes/s; None before it is measured."""
        value = self.get(MEM_BANDWIDTH)
        return float(value) if _number(value) and value > 0 else None

    def set_memory_bandwidth(self, bytes_per_s: float) -> None:
        if not _number(bytes_per_s) or not 0 < bytes_per_s < 1e14:
            raise SettingError(f"Not a memory bandwidth: {bytes_per_s!r} bytes/s.")
        self._set(MEM_BANDWIDTH, float(bytes_per_s))

    def gpu_bandwidth(self) -> float | None:
        value = self.get(GPU_BANDWIDTH)
        return float(value) if _number(value) and value > 0 else None

    def set_gpu_bandwidth(self, bytes_per_s: float) -> None:
        if not _number(bytes_per_s) or not 0 < bytes_per_s < 1e15:
            raise SettingError(f"Not a GPU memory bandwidth: {bytes_per_s!r} bytes/s.")
        self._set(GPU_BANDWIDTH, float(bytes_per_s))

    # ------------------------------------------------------------------ the API (core/access.py)
    def api_keys(self) -> list[dict[str, Any]]:
        """The API keys' records (id, name, shown prefix, created, hash), oldest first; none
        when they cannot be read (Settings lists them: the page that next uses the store says
        why)."""
        try:
            return self.saved_api_keys()
        except AppError:
            return []

    def saved_api_keys(self) -> list[dict[str, Any]]:
        """The API keys' records, as api_keys, but raising (the store's AppError) when they
        cannot be read: the API's key check must not take that for "no keys" (it stays shut)."""
        from core import access

        return access.list_keys(self._store())

    def create_api_key(self, name: str) -> tuple[str, dict[str, Any]]:
        """A new key: (the key, to be shown once; its saved record). access.AccessError when
        the name is empty or there are too many keys."""
        from core import access

        return access.create_key(self._store(), name)

    def revoke_api_key(self, key_id: str) -> bool:
        """False when it was not there (already revoked)."""
        from core import access

        return access.revoke_key(self._store(), key_id)

    def api_origins(self) -> list[str]:
        """The origins of web pages allowed to call the API ("*": every one)."""
        from core import access

        try:
            return access.allowed_origins(self._store())
        except AppError:
            return []

    def set_api_origins(self, text: str) -> list[str]:
        """Check and save the allowed origins (one a line, or separated by commas or spaces);
        returns them as saved. access.AccessError on one that is not an origin."""
        from core import access

        return access.save_origins(self._store(), text)
