"""What the API needs to know of the server around it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from core import runtime
from core.auth import check_api_key, is_loopback


@dataclass
class ApiConfig:
    """What the API needs to know of the server around it."""

    # the address the server listens on (Streamlit's server.address); None/"" = every interface
    listen_address: Callable[[], str | None] = lambda: "127.0.0.1"
    # the runtime (store and model) of this process
    runtime: Callable[[], runtime.Runtime] = field(default=runtime.current)

    def key_required(self) -> bool:
        """A key is needed when a password is set or the server is reachable from elsewhere."""
        if os.environ.get("RP_PASSWORD") or not is_loopback(self.listen_address()):
            return True
        return bool(self.runtime().setting("password", ""))

    def allowed_origins(self) -> list[str]:
        value = self.runtime().setting("api_cors_origins", [])
        return [str(v).rstrip("/") for v in value] if isinstance(value, list) else []

    def key_ok(self, presented: str) -> bool:
        return check_api_key(presented, self.runtime().setting("api_keys", []))
