"""The app's settings (core/settings.py) over a store in memory: typed getters with their
defaults, setters that check, save and apply to the loaded model (threads, cache budgets)."""

from __future__ import annotations

import pytest

from core.access import AccessError
from core.auth import check_api_key, check_password
from core.backends.threads import usable_cpus
from core.errors import StoreError
from core.settings import (
    DEFAULT_CACHE_DISK_MB,
    DEFAULT_CACHE_MEM_MB,
    AppSettings,
    ModelChoice,
    SettingError,
)
from tests.support.memory_store import MemoryStore


class Backend:
    def __init__(self) -> None:
        self.threads: list[int | None] = []

    def set_threads(self, n: int | None) -> None:
        self.threads.append(n)


class Engine:
    """What the settings apply to: the cache's budgets, the back end's threads."""

    def __init__(self) -> None:
        self.raw_backend = Backend()
        self.budgets: list[tuple[float, float]] = []
        self.last_speed = None  # as the engine's: no reply yet

    def set_cache_budget(self, mem_mb: float, disk_mb: float) -> None:
        self.budgets.append((mem_mb, disk_mb))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def engine() -> Engine:
    return Engine()


@pytest.fixture
def cfg(store: MemoryStore, engine: Engine) -> AppSettings:
    return AppSettings(lambda: store, lambda: engine)  # type: ignore[arg-type, return-value]


def test_getters_give_their_defaults_when_unset_wrong_or_unreadable(
    cfg: AppSettings, store: MemoryStore
) -> None:
    for values in ({}, {k: ["junk"] for k in ("user_name", "language", "threads", "model")}):
        store.values = {**values, "cache_mem_mb": "junk", "default_preset": "nope"}
        assert cfg.user_name() == cfg.user_persona() == ""
        assert cfg.language() is None and cfg.default_preset() == "auto"
        assert cfg.threads() is None and cfg.model() is None
        assert cfg.cache_budget() == (DEFAULT_CACHE_MEM_MB, DEFAULT_CACHE_DISK_MB)
        assert cfg.api_keys() == [] and cfg.api_origins() == []
        assert cfg.password_hash() == "" and not cfg.has_password()
    store.broken = True
    assert cfg.user_name() == "" and cfg.threads() is None and cfg.get("x", 7) == 7
    assert not cfg.has_password()
    with pytest.raises(StoreError):  # the gate must not read "no password" here
        cfg.password_hash()


def test_the_user_language_and_preset_are_checked_and_saved(
    cfg: AppSettings, store: MemoryStore
) -> None:
    cfg.set_user("  Kai ", "A wandering cartographer.")
    assert store.values["user_name"] == "Kai" == cfg.user_name()
    assert cfg.user_persona() == "A wandering cartographer."
    with pytest.raises(SettingError, match="longer than 100"):
        cfg.set_user("K" * 101, "")
    assert cfg.user_name() == "Kai"
    cfg.set_language("zh")
    assert cfg.language() == "zh"
    cfg.set_default_preset("creative")
    assert cfg.default_preset() == "creative"
    for bad in (lambda: cfg.set_language("fr"), lambda: cfg.set_default_preset("wild")):
        with pytest.raises(SettingError, match="Unknown"):
            bad()
    assert store.values == {
        "user_name": "Kai",
        "user_persona": "A wandering cartographer.",
        "language": "zh",
        "default_preset": "creative",
    }


def test_the_password_is_saved_hashed_and_removed(cfg: AppSettings, store: MemoryStore) -> None:
    with pytest.raises(SettingError):
        cfg.set_password("")
    cfg.set_password("open sesame")
    assert "open sesame" not in str(store.values)
    assert check_password("open sesame", cfg.password_hash()) and cfg.has_password()
    cfg.remove_password()
    assert cfg.password_hash() == "" and not cfg.has_password()


def test_the_model_choice_round_trips(cfg: AppSettings) -> None:
    choice = ModelChoice(path="models/x.pth", backend="rwkv", strategy="cpu bf16", jit_on=False)
    cfg.set_model(choice)
    assert cfg.model() == choice
    with pytest.raises(SettingError):
        cfg.set_model(ModelChoice(backend="vllm"))


def test_threads_are_saved_and_given_to_the_loaded_model(
    cfg: AppSettings, store: MemoryStore, engine: Engine
) -> None:
    cfg.set_threads(1)
    assert store.values["threads"] == 1 and cfg.threads() == 1
    cfg.set_threads(0)  # automatic
    assert cfg.threads() is None
    assert engine.raw_backend.threads == [1, None]  # applied at once, on the model thread
    for bad in (-1, usable_cpus() + 1, True, 1.5):
        with pytest.raises(SettingError, match="thread count"):
            cfg.set_threads(bad)  # type: ignore[arg-type]
    assert store.values["threads"] == 0 and engine.raw_backend.threads == [1, None]
    nothing_loaded = AppSettings(lambda: store, lambda: None)  # type: ignore[arg-type, return-value]
    nothing_loaded.set_threads(1)  # saved: the next load reads it
    assert cfg.threads() == 1 and engine.raw_backend.threads == [1, None]


