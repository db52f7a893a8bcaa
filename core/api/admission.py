"""How many generations the API runs at once: one count for the OpenAI-compatible endpoints
(/v1) and the app's own (/api), so neither can fill the server behind the other's back.

Each generation is a thread and a state in memory, and they all take turns on the one model:
beyond MAX_ACTIVE a request is refused at once with a 429 that says so, before anything is
stored or fed. Issue 21: 40 streams at once on /api were all accepted (only /v1 counted), and
the last one's first token came after 630 s.

    release = admission_for(config).admit(n)   # ApiError 429 when n more do not fit
    ...                                        # the generations run
    release()                                  # once they are over (idempotent)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from core.api.config import ApiConfig
from core.api.errors import ApiError

# generations (alternatives of all requests, /v1 and /api together) running at once
MAX_ACTIVE = 32


class Admission:
    """The count of an API app's running generations, shared by all its routes."""

    def __init__(self) -> None:
        self.active = 0
        self._lock = threading.Lock()

    def admit(self, n: int = 1) -> Callable[[], None]:
        """Count `n` generations in, or refuse them (ApiError 429); returns their release,
        which counts them out once, however often it is called."""
        with self._lock:
            if self.active + n > MAX_ACTIVE:
                raise ApiError(
                    429,
                    f"{self.active} generations are running, at most {MAX_ACTIVE} at once: "
                    "try again when one has ended.",
                    code="too_many_generations",
                )
            self.active += n
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self.active -= n

        return release


_shared: dict[int, Admission] = {}
_shared_lock = threading.Lock()


def admission_for(config: ApiConfig) -> Admission:
    """The one Admission of the API app built on `config`: its /v1 and /api routes are made
    from the same config (core.api.app.api_routes), so they get the same count."""
    key = id(config)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = _shared[key] = Admission()
            weakref.finalize(config, _forget, key)
        return found


def _forget(key: int) -> None:
    with _shared_lock:
        _shared.pop(key, None)
