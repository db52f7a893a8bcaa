"""The names the server answers to without a password (core/api/hosts.py, DNS rebinding)."""

from __future__ import annotations

import pytest

from core.api.hosts import host_allowed, host_name, local_request, refusal


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Evil.Example:8501", "evil.example"),
        ("localhost", "localhost"),
        ("[::1]:8501", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_the_name_of_a_host_header(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("host", "address", "allowed"),
    [
        ("localhost:8501", "127.0.0.1", True),
        ("127.0.0.1:8501", "127.0.0.1", True),
        ("[::1]:8501", "127.0.0.1", True),
        ("127.0.0.2:8501", "127.0.0.1", True),  # the whole loopback range is this machine
        (None, "127.0.0.1", True),  # HTTP/1.0 without Host: no browser sends that
        ("evil.example:8501", "127.0.0.1", False),
        ("localhost.evil.example:8501", "127.0.0.1", False),
        ("127.0.0.1.nip.io:8501", "127.0.0.1", False),
        ("192.168.1.5:8501", "127.0.0.1", False),  # not where it listens
        # the configured server address, a name or an address
        ("mypc.lan:8501", "mypc.lan", True),
        ("MyPC.lan", "mypc.lan", True),
        ("other.lan:8501", "mypc.lan", False),
        ("192.168.1.5:8501", "192.168.1.5", True),
        ("[fe80::1]:8501", "fe80::1", True),
        # every interface: the machine's addresses (the first-password page from elsewhere),
        # never a name, which is what a rebinding page comes by
        ("192.168.1.5:8501", "0.0.0.0", True),
        ("[2001:db8::5]:8501", "::", True),
        ("192.168.1.5:8501", None, True),
        ("evil.example:8501", "0.0.0.0", False),
        ("mypc.lan:8501", "", False),
    ],
)
def test_which_hosts_are_served_without_a_password(
    host: str | None, address: str | None, allowed: bool
) -> None:
    assert host_allowed(host, address) is allowed


def test_a_local_request_is_by_a_loopback_name_from_a_loopback_client() -> None:
    assert local_request("127.0.0.1:8501", "127.0.0.1")
    assert local_request("localhost:8501", "::1")
    assert not local_request("evil.example:8501", "127.0.0.1")  # a rebinding page
    assert not local_request("localhost:8501", "192.168.1.9")  # another machine
    assert not local_request(None, "127.0.0.1")
    assert not local_request("localhost:8501", None)


def test_the_refusal_names_the_settings_and_never_echoes_control_characters() -> None:
    text = refusal("evil.example:8501\r\nX: y", "127.0.0.1")
    assert "server.address" in text and "RP_PASSWORD" in text and "Settings" in text
    assert "\r" not in text and "\n" not in text and "evil.example:8501" in text
    assert "[::1] and mypc.lan" in refusal("evil.example", "mypc.lan")
    assert "IP addresses" in refusal("evil.example", "0.0.0.0")
