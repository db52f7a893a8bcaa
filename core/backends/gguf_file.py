"""GGUF files read and checked without llama.cpp: header, metadata, tensor table, vocabulary
arrays and architecture. llama.cpp trusts what it reads, so a malformed file could make the native
library abort the whole process; every size and bound is checked here first."""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from core.errors import ModelError

RWKV_ARCHS = ("rwkv6", "rwkv7", "rwkv6qwen2", "arwkv7")
# architectures of llama.cpp's GGUF spec that are not language models of their own
_NOT_LM = {"clip", "mmproj"}
SUPPORTED_ARCHS = frozenset(gguf.MODEL_ARCH_NAMES.values()) - _NOT_LM


@dataclass
class GGUFSummary:
    """What a GGUF file says about itself, read without llama.cpp."""

    version: int
    metadata: dict[str, Any]  # scalar values; arrays are given as their length
    tensors: dict[str, tuple[tuple[int, ...], int]]  # name -> (shape ne0.., ggml type)
    data_offset: int
    arrays: dict[str, int] = field(default_factory=dict)  # array key -> element value type

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key.replace("{arch}", self.arch), default)

    @property
    def sampling(self) -> dict[str, float]:
        """The sampling values the model's authors recommend, from `general.sampling.*`
        (llama.cpp's keys: temp, top_p, top_k, min_p, ...), without the prefix; numbers only."""
        out: dict[str, float] = {}
        for key, value in self.metadata.items():
            if key.startswith(SAMPLING_PREFIX) and isinstance(value, int | float):
                if not isinstance(value, bool) and math.isfinite(value):
                    out[key[len(SAMPLING_PREFIX) :]] = value
        return out


SAMPLING_PREFIX = "general.sampling."


_SCALARS = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Bad(Exception):
    pass


def inspect_gguf(path: Path) -> GGUFSummary:
    """Parse a GGUF file's header, metadata and tensor table, checking every size and bound.
    Raises ModelError for anything that is not a well-formed GGUF file."""
    name = path.name
    if not path.is_file():
        raise ModelError(
            f"Model file not found: {path}. Put .gguf files in models/ or give a full path."
        )
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if head != b"GGUF":
            raise ModelError(
                f"{name} is not a GGUF file (it does not start with the GGUF signature): "
                "download it again or choose another file."
            )
        if size < 24:
            raise ModelError(f"{name} is truncated: it ends inside its header.")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse_gguf(mm, size)
            except _Bad as e:
                raise ModelError(
                    f"{name} is damaged or truncated ({e}): download it again or choose "
                    "another file."
                ) from None


