"""A real tiny model whose next token is forced: the engine's loop runs for real (real forward,
real states, real tokenizer), only the model's choice is scripted so a test can craft outputs."""

from __future__ import annotations

import numpy as np


class ForcedBackend:
    """Wraps a real back end; after each forward the next token of `script` gets all the mass
    (with `boost`, only that much added to its logit: a strong wish the sampler may still
    overrule, as DRY does). It decodes one sequence at a time (its own forward_batch), so every
    step sees the script: the wrapped back end's batched pass would bypass it."""

    max_batch = 1
    wide_threads = None

    def __init__(self, inner, script: list[int] | None = None, boost: float | None = None) -> None:
        self.inner = inner
        self.info = inner.info
        self.script: list[int] = list(script or [])
        self.pos = 0  # index in `script` of the token forced next
        self.forwards = 0
        self.boost = boost

    def say(self, text: str) -> None:
        self.script, self.pos = self.inner.tokenize(text), 0

    def forward(self, tokens, state):
        """Every forward (prompt chunks included) forces script[pos]; feeding that very token
        back moves on to the next one, so the reply follows the script token by token."""
        self.forwards += 1
        logits, state = self.inner.forward(tokens, state)
        if self.pos < len(self.script) and list(tokens) == [self.script[self.pos]]:
            self.pos += 1
        if self.pos < len(self.script):
            if self.boost is not None:
                logits = logits.copy()
                logits[self.script[self.pos]] += self.boost
            else:
                logits = np.full_like(logits, -1e9)
                logits[self.script[self.pos]] = 0.0
        return logits, state

    def advance(self, tokens, state):
        """A decode step is a forward here too: every step must see the script."""
        return self.forward(tokens, state)

    def forward_batch(self, items, threads=None):
        return [self.advance(t, s) if c else self.forward(t, s) for t, s, c in items]

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Watched:
    """A real back end that counts its model calls and the tokens it was fed, and runs
    `on_call` at the start of each (on the model thread): to cancel a reply, or hold the model,
    at a known point of a prefill."""

    def __init__(self, inner, on_call=None) -> None:
        self.inner, self.on_call = inner, on_call
        self.calls = self.fed = 0

    def _seen(self, tokens: int) -> None:
        self.calls += 1
        self.fed += tokens
        if self.on_call is not None:
            self.on_call()

    def forward(self, tokens, state):
        self._seen(len(tokens))
        return self.inner.forward(tokens, state)

    def advance(self, tokens, state):
        self._seen(len(tokens))
        return self.inner.advance(tokens, state)

    def forward_batch(self, items, threads=None):
        self._seen(sum(len(t) for t, _, _ in items))
        return self.inner.forward_batch(items, threads=threads)

    def __getattr__(self, name):
        return getattr(self.inner, name)
