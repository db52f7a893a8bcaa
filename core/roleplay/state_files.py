"""RWKV state files of characters: the `.pth` that RWKV state tuning makes, one `time_state`
tensor a layer, checked, stored under data_dir()/state_files and read back for a chat.

A state-tuning file (RWKV-PEFT, as RWKV-Runner and ai00 load it) holds
`blocks.{i}.att.time_state` for every layer i, each [n_head, head_size, head_size], indexed
[head, value, key]: the state's row is the value channel. That is the rwkv package's own
layout of an RWKV-7 WKV state; its RWKV-5/6 states are [head, key, value], which is why it
transposes a merged `time_state` there (`rwkv/model.py`). The back ends map this layout to
theirs (`Backend.state_with_wkv`); this module only reads and stores files.

A stored file is named by the sha256 of its bytes (never by anything a user typed) and written
0600 in a 0700 folder; copies of a character share it. A character refers to it in its
`extensions["rwkv_roleplay"]["state_file"]`: {"name", "sha256", "layers", "heads",
"head_size", "bytes"}, which a card export carries (the reference, never the bytes).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import unicodedata
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from core.config import data_dir, write_atomic
from core.errors import AppError

STATE_DIR_NAME = "state_files"
# a 7.2B RWKV-7's state file is 34 MB in fp32 (32 layers x 4096 x 64 x 4 bytes); larger
# models' files fit in bf16 or fp16. Under the server's upload limit (.streamlit/config.toml)
MAX_STATE_FILE_BYTES = 48 * 2**20
MAX_LAYERS = 256
MAX_HEAD_SIZE = 256
MAX_WIDTH = 16384
EXT_KEY = "rwkv_roleplay"  # the app's namespace in a character's extensions (as in cards)
REF_KEY = "state_file"  # the reference's key in that namespace
_KEY = re.compile(r"^blocks\.(\d{1,4})\.att\.time_state$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CACHE_FILES = 2  # parsed files kept in memory (a 7.2B model's is 34 MB)


class StateFileError(AppError):
    """A state file was refused (not a state-tuning file, malformed, too large) or cannot be
    read from the data directory (missing, damaged)."""


@dataclass(frozen=True)
class StateFileRef:
    """A character's reference to its state file."""

    name: str  # the file's name as uploaded: shown, never used as a path
    sha256: str  # of the file's bytes: its stored name, and part of the chat's cache keys
    layers: int
    heads: int
    head_size: int
    nbytes: int  # the file's size

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "layers": self.layers,
            "heads": self.heads,
            "head_size": self.head_size,
            "bytes": self.nbytes,
        }

    @property
    def shape_text(self) -> str:
        return shape_text(self.layers, self.heads, self.head_size)


def shape_text(layers: int, heads: int, head_size: int) -> str:
    """ "24 layers, 16 heads of 64 (width 1024)": a state's shape in a message."""
    return f"{layers} layers, {heads} heads of {head_size} (width {heads * head_size})"


def display_name(name: str) -> str:
    """A file name fit to show: its last part (either slash), one line, no control or
    direction characters, at most 120 characters."""
    base = PureWindowsPath(PurePosixPath(str(name or "")).name).name
    clean = "".join(
        ch for ch in base if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
    ).strip()
    return clean[:120] or "state.pth"


