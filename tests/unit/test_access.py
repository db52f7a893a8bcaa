"""Allowed origins as Settings checks them (core/access.py): exactly what the API's guard
compares (scheme://host[:port], lower case, no trailing slash), and nothing else."""

from __future__ import annotations

import pytest

from core.access import AccessError, parse_origin, parse_origins


@pytest.mark.parametrize(
    ("given", "saved"),
    [
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://localhost:8000/", "http://localhost:8000"),
        ("HTTPS://Example.ORG", "https://example.org"),
        ("http://[::1]:5173", "http://[::1]:5173"),
        ("http://192.168.1.20:3000", "http://192.168.1.20:3000"),
        ("tauri://localhost", "tauri://localhost"),
        ("  * ", "*"),
    ],
)
def test_origins_that_are_kept(given: str, saved: str) -> None:
    assert parse_origin(given) == saved


@pytest.mark.parametrize(
    "bad",
    [
        "localhost:8000",  # no scheme
        "http://localhost:8000/app",  # a path
        "http://localhost:8000//",
        "http://localhost:8000?x=1",
        "http://user@localhost",
        "http://localhost:0",
        "http://localhost:65536",
        "http://-bad-.example",
        "http://",
        "*.example.org",
    ],
)
def test_what_is_not_an_origin_is_refused(bad: str) -> None:
    with pytest.raises(AccessError, match="is not an origin") as e:
        parse_origin(bad)
    assert e.value.code == "bad_origin" and e.value.value == bad


def test_a_list_one_a_line_or_by_commas_without_duplicates() -> None:
    text = "http://a.example\nhttp://b.example:81, http://A.example/\n\n"
    assert parse_origins(text) == ["http://a.example", "http://b.example:81"]
    assert parse_origins("") == []
    with pytest.raises(AccessError):
        parse_origins("http://a.example\nhttp://a.example/x")
