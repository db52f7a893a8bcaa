"""The owner is never locked out: a guesser who uses up the app's limit of password tries a
minute (10, all browsers together) keeps out only sessions like their own. A real server with a
password, driven by headless Chromium: the guesser's sessions come by another name (evil.example,
mapped to 127.0.0.1 in the browser: a page of another site, or any name but a loopback one),
the owner's from this machine (http://127.0.0.1), which logs in at once.

How long the guesses take is not assumed: they go on until the limit answers, so a slow machine
only makes more of them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from core.auth import hash_password
from core.store import open_store
from tests.support.server import CHROMIUM, CHROMIUM_ARGS, running_app

pytestmark = pytest.mark.timeout(900)

PASSWORD = "open sesame"
MAX_GUESSES = 60  # the limit answers after 10 tries within a minute; a bound, not a timing
WAIT_MS = 120_000  # an upper bound for a page to answer on a loaded machine; never asserted


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("login")
    data = root / "data"
    data.mkdir()
    store = open_store(f"sqlite:///{data / 'app.db'}")
    store.set_setting("password", hash_password(PASSWORD))
    store.close()
    with running_app(data, root / "server.log") as app:
        yield app


@pytest.fixture(scope="module")
def browser(sync_api: Any, server: SimpleNamespace) -> Iterator[Any]:
    args = [
        *CHROMIUM_ARGS,
        "--host-resolver-rules=MAP evil.example 127.0.0.1",  # the rebinding, in the browser
        "--disable-features=HttpsUpgrades",
    ]
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield b
        b.close()


def log_in(browser: Any, url: str, password: str) -> str:
    """A new browser session (a fresh context) tries `password` once; returns what the page
    says: "in" (the app), or the error or warning it shows."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(url)
        field = page.locator("input[type=password]")
        field.fill(password)
        page.get_by_role("button", name="Log in").click()
        said = page.get_by_text(re.compile(r"Wrong password|Too many tries|Recent chats"))
        said.first.wait_for()
        text = said.first.inner_text()
        return "in" if "Recent chats" in text else text
    finally:
        ctx.close()


def test_a_guesser_cannot_lock_the_owner_out(browser: Any, server: SimpleNamespace) -> None:
    foreign = f"http://evil.example:{server.port}/"
    said = ""
    for _ in range(MAX_GUESSES):
        said = log_in(browser, foreign, "guess")
        if said.startswith("Too many tries"):
            break
        assert said.startswith("Wrong password"), said
    assert said.startswith("Too many tries"), "the limit never answered"
    # the owner, on this machine: in at once, whatever the guesser did
    assert log_in(browser, f"http://127.0.0.1:{server.port}/", PASSWORD) == "in"
    assert log_in(browser, f"http://localhost:{server.port}/", PASSWORD) == "in"
