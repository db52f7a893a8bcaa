"""A Store's setting methods on a dict, for fast tests of what reads and writes settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import StoreError


class MemoryStore:
    """The Store's setting methods, on a dict; `broken` makes every call fail as a damaged
    database does."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.broken = False

    def get_setting(self, key: str, default: Any = None) -> Any:
        if self.broken:
            raise StoreError("no such table: app_settings")
        return self.values.get(key, default)

    def set_setting(self, key: str, value: Any) -> None:
        self.update_setting(key, lambda _old: value)

    def update_setting(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        if self.broken:
            raise StoreError("no such table: app_settings")
        self.values[key] = new = change(self.values.get(key, default))
        return new