def _parse_gguf(mm: mmap.mmap, size: int) -> GGUFSummary:
    pos = 4

    def need(n: int) -> None:
        if n < 0 or pos + n > size:
            raise _Bad("it ends in the middle of its metadata")

    def u32() -> int:
        nonlocal pos
        need(4)
        (v,) = _U32.unpack_from(mm, pos)
        pos += 4
        return int(v)

    def u64() -> int:
        nonlocal pos
        need(8)
        (v,) = _U64.unpack_from(mm, pos)
        pos += 8
        return int(v)

    def string(limit: int = 1 << 24) -> bytes:
        nonlocal pos
        n = u64()
        if n > limit:
            raise _Bad("a string in its metadata is implausibly long")
        need(n)
        s = mm[pos : pos + n]
        pos += n
        return s

    arrays: dict[str, int] = {}

    def value(vtype: int, key: str = "") -> Any:
        nonlocal pos
        if vtype in _SCALARS:
            st = _SCALARS[vtype]
            need(st.size)
            (v,) = st.unpack_from(mm, pos)
            pos += st.size
            return v
        if vtype == 8:
            return string().decode("utf-8", errors="replace")
        if vtype == 9:
            itype, count = u32(), u64()
            arrays[key] = itype
            if count > size:
                raise _Bad("an array in its metadata is implausibly long")
            if itype in _SCALARS:
                need(_SCALARS[itype].size * count)
                pos += _SCALARS[itype].size * count
            elif itype == 8:
                for _ in range(count):
                    n = u64()
                    need(n)
                    pos += n
            else:
                raise _Bad(f"unknown array element type {itype}")
            return count
        raise _Bad(f"unknown metadata value type {vtype}")

    version = u32()
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version}, which llama.cpp does not read")
    n_tensors, n_kv = u64(), u64()
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise _Bad("its header gives impossible counts")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string(1 << 16).decode("utf-8", errors="replace")
        meta[key] = value(u32(), key)
    tensors: dict[str, tuple[tuple[int, ...], int]] = {}
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        tname = string(1 << 16).decode("utf-8", errors="replace")
        n_dims = u32()
        if not 1 <= n_dims <= 4:
            raise _Bad(f"tensor {tname} has {n_dims} dimensions")
        shape = tuple(u64() for _ in range(n_dims))
        ttype, offset = u32(), u64()
        if any(d <= 0 or d > 1 << 40 for d in shape):
            raise _Bad(f"tensor {tname} has an impossible shape {shape}")
        infos.append((tname, shape, ttype, offset))
        tensors[tname] = (shape, ttype)
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise _Bad("its alignment is not a power of two")
    data_offset = (pos + align - 1) // align * align
    for tname, shape, ttype, offset in infos:
        try:
            block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise _Bad(f"tensor {tname} has an unknown type {ttype}") from None
        if shape[0] % block:
            raise _Bad(f"tensor {tname}'s rows do not fill whole blocks")
        nbytes = int(np.prod(shape, dtype=np.float64)) // block * tsize
        if offset % align or data_offset + offset + nbytes > size:
            raise _Bad(f"tensor {tname} lies beyond the end of the file")
    return GGUFSummary(version, meta, tensors, data_offset, arrays)


def check_gguf(path: Path) -> GGUFSummary:
    """inspect_gguf, plus what llama.cpp needs to load the model safely."""
    s = inspect_gguf(path)
    arch = s.arch
    if not arch:
        raise ModelError(f"{path.name} does not say which model architecture it holds.")
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(
            f"{path.name} holds a '{arch}' model, an architecture that llama.cpp in this app "
            "does not know. Choose a GGUF of a supported family (Llama, Qwen, RWKV-6/7, ...)."
        )
    if not s.tensors:
        raise ModelError(f"{path.name} holds no weights (a vocabulary-only GGUF?).")
    n_tokens = s.metadata.get("tokenizer.ggml.tokens")
    if "tokenizer.ggml.model" not in s.metadata or not n_tokens:
        raise ModelError(f"{path.name} has no vocabulary, so no text can be fed to it.")
    # llama.cpp reads these arrays without checking their types or lengths (it would abort or
    # read past the end): check them here
    for key, vtype in (
        ("tokenizer.ggml.tokens", 8),
        ("tokenizer.ggml.token_type", 5),
        ("tokenizer.ggml.scores", 6),
        ("tokenizer.ggml.merges", 8),
    ):
        if key in s.metadata and s.arrays.get(key) != vtype:
            raise ModelError(f"{path.name} has a malformed vocabulary ({key}).")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in s.metadata and s.metadata[key] != n_tokens:
            raise ModelError(f"{path.name} has a malformed vocabulary ({key} length).")
    for key in ("{arch}.block_count", "{arch}.embedding_length"):
        v = s.get(key)
        if not isinstance(v, int) or v <= 0:
            raise ModelError(f"{path.name} lacks a valid {key.format(arch=arch)}.")
    d = s.get("{arch}.embedding_length")
    if arch in RWKV_ARCHS:
        hs = s.get("{arch}.wkv.head_size")
        if not isinstance(hs, int) or hs <= 0 or d % hs:
            raise ModelError(f"{path.name} has an RWKV head size that does not divide its width.")
    elif any(
        s.get(k) is not None for k in ("{arch}.rope.dimension_count", "{arch}.context_length")
    ):
        heads = s.get("{arch}.attention.head_count")
        if isinstance(heads, int) and heads <= 0:  # llama.cpp would divide by it
            raise ModelError(f"{path.name} says its attention has {heads} heads.")
    return s
