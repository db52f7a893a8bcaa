"""End to end: every text a user can give (character fields, their name and persona, chat titles,
messages, a model's file name) filled with Markdown, HTML and script payloads, shown on every
page of a real `streamlit run Home.py` in headless Chromium. No request may leave this machine,
no dialog may open, and each name must read as the text it is.

The data is written through core into the server's data directory before it starts; the model
setting names a file that does not exist (its name is a payload too), so no model is loaded.
Requests to anywhere but this machine are recorded and aborted. Pick lists (select boxes) show
their options as plain text, never Markdown, so they are not opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.server import running_app, settle, track_runs

LOCAL = ("http://127.0.0.1:", "ws://127.0.0.1:", "http://localhost:", "ws://localhost:")

pytestmark = pytest.mark.timeout(900)

# names: one line, no slashes (the store turns "/" into "-"), at most 100 characters
NAMES = [
    "![](https:evil.example)",
    "<img src=https:evil.example onerror=alert(1)>",
    "[a](javascript:alert(1)) <script>alert(2)</script>",
    "$\\href{https:evil.example}{x}$ :red[r] **b** `c` _i_",
    "<svg onload=alert(3)> <iframe src=https:evil.example>",
]
TEXT = "\n".join(
    [
        *NAMES,
        "![x](https://evil.example/a.png) ![](//evil.example/b.png)",
        "[![](https://evil.example/c.png)](https://evil.example)",
        "<img src=https://evil.example/d.png onerror=alert(4)>",
        "<a href=javascript:alert(5)>a</a> \"'><svg onload=alert(6)>",
        "<style>@import 'https://evil.example/e.css'</style>",
        "<link rel=stylesheet href=https://evil.example/f.css>",
        "$$\\href{https://evil.example}{y}$$ {{char}} {{user}}",
    ]
)
MODEL = "![](https:evil.example).pth"


def _prepare(data: Path) -> SimpleNamespace:
    from core.store import open_store

    s = open_store(f"sqlite:///{data / 'app.db'}")
    fields = ("description", "personality", "scenario", "example_dialogue", "creator_notes")
    chats = []
    for name in NAMES:
        ch = s.create_character(
            {
                "name": name,
                "user_name": name,
                "greetings": [TEXT],
                "creator": name,
                "tags": [name],
                "stop_strings": [name],
                **dict.fromkeys(fields, TEXT),
            }
        )
        conv = s.create_conversation(ch.id, title=name, user_name=name)
        s.add_message(conv.id, "user", TEXT)
        s.add_message(conv.id, "char", TEXT)
        s.add_message(conv.id, "narrator", TEXT, name=name)
        chats.append((ch.id, ch.name, conv.id))
    s.set_setting("user_name", NAMES[0])
    s.set_setting("user_persona", TEXT)
    s.set_setting("model", {"path": MODEL, "backend": "auto"})
    s.close()
    return SimpleNamespace(chats=chats)


@pytest.fixture(scope="module")
def server(sync_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("e2e-payloads")
    data = root / "data"
    data.mkdir()
    prepared = _prepare(data)
    # the project's config: 127.0.0.1, where no password is needed
    with running_app(data, root / "server.log") as app:
        yield SimpleNamespace(url=app.url, chats=prepared.chats)


class Tab:
    """A tall browser tab (everything in view at once) that records and aborts every request
    leaving this machine, and records (and dismisses) every dialog."""

    def __init__(self, browser: Any, url: str, sync_api: Any) -> None:
        self.expect = sync_api.expect
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 4000})
        self.ctx.route("**/*", self._route)
        self.page = self.ctx.new_page()
        track_runs(self.page)
        self.page.on("dialog", self._dialog)
        self.url = url
        self.outside: list[str] = []
        self.dialogs: list[str] = []

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(LOCAL):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str, ready: str) -> None:
        self.page.goto(self.url + path)
        self.page.wait_for_selector(ready, timeout=120_000)
        self.idle()

    def idle(self) -> None:
        settle(self.page)

    def click(self, selector: str) -> None:
        self.page.locator(selector).first.click()
        self.idle()

    def shows(self, selector: str, *texts: str) -> None:
        """The element shows each text (waiting, as a person would, for the page to draw)."""
        for text in texts:
            self.expect(self.page.locator(selector).first).to_contain_text(text, timeout=120_000)

    def safe(self) -> None:
        """Nothing left this machine, no dialog opened, no script link was made."""
        assert self.outside == [] and self.dialogs == []
        assert self.page.locator("[href^='javascript:' i], [src^='javascript:' i]").count() == 0


def test_payloads_in_every_field_stay_text_on_every_page(
    browser: Any, server: Any, sync_api: Any
) -> None:
    tab = Tab(browser, server.url, sync_api)
    names = [name for _, name, _ in server.chats]
    tab.open("/", "text=Recent chats")
    tab.shows("[data-testid=stMain]", *names)  # characters and recent chats
    tab.shows(".st-key-home_load", f"Load {MODEL}")  # the model's file name
    tab.safe()

    tab.open("/characters", ".st-key-new_character")
    tab.shows("[data-testid=stMain]", *names)
    char_id, name, _ = server.chats[0]
    tab.click(f".st-key-edit_{char_id} button")  # the editor, titled with the name
    row = tab.page.locator(f".st-key-char_row_{char_id}")
    row.locator("[data-testid=stPopover] button", has_text="Delete").click()
    tab.shows("[data-testid=stMain]", f"Edit {name}")
    tab.shows(f".st-key-del_{char_id}", f"Delete {name}")
    tab.idle()
    tab.safe()

    tab.open("/settings", ".st-key-set_language")
    tab.safe()

    for _, name, conv_id in server.chats:
        tab.open(f"/chat?chat={conv_id}", ".st-key-next_speaker")
        tab.shows(".st-key-next_speaker", name, f"{name} (you)")  # "Who speaks next"
        tab.idle()
        tab.safe()