def test_threads_advice_warns_at_the_cpus_in_use_and_shows_the_last_speed(
    cfg: AppSettings, store: MemoryStore, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: 2 threads on a busy 2-core machine cut replies from 14.4 to 2.7 tok/s with
    no warning. The count is "crowded" once it reaches the CPUs this process may use."""
    import core.backends.threads as threads
    from core.engine.engine import DecodeSpeed

    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    a = cfg.threads_advice()
    assert (a.count, a.cpus, a.crowded, a.speed) == (2, 4, False, None)  # automatic: half
    cfg.set_threads(3)
    assert not cfg.threads_advice().crowded
    cfg.set_threads(4)
    assert cfg.threads_advice().crowded and cfg.threads_advice().count == 4
    engine.last_speed = DecodeSpeed(14.4, 80, 4)  # type: ignore[assignment]
    assert cfg.threads_advice().speed == DecodeSpeed(14.4, 80, 4)
    # one CPU: one thread is all there is, nothing to warn about
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
    a = cfg.threads_advice()
    assert (a.count, a.cpus, a.crowded) == (1, 1, False)
    nothing_loaded = AppSettings(lambda: store, lambda: None)  # type: ignore[arg-type, return-value]
    assert nothing_loaded.threads_advice().speed is None


def test_cache_budgets_are_saved_and_applied(
    cfg: AppSettings, store: MemoryStore, engine: Engine
) -> None:
    cfg.set_cache_budget(128, 512)
    assert (store.values["cache_mem_mb"], store.values["cache_disk_mb"]) == (128, 512)
    assert cfg.cache_budget() == (128.0, 512.0) and engine.budgets == [(128.0, 512.0)]
    for mem, disk in ((-1, 512), (128, 10_000_001), (128.5, 512), (128, "512")):
        with pytest.raises(SettingError, match="budget"):
            cfg.set_cache_budget(mem, disk)  # type: ignore[arg-type]
    assert cfg.cache_budget() == (128.0, 512.0) and len(engine.budgets) == 1


def test_api_keys_and_origins_go_through_core_access(cfg: AppSettings) -> None:
    key, record = cfg.create_api_key("SillyTavern")
    assert [r["id"] for r in cfg.api_keys()] == [record["id"]]
    assert check_api_key(key, cfg.api_keys())
    with pytest.raises(AccessError):
        cfg.create_api_key("  ")
    assert cfg.revoke_api_key(record["id"]) and not cfg.revoke_api_key(record["id"])
    assert cfg.set_api_origins("http://localhost:8000/ *") == ["http://localhost:8000", "*"]
    assert cfg.api_origins() == ["http://localhost:8000", "*"]
    with pytest.raises(AccessError):
        cfg.set_api_origins("localhost:8000")
    assert cfg.api_origins() == ["http://localhost:8000", "*"]


def test_the_download_endpoint_setting_then_hf_endpoint_then_the_hub(
    cfg: AppSettings, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert cfg.hub_endpoint() == "https://huggingface.co" and cfg.hub_endpoint_setting() == ""
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com/")
    assert cfg.hub_endpoint() == "https://hf-mirror.com"  # huggingface_hub's own variable
    assert cfg.set_hub_endpoint(" http://127.0.0.1:8765/ ") == "http://127.0.0.1:8765"
    assert cfg.hub_endpoint() == "http://127.0.0.1:8765"  # the setting wins
    for bad in ("hf-mirror.com", "ftp://x", "https://", "https://x/?a=1"):
        with pytest.raises(SettingError):
            cfg.set_hub_endpoint(bad)
    assert cfg.hub_endpoint() == "http://127.0.0.1:8765"
    cfg.set_hub_endpoint("")  # back to $HF_ENDPOINT
    assert cfg.hub_endpoint() == "https://hf-mirror.com"
    store.values["hub_endpoint"] = ["junk"]
    assert cfg.hub_endpoint_setting() == ""


def test_measured_bandwidths_are_kept(cfg: AppSettings, store: MemoryStore) -> None:
    assert cfg.memory_bandwidth() is None and cfg.gpu_bandwidth() is None
    cfg.set_memory_bandwidth(12.5e9)
    cfg.set_gpu_bandwidth(9e11)
    assert cfg.memory_bandwidth() == 12.5e9 and cfg.gpu_bandwidth() == 9e11
    for bad in (0, -1, True, "fast"):
        with pytest.raises(SettingError):
            cfg.set_memory_bandwidth(bad)  # type: ignore[arg-type]
    store.values["memory_bandwidth"] = "junk"
    assert cfg.memory_bandwidth() is None


def test_notes_at_a_depth_go_next_to_the_reply_for_rwkv_by_default(cfg: AppSettings) -> None:
    """The API setting `api_notes_at_reply` (core/api/mapping.py): "auto" moves them for RWKV
    models only; "reply" and "depth" for every model; anything else is refused."""
    assert cfg.api_notes() == "auto"
    assert cfg.api_notes_at_reply("rwkv7") and not cfg.api_notes_at_reply("llama")
    cfg.set_api_notes("depth")
    assert not cfg.api_notes_at_reply("rwkv7")
    cfg.set_api_notes("reply")
    assert cfg.api_notes_at_reply("llama")
    with pytest.raises(SettingError):
        cfg.set_api_notes("sometimes")
    assert cfg.api_notes() == "reply"