# --- reading a file -----------------------------------------------------------------------------
def _check_zip(data: bytes, what: str) -> None:
    """A torch file is a zip archive: refuse one that is not, or whose entries would inflate
    past the size limit (torch would allocate what the archive claims)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            total = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise StateFileError(
            f"{what} is not a PyTorch .pth file (not a zip archive: truncated, or another kind "
            "of file). A state file is the .pth that RWKV state tuning writes."
        ) from None
    if total > 2 * MAX_STATE_FILE_BYTES:
        raise StateFileError(f"{what} unpacks to {total / 1e6:.0f} MB: far too large.")


def parse_state_file(data: bytes, name: str = "") -> list[np.ndarray]:
    """The WKV state of each layer in `data` (a state-tuning `.pth`): float32 arrays
    [n_head, head_size, head_size] in the file's layout, read-only. Raises StateFileError
    with the reason; pickled code is never run (torch's weights-only loader)."""
    what = display_name(name) if name else "The state file"
    if len(data) > MAX_STATE_FILE_BYTES:
        raise StateFileError(
            f"{what} is {len(data) / 2**20:.1f} MB; the limit is "
            f"{MAX_STATE_FILE_BYTES // 2**20} MB (a 7.2B model's state is 34 MB in fp32). "
            "Save it in bf16 or fp16 for larger models."
        )
    if not data:
        raise StateFileError(f"{what} is empty.")
    _check_zip(data, what)
    import pickle

    import torch  # here, not at the top: pages import this module, torch takes a second

    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise StateFileError(
            f"{what} was refused: it contains a pickled program, not only tensors, and "
            "loading it would run code."
        ) from None
    except Exception as e:
        raise StateFileError(f"{what} could not be read as PyTorch tensors: {e}") from None
    if not isinstance(sd, dict) or not sd:
        raise StateFileError(f"{what} does not hold a dictionary of tensors.")
    return _layers(sd, what)


def _layers(sd: dict[Any, Any], what: str) -> list[np.ndarray]:
    import torch

    if "emb.weight" in sd or "head.weight" in sd:
        raise StateFileError(
            f"{what} is a model, not a state file: a state file holds only "
            "blocks.N.att.time_state tensors (what RWKV state tuning writes)."
        )
    found: dict[int, Any] = {}
    for key, value in sd.items():
        m = _KEY.match(key) if isinstance(key, str) else None
        if m is None:
            shown = str(key)[:60]
            raise StateFileError(
                f"{what} is not an RWKV state file: it holds {shown!r}, and a state file holds "
                "only blocks.N.att.time_state tensors."
            )
        if not isinstance(value, torch.Tensor):
            raise StateFileError(f"{what}: {key} is not a tensor.")
        found[int(m.group(1))] = value
    n = len(found)
    if sorted(found) != list(range(n)):
        raise StateFileError(
            f"{what} lacks layers: it has time_state for layers {sorted(found)[:8]}..., not "
            f"for every layer from 0 to {n - 1}."
        )
    if n > MAX_LAYERS:
        raise StateFileError(f"{what} has {n} layers; at most {MAX_LAYERS} are accepted.")
    first = found[0]
    shape = tuple(int(x) for x in first.shape)
    if (
        len(shape) != 3
        or shape[1] != shape[2]
        or not 0 < shape[2] <= MAX_HEAD_SIZE
        or not 0 < shape[0] * shape[2] <= MAX_WIDTH
    ):
        raise StateFileError(
            f"{what}: blocks.0.att.time_state has the shape {list(shape)}; a state file's "
            "tensors are [heads, head size, head size]."
        )
    out: list[np.ndarray] = []
    for i in range(n):
        t = found[i]
        if tuple(t.shape) != shape:
            raise StateFileError(
                f"{what}: layer {i} has the shape {list(t.shape)}, layer 0 {list(shape)}."
            )
        if not t.is_floating_point():
            raise StateFileError(f"{what}: layer {i} holds {t.dtype}, not floating point.")
        arr = t.detach().to(torch.float32).contiguous().numpy().copy()
        if not np.isfinite(arr).all():
            raise StateFileError(f"{what}: layer {i} holds values that are not finite numbers.")
        arr.setflags(write=False)
        out.append(arr)
    return out


def describe(wkv: list[np.ndarray]) -> tuple[int, int, int]:
    """(layers, heads, head size) of a parsed state."""
    return len(wkv), int(wkv[0].shape[0]), int(wkv[0].shape[2])


# --- the stored files ---------------------------------------------------------------------------
def state_dir() -> Path:
    path = data_dir() / STATE_DIR_NAME
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def path_of(sha256: str) -> Path | None:
    """The stored file of `sha256` (None for anything but 64 lowercase hex digits; the file
    may be missing)."""
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        return None
    return state_dir() / f"{sha256}.pth"


def is_present(sha256: str) -> bool:
    path = path_of(sha256)
    return path is not None and path.is_file()


def store_state_file(data: bytes, name: str) -> tuple[StateFileRef, bool]:
    """Check `data` (parse_state_file) and store it; returns the character's reference and
    whether the file was written now (False: the same bytes were stored already, maybe for
    another character). Raises StateFileError, and then nothing is written."""
    wkv = parse_state_file(data, name)
    layers, heads, head_size = describe(wkv)
    sha = hashlib.sha256(data).hexdigest()
    ref = StateFileRef(display_name(name), sha, layers, heads, head_size, len(data))
    path = path_of(sha)
    assert path is not None
    if path.is_file() and _digest(path) == sha:
        return ref, False
    write_atomic(path, data)
    _remember(sha, wkv)
    return ref, True


def remove_state_file(sha256: str) -> None:
    """Delete a stored file (callers check that no character refers to it)."""
    path = path_of(sha256)
    if path is not None:
        path.unlink(missing_ok=True)
    with _lock:
        _cache.pop(sha256, None)


_cache: OrderedDict[str, list[np.ndarray]] = OrderedDict()
_lock = threading.Lock()


def _remember(sha: str, wkv: list[np.ndarray]) -> None:
    with _lock:
        _cache[sha] = wkv
        _cache.move_to_end(sha)
        while len(_cache) > _CACHE_FILES:
            _cache.popitem(last=False)


def load_state_file(ref: StateFileRef) -> list[np.ndarray]:
    """The WKV state of a character's stored file (parse_state_file's arrays), checked
    against its sha256; the last few are kept in memory. StateFileError when the file is
    missing or damaged."""
    with _lock:
        hit = _cache.get(ref.sha256)
        if hit is not None:
            _cache.move_to_end(ref.sha256)
            return hit
    path = path_of(ref.sha256)
    if path is None or not path.is_file():
        raise StateFileError(
            f"The state file {ref.name} is not in this app's data folder (a card imported "
            "without it, or it was deleted). Upload it again in the character's form."
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise StateFileError(
            f"The stored state file {ref.name} is damaged (its contents changed). Upload it "
            "again in the character's form."
        )
    wkv = parse_state_file(data, ref.name)
    _remember(ref.sha256, wkv)
    return wkv


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def reference(extensions: Any) -> StateFileRef | None:
    """A character's state-file reference, read from its `extensions` (None when it has none).
    A reference from an imported card is checked as untrusted: a malformed one raises
    StateFileError (its sha256 is never used unless it is 64 hex digits)."""
    ours = extensions.get(EXT_KEY) if isinstance(extensions, dict) else None
    raw = ours.get(REF_KEY) if isinstance(ours, dict) else None
    if raw is None:
        return None
    sha = raw.get("sha256") if isinstance(raw, dict) else None
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise StateFileError(
            "This character's state-file reference is malformed (no sha256 of 64 hex digits): "
            "upload the state file again, or remove it."
        )
    layers = _int(raw.get("layers"), 1, MAX_LAYERS)
    heads = _int(raw.get("heads"), 1, MAX_WIDTH)
    head_size = _int(raw.get("head_size"), 1, MAX_HEAD_SIZE)
    nbytes = _int(raw.get("bytes"), 0, 2**40)
    name = raw.get("name")
    return StateFileRef(
        display_name(name) if isinstance(name, str) else "state.pth",
        sha,
        layers or 0,
        heads or 0,
        head_size or 0,
        nbytes or 0,
    )


def with_reference(extensions: Any, ref: StateFileRef | None) -> dict[str, Any]:
    """A copy of `extensions` whose state-file reference is `ref` (None: removed)."""
    out = dict(extensions) if isinstance(extensions, dict) else {}
    ours = dict(out.get(EXT_KEY) or {}) if isinstance(out.get(EXT_KEY), dict) else {}
    if ref is None:
        ours.pop(REF_KEY, None)
    else:
        ours[REF_KEY] = ref.to_dict()
    if ours:
        out[EXT_KEY] = ours
    else:
        out.pop(EXT_KEY, None)
    return out
