"""AppTest helpers of the page tests (tests/ui/; their fixtures are in tests/ui/conftest.py):
open the app as a new browser session, fill the character form, read the chat back."""

from __future__ import annotations

from typing import Any

from streamlit.testing.v1 import AppTest

from tests.support import REPO

HOME = str(REPO / "Home.py")
TIMEOUT = 90  # seconds for one AppTest run (real generation with the tiny model)
SMALL_REPLY = 8  # max_tokens used by the tests: replies stay short and fast


def open_app(page: str | None = None, loaded: bool = True, **query: str) -> AppTest:
    """A new browser session on the app (optionally switched to `page`, e.g. "pages/chat.py").
    With `loaded` (the default) the model is loaded first, as when the session opens after the
    server's background load ended; tests of the page while it loads pass False."""
    import pages.models_ui as models_ui
    import pages.ui_common as ui_common

    # a page that says the model loads runs itself again until it is ready: AppTest's run()
    # would wait for that; tests run the page again themselves (wait_model)
    ui_common.LOADING_REFRESH_S = 0
    models_ui.REFRESH_S = 0  # likewise for a download's or a conversion's bar
    if loaded:
        wait_model()
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def wait_model(at: AppTest | None = None) -> AppTest | None:
    """Wait for the app's model as the server would have loaded it (started now if nothing
    loads it: a model unloaded on purpose or that failed stays so); then run `at` again, as
    the page does by itself when the load ends."""
    from core import runtime

    runtime.current().wait_engine()
    if at is not None:
        at.run()
        check(at)
    return at


def follow(at: AppTest, page: str) -> AppTest:
    """After a click that called st.switch_page: the run already drew `page`, but AppTest's next
    run() would run the page it switched to last; tell it where the browser now is."""
    at.switch_page(page)
    return at


def check(at: AppTest) -> AppTest:
    """Fail on an exception shown by the page (a traceback must never reach the user)."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def store() -> Any:
    """A second Store on the test's data directory, to look at what the pages saved."""
    from core.store import open_store

    return open_store()


def keys(at: AppTest, prefix: str) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith(prefix)]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def chat_texts(at: AppTest) -> list[str]:
    """The markdown bodies of the chat messages on the page, in order."""
    out: list[str] = []
    for msg in at.chat_message:
        out += [m.value for m in msg.markdown]
    return out


def create_character(at: AppTest, name: str, **fields: str) -> AppTest:
    """Fill and submit the character form on the Characters page."""
    at.button(key="new_character").click().run()
    check(at)
    at.text_input(key="cf_new_name").input(name)
    for field, value in fields.items():
        at.text_area(key=f"cf_new_{field}").input(value)
    form_save(at).run()
    return check(at)


def form_save(at: AppTest) -> Any:
    for b in at.button:
        if b.key and b.key.startswith("FormSubmitter:cf_") and b.label in ("Save", "保存"):
            return b.click()
    raise AssertionError("no Save button of the character form")


def click_during_reply(monkeypatch: Any, key: str, reply: int = 1) -> list[str]:
    """Make a click on the button `key` land while the page streams its `reply`-th reply from
    now on (1: the next one), as it does in a browser: the click's rerun request reaches the
    running script after the reply's first piece was shown; the script stops at its next
    write (st.write_stream) and runs again with the button clicked, its on_click first.
    AppTest cannot click while a script runs; this is that click, made from the script's own
    thread with the widget id the button has in this run (so a button the page did not draw
    during the reply cannot be clicked). Every piece is sent to the page as it comes (no
    batching), so the reply's next piece, if it has one, is where the click interrupts it.
    Returns the pieces the page streamed, all replies together; the hook is removed after the
    click."""
    from streamlit.proto.WidgetStates_pb2 import WidgetStates
    from streamlit.runtime.scriptrunner import RerunData, get_script_run_ctx

    from core.engine import Engine
    from pages.ui_common import StreamText

    monkeypatch.setattr(StreamText, "INTERVAL", 0.0)

    real_reply = Engine.reply
    started = [0]
    shown: list[str] = []

    def click() -> None:
        ctx = get_script_run_ctx()
        assert ctx is not None, "not in a script run"
        widget_id = ctx.session_state._state._key_id_mapper.get_id_from_key(key, None)
        assert widget_id is not None, f"no button {key!r} on the page while the reply streams"
        states = WidgetStates()
        clicked = states.widgets.add()
        clicked.id, clicked.trigger_value = widget_id, True
        ctx.script_requests.request_rerun(
            RerunData(
                query_string=ctx.query_string,
                widget_states=states,
                page_script_hash=ctx.page_script_hash,
            )
        )

    def reply_with_click(self: Any, *args: Any, **kwargs: Any) -> Any:
        started[0] += 1
        this = started[0]
        inner = real_reply(self, *args, **kwargs)

        class Clicked:
            result = property(lambda _: inner.result)

            def __iter__(self) -> Any:
                it = iter(inner)
                try:
                    for piece in it:
                        shown.append(piece)
                        yield piece
                        if this == reply:
                            monkeypatch.setattr(Engine, "reply", real_reply)
                            click()
                finally:
                    it.close()

            def close(self) -> None:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()

        return Clicked()

    monkeypatch.setattr(Engine, "reply", reply_with_click)
    return shown
