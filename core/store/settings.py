"""The app's settings (table app_settings: a key and a JSON value): read one, set one, or change
one from its current value in one write transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import StoreError
from core.store.base import StoreBase
from core.store.models import AppSetting
from core.store.validation import MAX_SHORT, check_json


class SettingsMixin(StoreBase):
    """get_setting, set_setting, update_setting, setting_str."""

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read() as s:
            row = s.get(AppSetting, key)
            return default if row is None else row.value

    def setting_str(self, key: str) -> str:
        value = self.get_setting(key, "")
        return value if isinstance(value, str) else ""

    def set_setting(self, key: str, value: Any) -> None:
        self.update_setting(key, lambda _old: value)

    def update_setting(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Set a setting to `change(its value)` in one write transaction, so that two callers
        changing it at once (two sessions, the API) never lose one another's change; returns
        the new value. An exception from `change` leaves the setting as it was."""
        if not isinstance(key, str) or not key or len(key) > MAX_SHORT:
            raise StoreError("A setting's key must be non-empty text of at most 200 characters.")
        with self._write() as s:
            row = s.get(AppSetting, key)
            new = change(default if row is None else row.value)
            value = check_json(new, f"The setting {key!r}")
            if row is None:
                s.add(AppSetting(key=key, value=value))
            else:
                row.value = value
                s.add(row)
        return value
