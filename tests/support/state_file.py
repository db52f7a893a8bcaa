"""RWKV state files built by the tests, in the layout RWKV state tuning writes: one
`blocks.{i}.att.time_state` tensor a layer, [heads, head size, head size], indexed
[head, value, key] (core/roleplay/state_files.py says where that layout was read)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from core.roleplay.state_files import parse_state_file


def time_states(
    layers: int = 2, heads: int = 2, head_size: int = 64, seed: int = 0, scale: float = 0.5
) -> dict[str, torch.Tensor]:
    """Random time_state tensors (values of the size trained states have)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        f"blocks.{i}.att.time_state": torch.randn(heads, head_size, head_size, generator=gen)
        * scale
        for i in range(layers)
    }


def to_bytes(tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.to(dtype).contiguous() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def state_file(
    layers: int = 2,
    heads: int = 2,
    head_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> bytes:
    """A state file's bytes for a model of `layers` blocks of width heads x head_size (the
    tiny models are 2 layers of 2 heads of 64)."""
    return to_bytes(time_states(layers, heads, head_size, seed), dtype)


def package_state(backend, data: bytes) -> list[torch.Tensor]:
    """The rwkv package's RWKV-7 state that a state file defines, built by hand from the
    package's own zero state: shift states zero, each layer's WKV matrix the file's tensor
    (the package's v7 WKV state is [head, value, key], as the file)."""
    sd = torch.load(io.BytesIO(data), weights_only=True)
    state = backend.model.generate_zero_state()
    for i in range(backend.info.n_layer):
        state[i * 3 + 1] = sd[f"blocks.{i}.att.time_state"].float().contiguous()
    return state


def start_state(data: bytes, name: str = "tuned.pth") -> Any:
    """The StartState of a file, as core.chat.context makes it (without the data folder)."""
    import hashlib

    from core.prompt import StartState

    wkv = parse_state_file(data, name)
    return StartState(name, hashlib.sha256(data).hexdigest(), lambda: wkv)


def arrays(data: bytes) -> list[np.ndarray]:
    return parse_state_file(data, "test.pth")
