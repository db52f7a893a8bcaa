"""The interface every model back end implements, and what it reports about its model.

A back end only knows tokens, logits and states. Prompt text, sampling, stopping and the prefix
cache live above it (core/engine.py), so the rwkv package and llama.cpp behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

State = Any  # opaque to callers: a list of tensors (rwkv) or a llama.cpp sequence snapshot


@dataclass
class ModelInfo:
    path: str  # file the model was loaded from ("" for none)
    backend: str  # "rwkv" or "llama"
    arch: str  # "rwkv4" ... "rwkv7", or a llama.cpp architecture such as "llama"
    n_layer: int  # number of blocks
    n_embd: int  # model width
    n_vocab: int  # vocabulary size
    n_params: int  # parameter count
    strategy: str  # rwkv strategy string, or a llama.cpp description
    load_s: float  # seconds the load took
    identity: str  # stable id of the weights (keys the state cache)
    chat_template: str | None = None  # the model's own chat template (GGUF metadata), if any
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth showing

    @property
    def version(self) -> int | None:
        """RWKV version number (4..7), or None for other architectures."""
        if self.arch.startswith("rwkv") and self.arch[4:].isdigit():
            return int(self.arch[4:])
        return None


class Backend(Protocol):
    """A loaded model. Methods other than `forward` are cheap; `forward` may be called from many
    threads, but the engine serialises calls with its own lock."""

    info: ModelInfo

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> bytes: ...

    def initial_state(self) -> State: ...

    def forward(self, tokens: list[int], state: State) -> tuple[np.ndarray, State]:
        """Feed `tokens` (non-empty) after `state`. Returns float32 logits of the last token
        [n_vocab] and the new state. Must not modify `state` in place."""
        ...

    def copy_state(self, state: State) -> State: ...

    def state_to_bytes(self, state: State) -> bytes: ...

    def state_from_bytes(self, data: bytes) -> State: ...

    def eos_token(self) -> int | None:
        """Token that ends a reply by itself (ChatML's <|im_end|>, say), or None."""
        ...

    def close(self) -> None: ...
