"""What a test does when something it needs is not installed (the embedded model, Chromium,
Playwright): on a developer's machine it skips and says why; under CI=true it fails with the same
reason, so a broken install can never pass as a row of skips."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test because of `reason`; fail it instead under CI=true."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)
