"""Fixtures of the integration tests: real models loaded once and shared by the tests that only
read from them."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rwkv7_backend(tiny_models):
    """One loaded tiny RWKV-7 (cpu fp32), shared by the tests that only read from it."""
    from core.backends.rwkv import RwkvBackend

    return RwkvBackend(tiny_models(7), "cpu fp32")
