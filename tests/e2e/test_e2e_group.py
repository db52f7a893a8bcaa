"""End to end, a group chat: `streamlit run Home.py` with the embedded model (SmolLM2-135M through
llama.cpp), driven by headless Chromium. Three characters are picked on Home to start a group
chat; the members show in the chat's header; a message gets a reply by the member the "in turn"
order chooses, under that member's name; the user picks the next speaker by hand; a member is
muted. Then the auto mode ("Let them talk"), stopped with a real mouse click at its first, second
and last turn, by the reply's Stop and by "Stop auto mode" (issue 23: at turn 2 the click used
to miss). Screenshots go to the test's tmp directory and artifacts/. No request leaves
localhost.

Without Chromium, Playwright or the embedded model the test skips, saying which is missing;
under CI=true it fails instead."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import REPO
from tests.support.server import app_store, embedded_app, settle, track_runs, wait_for

pytestmark = pytest.mark.timeout(900)
LOCAL = ("http://localhost", "ws://localhost", "http://127.0.0.1", "ws://127.0.0.1")
LOCAL += ("data:", "blob:", "about:")
CAST = {
    "Ada": "{{char}} is the ship's captain, calm and brief.",
    "Ben": "{{char}} is the ship's engineer, who loves his engines.",
    "Cyra": "{{char}} is the ship's navigator, curious about the stars.",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_app(tmp_path_factory.mktemp("e2e-group"), host="localhost") as app:
        yield app


_wait_db = partial(wait_for, timeout=60.0)  # this module's wait for the database


def test_a_group_chat_of_three_in_the_browser(browser: Any, server: Any, tmp_path: Path) -> None:
    s = app_store(server)
    ids = {}
    for name, description in CAST.items():
        c = s.create_character(
            {"name": name, "description": description, "greetings": [f"{name} here."]}
        )
        ids[name] = c.id

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    track_runs(page)
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(LOCAL) else external.append(r.url))

    def idle() -> None:
        settle(page)

    def click(key: str) -> None:
        page.locator(f".st-key-{key} button").first.click()

    def choose(key: str, option: str) -> None:
        box = page.locator(f".st-key-{key} [role=combobox]").first
        box.click()
        box.fill(option)  # typing opens the list, filtered
        page.locator("[role=option]", has_text=option).first.click()
        idle()

    def reply_after(act: Any, first: bool = False) -> None:
        """Do `act` (a send, a click) and wait for the reply it starts to end: saved with its
        stop reason (read from the database, so a reply too short for the Stop button to be
        seen counts too), and the page's runs over."""
        before = s.list_messages(conv.id)[-1].id
        act()
        reply = wait_for(lambda: (r := last_reply()) and r.id != before and r, 300)
        assert reply, page.inner_text("body")[-1500:]
        idle()  # and the Stop button gone once the browser has drawn the last run
        page.wait_for_selector(".st-key-stop_gen", state="detached", timeout=60_000)

    def last_reply() -> Any:
        last = s.list_messages(conv.id)[-1]
        return last if last.meta.get("stop") not in (None, "interrupted") else None

    # Home: pick three characters, start the group chat
    page.goto(server.url + "/")
    page.wait_for_selector("text=Recent chats", timeout=120_000)
    page.wait_for_selector("text=30 layers", timeout=120_000)  # the embedded model, loaded
    page.locator("[data-testid=stExpander] summary", has_text="New group chat").click()
    idle()
    tags = page.locator(".st-key-group_new_pick [data-testid=stMultiSelectTagsContainer]")
    for name in CAST:
        choose("group_new_pick", name)
        tags.get_by_text(name, exact=True).wait_for()
        page.keyboard.press("Escape")
        idle()
    click("group_new_start")
    page.wait_for_selector("[data-testid=stChatInputTextArea]", timeout=120_000)
    conv = _wait_db(lambda: s.list_conversations(ids["Ada"]))[0]
    assert conv.members == [ids[n] for n in CAST] and f"chat={conv.id}" in page.url
    header = page.locator(".st-key-group_header")
    for name in CAST:
        header.get_by_text(name, exact=True).wait_for()
    assert header.locator("img").count() == 3  # each member's avatar
    idle()

    # short replies, and the members speak in turn
    page.locator("[data-testid=stSidebar] summary", has_text="Sampling").click()
    box = page.locator(f".st-key-samp_{conv.id}_max_tokens input")
    box.fill("40")
    box.press("Enter")
    assert _wait_db(lambda: s.get_conversation(conv.id).sampling.get("max_tokens") == 40)
    idle()
    page.locator("[data-testid=stSidebar] summary", has_text="Group").click()
    choose(f"group_mode_{conv.id}", "In turn")
    assert _wait_db(lambda: s.get_conversation(conv.id).group["activation"] == "list")

    # a message: Ada answers (in turn after Cyra's greeting), under her name
    box = page.locator("[data-testid=stChatInputTextArea]")
    box.fill("Good morning, crew! What is our status?")
    reply_after(lambda: box.press("Enter"), first=True)
    reply = _wait_db(last_reply)
    assert reply.name == "Ada" and reply.character_id == ids["Ada"] and reply.text.strip()
    names = page.locator("[data-testid=stChatMessage] [data-testid=stCaptionContainer]")
    _wait_db(lambda: "Ada" in names.all_inner_texts()[-2:])

    # the user picks Ben by hand
    page.locator(".st-key-group_next label", has_text="Ben").click()
    idle()
    reply_after(lambda: click("generate_next"))
    reply = _wait_db(lambda: (r := last_reply()) and r.name == "Ben" and r)
    assert reply and reply.character_id == ids["Ben"]

    # mute Cyra: the header says so
    click(f"group_mute_{ids['Cyra']}")
    assert _wait_db(lambda: s.get_conversation(conv.id).group["muted"] == [ids["Cyra"]])
    header.get_by_text("Cyra (muted)").wait_for()
    idle()

    shot = tmp_path / "group-chat.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    assert external == []
    ctx.close()
    s.close()


