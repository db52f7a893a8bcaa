"""End to end, the API: a real `streamlit run Home.py` (pages and /v1 on one port) with the
embedded default model (SmolLM2-135M through llama.cpp), called with the official `openai`
Python client: /v1/models, chat completions streaming and not, raw completions streaming and
not, the same request again served from the state cache; and an API chat and a browser chat at
once (headless Chromium through Playwright), each reply landing in its own place.

Without Chromium, Playwright or the embedded model the tests skip, saying which is missing;
under CI=true they fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import openai
import pytest

from core.backends.embedded import embedded_model_path
from tests.support.server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    app_store,
    embedded_app,
    ended_reply,
    playwright_api,
    settle,
    track_runs,
    wait_for,
)

pytestmark = pytest.mark.timeout(900)

GREEDY = {"temperature": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
MESSAGES = [
    {"role": "system", "content": "You are Mira, a travelling cartographer."},
    {"role": "user", "content": "Where does the salt road lead?"},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with embedded_app(tmp_path_factory.mktemp("api-e2e")) as app:
        yield app


@pytest.fixture(scope="module")
def client(server: SimpleNamespace) -> openai.OpenAI:
    # no key: the server listens on loopback and no password is set; the first call also loads
    # the model, so the timeout is generous (nothing here is timed)
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def test_models_lists_the_loaded_model(client: openai.OpenAI) -> None:
    # before the first request loads it, the model is named by the choice ("embedded"), then by
    # its file
    ids = [m.id for m in client.models.list().data]
    assert len(ids) == 1 and ids[0]
    client.completions.create(model=ids[0], prompt="Hello", max_tokens=1)
    assert [m.id for m in client.models.list().data] == [embedded_model_path().name]  # type: ignore[union-attr]


def test_chat_completion_whole_then_streamed_then_again_from_the_cache(
    client: openai.OpenAI,
) -> None:
    model = client.models.list().data[0].id
    first = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, **GREEDY)
    choice = first.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert first.usage is not None
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= 8
    assert first.model == model

    # the same request streamed: role first, then the text in pieces, then a finish reason
    chunks = list(
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=8, stream=True, **GREEDY
        )
    )
    assert chunks and chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    # greedy: the same text whether streamed or not
    assert streamed == choice.message.content

    # sent again (what a regenerate is to SillyTavern): the prompt comes from the state cache
    again = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, **GREEDY)
    assert again.choices[0].message.content == choice.message.content
    details = again.usage.prompt_tokens_details if again.usage else None
    assert details is not None and details.cached_tokens
    assert details.cached_tokens >= again.usage.prompt_tokens - 1  # type: ignore[union-attr]


def test_raw_completion_whole_and_streamed(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    prompt = "Mira unrolled the map and said:"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=6, **GREEDY)
    text = whole.choices[0].text
    assert isinstance(text, str) and text.strip()
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 6
    pieces = list(
        client.completions.create(model=model, prompt=prompt, max_tokens=6, stream=True, **GREEDY)
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == text


# The API's reply holds the model on purpose, for as long as the test needs: greedy, no
# penalties, the end-of-turn tokens banned, and a list this model goes on counting, so it is still
# streaming when the browser's reply has ended; then the test closes it. Nothing races the clock.
COUNTING = "Count the mountains: list all the numbers from 1 to 1000, like this: 1, 2, 3, 4, 5,"
# SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>
NO_END = {"0": -100, "1": -100, "2": -100}
BROWSER_MSG = "Secret message of the browser: tell me about the river boats."


def test_api_chat_and_browser_chat_at_once(server: SimpleNamespace, client: openai.OpenAI) -> None:
    sync_api = playwright_api()
    s = app_store(server)
    ch = s.create_character({"name": "Beta", "greetings": ["Beta here."]})
    conv = s.create_conversation(ch.id, sampling={"preset": "custom", "max_tokens": 24})
    convs_before = {c.id for c in s.list_conversations(limit=1000)}
    model = client.models.list().data[0].id

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            track_runs(page)
            page.goto(f"{server.url}/chat?chat={conv.id}")
            box = page.locator("[data-testid=stChatInputTextArea]")
            box.wait_for(timeout=120_000)
            settle(page)

            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": COUNTING}],
                max_tokens=4096,
                stream=True,
                logit_bias=NO_END,
                **GREEDY,
            )
            api_parts: list[str] = []
            finishes: list[str | None] = []
            chunks = iter(stream)
            for chunk in chunks:  # the API's reply is under way
                if chunk.choices and chunk.choices[0].delta.content:
                    api_parts.append(chunk.choices[0].delta.content)
                    break

            box.fill(BROWSER_MSG)
            box.press("Enter")
            reply = wait_for(lambda: ended_reply(s, conv.id), timeout=300)
            assert reply is not None, "the browser's reply did not end"

            # the API's reply went on all along: more of it comes after the browser's ended
            for chunk in chunks:
                if chunk.choices:
                    finishes.append(chunk.choices[0].finish_reason)
                    api_parts.append(chunk.choices[0].delta.content or "")
                if sum(1 for x in api_parts if x) >= 5:
                    break
            assert all(f is None for f in finishes), "the API's reply ended: nothing held it"
            stream.close()  # the client goes away: the server stops that generation

            page.wait_for_selector(".st-key-stop_gen", state="detached", timeout=120_000)
            settle(page)
            page_text = "\n".join(
                page.locator("[data-testid=stChatMessageContent]").all_inner_texts()
            )
        finally:
            browser.close()

    api_text = "".join(api_parts)
    assert api_text.strip()
    msgs = s.list_messages(conv.id)
    assert msgs[-2].role == "user" and msgs[-2].text == BROWSER_MSG
    browser_reply = msgs[-1].text.strip()
    assert browser_reply and msgs[-1].meta.get("stop") not in (None, "interrupted")
    # each reply in its own place: the page shows its chat and nothing of the API's
    assert BROWSER_MSG in page_text and "mountains" not in page_text
    assert api_text.strip() not in page_text
    assert "Secret message" not in api_text
    assert len(browser_reply) < 12 or browser_reply not in api_text  # (a short one may be "1, 2")
    # the API keeps no chats: the database holds only the browser's
    assert {c.id for c in s.list_conversations(limit=1000)} == convs_before
    assert all("mountains" not in m.text for m in msgs)

    # the server is still answering, with the model free again
    after = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, **GREEDY)
    assert after.choices[0].message.content is not None
    assert "Traceback" not in server.log.read_text()
