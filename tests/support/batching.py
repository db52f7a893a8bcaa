"""What the batching tests of both back ends share: four small chats, and a way to hold the
model thread busy until several generations have asked for their first pass (so that they share
it, without any timing)."""

from __future__ import annotations

import threading

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


# How long a held model waits for the generations it expects before the test fails: a bound
# for a machine so loaded that a thread takes minutes to run, never a measure of speed
HOLD_S = 600


class HeldModel:
    """Holds the model thread busy until `n` jobs wait in the batcher, so they share a pass.

    Waits for the event (the batcher's condition, notified at every job it queues), not for a
    time; if the jobs have not all come within HOLD_S the model is released and the test fails
    saying how many came, never carrying on as if they had shared a pass."""

    def __init__(self, engine: Engine, n: int) -> None:
        self.engine, self.n = engine, n
        self.go = threading.Event()
        self.fut = submit(self.go.wait, HOLD_S)  # a bound, in case the test dies before release

    def queued(self) -> int:
        return len(self.engine._batcher._jobs)

    def wait_queued(self, n: int) -> None:
        """Until `n` jobs wait in the batcher (the model stays held); fails after HOLD_S."""
        b = self.engine._batcher
        with b._cv:
            if not b._cv.wait_for(lambda: len(b._jobs) >= n, HOLD_S):
                self.release()
                raise AssertionError(f"only {len(b._jobs)} of {n} generations asked for a pass")

    def release(self) -> None:
        self.go.set()
        self.fut.result()

    def release_when_queued(self) -> None:
        try:
            self.wait_queued(self.n)
        finally:
            self.release()
