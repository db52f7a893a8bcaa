"""The OpenAI-compatible endpoints: GET /v1/models, POST /v1/chat/completions and
POST /v1/completions. (To be written.)"""

from __future__ import annotations

from starlette.routing import BaseRoute

from core.api.config import ApiConfig


def routes(config: ApiConfig) -> list[BaseRoute]:
    return []
