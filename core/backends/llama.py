"""Back end on llama.cpp (llama-cpp-python's low-level API): GGUF files, RWKV-6/7 GGUF and other
GGUF chat models such as the embedded SmolLM2.

States. The engine treats states as immutable values; llama.cpp keeps state inside its context, in
numbered sequences. A `LlamaState` is a snapshot held in a sequence of the context (its "slot")
and/or as bytes (`llama_state_seq_get_data`), never changed once made.

- Recurrent models (RWKV): one state per sequence (8 sequences). A state in a sequence is decoded
  there in place, so llama.cpp reuses its compute graph from token to token; unless the caller
  drops it (`advance`), it is first saved to bytes (a 2.4 MB copy for a 0.1B RWKV-7, ~0.1 ms;
  buffers are pooled). Feeding a state that is not in a sequence restores its bytes into a free
  one (`llama_state_seq_set_data`), saving the least recently used state to bytes if none is free.
- Transformers: the KV cache is the state and grows with the context, so states are not copied:
  `forward` copies the input's sequence to a free one (`llama_memory_seq_cp`, which shares the
  cells of the unified cache) and decodes there; `advance` decodes in place. When every sequence
  holds a live state, the least recently used one is saved to bytes and its sequence reused; a
  sequence whose state was garbage-collected is freed.
- `forward_batch` feeds several states at once, one sequence each, in one `llama_decode` (the
  batched decoding of core/engine/batch.py).

Either way `forward(tokens, state)` leaves `state` as it was, and serialising happens only when a
state must leave the context (or `copy_state` / `state_to_bytes` asks for it).

Files are checked before llama.cpp sees them (core/backends/gguf_file.py): a malformed file could
otherwise make the native library abort the whole process.
llama.cpp's own logging is silenced (kept only for error messages).
"""

from __future__ import annotations

import collections
import ctypes
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import llama_cpp as L
import numpy as np

from core.backends.base import Backend, BatchItemError, ModelInfo, check_wkv, file_identity
from core.backends.gguf_file import RWKV_ARCHS, GGUFSummary, check_gguf
from core.backends.memory import check_fits, gguf_needs
from core.backends.threads import resolve_threads, usable_cpus
from core.backends.tokenizer import WORLD_VOCAB_SIZE, WorldTokenizer, world_tokenizer
from core.errors import ModelError
from core.prompt.base import PromptFormat
from core.prompt.chatml import IM_END, IM_START, MARKERS, ChatMLFormat

N_SEQ_RECURRENT = 8  # sequences of a recurrent model: generations decoded in one batch
N_SEQ_TRANSFORMER = 16  # sequences of a transformer: live states, two per batched generation
BatchItem = tuple[list[int], "LlamaState", bool]  # tokens, state, consume


_STATE_MAGIC = b"LLST"
_STATE_HEADER = struct.Struct("<4sI16sQ")  # magic, format version, identity, n_past
# the end of a recurrent sequence's llama_state_seq bytes (llama-memory-recurrent.cpp,
# state_write): cell count, then one cell's position and seq-id count, s_trans, n_layer; then
# per layer (type, row size, the row) of the token shifts "r", then the same of the WKV "s"
_SEQ_TAIL_HEAD = struct.Struct("<IiIII")
_ROW_HEAD = struct.Struct("<iQ")
WKV_ARCHS = ("rwkv6", "rwkv7")  # whose state a state file sets (hybrids: not known)

# ---------------------------------------------------------------- llama.cpp process set-up
_init_lock = threading.Lock()
_initialised = False
_log_lines: collections.deque[str] = collections.deque(maxlen=40)


@L.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # keep warnings and errors for error messages, print nothing
    if level in (2, 3) and text:
        _log_lines.append(text.decode("utf-8", errors="replace").strip())


def _init_llama() -> None:
    """Once per process: silence llama.cpp's logging and initialise its back ends."""
    global _initialised
    with _init_lock:
        if _initialised:
            return
        L.llama_log_set(_log_callback, ctypes.c_void_p(0))
        L.llama_backend_init()
        _initialised = True


def _recent_log() -> str:
    lines = [s for s in _log_lines if s]
    return lines[-1] if lines else ""