# Each turn of the auto mode must be long enough to be stopped by a click, and the turns before
# it must end by themselves, whatever the machine's speed. So: greedy sampling on a list the
# embedded model goes on counting (tests/e2e/test_e2e.py: past 520 at 2,500 tokens), and the
# members who speak before the one to stop get " 15," as a stop string: their turn counts to 14
# and ends there (the model's choice, not the clock's), and the next one counts on.
COUNTING = "Count the mountains: list all the numbers from 1 to 1000, like this: 1, 2, 3, 4, 5,"
GREEDY_LONG = {
    "preset": "custom",
    "max_tokens": 8192,
    "temperature": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
ARTIFACTS = REPO / "artifacts"


@pytest.mark.parametrize(
    ("turn", "button"),
    [(1, "stop_gen"), (2, "stop_gen"), (3, "stop_gen"), (2, "group_auto")],
    ids=["stop-turn-1", "stop-turn-2", "stop-last-turn", "stop-auto-mode-turn-2"],
)
def test_stop_ends_the_auto_mode_at_any_turn(
    browser: Any, server: Any, tmp_path: Path, turn: int, button: str
) -> None:
    s = app_store(server)
    names = [f"{n}{turn}{button[-3:]}" for n in ("Ada", "Ben", "Cyra")]
    ids = []
    for i, name in enumerate(names):
        stops = [" 15,"] if i < turn - 1 else []  # those before the turn to stop end soon
        c = s.create_character(
            {"name": name, "greetings": [f"{name} here."], "stop_strings": stops}
        )
        ids.append(c.id)
    conv = s.create_group_conversation(ids, sampling=GREEDY_LONG)
    s.update_group_settings(conv.id, activation="list", auto_turns=3)
    s.add_message(conv.id, "user", COUNTING)
    n = len(s.list_messages(conv.id))

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    track_runs(page)
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(LOCAL) else external.append(r.url))
    page.goto(f"{server.url}/chat?chat={conv.id}")
    auto = page.locator(".st-key-group_auto button")
    auto.filter(has_text="Let them talk").wait_for(timeout=180_000)
    settle(page)
    auto.click()  # a real click: the button keeps the focus, as a user's does

    # the turn to stop is streaming: its message under the member's name, with text in it
    speaking = names[turn - 1]
    page.wait_for_function(
        """(name) => {
            const box = document.querySelector('.st-key-streaming');
            const msg = box && box.closest('[data-testid=stChatMessage]');
            return msg && msg.innerText.startsWith(name) && box.innerText.trim().length > 0;
        }""",
        arg=speaking,
        timeout=240_000,
    )
    # while a member speaks, "Stop auto mode" shows under the reply
    assert auto.inner_text().strip().endswith("Stop auto mode"), auto.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"group-auto-turn-{turn}-running.png"), full_page=False)
    # a real mouse click (press and release), on the button shown now
    page.locator(f".st-key-{button}[data-stale=false] button").click(timeout=30_000)
    auto.filter(has_text="Let them talk").wait_for(timeout=60_000)
    settle(page)
    msgs = s.list_messages(conv.id)[n:]
    assert [m.name for m in msgs] == names[:turn], [(m.name, m.meta.get("stop")) for m in msgs]
    assert all(m.meta.get("stop") == "stop" for m in msgs[:-1]), [m.meta for m in msgs]
    assert msgs[-1].meta.get("stop") in ("closed", "cancel"), msgs[-1].meta
    page.locator("text=stopped").last.wait_for()
    settle(page)
    assert len(s.list_messages(conv.id)) == n + turn  # nothing ran after the Stop

    shot = f"group-auto-stopped-turn-{turn}-{button}.png"
    page.screenshot(path=str(ARTIFACTS / shot), full_page=False)
    assert external == []
    ctx.close()
    s.close()
