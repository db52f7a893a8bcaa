"""What the batching tests of both back ends share: four small chats, and a way to hold the
model thread busy until several generations have asked for their first pass (so that they share
it, without any timing)."""

from __future__ import annotations

import threading
import time

from core.backends.model_thread import submit
from core.engine import Engine
from core.prompt import CharacterContext, Message

CHATS = [
    (
        CharacterContext(name=name, user_name="Bob", persona=f"{name} is {what}."),
        [
            Message("char", f"Hello, I am {name}."),
            Message("user", f"Tell me about {topic}, please."),
        ],
    )
    for name, what, topic in (
        ("Alice", "a cheerful cat", "fish"),
        ("Mira", "a lighthouse keeper", "storms"),
        ("Pip", "a chatty robot", "gardens"),
        ("Rook", "a grumpy crow", "shiny things"),
    )
]


class HeldModel:
    """Holds the model thread busy until `n` jobs wait in the batcher, so they share a pass."""

    def __init__(self, engine: Engine, n: int) -> None:
        self.engine, self.n = engine, n
        self.go = threading.Event()
        self.fut = submit(self.go.wait, 30)

    def release_when_queued(self) -> None:
        b = self.engine._batcher
        for _ in range(3000):  # polls, not a timing assert: up to 30 s for the threads
            if len(b._jobs) >= self.n:
                break
            time.sleep(0.01)
        self.go.set()
        self.fut.result()
