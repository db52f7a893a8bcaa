"""End to end: a new user gets an RWKV model in the browser. `streamlit run Home.py` on an empty
data directory (the embedded model in use), a stand-in Hub on 127.0.0.1 (tests/support/
local_hub.py) that lists the catalog's repositories and serves a tiny random-weight RWKV-7 .pth,
and headless Chromium: Home offers an RWKV model; Settings takes the stand-in's address as the
download endpoint, looks up the catalog, downloads the file (its bar shown while the server holds
the transfer), loads it with one click; then a chat gets a reply from it.

Screenshots: artifacts/ (git-ignored) and, with $RP_SCREENSHOTS=DIR, that folder too.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.models.catalog import HubFile, load_catalog
from core.models.names import parse
from tests.support import REPO
from tests.support.local_hub import HubFileSpec, LocalHub, local_hub
from tests.support.server import (
    app_store,
    ended_reply,
    running_app,
    settle,
    track_runs,
    wait_for,
)

ARTIFACTS = REPO / "artifacts"
REPO_ID = "BlinkDL/rwkv7-g1"
TINY = "rwkv7-g1a3-0.1b-20251015-ctx4096.pth"
PARAMS = {"0.1": 191e6, "0.4": 451e6, "1.5": 1.528e9, "2.9": 2.948e9, "7.2": 7.2e9, "13.3": 13.27e9}

pytestmark = pytest.mark.timeout(900)


def _stand_in_listing(hub: LocalHub, tiny: Path) -> None:
    """Every repository of the bundled catalog, with files named and sized like the real ones
    (listed only: the stand-in serves just the tiny model)."""
    hub.add_file(REPO_ID, TINY, tiny)
    for f in load_catalog().known_files:
        if f.size:
            hub.add(f.repo, f.path, HubFileSpec.listed(f.size))
    hub.add(REPO_ID, "rwkv7-g1-1.5b-20250429-ctx4096.pth", HubFileSpec.listed(3_055_445_757))
    world = "BlinkDL/rwkv-7-world"
    hub.add(
        world, "RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth", HubFileSpec.listed(3_060_000_000)
    )
    hub.add(
        world, "RWKV-x070-World-2.9B-v3-20250211-ctx4096.pth", HubFileSpec.listed(5_900_000_000)
    )
    for entry in load_catalog().repositories:
        info = parse(entry.repo.split("/")[1])
        if not entry.repo.endswith("-GGUF") or info.params is None:
            continue
        size = f"{info.params:g}"
        for q, bits in (("F16", 16), ("Q8_0", 8.5), ("Q4_K_M", 4.85)):
            name = f"rwkv7-{(info.tag or 'g1').lower()}-{size}b-{q}.gguf"
            hub.add(entry.repo, name, HubFileSpec.listed(int(PARAMS[size] * bits / 8)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[SimpleNamespace]:
    from core.backends.embedded import embedded_model_path, missing_message
    from tests.support.required import unavailable

    if embedded_model_path() is None:
        unavailable(missing_message())
    root = tmp_path_factory.mktemp("e2e-catalog")
    data, models = root / "data", root / "models"
    data.mkdir()
    models.mkdir()
    with local_hub() as hub:
        _stand_in_listing(hub, Path(tiny_models(7)))
        # the server holds a transfer until the test releases it: the app's client must not
        # give up on it first (its default is 10 s without data, then a ranged retry)
        env = {
            "RP_MODELS_DIR": str(models),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DOWNLOAD_TIMEOUT": "600",
        }
        env = {**env, "HF_ENDPOINT": "https://huggingface.co"}  # the page changes it
        with running_app(data, root / "server.log", extra_env=env) as app:
            yield SimpleNamespace(
                url=app.url, data=data, models=models, hub=hub, log=root / "server.log"
            )


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    extra = os.environ.get("RP_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(extra) / name), full_page=True)


def _phone_fits(browser: Any, url: str, path: str, key: str) -> None:
    """On a 390 px phone the page is no wider than the screen."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = ctx.new_page()
        track_runs(page)
        page.goto(url + path)
        page.locator(f".st-key-{key}").wait_for(timeout=120_000)
        settle(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 391, f"{path} is {width}px wide on a 390px screen"
        _shot(page, f"catalog-phone-{path.strip('/') or 'home'}.png")
    finally:
        ctx.close()


def test_get_an_rwkv_model_load_it_and_chat(browser: Any, server: SimpleNamespace) -> None:
    hub: LocalHub = server.hub
    ctx = browser.new_context(viewport={"width": 1280, "height": 2000})
    page = ctx.new_page()
    track_runs(page)
    external: list[str] = []
    page.on(
        "request",
        lambda r: (
            external.append(r.url)
            if not r.url.startswith(
                ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")
            )
            else None
        ),
    )
    try:
        # Home: the embedded model is in use; the recommended RWKV model is offered offline
        page.goto(server.url)
        offer = page.locator(".st-key-home_get_rwkv button")
        offer.wait_for(timeout=180_000)
        label = offer.inner_text()
        assert "Get RWKV-7 " in label and label.endswith("tokens/s here)"), label
        page.get_by_text("You are chatting with the built-in SmolLM2-135M").wait_for()
        settle(page)
        _shot(page, "catalog-home.png")
        _phone_fits(browser, server.url, "/", "home_get_rwkv")

        # Settings: the stand-in Hub as the download endpoint, then the catalog
        page.goto(server.url + "/settings")
        page.get_by_text("Download from huggingface.co").click()
        field = page.locator(".st-key-hub_endpoint_text input")
        field.fill(hub.url)
        field.press("Enter")
        settle(page)
        page.locator(".st-key-hub_endpoint_save button").click()
        page.get_by_text(f"Download from 127.0.0.1:{hub.port}").wait_for(timeout=60_000)
        page.locator(".st-key-hub_look_up button").click()
        page.get_by_text(f"Listed on 127.0.0.1:{hub.port}").wait_for(timeout=120_000)
        page.locator("summary", has_text="0.1B ·").click()
        get = page.locator(f".st-key-hub_0_1B_{HubFile(REPO_ID, TINY).key}_get button")
        get.wait_for()
        settle(page)
        page.get_by_text("Get an RWKV model").scroll_into_view_if_needed()
        _shot(page, "catalog-settings.png")
        _phone_fits(browser, server.url, "/settings", "hub_look_up")  # the listing, kept

        # download: the server holds the transfer part-way, so the bar is seen moving
        hub.hold_after = 25 * 2**20
        get.click()
        assert hub.reached.wait(120), server.log.read_text()[-3000:]
        page.get_by_text(re.compile(r"\d MB of \d+\.\d MB")).first.wait_for(timeout=60_000)
        progress = page.locator("[data-testid=stProgress]").first
        assert progress.is_visible()
        page.get_by_text("waiting for data").first.wait_for(timeout=60_000)  # it is held
        # nothing left over from the page before the click, faded, while the page polls
        page.wait_for_function(
            "() => !document.querySelector('[data-stale=\"true\"]')", timeout=10_000
        )
        _shot(page, "catalog-downloading.png")
        assert not (server.models / TINY).exists()  # still held: the picture shows the bar
        # leaving the page does not stop it, and another page (another tab) shows the same one
        other = ctx.new_page()
        track_runs(other)
        other.goto(server.url)
        other.get_by_text(f"Downloading {TINY} from 127.0.0.1:{hub.port}").wait_for(timeout=60_000)
        page.goto(server.url + "/characters")
        page.goto(server.url + "/settings")
        page.get_by_text(f"Downloading {TINY}").wait_for(timeout=60_000)
        other.close()
        assert len(hub.transfers()) == 1
        hub.release.set()
        page.get_by_text("is in the models folder").wait_for(timeout=120_000)
        assert (server.models / TINY).is_file() and len(hub.transfers()) == 1
        assert page.get_by_text("Convert to Q8_0 and load").count() >= 1  # a .pth on a CPU

        # one click loads it
        dest = (server.models / TINY).resolve()
        job_key = hashlib.sha1(str(dest).encode()).hexdigest()[:12]
        page.locator(f".st-key-settings_job_{job_key}_load button").click()
        page.get_by_text(f"Model {TINY} is ready.").wait_for(timeout=180_000)
        _shot(page, "catalog-loaded.png")

        # and a chat gets a reply from it
        store = app_store(server)
        character = store.list_characters()[0]
        page.goto(server.url)
        page.locator(f".st-key-home_chat_{character.id} button").click()
        box = page.locator("[data-testid=stChatInputTextArea]")
        box.wait_for(timeout=120_000)
        conv_id = store.list_conversations(limit=1)[0].id
        box.fill("Hello!")
        box.press("Enter")
        reply = wait_for(lambda: ended_reply(app_store(server), conv_id), 240)
        assert reply is not None and reply.role == "char", reply
        assert reply.meta.get("model") == TINY or TINY in str(reply.meta), reply.meta
        settle(page)
        _shot(page, "catalog-chat.png")
        settings = app_store(server).get_setting("model")
        assert settings["path"] == str(dest)
        assert external == [], external  # the browser asked nothing of any other host
    finally:
        ctx.close()
