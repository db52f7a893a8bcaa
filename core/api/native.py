"""The app's own endpoints under /api/: characters, chats, messages, replies. (To be written.)"""

from __future__ import annotations

from starlette.routing import BaseRoute

from core.api.config import ApiConfig


def routes(config: ApiConfig) -> list[BaseRoute]:
    return []
