"""AppTest of Settings, API: when a key is needed and why, keys created (shown once, then only
their prefix) and revoked, allowed origins saved or refused with a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.auth import check_api_key, hash_password
from tests.support.ui import check, errors, open_app, store

PAGE = "pages/settings.py"


def _texts(at: Any) -> str:
    """Everything written on the page, as one text (markdown escapes removed)."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.value for e in [*at.success, *at.info, *at.warning, *at.error]]
    parts += [c.value for c in at.code]
    return "\n".join(parts).replace("\\", "")


def _create_key(at: Any, name: str) -> Any:
    at.text_input(key="api_key_name").input(name)
    for b in at.button:
        if b.key and b.key.startswith("FormSubmitter:api_key_form"):
            b.click()
            break
    else:
        raise AssertionError("no Create button")
    return check(at.run())


def _save_origins(at: Any, text: str) -> Any:
    at.text_area(key="api_origins").input(text)
    for b in at.button:
        if b.key and b.key.startswith("FormSubmitter:api_origins_form"):
            b.click()
            break
    else:
        raise AssertionError("no Save origins button")
    return check(at.run())


def test_a_key_is_shown_once_then_only_its_prefix_and_can_be_revoked(app_env: Path) -> None:
    at = open_app(PAGE)
    assert "API calls need no key now" in _texts(at)  # loopback, no password
    assert "No key yet." in _texts(at)
    assert "/v1" in _texts(at) and "/api" in _texts(at)

    _create_key(at, "SillyTavern")
    shown = [c.value for c in at.code if c.value.startswith("rp-")]
    assert len(shown) == 1, shown
    key = shown[0]
    records = store().get_setting("api_keys")
    assert [r["name"] for r in records] == ["SillyTavern"]
    assert key not in str(records)  # only its hash is stored
    assert check_api_key(key, records)
    assert any("shown only this once" in s.value for s in at.success)

    at.run()  # any later run: the key is gone from the page, its prefix stays
    check(at)
    page = _texts(at)
    assert key not in page
    assert records[0]["shown"] in page and "SillyTavern" in page

    # a second session never sees it either
    other = open_app(PAGE)
    assert key not in _texts(other) and "SillyTavern" in _texts(other)

    # a nameless key is refused with a message
    _create_key(at, "   ")
    assert any("Give the key a name" in e for e in errors(at)), errors(at)
    assert len(store().get_setting("api_keys")) == 1

    # revoke (the button sits in a confirmation popover)
    at.button(key=f"api_revoke_{records[0]['id']}").click().run()
    check(at)
    assert store().get_setting("api_keys") == []
    assert not check_api_key(key, store().get_setting("api_keys"))
    assert "The key SillyTavern was revoked." in _texts(at)
    assert "No key yet." in _texts(at)


def test_with_a_password_the_page_says_a_key_is_needed(app_env: Path) -> None:
    store().set_setting("password", hash_password("secret"))
    at = open_app()  # the password form first
    at.text_input[0].input("secret")
    at.button[0].click().run()
    check(at)
    at.switch_page(PAGE).run()
    check(at)
    assert "needs a key now" in _texts(at) and "a password is set" in _texts(at)


def test_origins_are_checked_and_saved(app_env: Path) -> None:
    at = open_app(PAGE)
    _save_origins(at, "http://localhost:8000/\nhttps://Example.org:8443 , http://localhost:8000")
    assert store().get_setting("api_cors_origins") == [
        "http://localhost:8000",
        "https://example.org:8443",
    ]
    assert any("Allowed origins saved: 2." in s.value for s in at.success)
    assert not at.warning

    # a path, or a bare host, is refused with a clear message; nothing is saved
    for bad in ("http://localhost:8000/app", "localhost:8000"):
        _save_origins(at, f"http://ok.example\n{bad}")
        shown = [e.replace("\\", "") for e in errors(at)]
        assert any("is not an origin" in e and bad in e for e in shown), shown
        assert store().get_setting("api_cors_origins") == [
            "http://localhost:8000",
            "https://example.org:8443",
        ]

    # "*" is allowed, with a warning that stays while it is there
    _save_origins(at, "*")
    assert store().get_setting("api_cors_origins") == ["*"]
    assert any("every web site" in w.value for w in at.warning)
    check(at.run())
    assert any("every web site" in w.value for w in at.warning)

    # emptied: nothing allowed any more
    _save_origins(at, "")
    assert store().get_setting("api_cors_origins") == []
