"""The interface every model back end implements, and what it reports about its model.

A back end only knows tokens, logits and states. Prompt text, sampling, stopping and the prefix
cache live above it (core/engine/), so the rwkv package and llama.cpp behave the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.errors import ModelError

if TYPE_CHECKING:
    from core.prompt.base import PromptFormat

State = Any  # opaque to callers: a list of tensors (rwkv) or a llama.cpp sequence snapshot


class BatchItemError(ModelError):
    """One item of `forward_batch` failed its checks (nothing was decoded): `index` says which."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


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


def file_identity(path: Path, *extra: str) -> str:
    """Stable id of a model file's weights without reading it all: size, and samples of it."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        for pos in sorted({0, max(0, size // 2 - 2**19), max(0, size - 2**20)}):
            f.seek(pos)
            h.update(f.read(2**20))
    for e in extra:
        h.update(b"\0" + e.encode())
    return h.hexdigest()[:32]


def check_wkv(wkv: list[np.ndarray], shape: tuple[int, int, int] | None) -> None:
    """ModelError unless `wkv` is one [heads, head size, head size] array a layer of `shape`
    (layers, heads, head size), as `Backend.state_with_wkv` takes them."""
    if shape is None:
        raise ModelError("This model has no RWKV state for a state file to set.")
    layers, heads, size = shape
    if len(wkv) != layers or any(tuple(w.shape) != (heads, size, size) for w in wkv):
        got = tuple(wkv[0].shape) if wkv else ()
        raise ModelError(
            f"The state has {len(wkv)} layers of {list(got)}; this model's state has {layers} "
            f"layers of [{heads}, {size}, {size}]."
        )


class Backend(Protocol):
    """A loaded model. Every call runs on the one model thread (core/backends/model_thread.py),
    so a back end never sees two calls at once.

    Back ends subclass this protocol to inherit the defaults of its optional capabilities
    (`state_format`, `prompt_format`, `state_nbytes`, `advance`, `forward_batch`, `max_batch`,
    `wide_threads`, `token_bytes`, `set_threads`, `context_limit`). So does a wrapper of a back
    end (a test's scripted model): what it does not define is the protocol's default, never
    the wrapped back end's by accident (its `forward_batch` would skip the wrapper's forward).
    Callers read these capabilities directly, never by probing with getattr."""

    info: ModelInfo
    state_format: str = ""  # layout of state_to_bytes; checkpoints of another layout never match

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> bytes: ...

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character). Called for every
        generated token, from any thread: a back end with a table answers without the model."""
        return self.detokenize([token])

    def initial_state(self) -> State: ...

    def forward(self, tokens: list[int], state: State) -> tuple[np.ndarray, State]:
        """Feed `tokens` (non-empty) after `state`. Returns float32 logits of the last token
        [n_vocab] and the new state. Must not modify `state` in place."""
        ...

    def advance(self, tokens: list[int], state: State) -> tuple[np.ndarray, State]:
        """`forward` for a caller that never uses `state` again (a decode loop): a back end
        may then skip keeping it."""
        return self.forward(tokens, state)

    max_batch: int = 1  # sequences `forward_batch` decodes together (1: one at a time)
    wide_threads: int | None = None  # threads a pass of several one-token steps may use
    # beside the model's own count (None: that count only); see core/engine/batch.py

    def forward_batch(
        self, items: list[tuple[list[int], State, bool]], threads: int | None = None
    ) -> list[tuple[np.ndarray, State]]:
        """Feed several sequences: each item is (tokens, state, consume), done as `advance`
        when consume is true, else as `forward`. A back end that batches (llama.cpp) runs
        them in one pass; this default runs them one after the other. `threads`: the count
        for a pass of several one-token steps (`wide_threads`), None for the model's own."""
        return [
            self.advance(tokens, state) if consume else self.forward(tokens, state)
            for tokens, state, consume in items
        ]

    def copy_state(self, state: State) -> State: ...

    def state_to_bytes(self, state: State) -> bytes: ...

    def state_from_bytes(self, data: bytes) -> State: ...

    def wkv_shape(self) -> tuple[int, int, int] | None:
        """(layers, heads, head size) of the model's matrix-valued state (RWKV-5 to 7), the part
        an RWKV state file sets; None where the model has none (a transformer, RWKV-4)."""
        return None

    def state_with_wkv(self, wkv: list[np.ndarray]) -> State:
        """The state whose WKV matrices are `wkv` (per layer [heads, head size, head size] in
        the layout of a state-tuning file, core/roleplay/state_files.py) and whose every other
        part (token shifts) is zero: the start of a chat with a character's state file.
        ModelError where the model has no such state or the shapes differ."""
        raise ModelError("This model has no RWKV state for a state file to set.")

    # a state can be cut to a prefix of the tokens that made it (`prefix_state`): a
    # transformer's KV cache, whose first n positions are the state after n tokens
    cuts_states: bool = False

    def prefix_state(self, state: State, n: int) -> State:
        """The state after the first `n` tokens fed since the initial state of those that made
        `state` (0 <= n <= their count), without feeding anything: where `cuts_states`. Lets
        one checkpoint of a chat's tip stand for every prefix of it (the engine keeps no state
        per message of a transformer's chat)."""
        raise ModelError("This model's states cannot be cut to a prefix.")

    def state_nbytes(self, state: State) -> int | None:
        """A state's size in bytes without serialising it, for back ends whose states grow
        (a transformer's KV cache); None: every state has the same size."""
        return None

    def eos_token(self) -> int | None:
        """Token that ends a reply by itself (ChatML's <|im_end|>, say), or None."""
        ...

    def prompt_format(self) -> PromptFormat | None:
        """The prompt format this model expects; None for the RWKV role-play format."""
        return None

    def context_limit(self) -> int | None:
        """Tokens a chat may hold: a transformer's context (its KV cache's size); None when
        unbounded, as for a recurrent model whose state has one size whatever the length."""
        return None

    def set_threads(self, n: int | None) -> None:
        """Compute with `n` threads from the next call on (None: the default). A back end with
        no thread setting of its own ignores it."""
        return None

    def close(self) -> None: ...
