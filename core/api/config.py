"""What the API needs to know of the server around it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core import runtime
from core.api.errors import ApiError
from core.auth import check_api_key
from core.errors import AppError


@dataclass
class ApiConfig:
    """What the API needs to know of the server around it."""

    # the address the server listens on (Streamlit's server.address); None/"" = every interface
    listen_address: Callable[[], str | None] = lambda: "127.0.0.1"
    # the runtime (store and model) of this process
    runtime: Callable[[], runtime.Runtime] = field(default=runtime.current)

    def key_required(self) -> bool:
        """A key is needed when a password is set or the server is reachable from elsewhere
        (core.auth.password_policy, the pages' rule). When the password setting cannot be
        read, nothing passes: 503 saying why."""
        try:
            return self.runtime().password_policy(self.listen_address()).keys_required
        except AppError as e:
            raise ApiError(
                503,
                f"The password setting cannot be read, so the API stays locked: {e}",
                code="password_unreadable",
            ) from None

    def allowed_origins(self) -> list[str]:
        return [origin.rstrip("/") for origin in self.runtime().settings.api_origins()]

    def key_ok(self, presented: str) -> bool:
        return check_api_key(presented, self.runtime().settings.api_keys())
