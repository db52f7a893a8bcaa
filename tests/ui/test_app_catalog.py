"""AppTest of getting an RWKV model in the pages (pages/models_ui.py): Settings' catalog offline
(one line, the rest of Settings works), looked up on a stand-in Hub (tests/support/local_hub.py),
a file downloaded and loaded with one click and the converter offered; Home's offer while the
embedded model is in use, offline and downloading. The machine is made up (free memory and a
bandwidth saved as the measured one), so the recommendation does not depend on this computer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.models.catalog import HubFile
from core.models.download import DownloadJob
from tests.support.local_hub import LocalHub, go_online, local_hub
from tests.support.ui import check, errors, open_app, store

PAGE = "pages/settings.py"
GiB = 2**30
REPO_ID = "BlinkDL/rwkv7-g1"
TINY = "rwkv7-g1a3-0.1b-20251015-ctx4096.pth"
# what Home recommends on the made-up machine below, from the catalog's known files
OFFERED = "rwkv7-g1a-2.9b-20250924-ctx4096.pth"


@pytest.fixture(autouse=True)
def _no_jobs_left() -> Iterator[None]:
    """Downloads are per process: each test starts and ends without any."""
    DownloadJob.reset()
    yield
    DownloadJob.reset()


@pytest.fixture
def made_up_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 GiB free, 25 GB/s (as if measured before), no GPU."""
    monkeypatch.setattr("core.models.machine.ram", lambda: (20 * GiB, 24 * GiB))
    monkeypatch.setattr("core.models.machine.gpu", lambda: None)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Iterator[LocalHub]:
    go_online(monkeypatch)
    with local_hub() as h:
        h.add_file(REPO_ID, TINY, tiny_model)
        yield h


def _settings(**values: Any) -> None:
    s = store()
    s.set_setting("memory_bandwidth", 25e9)
    for k, v in values.items():
        s.set_setting(k, v)


def _texts(at: Any) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [x.value for kind in (at.info, at.warning, at.success, at.error) for x in kind]
    parts += [b.label for b in at.button] + [e.label for e in at.expander]
    parts += [h.value for h in at.subheader]
    return "\n".join(str(p) for p in parts).replace("\\", "")  # markdown's escapes away


def test_settings_offline_says_so_in_one_line_and_the_rest_works(
    app_env: Path, models: Path, made_up_machine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_online(monkeypatch)  # the app itself allows the network; there is none at this address
    _settings(hub_endpoint="http://127.0.0.1:9")
    at = open_app(PAGE)
    check(at)
    text = _texts(at)
    assert "Get an RWKV model" in text and "Download from 127.0.0.1:9" in text
    # before any look-up: the files known offline, and a recommendation from them
    assert "Not looked up yet" in text and OFFERED in text and "Recommended here" in text
    at.button(key="hub_look_up").click().run()
    check(at)
    offline = [w.value for w in at.warning if "Cannot reach" in w.value]
    assert len(offline) == 1 and "127.0.0.1:9" in offline[0]
    assert not errors(at)
    # the rest of Settings works
    at.selectbox(key="set_preset").set_value("precise").run()
    check(at)
    assert store().get_setting("default_preset") == "precise"


def test_settings_catalog_download_and_load_from_the_hub(
    app_env: Path, models: Path, made_up_machine: None, hub: LocalHub
) -> None:
    _settings()
    at = open_app(PAGE)
    at.text_input(key="hub_endpoint_text").input(hub.url).run()
    at.button(key="hub_endpoint_save").click().run()
    check(at)
    assert store().get_setting("hub_endpoint") == hub.url
    at.button(key="hub_look_up").click().run()
    check(at)
    text = _texts(at)
    assert TINY in text and "0.1B · 1 file" in text and "fits" in text
    assert f"Listed on 127.0.0.1:{hub.port}" in text
    file = HubFile(REPO_ID, TINY)
    get = [b for b in at.button if b.key and b.key.endswith(f"{file.key}_get")]
    assert get, [b.key for b in at.button]
    get[0].click().run()
    check(at)
    job = DownloadJob.for_file(file)
    assert job is not None and job.wait(120) and job.error is None, job and job.error
    at.run()
    check(at)
    assert any("is in the models folder" in s.value for s in at.success)
    assert "Convert to Q8_0 and load" in _texts(at)  # a .pth on a CPU: the converter is offered
    at.button(key=f"settings_job_{job.key}_load").click().run()
    check(at)
    from core import runtime

    engine = runtime.current().engine()
    assert engine is not None and engine.info.path == str(models / TINY)
    assert store().get_setting("model")["path"] == str(models / TINY)
    assert any("is ready" in s.value for s in at.success)
    assert at.selectbox(key="set_model_src").value == str(models / TINY)  # the page follows

    # a .pth on a CPU: one click converts it to Q8_0 GGUF and loads that
    conv = at.button(key=f"settings_job_{job.key}_conv_q8_0")
    assert conv.label.startswith("Convert to Q8_0 and load (") and "MB on disk" in conv.label
    conv.click().run()
    check(at)
    converting = at.session_state["hub_convert"]
    assert converting.wait(120) and converting.error is None, converting.error
    at.run()
    check(at)
    gguf = models / f"{Path(TINY).stem}-q8_0.gguf"
    assert gguf.is_file() and (models / TINY).is_file()  # the .pth is kept
    engine = runtime.current().engine()
    assert engine is not None and engine.info.path == str(gguf) and engine.info.backend == "llama"


def test_home_offers_the_recommended_rwkv_model_offline(
    app_env: Path, models: Path, made_up_machine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RP_MODEL")  # the embedded model is in use
    go_online(monkeypatch)
    _settings(hub_endpoint="http://127.0.0.1:9")  # nowhere
    at = open_app(loaded=False)
    check(at)
    text = _texts(at)
    assert "You are chatting with the built-in SmolLM2-135M" in text
    offer = at.button(key="home_get_rwkv")
    assert offer.label.startswith("Get RWKV-7 G1a 2.9B (5.9 GB, about ")
    assert offer.label.endswith(" tokens/s here)")
    assert "Q8_0 GGUF" in text  # why: the speed is the converted file's
    offer.click().run()
    job = DownloadJob.for_file(HubFile(REPO_ID, OFFERED))
    assert job is not None and job.wait(60)
    at.run()
    check(at)
    assert any("Cannot reach 127.0.0.1:9" in e.replace("\\", "") for e in errors(at))
    assert at.button(key=f"home_job_{job.key}_again").label == "Try again"
    assert "Characters" in [h.value for h in at.subheader]  # the page goes on


def test_home_gets_and_loads_it_with_the_hub(
    app_env: Path,
    models: Path,
    made_up_machine: None,
    hub: LocalHub,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RP_MODEL")
    hub.add_file(REPO_ID, OFFERED, tiny_model)  # the stand-in serves the tiny model by that name
    _settings(hub_endpoint=hub.url)
    at = open_app(loaded=False)
    at.button(key="home_get_rwkv").click().run()
    check(at)
    job = DownloadJob.for_file(HubFile(REPO_ID, OFFERED))
    assert job is not None and job.wait(120) and job.error is None, job and job.error
    at.run()
    check(at)
    assert any(OFFERED in s.value.replace("\\", "") for s in at.success)
    at.button(key=f"home_job_{job.key}_load").click().run()
    check(at)
    from core import runtime

    assert runtime.current().choice().path == str(models / OFFERED)
    # the embedded model is no longer in use: Home no longer says so
    assert "You are chatting with the built-in" not in _texts(at)
