"""End to end: `streamlit run Home.py` on an empty data directory, driven by headless Chromium
(Playwright, /usr/bin/chromium), with the embedded default model (SmolLM2-135M through
llama.cpp): a real model, real streaming.

Desktop (1280 px): create a character in the form, chat three turns, regenerate, watch a reply
grow and stop it with the Stop button, check that HTML in a message stays text, reload the page
and resume the chat, resume it again from Home. Phone (390 px): the chat works and
nothing is wider than the screen. Two browser sessions chat at once: each sees only its own chat,
the second is told that it waits for the model. No request leaves localhost.

Without Chromium, Playwright or the embedded model the tests skip, saying which is missing; under
CI=true they fail instead. Screenshots go to artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import REPO
from tests.support.server import (
    app_store,
    embedded_app,
    ended_reply,
    settle,
    track_runs,
    wait_for,
)

ARTIFACTS = REPO / "artifacts"
LOCAL = (
    "http://localhost",
    "ws://localhost",
    "http://127.0.0.1",
    "ws://127.0.0.1",
    "data:",
    "blob:",
    "about:",
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_app(tmp_path_factory.mktemp("e2e"), host="localhost") as app:
        yield app


class Page:
    """A browser tab on the app, recording requests that leave localhost, JS dialogs, and which
    of the texts in `watch` arrived from the server (in the app's websocket messages, however
    briefly they were on screen)."""

    def __init__(
        self,
        browser: Any,
        server: SimpleNamespace,
        width: int,
        height: int,
        mobile: bool = False,
        watch: tuple[str, ...] = (),
    ) -> None:
        self.ctx = browser.new_context(
            viewport={"width": width, "height": height}, is_mobile=mobile, has_touch=mobile
        )
        self.page = self.ctx.new_page()
        track_runs(self.page)
        self.server = server
        self.external: list[str] = []
        self.dialogs: list[str] = []
        self.watch = watch
        self.received: set[str] = set()
        self.marks: dict[int, tuple[int, int, int]] = {}
        self.page.on("request", self._on_request)
        self.page.on("dialog", self._on_dialog)
        self.page.on("websocket", lambda ws: ws.on("framereceived", self._on_frame))

    def _on_request(self, req: Any) -> None:
        if not req.url.startswith(LOCAL):
            self.external.append(req.url)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_frame(self, payload: bytes | str) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.received.update(w for w in self.watch if w.encode() in data)

    def goto(self, path: str = "/") -> None:
        self.page.goto(self.server.url + path)

    def wait_chat(self) -> None:
        self.page.wait_for_selector("[data-testid=stChatInputTextArea]", timeout=120_000)

    def send(self, text: str) -> None:
        box = self.page.locator("[data-testid=stChatInputTextArea]")
        box.fill(text)
        box.press("Enter")

    def wait_reply(self, conv_id: int) -> Any:
        """The reply that the last action started, once it has ended (saved with its stop
        reason) and the page has finished its runs. Read from the database, so a reply too
        short for the Stop button to be seen counts too."""
        store, before = app_store(self.server), self.marks.get(conv_id)
        reply = wait_for(lambda: _new_ended_reply(store, conv_id, before), timeout=REPLY_S)
        assert reply is not None, f"no reply ended in chat {conv_id}"
        self.idle()
        # the last run's leftovers leave the page once it has drawn that run (a moment after
        # it ends, in the browser's own time): the Stop button must go, or this fails
        self.page.wait_for_selector(".st-key-stop_gen", state="detached", timeout=60_000)
        return reply

    def mark(self, conv_id: int) -> None:
        """Note where the chat stands, before an action that starts a reply."""
        self.marks[conv_id] = _where(app_store(self.server), conv_id)

    def idle(self) -> None:
        settle(self.page)

    def watch_growth(self) -> None:
        """Record the streaming message each time the page changes: its lengths, and its text
        when last seen (all that was shown of it)."""
        self.page.evaluate(
            """() => {
                window.__lens = [];
                window.__streamed = '';
                if (window.__growthObs) window.__growthObs.disconnect();
                window.__growthObs = new MutationObserver(() => {
                    const m = document.querySelector('.st-key-streaming');
                    if (m) {
                        window.__lens.push(m.textContent.length);
                        window.__streamed = m.textContent;
                    }
                });
                window.__growthObs.observe(document.body, {subtree: true, childList: true,
                                                          characterData: true});
            }"""
        )

    def streamed(self) -> str:
        return self.page.evaluate("window.__streamed || ''")

    def last_body(self) -> str:
        """The text of the last chat message as shown (its markdown, no captions or buttons)."""
        last = self.page.locator("[data-testid=stChatMessageContent]").last
        body = last.locator("[data-testid=stMarkdown] [data-testid=stMarkdownContainer]")
        return "\n".join(body.all_inner_texts())

    def texts(self) -> list[str]:
        return self.page.locator("[data-testid=stChatMessageContent]").all_inner_texts()

    def click(self, key: str) -> None:
        self.page.locator(f".st-key-{key} button").first.click()

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=False)


_wait_db = partial(wait_for, timeout=30.0)  # this module's wait for the database
REPLY_S = 300  # a bound for a reply (the first one loads the model), never a measure of speed


def _where(store: Any, conv_id: int) -> tuple[int, int, int]:
    """Where a chat stands: its last message's id, that message's versions, and whether it is
    an ended reply."""
    last = store.list_messages(conv_id)[-1]
    return last.id, len(last.alternatives), int(ended_reply(store, conv_id) is not None)


def _new_ended_reply(store: Any, conv_id: int, before: tuple[int, int, int] | None) -> Any:
    """The chat's last message, once it is an ended reply that was not there at `before`
    (a new message, or a new version of the last one)."""
    reply = ended_reply(store, conv_id)
    if reply is None or before is None:
        return reply
    return reply if (reply.id, len(reply.alternatives)) != before[:2] else None


def test_desktop_create_chat_regenerate_stop_reload(browser: Any, server: Any) -> None:
    tab = Page(browser, server, 1280, 900)
    page = tab.page
    tab.goto("/")
    page.wait_for_selector("text=Recent chats", timeout=120_000)
    page.wait_for_selector("text=30 layers", timeout=120_000)  # the embedded model, loaded

    # a character, made in the form
    page.locator("[data-testid=stSidebarNav] a", has_text="Characters").click()
    tab.click("new_character")
    page.locator(".st-key-cf_new_name input").fill("Aria")
    page.locator(".st-key-cf_new_description textarea").fill(
        "{{char}} is a cheerful travelling bard who loves telling stories about the sea."
    )
    page.locator(".st-key-cf_new_greeting textarea").fill("Hello, {{user}}! Care for a song?")
    page.locator("[data-testid=stFormSubmitButton] button", has_text="Save").click()
    page.wait_for_selector("text=Saved Aria", timeout=30_000)
    s = app_store(server)
    aria = s.get_character_by_name("Aria")
    assert aria is not None and aria.greetings == ["Hello, {{user}}! Care for a song?"]

    # one click to chat
    tab.click(f"chat_{aria.id}")
    tab.wait_chat()
    conv = _wait_db(lambda: s.list_conversations(aria.id))[0]
    assert f"chat={conv.id}" in page.url
    page.wait_for_selector("text=Hello, User! Care for a song?")

    # keep replies short: the chat's own sampling, in the sidebar
    page.locator("[data-testid=stSidebar] summary", has_text="Sampling").click()
    box = page.locator(f".st-key-samp_{conv.id}_max_tokens input")
    box.fill("60")
    box.press("Enter")
    assert _wait_db(lambda: s.get_conversation(conv.id).sampling.get("max_tokens") == 60)
    tab.idle()

    # three turns
    for i, line in enumerate(
        ["Hi Aria! Who are you?", "Sing me something about the sea.", "What happened next?"]
    ):
        tab.mark(conv.id)
        tab.send(line)
        tab.wait_reply(conv.id)
        msgs = s.list_messages(conv.id)
        assert msgs[-2].text == line and msgs[-1].role == "char" and msgs[-1].text.strip()
        assert any(line in t for t in tab.texts()), i
    assert page.locator("text=/\\d+ tokens · [\\d.]+ tokens\\/s/").count() >= 3
    tab.shot("chat-desktop.png")

    # regenerate: a second version, shown as 2/2
    last = s.list_messages(conv.id)[-1]
    tab.mark(conv.id)
    tab.click(f"regen_{last.id}")
    tab.wait_reply(conv.id)
    regen = s.get_message(last.id)
    assert len(regen.alternatives) == 2 and regen.chosen == 1
    page.wait_for_selector("text=2/2")
    tab.click(f"prev_{last.id}")
    page.wait_for_selector("text=1/2")
    assert _wait_db(lambda: s.get_message(last.id).chosen == 0)
    tab.idle()
    tab.shot("chat-versions-desktop.png")

    # a reply seen growing while it streams, and the Stop button keeps what was streamed. The
    # reply holds the model on purpose (greedy counting, 8192 tokens at most: it goes on until
    # stopped), so the test sees it grow and stops it without racing it; the chat opens again
    # in a new session, whose sampling panel reads the new values
    s.update_conversation(conv.id, sampling=GREEDY_LONG)
    tab.goto(f"/chat?chat={conv.id}")
    tab.wait_chat()
    tab.idle()
    tab.watch_growth()
    tab.mark(conv.id)
    tab.send(COUNTING)
    page.wait_for_function(  # seen at three lengths at least, the last past 12 characters
        """() => (window.__lens || []).length && new Set(window.__lens).size >= 3
                 && document.querySelector('.st-key-streaming')?.textContent.trim().length > 12""",
        timeout=REPLY_S * 1000,
    )
    tab.click("stop_gen")
    reply = tab.wait_reply(conv.id)
    assert reply.meta.get("stop") in ("closed", "cancel"), reply.meta
    shown, kept = tab.streamed(), tab.last_body()
    assert reply.text.strip() and reply.meta["tokens"] < 8192

    # all that streamed on screen was kept, and the page shows the whole kept text (compared
    # as letters and digits: markdown, punctuation and spacing aside)
    def letters(x: str) -> str:
        return "".join(c for c in x if c.isalnum())

    assert letters(shown) and letters(kept).startswith(letters(shown)), (shown, kept)
    assert letters(kept) == letters(reply.text), (kept, reply.text)
    try:
        page.wait_for_selector("text=stopped")
    except Exception:
        tab.shot("debug-stop.png")
        raise
    s.update_conversation(conv.id, sampling={"preset": "custom", "max_tokens": 60})

    # text from users and models is shown as text
    page.locator(".st-key-next_speaker label", has_text="(you)").click()
    tab.idle()
    evil = "<script>alert(1)</script><b>x</b>"
    tab.send(evil + " ![pic](http://example.com/x.png)")
    page.wait_for_function(
        """(evil) => [...document.querySelectorAll('[data-testid=stChatMessageContent]')]
                     .some(m => m.textContent.includes(evil))""",
        arg=evil,
        timeout=30_000,
    )
    tab.idle()
    assert page.locator("[data-testid=stChatMessageContent] b").count() == 0
    assert page.locator("[data-testid=stChatMessageContent] script").count() == 0
    assert page.locator("[data-testid=stChatMessageContent] img[src*='example.com']").count() == 0
    assert tab.dialogs == []
    page.locator(".st-key-next_speaker label", has_text="Aria").click()
    tab.idle()

    # reload: the same chat, from the URL
    before = [m.text for m in s.list_messages(conv.id)]
    page.reload()
    tab.wait_chat()
    tab.idle()
    assert f"chat={conv.id}" in page.url
    body = "\n".join(tab.texts())
    assert "Hi Aria! Who are you?" in body and "What happened next?" in body
    tab.mark(conv.id)
    tab.send("I am back.")
    tab.wait_reply(conv.id)
    after = [m.text for m in s.list_messages(conv.id)]
    assert after[: len(before)] == before and after[len(before)] == "I am back."

    # and from Home's recent chats
    tab.goto("/")
    page.wait_for_selector(f".st-key-home_resume_{conv.id}", timeout=60_000)
    tab.idle()
    tab.shot("home-desktop.png")
    tab.click(f"home_resume_{conv.id}")
    tab.wait_chat()
    tab.idle()
    assert "I am back." in "\n".join(tab.texts())
    assert tab.external == [], tab.external
    tab.ctx.close()


def test_phone_width(browser: Any, server: Any) -> None:
    s = app_store(server)
    ch = s.create_character(
        {"name": "Pocket", "description": "A tiny fox.", "greetings": ["*yips* Hello!"]}
    )
    conv = s.create_conversation(ch.id, sampling={"preset": "custom", "max_tokens": 40})
    tab = Page(browser, server, 390, 844, mobile=True)
    page = tab.page
    tab.goto(f"/chat?chat={conv.id}")
    tab.wait_chat()
    tab.idle()
    tab.mark(conv.id)
    tab.send("Hi little fox!")
    tab.wait_reply(conv.id)
    assert s.list_messages(conv.id)[-1].role == "char"
    assert "Hi little fox!" in "\n".join(tab.texts())
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 391, f"the chat is {width}px wide on a 390px screen"
    tab.shot("chat-phone.png")
    for path, name in (
        ("/", "home-phone.png"),
        ("/characters", "characters-phone.png"),
        ("/settings", "settings-phone.png"),
    ):
        tab.goto(path)
        page.wait_for_selector("h1", timeout=60_000)
        tab.idle()
        assert page.evaluate("document.documentElement.scrollWidth") <= 391, path
        tab.shot(name)
    assert tab.external == [], tab.external
    tab.ctx.close()


# A's reply holds the model on purpose, for as long as the test needs: greedy, no penalties, and
# a list this model goes on counting (past 520 at 2,500 tokens, measured), so it is still
# streaming when B has finished, and the test stops it. Nothing here races the clock.
COUNTING = "Count the mountains: list all the numbers from 1 to 1000, like this: 1, 2, 3, 4, 5,"
GREEDY_LONG = {
    "preset": "custom",
    "max_tokens": 8192,
    "temperature": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
WAITING = "Waiting for the model"
# B's message is long, so the waiting note stays up while it is fed
B_SECRET = "Secret message of B. " + " ".join(
    f"Line {i} of a long letter about rivers and boats." for i in range(40)
)


def test_two_sessions_chat_at_once(browser: Any, server: Any) -> None:
    s = app_store(server)
    a_ch = s.create_character({"name": "Alpha", "greetings": ["Alpha here."]})
    b_ch = s.create_character({"name": "Beta", "greetings": ["Beta here."]})
    a_conv = s.create_conversation(a_ch.id, sampling=GREEDY_LONG)
    b_conv = s.create_conversation(b_ch.id, sampling={"preset": "custom", "max_tokens": 40})
    a = Page(browser, server, 1280, 900)
    b = Page(browser, server, 1280, 900, watch=(WAITING,))
    a.goto(f"/chat?chat={a_conv.id}")
    b.goto(f"/chat?chat={b_conv.id}")
    a.wait_chat()
    b.wait_chat()
    a.idle()
    b.idle()
    a.mark(a_conv.id)
    a.send(COUNTING)
    a.page.wait_for_function(  # A's reply is generating (its first reply also loads the model)
        """() => { const m = document.querySelector('.st-key-streaming');
                   return m && m.textContent.trim().length > 0; }""",
        timeout=180_000,
    )
    b.send(B_SECRET)
    b_reply = _wait_db(lambda: ended_reply(s, b_conv.id), timeout=240)
    assert b_reply is not None, "B's reply did not end"
    # B's reply has ended while A's goes on: A's is at most saved so far, not ended
    assert ended_reply(s, a_conv.id) is None, "A's reply ended before B's: nothing held the model"
    b.page.wait_for_selector(".st-key-stop_gen", state="detached", timeout=60_000)
    b.idle()
    a.click("stop_gen")
    a_reply = a.wait_reply(a_conv.id)
    assert a_reply.meta["stop"] in ("cancel", "closed"), a_reply
    assert s.list_messages(b_conv.id)[-2].text == B_SECRET
    assert WAITING in b.received, "B was not told that it waits for the model"
    a_text, b_text = "\n".join(a.texts()), "\n".join(b.texts())
    assert "Secret message of B" not in a_text and "Secret message of B" in b_text
    assert "mountains" in a_text and "mountains" not in b_text
    assert a.external == [] and b.external == [], (a.external, b.external)
    (ARTIFACTS / "two-sessions.json").parent.mkdir(exist_ok=True)
    (ARTIFACTS / "two-sessions.json").write_text(json.dumps({"a": a_reply.meta, "b": b_reply.meta}))
    b.shot("two-sessions-b.png")
    a.ctx.close()
    b.ctx.close()
