"""Fixtures of the browser tests: Playwright with Debian's Chromium, one browser per module
(each module starts its own server as the fixture `server`)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.server import CHROMIUM, CHROMIUM_ARGS, playwright_api


@pytest.fixture(scope="module")
def sync_api() -> Any:
    return playwright_api()


@pytest.fixture(scope="module")
def browser(sync_api: Any, server: SimpleNamespace) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
