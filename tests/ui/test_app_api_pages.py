"""The app's own API and the pages are one app: a message posted and answered through /api/
shows in the Chat page (AppTest), and a chat started and continued in the pages is listed, with
its messages, by the API. The API runs on a real server in this process (uvicorn), on the same
data directory and model as the pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from pages.ui_common import md_text
from tests.support.api_server import api_server
from tests.support.ui import SMALL_REPLY, chat_texts, check, follow, open_app, store

CHAT = "pages/chat.py"


@pytest.fixture
def api(app_env: Path) -> Iterator[httpx.Client]:
    with api_server() as base, httpx.Client(base_url=base, timeout=180) as client:
        yield client


def test_what_the_api_does_shows_in_the_chat_page(api: httpx.Client) -> None:
    s = store()
    character = s.create_character({"name": "Aria", "greetings": ["Hello, {{user}}."]})
    chat_id = api.post(f"/api/characters/{character.id}/chats").json()["id"]
    r = api.post(
        f"/api/chats/{chat_id}/messages",
        json={"text": "Written through the API.", "max_tokens": SMALL_REPLY, "seed": 3},
    )
    assert r.status_code == 200, r.text
    reply = r.json()["message"]["text"]
    assert reply.strip()

    at = open_app(CHAT, chat=str(chat_id))
    texts = chat_texts(at)
    assert texts[0] == "Hello, User."
    assert "Written through the API." in texts[1]
    assert len(texts) == 3 and texts[2] == md_text(reply)  # the reply, as the page shows text

    # an edit and a deleted message through the API show too
    first_reply = store().list_messages(chat_id)[-1]
    api.put(f"/api/messages/{first_reply.id}", json={"text": "Edited by the API."})
    check(at.run())
    assert "Edited by the API." in chat_texts(at)[-1]
    api.delete(f"/api/messages/{first_reply.id}")
    check(at.run())
    assert len(chat_texts(at)) == 2


def test_a_chat_made_in_the_pages_is_listed_by_the_api(api: httpx.Client) -> None:
    s = store()
    character = s.create_character({"name": "Bea", "greetings": ["Hi."]})
    at = open_app()
    at.switch_page("pages/characters.py").run()
    check(at)
    at.button(key=f"chat_{character.id}").click().run()
    check(at)
    follow(at, CHAT)
    chats = api.get(f"/api/characters/{character.id}/chats").json()["data"]
    assert len(chats) == 1
    chat_id: Any = chats[0]["id"]
    at.number_input(key=f"samp_{chat_id}_max_tokens").set_value(SMALL_REPLY).run()
    at.chat_input(key="chat_input").set_value("Written in the page.").run()
    check(at)
    messages = api.get(f"/api/chats/{chat_id}/messages").json()["data"]
    assert [(m["role"], m["name"]) for m in messages] == [
        ("char", "Bea"),
        ("user", "User"),
        ("char", "Bea"),
    ]
    assert messages[1]["text"] == "Written in the page."
    assert messages[2]["text"] == store().list_messages(chat_id)[-1].text
    assert messages[2]["meta"]["tokens"] <= SMALL_REPLY