def _context_bytes(summary: GGUFSummary, n_ctx: int | None, n_slots: int | None) -> int:
    """What a context of this model takes beside its weights (core/backends/memory.py): a
    recurrent model's states (one per sequence), a transformer's KV cache in f16. From the
    file's metadata, before llama.cpp reads it; 0 where it does not say."""

    def num(key: str) -> int:
        v = summary.get(key)
        return int(v) if isinstance(v, int) and v > 0 else 0

    layers, width = num("{arch}.block_count"), num("{arch}.embedding_length")
    if summary.arch in RWKV_ARCHS:
        head = num("{arch}.wkv.head_size") or 64
        return (n_slots or N_SEQ_RECURRENT) * layers * (2 * width + width * head) * 4
    heads = num("{arch}.attention.head_count") or 1
    kv_heads = num("{arch}.attention.head_count_kv") or heads
    ctx = n_ctx or min(num("{arch}.context_length") or 4096, 8192)
    return ctx * layers * 2 * (width * kv_heads // heads) * 2


# ---------------------------------------------------------------- states
def _threads(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"


class LlamaState:
    """An immutable model state: `n_past` tokens fed. Lives in a slot of the context and/or as
    bytes (`data`); never changed after it is made."""

    __slots__ = ("n_past", "data", "slot", "owner", "consumed", "__weakref__")

    def __init__(self, n_past: int, data: bytes | bytearray | None = None, owner: int = 0) -> None:
        self.n_past = n_past
        self.data = data  # llama_state_seq bytes (never changed); None while only resident
        self.slot: int | None = None  # sequence id that holds it, if any
        self.owner = owner  # id of the backend instance that made it
        self.consumed = False  # given to `advance`: its contents are gone

    @property
    def empty(self) -> bool:
        return self.n_past == 0 and not self.data

    def __repr__(self) -> str:
        where = f"slot {self.slot}" if self.slot is not None else "bytes"
        return f"LlamaState(n_past={self.n_past}, {where})"


@dataclass
class _SeqLayout:
    """A recurrent sequence's state bytes, and where its parts lie in them."""

    template: bytes  # a state llama.cpp saved (one token fed)
    pos_at: int  # offset of the cell's position
    r_row: int  # bytes of a layer's token shifts (attention, then feed-forward)
    s_row: int  # bytes of a layer's WKV matrices
    r_at: list[int]  # offset of each layer's token shifts
    s_at: list[int]  # offset of each layer's WKV matrices


@dataclass
class _Slot:
    owner: weakref.ref[LlamaState] | None = None
    used: int = 0  # tick of last use, for LRU


@dataclass
class _Special:
    """Token ids with a role."""

    markers: dict[str, int] = field(default_factory=dict)  # template marker text -> id
    render: set[int] = field(default_factory=set)  # control tokens shown as their text
    eog_texts: tuple[str, ...] = ()


# ---------------------------------------------------------------- the back end
class LlamaBackend(Backend):
    """A GGUF model loaded through llama.cpp."""

    def __init__(
        self,
        path: str | Path,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_slots: int | None = None,
    ) -> None:
        t0 = time.perf_counter()
        _init_llama()
        p = Path(path).expanduser()
        summary = check_gguf(p)
        check_fits(
            gguf_needs(p, _context_bytes(summary, n_ctx, n_slots)),
            p.name,
            "Choose a smaller file (fewer parameters, or a lower precision such as Q5_K or "
            "Q4_K), or close other programs.",
        )
        self._lock = threading.RLock()
        self._closed = False
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self.n_threads = resolve_threads(n_threads)
        self._auto_threads = not n_threads  # the default count: passes may widen (below)
        mparams = L.llama_model_default_params()
        _log_lines.clear()
        model = L.llama_model_load_from_file(str(p).encode("utf-8"), mparams)
        if not model:
            why = _recent_log()
            raise ModelError(
                f"llama.cpp could not load {p.name}"
                + (f": {why}" if why else ".")
                + " The file may be damaged, or of a model variant this llama.cpp lacks."
            )
        self._model = model
        try:
            self._setup(p, summary, n_ctx, n_batch, n_slots)
        except BaseException:
            self.close()
            raise
        self.info.load_s = time.perf_counter() - t0

    def _setup(
        self, p: Path, summary: GGUFSummary, n_ctx: int | None, n_batch: int, n_slots: int | None
    ) -> None:
        model = self._model
        self._vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.recurrent = bool(L.llama_model_is_recurrent(model))
        n_ctx_train = int(L.llama_model_n_ctx_train(model)) or 4096
        if n_ctx is None:
            # a recurrent model's state does not grow with the context: n_ctx only sizes buffers
            n_ctx = 4096 if self.recurrent else min(n_ctx_train, 8192)
        self.n_ctx = int(n_ctx)
        self.n_batch = max(1, min(int(n_batch), self.n_ctx))
        # a recurrent model runs in place in one sequence (states are snapshots in bytes); a
        # transformer keeps live states in several sequences that share its KV cache
        # (with kv_unified, n_seq_max costs no memory for a transformer; for a recurrent model
        # each sequence holds one state: 2.4 MB at 0.1B, 35 MB at 7B)
        if n_slots is None:
            n_slots = N_SEQ_RECURRENT if self.recurrent else N_SEQ_TRANSFORMER
        self.n_slots = max(2, int(n_slots))
        # sequences decoded together: a transformer's items each need a sequence for the
        # input state and one for the output
        self.max_batch = self.n_slots if self.recurrent else max(1, self.n_slots // 2)
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = self.n_slots
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.kv_unified = True  # sequences share the cache: a copy shares cells
        # llama.cpp's CPU flash attention depends much on where cells lie in the cache (a token
        # that landed in a hole before its prompt moved SmolLM2's logits by ~1; the plain path
        # gave identical logits there, and is as fast on this CPU for small models)
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            why = _recent_log()
            raise ModelError(
                f"llama.cpp could not make a context for {p.name}" + (f": {why}" if why else ".")
            )
        self._ctx = ctx
        self._mem = L.llama_get_memory(ctx)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot() for _ in range(self.n_slots)]
        self._tick = 0
        self._piece = ctypes.create_string_buffer(256)
        self._pool: list[bytearray] = []  # snapshot buffers of dead states, for reuse
        self._bytes_cache: list[bytes | None] = [None] * self.n_vocab

        arch = summary.arch
        self.arch = arch
        template = summary.get("tokenizer.chat_template")
        self.chat_template = template if isinstance(template, str) else None
        self._special = self._find_specials()
        self._world = self._world_tokenizer(summary)
        head_size = summary.get("{arch}.wkv.head_size") if arch in WKV_ARCHS else None
        self._head_size = int(head_size) if isinstance(head_size, int) and head_size > 0 else 0
        self._seq_layout: _SeqLayout | None = None  # found at the first state file (below)
        ftype = summary.get("general.file_type")
        try:
            type_name = gguf.LlamaFileType(ftype).name.split("_", 1)[1].lower()
        except (ValueError, TypeError):
            type_name = "unknown"
        self.file_type = type_name
        self.info = ModelInfo(
            path=str(p),
            backend="llama",
            arch=arch,
            n_layer=int(L.llama_model_n_layer(model)),
            n_embd=int(L.llama_model_n_embd(model)),
            n_vocab=self.n_vocab,
            n_params=int(L.llama_model_n_params(model)),
            strategy=f"llama.cpp cpu {type_name}, {_threads(self.n_threads)}",
            load_s=0.0,
            identity=file_identity(p, "llama", type_name),
            chat_template=self.chat_template,
            extra={
                "file_type": type_name,
                "n_ctx": self.n_ctx,
                "n_ctx_train": n_ctx_train,
                "recurrent": self.recurrent,
                "threads": self.n_threads,
                "name": summary.get("general.name"),
                "sampling": summary.sampling,  # general.sampling.* (the "auto" preset)
            },
        )
        # what a saved state depends on besides the weights (keys the engine's state cache)
        self.state_format = f"llama-cpp-python {L.__version__}, seq state v1"
        # a plain transformer's KV cache cut at a position is the state after the tokens
        # before it (llama.cpp's server reuses a slot's prefix so); not a recurrent or hybrid
        # model, nor one with sliding-window layers (their cells beyond the window are gone)
        self.cuts_states = (
            not self.recurrent
            and not L.llama_model_is_hybrid(model)
            and int(L.llama_model_n_swa(model)) == 0
        )
        self._id_tag = self.info.identity.encode()[:16].ljust(16, b"\0")
        self._initial = LlamaState(0, owner=id(self))
        bos = int(L.llama_vocab_bos(self._vocab))
        if L.llama_vocab_get_add_bos(self._vocab) and 0 <= bos < self.n_vocab:
            # models that expect BOS start from the state after it: it is part of "empty"
            _, st = self.forward([bos], self._initial)
            self._initial = self.copy_state(st)

    # ---- tokens
    def _find_specials(self) -> _Special:
        sp = _Special()
        is_chatml = bool(self.chat_template and IM_START in self.chat_template)
        if not is_chatml or self.arch in RWKV_ARCHS:
            return sp
        for m in MARKERS:
            ids = self._tokenize_raw(m, parse_special=True)
            if len(ids) != 1:
                return _Special()  # the template names markers the vocabulary lacks
            sp.markers[m] = ids[0]
        eog: list[str] = []
        for t in range(self.n_vocab):
            if L.llama_vocab_is_eog(self._vocab, t) or t in sp.markers.values():
                sp.render.add(t)
                txt = self._piece_of(t, special=True).decode("utf-8", errors="replace")
                if txt and txt not in MARKERS:
                    eog.append(txt)
        sp.eog_texts = tuple(eog)
        return sp

    def _world_tokenizer(self, summary: GGUFSummary) -> WorldTokenizer | None:
        """The World tokenizer when this GGUF's vocabulary is exactly the World vocabulary.

        llama.cpp's RWKV tokenizer also matches the text of the control token "<s>" (id 0) and of
        the padding tokens ("[PAD1]"...), which the rwkv package never produces; the World
        tokenizer gives the rwkv package's ids for every text (and is faster)."""
        if summary.get("tokenizer.ggml.model") != "rwkv" or self.n_vocab != WORLD_VOCAB_SIZE:
            return None
        world = world_tokenizer()
        for t in range(1, WORLD_VOCAB_SIZE):
            attr = L.llama_vocab_get_attr(self._vocab, t)
            want = b"" if attr & L.LLAMA_TOKEN_ATTR_UNUSED else self._piece_of(t, special=False)
            if want != world.token_bytes(t):
                return None
        return world

    def _tokenize_raw(self, text: str, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        if not data:
            return []
        cap = len(data) + 16
        while True:
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), arr, cap, False, parse_special)
            if n >= 0:
                return list(arr[:n])
            cap = -n + 16

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`. With `special`, any special token's text becomes that token.
        Without it (the default), only this model's prompt-format markers (ChatML's
        <|im_start|> / <|im_end|>) do, and all other text is plain text."""
        with self._lock:
            self._check_open()
            if self._world is not None:
                return self._world.encode(text)
            if special or not self._special.markers:
                return self._tokenize_raw(text, parse_special=special)
            out: list[int] = []
            rest = text
            while rest:
                hits = [(rest.find(m), m) for m in self._special.markers if m in rest]
                if not hits:
                    out += self._tokenize_raw(rest, parse_special=False)
                    break
                i, m = min(hits)
                out += self._tokenize_raw(rest[:i], parse_special=False)
                out.append(self._special.markers[m])
                rest = rest[i + len(m) :]
            return out

    def _piece_of(self, token: int, special: bool) -> bytes:
        buf = self._piece
        n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n + 8)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (may be part of a UTF-8 character); template markers
        and end-of-turn tokens as their text, other control tokens as nothing."""
        if self._world is not None:
            return self._world.token_bytes(token)
        b = self._bytes_cache[token]
        if b is None:
            with self._lock:
                self._check_open()
                if L.llama_vocab_get_attr(self._vocab, token) & L.LLAMA_TOKEN_ATTR_UNUSED:
                    b = b""  # padding of the vocabulary ("[PAD1]" in RWKV GGUF files)
                else:
                    b = self._piece_of(token, special=token in self._special.render)
            self._bytes_cache[token] = b
        return b

    def detokenize(self, tokens: list[int]) -> bytes:
        return b"".join(self.token_bytes(t) for t in tokens)

    def eos_token(self) -> int | None:
        if self.arch in RWKV_ARCHS:
            return None  # World models end a turn with a blank line: the stop strings catch it
        if IM_END in self._special.markers:
            return self._special.markers[IM_END]
        for fn in (L.llama_vocab_eot, L.llama_vocab_eos):
            t = int(fn(self._vocab))
            if 0 <= t < self.n_vocab:
                return t
        return None

    def prompt_format(self) -> PromptFormat | None:
        """ChatML for models whose template is ChatML; None (the RWKV role-play format) for
        RWKV and for models without a template the app knows."""
        if self._special.markers:
            return ChatMLFormat(self._special.eog_texts)
        return None

    @property
    def wide_threads(self) -> int | None:
        """Threads a pass of several one-token steps may use (`forward_batch`'s `threads`):
        every usable CPU, where the count is the default one and leaves some free; None where
        the user set a count, or it is every CPU already. A step alone reads the weights at
        the speed of memory whatever the count; a pass of several is compute-bound in
        llama.cpp's kernels for a few columns (core/engine/batch.py measures whether it pays)."""
        n = usable_cpus()
        return n if self._auto_threads and n > self.n_threads else None

    def context_limit(self) -> int | None:
        return None if self.recurrent else self.n_ctx

    def set_threads(self, n: int | None) -> None:
        """Threads of decoding and prompt feeding from the next call on (None: the default)."""
        with self._lock:
            self._check_open()
            self.n_threads = resolve_threads(n)
            self._auto_threads = not n
            L.llama_set_n_threads(self._ctx, self.n_threads, self.n_threads)
            self.info.strategy = f"llama.cpp cpu {self.file_type}, {_threads(self.n_threads)}"
            self.info.extra["threads"] = self.n_threads

    # ---- states
    def _check_open(self) -> None:
        if self._closed:
            raise ModelError("This model was closed; load it again.")

    def _check_state(self, state: LlamaState) -> None:
        if not isinstance(state, LlamaState):
            raise ModelError(f"Not a llama.cpp state: {type(state).__name__}.")

    def initial_state(self) -> LlamaState:
        return self._initial

    def wkv_shape(self) -> tuple[int, int, int] | None:
        n_embd, size = self.info.n_embd, self._head_size
        if not self.recurrent or not size or n_embd % size:
            return None
        return self.info.n_layer, n_embd // size, size

    def state_with_wkv(self, wkv: list[np.ndarray]) -> LlamaState:
        """A state-tuning file's state, written into llama.cpp's own bytes of a sequence: the
        token shifts zero, each layer's WKV row the file's matrices (llama.cpp keeps RWKV-7's
        as the file does, [head, value, key], and RWKV-6's as [head, key, value], like the
        rwkv package). Fed from position 0, as a chat's first tokens are."""
        check_wkv(wkv, self.wkv_shape())
        with self._lock:
            self._check_open()
            layout = self._layout()
            buf = bytearray(layout.template)
            struct.pack_into("<i", buf, layout.pos_at, -1)  # no token fed yet
            for at in layout.r_at:
                buf[at : at + layout.r_row] = bytes(layout.r_row)
            for at, w in zip(layout.s_at, wkv, strict=True):
                m = np.asarray(w, dtype=np.float32)
                if self.arch == "rwkv6":
                    m = m.transpose(0, 2, 1)
                buf[at : at + layout.s_row] = np.ascontiguousarray(m).tobytes()
            return LlamaState(0, bytes(buf), owner=id(self))

    def _layout(self) -> _SeqLayout:
        """Where the parts of a sequence's state lie in its bytes, read once from a state that
        llama.cpp made itself (one token fed) and checked field by field; bytes before the
        cell count (this build's own header) are kept as they are."""
        if self._seq_layout is not None:
            return self._seq_layout
        _, fed = self.forward([0], LlamaState(0, owner=id(self)))
        data = bytes(self._data_of(fed))
        layers, heads, size = self.wkv_shape() or (0, 0, 0)
        r_row, s_row = 2 * self.info.n_embd * 4, heads * size * size * 4
        tail = layers * (2 * _ROW_HEAD.size + r_row + s_row)
        start = len(data) - tail - _SEQ_TAIL_HEAD.size
        unknown = ModelError(
            f"This llama.cpp (llama-cpp-python {L.__version__}) saves a sequence's state in a "
            "layout this app does not know, so it cannot start a chat from a state file. Use "
            "the model's .pth file (the rwkv back end) for this character."
        )
        if start < 0:
            raise unknown
        cells, _pos, n_seq, s_trans, n_layer = _SEQ_TAIL_HEAD.unpack_from(data, start)
        if (cells, n_seq, s_trans, n_layer) != (1, 0, 0, layers):
            raise unknown
        at = start + _SEQ_TAIL_HEAD.size
        found: dict[str, list[int]] = {"r": [], "s": []}
        for part, row in (("r", r_row), ("s", s_row)):
            for _ in range(layers):
                gtype, size_row = _ROW_HEAD.unpack_from(data, at)
                if gtype != 0 or size_row != row:  # GGML_TYPE_F32 rows of the expected size
                    raise unknown
                at += _ROW_HEAD.size
                found[part].append(at)
                at += row
        self._seq_layout = _SeqLayout(data, start + 4, r_row, s_row, found["r"], found["s"])
        return self._seq_layout

    def prefix_state(self, state: LlamaState, n: int) -> LlamaState:
        """The state after the first `n` tokens of those that made `state` (`cuts_states`):
        the cells of its first positions copied to a sequence of their own (shared cells, no
        copy of the KV data). A state held only as bytes is loaded into a sequence first."""
        self._check_state(state)
        if not self.cuts_states:
            return super().prefix_state(state, n)
        with self._lock:
            self._check_open()
            if state.owner != id(self):
                state = self._adopt(state)
            keep = self._initial.n_past + n  # positions kept (after the BOS a model wants)
            if n < 0 or keep > state.n_past:
                raise ValueError(f"cannot cut a state of {state.n_past} positions to {keep}")
            if keep == state.n_past:
                return state
            if n == 0:
                return self._initial
            self._collect()
            src = self._slot_of(state)
            if src is None:
                if state.data is None:
                    raise ModelError("This state was lost (its model was closed or reloaded).")
                src = self._take_slot(None)
                self._load_seq(src, state.data)
                self._bind(state, src)
            dst = self._take_slot({src})
            L.llama_memory_seq_cp(self._mem, src, dst, 0, keep)
            cut = LlamaState(keep, owner=id(self))
            self._bind(cut, dst)
            return cut

    def copy_state(self, state: LlamaState) -> LlamaState:
        """A detached copy, held as bytes (states never change, so this is for callers that
        want a snapshot that holds no sequence of the context)."""
        self._check_state(state)
        with self._lock:
            data = bytes(self._data_of(state))
        return LlamaState(state.n_past, data or None, owner=id(self))

    def _data_of(self, state: LlamaState) -> bytes | bytearray:
        if state.data is None and not state.empty:
            self._check_open()
            slot = self._slot_of(state)
            if slot is None:
                raise ModelError("This state was lost (its model was closed or reloaded).")
            self._snapshot(state, slot)
        return state.data or b""

    def state_to_bytes(self, state: LlamaState) -> bytes:
        self._check_state(state)
        with self._lock:
            data = self._data_of(state)
        return _STATE_HEADER.pack(_STATE_MAGIC, 1, self._id_tag, state.n_past) + data

    def state_from_bytes(self, data: bytes) -> LlamaState:
        if len(data) < _STATE_HEADER.size:
            raise ModelError("The saved state is truncated.")
        magic, ver, tag, n_past = _STATE_HEADER.unpack_from(data)
        if magic != _STATE_MAGIC or ver != 1:
            raise ModelError("The saved state is not a llama.cpp state of this app.")
        if tag != self._id_tag:
            raise ModelError("The saved state belongs to another model.")
        payload = bytes(data[_STATE_HEADER.size :])
        if n_past and not payload:
            raise ModelError("The saved state is empty.")
        return LlamaState(int(n_past), payload or None, owner=id(self))

    def state_nbytes(self, state: LlamaState) -> int:
        """Size of the state in bytes, without serialising it (for cache budgets)."""
        self._check_state(state)
        with self._lock:
            if state.data is not None:
                return _STATE_HEADER.size + len(state.data)
            slot = self._slot_of(state)
            if slot is None:
                return _STATE_HEADER.size
            return _STATE_HEADER.size + int(L.llama_state_seq_get_size(self._ctx, slot))

    def _snapshot(self, state: LlamaState, slot: int) -> None:
        """Save the sequence `slot` (which holds `state`) into `state.data`. The buffer comes
        from a pool and goes back to it when the state is garbage-collected: in a decode loop
        every state is saved once and dropped at once, and fresh 2 MB buffers cost page faults."""
        size = int(L.llama_state_seq_get_size(self._ctx, slot))
        buf = None
        while self._pool:
            b = self._pool.pop()
            if len(b) == size:
                buf = b
                break
        if buf is None:
            buf = bytearray(size)
        arr = (ctypes.c_uint8 * size).from_buffer(buf)
        n = int(L.llama_state_seq_get_data(self._ctx, arr, size, slot))
        del arr
        if n != size:
            raise ModelError("llama.cpp could not save a state.")
        state.data = buf
        weakref.finalize(state, self._recycle, buf)

    def _recycle(self, buf: bytearray) -> None:
        if len(self._pool) < 4:
            self._pool.append(buf)

    def _load_seq(self, slot: int, data: bytes | bytearray) -> None:
        n = len(data)
        if isinstance(data, bytearray):
            ptr: Any = (ctypes.c_uint8 * n).from_buffer(data)
        else:
            ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
        ok = int(L.llama_state_seq_set_data(self._ctx, ptr, n, slot)) > 0
        if not ok and not self.recurrent:
            # maybe no room in the KV cache: save the other live states to bytes and retry
            for s in range(self.n_slots):
                if s != slot and self._slots[s].owner is not None:
                    self._evict(s)
            ok = int(L.llama_state_seq_set_data(self._ctx, ptr, n, slot)) > 0
        if not ok:
            L.llama_memory_seq_rm(self._mem, slot, -1, -1)
            raise ModelError(
                "llama.cpp refused a saved state: it does not fit this model or its context."
            )

    # ---- slots
    def _slot_of(self, state: LlamaState) -> int | None:
        s = state.slot
        if s is not None and self._slots[s].owner is not None and self._slots[s].owner() is state:
            return s
        state.slot = None
        return None

    def _free_slot(self, s: int) -> None:
        L.llama_memory_seq_rm(self._mem, s, -1, -1)
        self._slots[s].owner = None

    def _collect(self) -> None:
        """Free the slots whose states were garbage-collected."""
        for i, sl in enumerate(self._slots):
            if sl.owner is not None and sl.owner() is None:
                self._free_slot(i)

    def _take_slot(self, keep: set[int] | None = None) -> int:
        """A cleared slot, evicting (saving to bytes) the least recently used live state;
        never one of `keep`."""
        keep = keep or set()
        free = [i for i, sl in enumerate(self._slots) if sl.owner is None and i not in keep]
        if free:
            s = free[0]
        else:
            others = [i for i in range(self.n_slots) if i not in keep]
            if not others:
                raise ModelError("Too many sequences in one batch for this model's context.")
            s = min(others, key=lambda i: self._slots[i].used)
            self._evict(s)
        L.llama_memory_seq_rm(self._mem, s, -1, -1)
        return s

    def _evict(self, s: int) -> None:
        sl = self._slots[s]
        st = sl.owner() if sl.owner is not None else None
        if st is not None:
            if st.data is None:
                self._snapshot(st, s)
            st.slot = None
        self._free_slot(s)

    def _bind(self, state: LlamaState, s: int) -> None:
        self._tick += 1
        state.slot = s
        self._slots[s].owner = weakref.ref(state)
        self._slots[s].used = self._tick

    # ---- running
    def advance(self, tokens: list[int], state: LlamaState) -> tuple[np.ndarray, LlamaState]:
        """`forward` for a caller that drops `state` afterwards (a decode loop): the sequence
        that holds it is then decoded in place without first saving the old state. Using
        `state` again raises ModelError."""
        return self.forward(tokens, state, consume=True)

    def forward(
        self, tokens: list[int], state: LlamaState, consume: bool = False
    ) -> tuple[np.ndarray, LlamaState]:
        """Feed `tokens` after `state`: float32 logits of the last token and the new state.
        `state` is left as it was (unless `consume`, see `advance`)."""
        try:
            return self.forward_batch([(tokens, state, consume)])[0]
        except BatchItemError as e:
            raise e.error from None

    def forward_batch(
        self, items: list[BatchItem], threads: int | None = None
    ) -> list[tuple[np.ndarray, LlamaState]]:
        """Feed several sequences in one `llama_decode` call (several, past `n_batch` tokens):
        each item is (tokens, state, consume), as `forward` (consume False) or `advance`
        (consume True). Each item gets a sequence of its own; at most `max_batch` items.
        `threads`: compute a pass of several one-token steps with that many threads (see
        `wide_threads`); prompts always run with the model's own count.

        A recurrent model keeps one state per sequence (`n_seq_max`), a transformer one range
        of its KV cache. A state already resident in a sequence is decoded there in place
        (saved to bytes first unless consumed), so a decode loop keeps its sequence, and
        llama.cpp its compute graph, from step to step. An item that fails its checks raises
        BatchItemError before anything changed."""
        if not items:
            return []
        if len(items) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} sequences in one batch")
        with self._lock:
            self._check_open()
            checked: list[tuple[list[int], LlamaState, bool]] = []
            for i, (tokens, state, consume) in enumerate(items):
                try:
                    checked.append((list(tokens), self._checked(tokens, state), consume))
                except (ModelError, ValueError) as e:
                    raise BatchItemError(i, e) from e
            self._collect()
            uses = collections.Counter(id(st) for _, st, _ in checked)
            keep: set[int] = set()  # sequences this batch decodes into or copies from
            dsts: list[int] = []
            try:
                for _tokens, state, consume in checked:
                    dst = self._place(state, consume and uses[id(state)] == 1, keep)
                    keep.add(dst)
                    dsts.append(dst)
                if self.recurrent and len(dsts) > 1:
                    dsts = self._in_one_run(dsts)
                wide = (
                    threads is not None
                    and threads != self.n_threads
                    and len(checked) > 1
                    and all(len(t) == 1 for t, _, _ in checked)
                )
                if wide:  # n_threads_batch: llama.cpp's count for a pass of several tokens
                    L.llama_set_n_threads(self._ctx, self.n_threads, resolve_threads(threads))
                try:
                    logits = self._decode_many(
                        [(t, d, st.n_past) for (t, st, _), d in zip(checked, dsts, strict=True)],
                        keep,
                    )
                finally:
                    if wide:
                        L.llama_set_n_threads(self._ctx, self.n_threads, self.n_threads)
            except BaseException:
                for d in dsts:
                    self._free_slot(d)
                raise
            out: list[tuple[np.ndarray, LlamaState]] = []
            for (tokens, state, _), dst, lg in zip(checked, dsts, logits, strict=True):
                new = LlamaState(state.n_past + len(tokens), owner=id(self))
                self._bind(new, dst)
                out.append((lg, new))
            return out

    def _checked(self, tokens: list[int], state: LlamaState) -> LlamaState:
        """`state` ready to feed `tokens` (adopted from another instance of the model)."""
        self._check_state(state)
        if state.consumed:
            raise ModelError("This state was used up by a decode step; it cannot be fed again.")
        n = len(tokens)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if state.owner != id(self):
            state = self._adopt(state)
        if not self.recurrent and state.n_past + n > self.n_ctx:
            raise ModelError(
                f"The chat no longer fits this model's context of {self.n_ctx} tokens "
                f"({state.n_past + n} needed). Start a new chat or shorten this one."
            )
        arr = np.asarray(tokens, dtype=np.int64)
        if int(arr.min()) < 0 or int(arr.max()) >= self.n_vocab:
            raise ModelError(f"A token id is outside the vocabulary of {self.n_vocab}.")
        return state

    def _place(self, state: LlamaState, consume: bool, keep: set[int]) -> int:
        """The sequence to decode `state`'s continuation in, holding a copy of `state`.
        `keep`: sequences the batch already uses (never evicted here)."""
        src = self._slot_of(state)
        if src is not None and src not in keep:
            if consume:  # nobody reads it again: decode in place, no copy
                if state.data is None:
                    state.consumed = True  # (a state with bytes stays usable from them)
                self._release(state, src)
                return src
            if self.recurrent:
                # one state per sequence: save this one to bytes, then decode in place
                if state.data is None:
                    self._snapshot(state, src)
                self._release(state, src)
                return src
            # a transformer's cells are shared by a copy: the state stays where it is
            keep.add(src)
            self._tick += 1
            self._slots[src].used = self._tick
            dst = self._take_slot(keep)
            L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
            return dst
        if src is not None and not self.recurrent:
            dst = self._take_slot(keep)  # a second item from the same state
            L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
            return dst
        dst = self._take_slot(keep)
        if not state.empty:
            if state.data is None:
                raise ModelError("This state was lost (its model was closed or reloaded).")
            self._load_seq(dst, state.data)
        return dst

    def _in_one_run(self, dsts: list[int]) -> list[int]:
        """The batch's sequences moved to consecutive ids (each item's new sequence).

        llama.cpp runs a recurrent model's batch as one pass only over consecutive, increasing
        sequence ids: it cuts the batch at every gap and runs a pass for each piece, each
        reading every weight again (4 decode steps in sequences 0, 2, 4, 6 cost 1.45 times
        the same steps in 0-3 on the RWKV-7 0.1B f16 here). The run chosen is the one that
        already holds most of the batch; a sequence outside it moves in (a rename inside
        llama.cpp, no copy of the state), and a state of another owner there is saved to bytes
        first. Decode loops keep their sequences, so this moves nothing from step to step."""
        k = len(dsts)
        if max(dsts) - min(dsts) == k - 1:  # distinct ids (see forward_batch): one run already
            return dsts
        start = max(range(self.n_slots - k + 1), key=lambda b: sum(b <= d < b + k for d in dsts))
        run = range(start, start + k)
        spare = [t for t in run if t not in dsts]
        out: list[int] = []
        for d in dsts:
            if d in run:
                out.append(d)
                continue
            t = spare.pop(0)
            if self._slots[t].owner is not None:
                self._evict(t)
            L.llama_memory_seq_rm(self._mem, t, -1, -1)
            L.llama_memory_seq_cp(self._mem, d, t, -1, -1)
            L.llama_memory_seq_rm(self._mem, d, -1, -1)
            out.append(t)
        return out

    def _release(self, state: LlamaState, s: int) -> None:
        state.slot = None
        self._slots[s].owner = None

    def _adopt(self, state: LlamaState) -> LlamaState:
        """A state of another backend instance (of the same file): only its bytes travel."""
        if state.empty:
            return self._initial
        if state.data is None:
            raise ModelError("This state belongs to a model that was closed or reloaded.")
        return LlamaState(state.n_past, bytes(state.data), owner=id(self))

    def _decode_many(self, seqs: list[tuple[list[int], int, int]], keep: set[int]) -> list[Any]:
        """Decode (tokens, sequence, first position) for each sequence, packed into calls of at
        most `n_batch` tokens; the float32 logits after each sequence's last token."""
        batch = self._batch
        out: list[Any] = [None] * len(seqs)
        pieces = [
            (j, seq, pos + i, t, i == len(toks) - 1)
            for j, (toks, seq, pos) in enumerate(seqs)
            for i, t in enumerate(toks)
        ]
        pieces.sort(key=lambda piece: piece[1])  # increasing sequence ids (see `_in_one_run`)
        for start in range(0, len(pieces), self.n_batch):
            call = pieces[start : start + self.n_batch]
            batch.n_tokens = len(call)
            tok, p, nseq, sid, lg = (
                batch.token,
                batch.pos,
                batch.n_seq_id,
                batch.seq_id,
                batch.logits,
            )
            rows: list[tuple[int, int]] = []
            for i, (j, seq, pos, t, last) in enumerate(call):
                tok[i] = t
                p[i] = pos
                nseq[i] = 1
                sid[i][0] = seq
                lg[i] = 1 if last else 0
                if last:
                    rows.append((j, i))
            rc = L.llama_decode(self._ctx, batch)
            if rc == 1 and not self.recurrent:
                # no room in the KV cache: save the other live states to bytes and retry
                for s in range(self.n_slots):
                    if s not in keep and self._slots[s].owner is not None:
                        self._evict(s)
                rc = L.llama_decode(self._ctx, batch)
            if rc != 0:
                why = _recent_log()
                if rc == 1:
                    raise ModelError(
                        f"The model's context ({self.n_ctx} tokens) is full. Start a new chat."
                    )
                raise ModelError(f"llama.cpp failed to run the model (code {rc}). {why}".strip())
            for j, i in rows:
                ptr = L.llama_get_logits_ith(self._ctx, i)
                if not ptr:
                    raise ModelError("llama.cpp returned no logits.")
                out[j] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._batch is not None:
                L.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx is not None:
                L.llama_free(self._ctx)
                self._ctx = None
            if self._model is not None:
                L.llama_model_free(self._model)
                self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
