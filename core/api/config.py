"""What the API needs to know of the server around it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core import runtime
from core.api.errors import ApiError
from core.auth import check_api_key
from core.errors import AppError

if TYPE_CHECKING:
    from core.engine import Engine
    from core.engine.sampler import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class ApiConfig:
    """What the API needs to know of the server around it."""

    # the address the server listens on (Streamlit's server.address); None/"" = every interface
    listen_address: Callable[[], str | None] = lambda: "127.0.0.1"
    # the runtime (store and model) of this process
    runtime: Callable[[], runtime.Runtime] = field(default=runtime.current)

    def ready(self) -> tuple[Engine, SamplingParams]:
        """The loaded engine (loading it now if need be: Runtime.require_engine, the one readiness
        rule of every front end) and the sampling a request starts from (the app's default preset,
        as a new chat gets it; the request's fields override it). Blocking: call it in a thread."""
        rt = self.runtime()
        return rt.require_engine(), rt.chat.params(None)

    def key_required(self) -> bool:
        """A key is needed when a password is set or the server is reachable from elsewhere
        (core.auth.password_policy, the pages' rule). When the password setting cannot be
        read, whatever the reason, nothing passes: 503 saying why."""
        try:
            return self.runtime().password_policy(self.listen_address()).keys_required
        except AppError as e:
            raise _locked("The password setting", "password_unreadable", str(e)) from None
        except Exception:  # a bug or a failure we did not foresee: still shut, and logged
            log.exception("reading the password rule failed")
            raise _locked("The password setting", "password_unreadable", LOGGED) from None

    def password_set(self) -> bool:
        """A password is in force (core.api.hosts.HostGuard: any Host may then be served); raises
        when the setting cannot be read."""
        return bool(self.runtime().password_policy(self.listen_address()).password)

    def allowed_origins(self) -> list[str]:
        return [origin.rstrip("/") for origin in self.runtime().settings.api_origins()]

    def key_ok(self, presented: str) -> bool:
        """Whether `presented` is one of the saved keys. When the keys cannot be read, no key
        is taken for wrong: 503 saying why (the server's fault, not the client's)."""
        try:
            records = self.runtime().settings.saved_api_keys()
        except AppError as e:
            raise _locked("The API keys", "api_keys_unreadable", str(e)) from None
        except Exception:
            log.exception("reading the API keys failed")
            raise _locked("The API keys", "api_keys_unreadable", LOGGED) from None
        return check_api_key(presented, records)


LOGGED = "the server's log has details."


def _locked(what: str, code: str, why: str) -> ApiError:
    return ApiError(503, f"{what} cannot be read, so the API stays locked: {why}", code=code)
