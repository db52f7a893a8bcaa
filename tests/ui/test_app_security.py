"""AppTest of what keeps the app safe by default: on a network it shows nothing until a
password is set, an unreadable password setting locks it, password guessing is slowed down,
and one browser session's language is not another's."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit import config

from core.auth import check_password, hash_password
from tests.support.ui import chat_texts, check, errors, open_app, store

LOGIN = "FormSubmitter:login-Log in"
FIRST = "FormSubmitter:first_password-Set password"


@pytest.fixture
def on_the_network() -> Iterator[None]:
    """The server as `streamlit run Home.py --server.address 0.0.0.0` starts it."""
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", old)


def _chat_with_a_secret() -> Any:
    s = store()
    ch = s.create_character({"name": "Mira", "greetings": ["The secret is 4711."]})
    return s.create_conversation(ch.id, title="Secret plans")


def _shows_nothing_of_the_app(at: Any) -> None:
    assert not at.subheader and not at.chat_message and not at.text and not at.caption
    assert not at.chat_input and all(not (b.key or "").startswith("home_") for b in at.button)


def _log_in(at: Any, password: str) -> Any:
    at.text_input(key="login_password").input(password)
    return check(at.button(key=LOGIN).click().run())


def test_on_a_network_without_a_password_only_how_to_set_one_is_shown(
    app_env: Path, on_the_network: None, capsys: pytest.CaptureFixture[str]
) -> None:
    conv = _chat_with_a_secret()
    at = open_app()
    _shows_nothing_of_the_app(at)
    warning = at.warning[0].value
    assert "RP_PASSWORD" in warning and "setup code" in warning
    labels = [t.label for t in at.text_input]
    assert labels == ["Setup code", "New password", "Repeat the password"]
    # a direct link to the chat shows no more
    at.switch_page("pages/chat.py")
    at.query_params["chat"] = str(conv.id)
    _shows_nothing_of_the_app(check(at.run()))

    # the form takes only the code printed in the server's terminal
    code = re.findall(r"setup code for the first password: (\S+)", capsys.readouterr().err)
    assert len(code) == 1
    at.text_input(key="setup_code").input("a guess")
    at.text_input(key="first_password_1").input("open sesame")
    at.text_input(key="first_password_2").input("open sesame")
    check(at.button(key=FIRST).click().run())
    assert errors(at) == ["Wrong setup code."]
    assert store().get_setting("password") is None
    at.text_input(key="setup_code").input(code[0])
    check(at.button(key=FIRST).click().run())
    assert check_password("open sesame", store().get_setting("password"))
    assert "The secret is 4711." in chat_texts(at)  # this session is in, on the chat it asked for

    # from now on every new session asks for the password
    other = open_app()
    assert [t.label for t in other.text_input] == ["Password"]
    _shows_nothing_of_the_app(other)
    assert _log_in(other, "open sesame").subheader


def test_on_this_machine_only_no_password_is_asked(app_env: Path) -> None:
    _chat_with_a_secret()
    at = open_app()  # the project's config: server.address = 127.0.0.1
    assert config.get_option("server.address") == "127.0.0.1"
    assert [s.value for s in at.subheader] == ["Characters", "Recent chats"]
    assert "Secret plans" in [t.value for t in at.text]


def test_a_password_setting_that_cannot_be_read_locks_the_app(app_env: Path) -> None:
    _chat_with_a_secret()
    store().set_setting("password", hash_password("open sesame"))
    assert [t.label for t in open_app().text_input] == ["Password"]
    with sqlite3.connect(app_env / "app.db") as db:  # the database is damaged under the app
        db.execute("DROP TABLE app_settings")
    at = open_app()
    [error] = errors(at)
    assert error.startswith("The password setting cannot be read, so the app stays locked:")
    assert "no such table" in error
    _shows_nothing_of_the_app(at)
    assert not at.text_input  # not even a login form: nothing to check a password against


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app_env: Path) -> Clock:
    """The app's login limiter on a clock that moves only when the test moves it."""
    from pages.ui_common import login_limiter

    fake = Clock()
    login_limiter().clock = fake
    return fake


def test_wrong_passwords_make_the_next_try_wait(
    app_env: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RP_PASSWORD", "open sesame")
    at = open_app()
    shown = [errors(_log_in(at, "guess")) for _ in range(3)]
    assert shown == [
        ["Wrong password."],
        ["Wrong password."],
        ["Wrong password. Your next try is taken in 1 s."],
    ]
    _log_in(at, "open sesame")  # too early: not even looked at
    assert [w.value for w in at.warning] == ["Too many tries. Wait 1 s, then try again."]
    assert [t.label for t in at.text_input] == ["Password"]
    clock.now += 1
    assert not errors(_log_in(at, "open sesame")) and at.session_state["authenticated"]


def test_new_sessions_cannot_get_round_the_limit(
    app_env: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RP_PASSWORD", "open sesame")
    for _ in range(10):  # a guesser opening a new session for every try
        assert errors(_log_in(open_app(), "guess")) == ["Wrong password."]
    late = _log_in(open_app(), "open sesame")
    assert [w.value for w in late.warning] == ["Too many tries. Wait 60 s, then try again."]
    clock.now += 60
    assert _log_in(late, "open sesame").session_state["authenticated"]


def test_a_session_that_once_logged_in_is_not_locked_out(
    app_env: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RP_PASSWORD", "open sesame")
    owner = _log_in(open_app(), "open sesame")
    assert owner.session_state["authenticated"]
    for _ in range(9):  # a guesser uses up the tries of the minute (the owner's was one)
        assert errors(_log_in(open_app(), "guess")) == ["Wrong password."]
    late = _log_in(open_app(), "open sesame")
    assert [w.value for w in late.warning] == ["Too many tries. Wait 60 s, then try again."]
    owner.session_state["authenticated"] = False  # asked again (the page reloaded its state)
    check(owner.run())
    assert [t.label for t in owner.text_input] == ["Password"]
    assert not _log_in(owner, "open sesame").warning and owner.session_state["authenticated"]


def test_switching_the_language_changes_only_this_session(app_env: Path) -> None:
    mine = open_app("pages/settings.py")
    theirs = open_app()
    mine.radio(key="set_language").set_value("zh").run()
    assert check(mine).title[0].value == "设置"
    assert check(theirs.run()).title[0].value == "RWKV Role Play"
    assert open_app().title[0].value == "RWKV 角色扮演"  # the default of new sessions
