"""The engine: one loaded model, its prefix state cache, and the generation loop.

    engine = Engine(load_backend("models/x.pth", strategy="cpu fp32"))
    reply = engine.reply(ctx, history, Message("char"), PRESETS["roleplay"])
    for piece in reply:          # complete text pieces, as they are generated
        print(piece, end="")
    reply.result                 # text, stop reason, token counts, timings

Invariant (docs/ARCHITECTURE.md, "The state invariant"): the state a reply is generated from
equals the state obtained by feeding, from the model's initial state, exactly the tokens of the
stored transcript before it. The transcript is cut into chunks (core/prompt/) tokenized one at a
time; checkpoints are keyed
by the chain hash of those chunks; every reply restores the longest cached prefix and feeds the
rest. A finished reply's checkpoint is rebuilt from its stored text, never from a trimmed tail.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.backends.base import Backend, ModelInfo, State
from core.backends.model_thread import OnModelThread, is_model_thread, on_model_thread, submit
from core.engine.batch import PREFILL_CHUNK, Batcher
from core.engine.sampler import (
    DRY_RANGE,
    Dry,
    Penalties,
    SamplingParams,
    VocabText,
    sample,
)
from core.engine.state_cache import Checkpoint, StateCache, chain_key, root_key
from core.engine.stops import StopScanner
from core.errors import ModelError
from core.prompt import (
    CharacterContext,
    Message,
    PromptFormat,
    RoleplayFormat,
    StartState,
    normalize,
    speaker_name,
)

log = logging.getLogger(__name__)


@dataclass
class ReplyResult:
    text: str = ""  # the reply as stored (for continue: the whole message)
    stop_reason: str = ""  # "stop", "eos", "length", "cancel", "closed" or "error"
    prompt_tokens: int = 0  # tokens of the transcript before the reply
    fed_tokens: int = 0  # of those, tokens fed now (the rest came from the cache)
    new_tokens: int = 0  # tokens generated
    ttft_s: float = 0.0  # from the start to the first text shown
    gen_s: float = 0.0  # from the first generated token to the end
    tok_s: float = 0.0  # generated tokens per second
    stop_string: str | None = None  # which stop string ended it

    def meta(self) -> dict[str, Any]:
        return {
            "tokens": self.new_tokens,
            "tok_s": round(self.tok_s, 2),
            "ttft_s": round(self.ttft_s, 3),
            "stop": self.stop_reason,
        }


@dataclass(frozen=True)
class DecodeSpeed:
    """How fast the last reply decoded (Settings shows it beside the thread count)."""

    tok_s: float  # generated tokens per second
    tokens: int  # how many it generated
    threads: int | None  # the model's thread count when it ended (None: not known)


MIN_SPEED_TOKENS = 8  # a reply shorter than this says little about the decode speed


@dataclass
class _Chunk:
    text: str
    tokens: list[int]
    key: str  # chain key of the prefix that ends with this chunk


@dataclass
class _Prompt:
    chunks: list[_Chunk]
    boundaries: list[int] = field(default_factory=list)  # chunk indexes that end a message
    start: StartState | None = None  # fed from this state file's state, not the model's own

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


def version_seed(seed: int | None, i: int) -> int | None:
    """The seed of version `i` of a reply asked for with `seed` (None: random)."""
    return None if seed is None else seed + i


RAW_LENGTHS = 512  # prompt lengths remembered for raw completions' prefix lookup
# A prompt is fed in slices of at most PREFILL_SLICE tokens, and a cancel (a client that left, the
# Stop button) is seen between two of them: 400 messages took 34 s, and a stream dropped after 3 s
# kept the CPU busy for minutes, the prefill never looking (issue 21).
PREFILL_SLICE = 4 * PREFILL_CHUNK
# The checkpoints one feed keeps: after each of its last PREFILL_RECENT messages (the next turn,
# a regenerate, an edit or a deletion of a recent message start there), at most PREFILL_SPREAD
# more spread over the messages before them (an older edit feeds from the nearest), and at its
# end. One per message (the old way) made 1,000 checkpoints for a chat of 1,000 messages: a
# transformer's KV cache saved 1,000 times, quadratic in time and memory.
PREFILL_RECENT = 4
PREFILL_SPREAD = 4
TOKENIZE_BATCH = 1000  # chunk texts tokenized in one model-thread call when a prompt is built


class PrefillCancelled(Exception):
    """A prompt's feed stopped between two slices: its cancel event was set."""


def kept_checkpoints(boundaries: list[int], done: int, end: int) -> set[int]:
    """The chunks whose checkpoints a feed of chunks[done:end] keeps (see PREFILL_RECENT):
    `boundaries` are the chunks that end a message, in order."""
    fed = [b for b in boundaries if done <= b < end - 1]
    recent = fed[len(fed) - PREFILL_RECENT :] if len(fed) > PREFILL_RECENT else fed
    rest = fed[: len(fed) - len(recent)]
    step = max(1, math.ceil(len(rest) / PREFILL_SPREAD))
    return {*rest[step - 1 :: step], *recent, end - 1}


@dataclass
class _Run:
    """One generation in progress: what the loop needs and what it leaves behind."""

    params: SamplingParams
    scanner: StopScanner
    t0: float  # when the request came in
    res: ReplyResult = field(default_factory=lambda: ReplyResult(stop_reason="closed"))
    start: Checkpoint | None = None  # the prompt's checkpoint the reply starts from
    state: State = None  # the state after `fed`
    fed: list[int] = field(default_factory=list)  # generated tokens fed back, in order
    last_logits: np.ndarray | None = None  # logits after the last of `fed`
    t_first: float = 0.0  # when decoding began
    recent: list[int] = field(default_factory=list)  # the prompt's last tokens, for DRY

    def finish(self) -> ReplyResult:
        """The result, with timings and the text as the scanner leaves it."""
        res = self.res
        res.gen_s = time.perf_counter() - self.t_first if self.t_first else 0.0
        res.tok_s = res.new_tokens / res.gen_s if res.gen_s > 0 else 0.0
        res.stop_string = self.scanner.stop_string
        res.text = self.scanner.final_text()
        if not res.ttft_s:
            res.ttft_s = time.perf_counter() - self.t0
        return res


class Reply:
    """An iterator of text pieces with the result attached when it ends."""

    def __init__(self, gen: Iterator[str], holder: list[ReplyResult]) -> None:
        self._gen = gen
        self._holder = holder

    def __iter__(self) -> Iterator[str]:
        return self._gen

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()  # type: ignore[attr-defined]

    @property
    def result(self) -> ReplyResult:
        if not self._holder:
            raise RuntimeError("the reply has not finished yet")
        return self._holder[0]

    def consume(self) -> ReplyResult:
        for _ in self._gen:
            pass
        return self.result


class Engine:
    # the cache's folder is shared with other servers ($RP_STATE_DIR): `share_checkpoints`
    _shared = False

    def __init__(
        self,
        backend: Backend,
        cache_dir: Path | None = None,
        mem_budget_mb: float = 512,
        disk_budget_mb: float = 2048,
    ) -> None:
        self.raw_backend = backend
        self.backend: Backend = OnModelThread(backend)  # type: ignore[assignment]
        self.info: ModelInfo = backend.info
        self.format: PromptFormat = backend.prompt_format() or RoleplayFormat()
        # a transformer's KV cache: one checkpoint (a chat's tip) stands for all its prefixes
        self._cuts = bool(backend.cuts_states)
        self._per_token: int | None = None  # bytes a growing state takes a token
        self.cache = StateCache(
            self.backend.state_to_bytes,
            self.backend.state_from_bytes,
            cache_dir,
            mem_budget_mb,
            disk_budget_mb,
            nbytes=backend.state_nbytes,
        )
        # checkpoints of another state layout (another llama.cpp build, say) are never matched
        self._root = root_key(f"{self.info.identity}\0{backend.state_format}")
        self._active = 0
        self._active_lock = threading.Lock()
        self._warming: set[threading.Event] = set()  # the cancel events of warms in progress
        self._tok_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._key_cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._initial: Checkpoint | None = None
        # the start of chats with a state file, by the file's sha256 (`_start_checkpoint`)
        self._starts: OrderedDict[str, Checkpoint] = OrderedDict()
        self._starts_lock = threading.Lock()
        self._token_bytes: Callable[[int], bytes] = backend.token_bytes  # no model thread needed
        self._banned_first = self._banned_at_start()  # at load time, not in the first reply
        self._breakers: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()  # DRY's
        self.last_speed: DecodeSpeed | None = None  # of the last reply long enough to tell
        self._breakers_lock = threading.Lock()
        # raw completions: checkpoints keyed by the exact token prefix, under their own root
        self._raw_root = root_key(f"raw\0{self.info.identity}\0{backend.state_format}")
        self._raw_lengths: OrderedDict[int, None] = OrderedDict()
        self._raw_lock = threading.Lock()
        # every forward pass goes through the batcher: concurrent generations share each pass
        self._batcher = Batcher(backend)
        # checkpoints of replies that have ended, being made on the model thread
        self._records: list[Future[None]] = []
        self._records_lock = threading.Lock()

    # ------------------------------------------------------------------ public helpers
    @property
    def busy(self) -> bool:
        """Another generation is running (a new one will interleave with it)."""
        return self._active > 0

    def cache_stats(self) -> dict[str, Any]:
        self.settle()
        return self.cache.stats()

    CAPACITY_TOKENS = 2000  # the chat length the capacity of growing checkpoints is told for

    def cache_capacity(self) -> dict[str, Any]:
        """What the disk budget means at this model's size (Settings): one checkpoint's bytes
        (`grows`: a transformer's, at CAPACITY_TOKENS tokens, and `per_token`), about how many
        chats keep their tip (reopened and continued at no cost: `chats`) and also the state
        before their last reply (a regenerate at once, `chats_with_regen`), and how many
        chats keep their tip now (`kept`)."""
        stats = self.cache_stats()
        budget = stats["disk_budget"]
        logits = 4 * self.info.n_vocab + 200  # the logits and the file's header
        if self._cuts:  # the tip holds its last reply's start: one file a chat
            per_token = self._bytes_per_token()
            size = per_token * self.CAPACITY_TOKENS + 2 * logits
            chats = with_regen = budget // max(1, size)
        else:
            per_token = 0
            size = self.cache.state_bytes(self._initial_checkpoint().state) + logits
            chats, with_regen = budget // size, budget // (2 * size)
        return {
            "checkpoint_bytes": size,
            "grows": self._cuts,
            "per_token": per_token,
            "chats": int(chats),
            "chats_with_regen": int(with_regen),
            "kept": stats.get("chats_kept", 0),
        }

    def _bytes_per_token(self) -> int:
        """Bytes a growing state takes per token fed (a KV cache's row), measured once."""
        if self._per_token is None:
            st = self._initial_checkpoint().state
            tok = self._tokens("a")[:1] or [0]
            _, one = self._forward(tok, st)
            _, two = self._forward(tok, one)
            a = self.backend.state_nbytes(one) or 0
            b = self.backend.state_nbytes(two) or 0
            self._per_token = max(0, b - a)
        return int(self._per_token)

    def clear_cache(self) -> None:
        self.settle()
        self.cache.clear()

    def set_cache_budget(self, mem_mb: float, disk_mb: float) -> None:
        self.cache.set_budget(mem_mb, disk_mb)

    def share_checkpoints(self) -> None:
        """The cache's disk folder is shared with other servers ($RP_STATE_DIR, behind a load
        balancer): a reply ends only once its checkpoint is on disk, so that the chat's next
        request, wherever it lands, restores it instead of feeding the chat again; a raw
        completion also looks for the checkpoints other servers wrote (`_raw_restore`)."""
        self._shared = True
        self.cache.shared = True

    def _durable(self) -> None:
        """With a shared folder, wait until the checkpoints of replies that ended are on disk
        (the reply's end waits for it, not its first token)."""
        if self._shared:
            self.settle()
            self.cache.flush()

    def flush(self) -> None:
        """Wait for checkpoints on their way to disk (before a planned restart, in tests)."""
        self.settle()
        self.cache.flush()

    def close(self) -> None:
        self.settle()
        self.cache.flush()
        self.backend.close()

    # ------------------------------------------------------------------ after a reply
    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the model thread after what is queued there, without waiting
        for it (a reply's checkpoint: `_generate`). A failure is logged: the reply it follows
        has been shown and is saved whatever happens here."""

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.warning("a reply's checkpoint could not be made", exc_info=True)

        fut = submit(run)
        with self._records_lock:
            self._records = [f for f in self._records if not f.done()] + [fut]

    def settle(self) -> None:
        """Wait for the checkpoints of replies that have ended: anything that reads the cache
        calls this first, so a next turn finds the checkpoint its reply left. On the model
        thread there is nothing to wait for that could be waited for (jobs run in turn)."""
        if is_model_thread():
            return
        with self._records_lock:
            pending = list(self._records)  # (left in the list: other threads wait for them too)
        for f in pending:
            f.exception()  # waits; a failure was logged where it happened
        with self._records_lock:
            self._records = [f for f in self._records if not f.done()]

    # ------------------------------------------------------------------ prompt building
    def _tokens(self, text: str) -> list[int]:
        return self._tokens_of([text])[0]

    def _tokens_of(self, texts: list[str]) -> list[list[int]]:
        """Each text's tokens (cached by text). Those not cached are tokenized on the model
        thread TOKENIZE_BATCH at a time: one call each, a chat of 10,000 messages waited for the
        model thread 20,000 times, a step of every running generation each."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._tok_cache))
        raw = self.raw_backend

        def tokenize(part: list[str]) -> list[list[int]]:
            return [raw.tokenize(t) for t in part]

        found: dict[str, list[int]] = {}
        for i in range(0, len(missing), TOKENIZE_BATCH):
            part = missing[i : i + TOKENIZE_BATCH]
            found.update(zip(part, on_model_thread(tokenize, part), strict=True))
        out = []
        for text in texts:
            toks = found.get(text)
            if toks is None:
                toks = self._tok_cache.get(text)
            if toks is None:  # (dropped from the cache meanwhile by another thread's build)
                toks = self.backend.tokenize(text)
            out.append(toks)
        for text, toks in found.items():
            self._tok_cache[text] = toks
        while len(self._tok_cache) > 20000:
            self._tok_cache.popitem(last=False)
        return out

    def _key(self, prev: str, text: str, tokens: list[int]) -> str:
        k = self._key_cache.get((prev, text))
        if k is None:
            k = chain_key(prev, tokens)
            self._key_cache[(prev, text)] = k
            if len(self._key_cache) > 20000:
                self._key_cache.popitem(last=False)
        return k

    def _build(
        self,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message | None,
        open_last: bool = False,
    ) -> _Prompt:
        """Chunks of the transcript: opening, each message (header, body), then the header of
        `speaker`; with `open_last`, the last message is left open (for "continue")."""
        fmt = self.format
        texts: list[str] = []
        boundaries: list[int] = []
        opening = fmt.opening(ctx)
        if opening:
            texts.append(opening)
            boundaries.append(0)
        for i, msg in enumerate(history):
            last_open = open_last and i == len(history) - 1
            if msg.before:
                texts.append(fmt.note(msg.before, ctx))
            if last_open and msg.note:  # a message being continued: its note, not stored
                texts.append(fmt.note(msg.note, ctx))
            texts.append(fmt.header(msg, ctx))
            if last_open:
                texts.append(fmt.open_body(msg.text, msg, ctx))
            else:
                texts.append(fmt.body(msg.text, msg, ctx))
                boundaries.append(len(texts) - 1)
        if speaker is not None and not open_last:
            if speaker.before:
                texts.append(fmt.note(speaker.before, ctx))
            if speaker.note:  # this reply's alone: not in the transcript it is stored in
                texts.append(fmt.note(speaker.note, ctx))
            texts.append(fmt.header(speaker, ctx))
        chunks: list[_Chunk] = []
        prev = self._root
        for text, toks in zip(texts, self._tokens_of(texts), strict=True):
            prev = self._key(prev, text, toks)
            chunks.append(_Chunk(text, toks, prev))
        start = self._start_of(ctx)
        if start is not None:  # a chat from a state file: keys of its own (`_start_root`)
            self._rekey(chunks, self._start_root(start))
        return _Prompt(chunks, boundaries, start)

    # ------------------------------------------------------------------ a character's state file
    START_STATES = 2  # states made from characters' state files, kept (a 7.2B model's: 35 MB)

    def _rekey(self, chunks: list[_Chunk], root: str) -> None:
        """Chain the chunks' keys again from `root`."""
        prev = root
        for c in chunks:
            prev = c.key = self._key(prev, c.text, c.tokens)

    def _start_of(self, ctx: CharacterContext) -> StartState | None:
        """The state file a chat with `ctx` starts from: None when it has none, or it cannot
        be used here (missing, damaged, or a model without an RWKV state: `start_notice`)."""
        st = ctx.start_state
        if st is None or st.problem or self.backend.wkv_shape() is None:
            return None
        return st

    def _start_root(self, start: StartState) -> str:
        """The root of every cache key of a chat that starts from `start`: the model's root
        and the file's sha256, so chats with and without it (or with another) never share a
        checkpoint."""
        return root_key(f"{self.info.identity}\0{self.raw_backend.state_format}\0{start.sha256}")

    def start_notice(self, ctx: CharacterContext) -> str:
        """Empty when a chat with `ctx` starts as it says. When its character's state file cannot
        be used here (a model without an RWKV state, such as a transformer or RWKV-4; a file
        missing from the data folder or damaged), a sentence that says so: the chat then runs
        from the model's own initial state. Raises ModelError when the file does not fit the
        loaded model (its layers, heads or head size), and AppError when it cannot be read."""
        st = ctx.start_state
        if st is None:
            return ""
        if st.problem:
            return f"{st.problem} This chat runs without it."
        if self.backend.wkv_shape() is None:
            return (
                self._no_wkv(f"{ctx.name}'s state file {st.name}") + " This chat runs without it."
            )
        self._start_checkpoint(st)  # checks the shape: a refusal is raised here, at once
        return ""

    def state_file_fit(self, name: str, shape: tuple[int, int, int]) -> str:
        """Why a state file of `shape` (layers, heads, head size) cannot start a chat with
        this model, "" when it can (or the shape is not known: zeros): for the Characters
        page, before any chat is opened."""
        want = self.backend.wkv_shape()
        if want is None:
            return self._no_wkv(f"the state file {name}") + " Its chats run without it."
        if 0 in shape or tuple(shape) == want:
            return ""
        return self._misfit(name, shape, want)

    def _no_wkv(self, what: str) -> str:
        model = Path(self.info.path).name if self.info.path else "the embedded model"
        return (
            f"The loaded model ({model}) is not an RWKV-5, 6 or 7 model, so it cannot start "
            f"from {what}."
        )

    def _misfit(
        self, name: str, got: tuple[int, int, int], want: tuple[int, int, int] | None
    ) -> str:
        model = Path(self.info.path).name if self.info.path else "the loaded model"
        return (
            f"The state file {name} was made for a model with {_shape(got)}; {model} has "
            + (_shape(want) if want else "no RWKV state")
            + ". Load the model it was tuned for, or remove the state file from the character "
            "(Characters, Edit)."
        )

    def _start_checkpoint(self, start: StartState) -> Checkpoint:
        """The state a chat with this state file starts from (made once, kept for the next)."""
        with self._starts_lock:
            hit = self._starts.get(start.sha256)
            if hit is not None:
                self._starts.move_to_end(start.sha256)
                return hit
        cp = Checkpoint(np.zeros(0, np.float32), self._start_state(start), 0)
        with self._starts_lock:
            self._starts[start.sha256] = cp
            while len(self._starts) > self.START_STATES:
                self._starts.popitem(last=False)
        return cp

    def _start_state(self, start: StartState) -> State:
        """A fresh state from the state file, after checking that it fits this model."""
        wkv = start.load()
        want = self.backend.wkv_shape()
        got = (len(wkv), int(wkv[0].shape[0]), int(wkv[0].shape[-1])) if wkv else (0, 0, 0)
        if want is None or got != want:
            raise ModelError(self._misfit(start.name, got, want))
        return self.backend.state_with_wkv(wkv)

    # ------------------------------------------------------------------ states
    def _forward(
        self, tokens: list[int], state: State, consume: bool = False
    ) -> tuple[np.ndarray, State]:
        """One call into the model, on the model thread, batched with the decode steps of other
        generations (a long prompt is fed in chunks between their steps)."""
        return self._batcher.forward(tokens, state, consume)

    def _feed(
        self, tokens: list[int], state: State, cancel: threading.Event | None = None
    ) -> tuple[np.ndarray, State]:
        """`tokens` (non-empty) fed after `state` in slices of PREFILL_SLICE, `cancel` looked at
        before each (PrefillCancelled). `state` is left as it was."""
        logits: np.ndarray | None = None
        for a in range(0, len(tokens), PREFILL_SLICE):
            if cancel is not None and cancel.is_set():
                raise PrefillCancelled
            logits, state = self._forward(tokens[a : a + PREFILL_SLICE], state, consume=a > 0)
        assert logits is not None, "nothing to feed"
        return logits, state

    def _initial_checkpoint(self, start: StartState | None = None) -> Checkpoint:
        """Where a prompt with nothing cached starts: the model's initial state, or the state
        of the character's state file."""
        if start is not None:
            return self._start_checkpoint(start)
        if self._initial is None:
            self._initial = Checkpoint(np.zeros(0, np.float32), self.backend.initial_state(), 0)
        return self._initial

    def _restore(self, prompt: _Prompt, upto: int | None = None) -> tuple[Checkpoint, int]:
        """The longest cached prefix among chunks[:upto]: (checkpoint, chunks covered). Where
        the back end cuts states, a prefix may also be cut from a checkpoint that holds it
        (`StateCache.holder`: a chat's tip holds every earlier point of the chat)."""
        self.settle()
        end = len(prompt.chunks) if upto is None else upto
        for i in range(end - 1, -1, -1):
            key = prompt.chunks[i].key
            cp = self.cache.get(key)
            if cp is not None:
                return cp, i + 1
            if self._cuts:
                found = self.cache.holder(key, want_logits=i == end - 1)
                if found is not None:
                    try:
                        return self._cut(prompt, i, *found, logits=i == end - 1), i + 1
                    except ModelError:  # a state the back end refuses: forget it, go on
                        self.cache.discard(found[2])
        return self._initial_checkpoint(prompt.start), 0

    def _cut(
        self, prompt: _Prompt, i: int, holder: Checkpoint, n: int, _key: str, logits: bool
    ) -> Checkpoint:
        """The checkpoint of chunks[:i + 1] (`n` tokens) cut from `holder`. With `logits` (the
        prefix is the whole prompt: the reply samples from them) they come with the holder
        (a chat's tip keeps those of its last reply's start), else the last token is fed
        again to compute them: one decode step."""
        if n == 0:
            return self._initial_checkpoint(prompt.start)
        known = holder.prefix_logits.get(prompt.chunks[i].key)
        if not logits or known is not None:
            state = self.backend.prefix_state(holder.state, n)
            return Checkpoint(known if known is not None else np.zeros(0, np.float32), state, n)
        last = next(c.tokens[-1] for c in reversed(prompt.chunks[: i + 1]) if c.tokens)
        state = self.backend.prefix_state(holder.state, n - 1)
        out, state = self._forward([last], state)
        return Checkpoint(out, state, n)

    def _lineage(self, prompt: _Prompt, i: int) -> list[tuple[str, int]]:
        """The keys and token counts of chunks[:i]: the prefixes a checkpoint of chunks[:i + 1]
        holds where the back end cuts states."""
        out, n = [], 0
        for c in prompt.chunks[:i]:
            n += len(c.tokens)
            out.append((c.key, n))
        return out

    def _advance(
        self,
        prompt: _Prompt,
        upto: int | None = None,
        to_disk: bool = True,
        cancel: threading.Event | None = None,
    ) -> tuple[Checkpoint, int]:
        """State after chunks[:upto] (default: all), feeding what the cache lacks in slices of
        PREFILL_SLICE tokens and recording checkpoints at message boundaries
        (`kept_checkpoints`). Returns (checkpoint, tokens fed). A `cancel` set is seen between
        two slices: PrefillCancelled.

        Every checkpoint goes to memory; with `to_disk`, the last message boundary also goes to
        disk, for a restart. A reply passes False: the checkpoint after the reply itself is the
        one worth keeping, and fewer writes leave the CPU to the reply."""
        end = len(prompt.chunks) if upto is None else upto
        cp, done = self._restore(prompt, end)
        fed = 0
        logits, state, n = cp.logits, cp.state, cp.n_tokens
        # where states cut, the feed's end holds every prefix (`_lineage`): nothing else kept
        keep = {end - 1} if self._cuts else kept_checkpoints(prompt.boundaries, done, end)
        last_boundary = max((b for b in prompt.boundaries if b < end), default=-1)
        try:
            pending: list[int] = []
            unsaved = False  # fed since the last checkpoint: `state` is this feed's own
            for i in range(done, end):
                pending += prompt.chunks[i].tokens
                here = i in keep
                if not (here or len(pending) >= PREFILL_SLICE):
                    continue
                cut = len(pending) if here else len(pending) - len(pending) % PREFILL_SLICE
                for a in range(0, cut, PREFILL_SLICE):
                    if cancel is not None and cancel.is_set():
                        raise PrefillCancelled
                    part = pending[a : a + PREFILL_SLICE]
                    logits, state = self._forward(part, state, consume=unsaved)
                    n += len(part)
                    fed += len(part)
                    unsaved = True
                pending = pending[cut:]
                if here and unsaved:
                    self.cache.put(
                        prompt.chunks[i].key,
                        Checkpoint(logits, state, n),
                        disk=to_disk and i == last_boundary,
                        lineage=self._lineage(prompt, i) if self._cuts else None,
                    )
                    unsaved = False
        except ModelError:
            if done == 0:
                raise
            # the back end refused a stored state (written by another version?): forget it
            self.cache.discard(prompt.chunks[done - 1].key)
            return self._advance(prompt, upto, to_disk, cancel)
        if done == end == 0:
            return self._initial_checkpoint(prompt.start), 0
        return Checkpoint(logits, state, n), fed

    def warm(
        self,
        ctx: CharacterContext,
        history: list[Message],
        cancel: threading.Event | None = None,
    ) -> None:
        """Prefill the state of a chat's transcript so its next reply starts at once. Only a
        head start: a reply or a completion that starts meanwhile ends it (PrefillCancelled;
        what it fed up to its last checkpoint stays cached), so the two never feed the same
        prompt twice over and the reply has the model to itself; so does `cancel`."""
        cancel = cancel or threading.Event()
        with self._active_lock:
            self._warming.add(cancel)
        try:
            self._advance(self._build(ctx, history, None), cancel=cancel)
        finally:
            with self._active_lock:
                self._warming.discard(cancel)

    def _start_generation(self) -> None:
        """A generation starts: counted as active, and the warms in progress end."""
        with self._active_lock:
            self._active += 1
            for event in self._warming:
                event.set()

    def state_for(
        self, ctx: CharacterContext, history: list[Message], speaker: Message
    ) -> tuple[np.ndarray, State]:
        """Logits and state the next reply by `speaker` would start from (through the cache)."""
        cp, _ = self._advance(self._build(ctx, history, speaker))
        return cp.logits, cp.state

    def reference_state(
        self, ctx: CharacterContext, history: list[Message], speaker: Message
    ) -> tuple[np.ndarray, State]:
        """The same, fed from the initial state (or the state file's) in one go, without the
        cache."""
        prompt = self._build(ctx, history, speaker)
        tokens = [t for c in prompt.chunks for t in c.tokens]
        if prompt.start is None:
            return self._forward(tokens, self.backend.initial_state())
        return self._forward(tokens, self._start_state(prompt.start))

    def prompt_text(self, ctx: CharacterContext, history: list[Message], speaker: Message) -> str:
        return "".join(c.text for c in self._build(ctx, history, speaker).chunks)

    # ------------------------------------------------------------------ generation
    def _banned_at_start(self) -> np.ndarray:
        """Tokens that would end or blank a reply before it says anything: whitespace with a
        newline in it, and the end-of-turn token. Computed once per engine, at load (tens of ms),
        in the same pass as the vocabulary's text that DRY's sequence breakers are found in."""
        ids: list[int] = []
        pieces: list[bytes] = []
        for t in range(self.info.n_vocab):
            b = self._token_bytes(t)
            pieces.append(b)
            if b and b"\n" in b and not b.strip():
                ids.append(t)
        self._vocab_text = VocabText(pieces)  # DRY's sequence breakers are found in it
        eos = self.backend.eos_token()
        if eos is not None:
            ids.append(eos)
        return np.array(sorted(set(ids)), dtype=np.int64)

    def _note_speed(self, res: ReplyResult) -> None:
        if res.new_tokens >= MIN_SPEED_TOKENS and res.tok_s > 0:
            threads = self.info.extra.get("threads")
            n = threads if isinstance(threads, int) else None
            self.last_speed = DecodeSpeed(res.tok_s, res.new_tokens, n)

    def _dry(self, params: SamplingParams, recent: list[int]) -> Dry | None:
        """The DRY penalty of one generation over `recent` (None when it is off)."""
        if params.dry_multiplier <= 0:
            return None
        return Dry(recent, params, self._breaker_mask(params.dry_sequence_breakers))

    def _breaker_mask(self, breakers: tuple[str, ...]) -> np.ndarray:
        """Which tokens contain one of `breakers` (`VocabText.containing`: one scan of the
        vocabulary's text, made at load), kept for the last few sets asked for."""
        with self._breakers_lock:
            mask = self._breakers.get(breakers)
            if mask is None:
                mask = self._vocab_text.containing(breakers)
                self._breakers[breakers] = mask
                while len(self._breakers) > 8:
                    self._breakers.popitem(last=False)
            return mask

    def reply(
        self,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message,
        params: SamplingParams,
        cancel: threading.Event | None = None,
        continue_last: bool = False,
        on_finish: Callable[[ReplyResult], None] | None = None,
    ) -> Reply:
        """Generate the next message by `speaker` (its text is ignored), or with
        `continue_last` extend the last message of `history`."""
        holder: list[ReplyResult] = []
        gen = self._generate(
            ctx,
            list(history),
            speaker,
            params,
            cancel,
            continue_last,
            on_finish,
            holder,
        )
        return Reply(gen, holder)

    def reply_versions(
        self,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message,
        params: SamplingParams,
        n: int,
        cancel: threading.Event | None = None,
        on_finish: Callable[[int, ReplyResult], None] | None = None,
    ) -> list[Reply]:
        """`n` versions of the next message by `speaker`, from one restored state (the prompt
        is fed once), each with its own sampler stream: version i uses `version_seed(seed, i)`,
        so it equals `reply` with that seed. Consumed at once (one thread each, see
        `core.engine.batch.consume_together`) they decode as one batch."""
        if n < 1:
            raise ValueError("n must be at least 1")
        history = list(history)
        prompt = self._build(ctx, history, speaker)
        lock = threading.Lock()
        shared: list[tuple[Checkpoint, int]] = []

        def start() -> tuple[Checkpoint, int]:
            with lock:  # the first version feeds the prompt; the others reuse its state
                if not shared:
                    shared.append(self._advance(prompt, to_disk=False, cancel=cancel))
                    return shared[0]
                return shared[0][0], 0

        replies: list[Reply] = []
        for i in range(n):
            holder: list[ReplyResult] = []
            p = replace(params, seed=version_seed(params.seed, i))
            done = (lambda res, i=i: on_finish(i, res)) if on_finish is not None else None
            gen = self._generate(ctx, history, speaker, p, cancel, False, done, holder, start=start)
            replies.append(Reply(gen, holder))
        return replies

    def _generate(
        self,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message,
        params: SamplingParams,
        cancel: threading.Event | None,
        continue_last: bool,
        on_finish: Callable[[ReplyResult], None] | None,
        holder: list[ReplyResult],
        start: Callable[[], tuple[Checkpoint, int]] | None = None,
    ) -> Iterator[str]:
        t0 = time.perf_counter()
        if continue_last:
            if not history:
                raise ValueError("nothing to continue: the chat is empty")
            speaker = history[-1]
        names = [m.name for m in history if m.name]
        me = speaker_name(speaker, ctx)
        scanner = StopScanner(
            self.format.stop_strings(speaker, ctx, names),
            strip_leading=not continue_last,
            strip_prefixes=StopScanner.name_prefixes(me),  # a reply repeating its own header
        )
        prompt = self._build(ctx, history, speaker, open_last=continue_last)
        run = _Run(params.validated(), scanner, t0)
        run.res.prompt_tokens = prompt.n_tokens
        if run.params.dry_multiplier > 0:
            run.recent = _last_tokens(prompt, run.params.dry_range or DRY_RANGE)
        self._start_generation()  # counted down in `finally`, whatever happens from here
        try:
            if start is not None:
                run.start, run.res.fed_tokens = start()
            else:
                run.start, run.res.fed_tokens = self._advance(prompt, to_disk=False, cancel=cancel)
            banned = self._banned_first if not continue_last else None
            yield from self._decode(run, cancel, banned)
        except PrefillCancelled:
            run.res.stop_reason = "cancel"  # stopped before its first token: nothing to keep
        except GeneratorExit:
            run.res.stop_reason = "closed"  # the consumer went away: keep what was shown
        finally:
            with self._active_lock:
                self._active -= 1
            res = run.finish()
            self._note_speed(res)
            if continue_last:
                res.text = normalize(history[-1].text + res.text)
            if res.text and run.start is not None:
                # the reply has been shown: its checkpoint is made after it, on the model
                # thread, before anything later reads the cache (`settle`)
                self._later(
                    self._record_reply,
                    ctx,
                    history,
                    speaker,
                    res.text,
                    continue_last,
                    run.start,
                    run.fed,
                    run.state,
                    [c.key for c in prompt.chunks],
                )
                self._durable()
            holder.append(res)
            if on_finish is not None:
                on_finish(res)

    def _decode(
        self, run: _Run, cancel: threading.Event | None, banned: np.ndarray | None
    ) -> Iterator[str]:
        """The generation loop, from `run.start`: sample, show, stop, feed back."""
        assert run.start is not None
        params, scanner, res = run.params, run.scanner, run.res
        logits, run.state = run.start.logits, run.start.state
        rng = np.random.default_rng(params.seed)
        penalties = Penalties(logits.size, params.penalty_decay, self._dry(params, run.recent))
        eos = self.backend.eos_token()
        run.t_first = time.perf_counter()

        def pick(logits: np.ndarray) -> int:
            return sample(logits, params, rng, penalties, banned if scanner.empty else None)

        # Sampling runs on the model thread right after the forward it depends on, so a
        # second session's numpy work never competes with the model's own threads. Each step
        # goes to the batcher, which runs it in one pass with the other generations' steps.
        tok = on_model_thread(pick, logits)
        stream = self._batcher.open()
        try:
            for i in range(params.max_tokens):
                if cancel is not None and cancel.is_set():
                    res.stop_reason = "cancel"
                    break
                res.new_tokens += 1
                if tok == eos:
                    res.stop_reason = "eos"
                    break
                penalties.add(tok)
                piece = scanner.push(self._token_bytes(tok))
                if piece:
                    if not res.ttft_s:
                        res.ttft_s = time.perf_counter() - run.t0
                    yield piece
                if scanner.stopped:
                    res.stop_reason = "stop"
                    break
                if i == params.max_tokens - 1:
                    res.stop_reason = "length"
                    break
                # the prompt's state stays in the cache; later ones are this loop's alone
                run.last_logits, run.state, nxt = self._batcher.step(
                    stream, [tok], run.state, bool(run.fed), pick
                )
                run.fed.append(tok)
                tok = nxt
        finally:
            self._batcher.close(stream)  # leaves the batch at once

    # ------------------------------------------------------------------ raw completion
    def complete(
        self,
        prompt: str,
        params: SamplingParams,
        stop_strings: list[str] | None = None,
        cancel: threading.Event | None = None,
        on_finish: Callable[[ReplyResult], None] | None = None,
    ) -> Reply:
        """Continue a raw prompt (an API "text completion"). The state is restored from the
        longest cached token prefix of the prompt (checkpoints are kept at the end of earlier
        prompts and of the replies to them), so a client that resends its whole transcript
        each turn feeds only the new tokens."""
        holder: list[ReplyResult] = []
        gen = self._complete(prompt, params, stop_strings or [], cancel, on_finish, holder)
        return Reply(gen, holder)

    def _raw_key(self, tokens: list[int]) -> str:
        return chain_key(self._raw_root, tokens)

    def _raw_restore(self, tokens: list[int]) -> Checkpoint:
        """The checkpoint of the longest cached prefix of `tokens` (the initial one if none)."""
        with self._raw_lock:
            lengths = sorted((n for n in self._raw_lengths if n <= len(tokens)), reverse=True)
        for n in lengths:
            cp = self.cache.get(self._raw_key(tokens[:n]))
            if cp is not None:
                return cp
        if self._shared:  # another server's: every prefix's file name, longest first
            for key in reversed(_prefix_keys(self._raw_root, tokens)):
                if self.cache.on_disk(key):
                    cp = self.cache.get(key)
                    if cp is not None:
                        return cp
        return self._initial_checkpoint()

    def _raw_put(self, tokens: list[int], cp: Checkpoint) -> None:
        # (not to disk where states cut: each would be a whole KV cache, and after a restart
        # the lengths above are forgotten anyway)
        self.cache.put(self._raw_key(tokens), cp, disk=not self._cuts)
        with self._raw_lock:
            self._raw_lengths[len(tokens)] = None
            self._raw_lengths.move_to_end(len(tokens))
            while len(self._raw_lengths) > RAW_LENGTHS:
                self._raw_lengths.popitem(last=False)

    def _complete(
        self,
        prompt: str,
        params: SamplingParams,
        stops: list[str],
        cancel: threading.Event | None,
        on_finish: Callable[[ReplyResult], None] | None,
        holder: list[ReplyResult],
    ) -> Iterator[str]:
        run = _Run(params.validated(), StopScanner(stops, strip_leading=False), time.perf_counter())
        tokens = self.backend.tokenize(prompt)
        run.res.prompt_tokens = len(tokens)
        run.recent = tokens
        self._start_generation()
        try:
            cp = self._raw_restore(tokens)
            rest = tokens[cp.n_tokens :]
            if rest:
                logits, state = self._feed(rest, cp.state, cancel)
                cp = Checkpoint(logits, state, len(tokens))
                self._raw_put(tokens, cp)
            elif not tokens:
                raise ValueError("the prompt is empty")
            run.start, run.res.fed_tokens = cp, len(rest)
            yield from self._decode(run, cancel, None)
        except PrefillCancelled:
            run.res.stop_reason = "cancel"
        except GeneratorExit:
            run.res.stop_reason = "closed"
        finally:
            with self._active_lock:
                self._active -= 1
            if run.fed and run.state is not None and run.start is not None:
                # the state after the reply's tokens (all but the last, never fed): the next
                # request that resends prompt + reply starts from here
                seen = tokens + run.fed
                self._raw_put(seen, Checkpoint(self._last_logits(run), run.state, len(seen)))
                self._durable()
            res = run.finish()
            self._note_speed(res)
            holder.append(res)
            if on_finish is not None:
                on_finish(res)

    def _last_logits(self, run: _Run) -> np.ndarray:
        return run.last_logits if run.last_logits is not None else np.zeros(0, np.float32)

    def _record_reply(
        self,
        ctx: CharacterContext,
        history: list[Message],
        speaker: Message,
        text: str,
        continued: bool,
        header_cp: Checkpoint,
        fed: list[int],
        state: State,
        prompt_keys: list[str],
    ) -> None:
        """Checkpoint the transcript with the reply as it will be stored, so the next turn only
        feeds the user's message. Built from the stored text: the state after the sampled tokens
        is reused only when they are exactly a prefix of the text's tokens.

        The chat's new tip and the state the reply started from (`header_cp`, the last of
        `prompt_keys`: a regenerate starts there) go to disk and are pinned (`pin_reply`):
        they outlast plain checkpoints when the disk is over its budget."""
        msg = Message(speaker.role, text, speaker.name, speaker.before)
        base = history[:-1] if continued else history
        full = self._build(ctx, [*base, msg], None)
        body = full.chunks[-1]
        ancestors = [c.key for c in full.chunks[:-1]] + prompt_keys[:-1]
        if continued:
            # the open body differs from the closed one: rebuild from the header's checkpoint
            self._advance(full)
            self.cache.pin_reply(body.key, None, ancestors)
            return
        if speaker.note:
            # the reply was made after a note the transcript will not have: its checkpoint is
            # fed from the last message before the note (header and body, after the reply
            # has been shown), so the next turn feeds only its new message and the note
            if not self._cuts:
                self.cache.put(prompt_keys[-1], header_cp, disk=True)
            self._advance(full)
            self.cache.pin_reply(body.key, prompt_keys[-1], ancestors, keep_before=not self._cuts)
            return
        if not self._cuts:  # (where states cut, the tip holds it)
            self.cache.put(prompt_keys[-1], header_cp, disk=True)
        logits, st, n = header_cp.logits, header_cp.state, header_cp.n_tokens
        rest = body.tokens
        if fed and body.tokens[: len(fed)] == fed:
            st, n, rest = state, n + len(fed), body.tokens[len(fed) :]
            logits = None  # type: ignore[assignment]
        if rest:
            logits, st = self._forward(rest, st)
            n += len(rest)
        if logits is None:  # sampled tokens were the whole body (rare): no logits for it
            self._advance(full)
        else:
            tip = Checkpoint(logits, st, n)
            lineage = None
            if self._cuts:  # the tip holds every prefix, and its reply's start with logits
                lineage = self._lineage(full, len(full.chunks) - 1)
                if any(k == prompt_keys[-1] for k, _ in lineage):
                    tip.prefix_logits[prompt_keys[-1]] = header_cp.logits
            self.cache.put(body.key, tip, disk=True, lineage=lineage)
        self.cache.pin_reply(body.key, prompt_keys[-1], ancestors, keep_before=not self._cuts)


def _prefix_keys(root: str, tokens: list[int]) -> list[str]:
    """chain_key(root, tokens[:n]) for n = 1..len(tokens), in one pass over the tokens."""
    h = hashlib.sha256(bytes.fromhex(root))
    keys = []
    for t in np.asarray(tokens, np.int32):
        h.update(t.tobytes())
        keys.append(h.copy().hexdigest())
    return keys


def _last_tokens(prompt: _Prompt, n: int) -> list[int]:
    """The last `n` tokens of a prompt (DRY's context), without joining every chunk."""
    out: list[list[int]] = []
    count = 0
    for chunk in reversed(prompt.chunks):
        out.append(chunk.tokens)
        count += len(chunk.tokens)
        if count >= n:
            break
    return [t for toks in reversed(out) for t in toks][-n:]


def _shape(shape: tuple[int, int, int]) -> str:
    """A state's shape in a message: "24 layers and 16 heads of 64 (width 1024)"."""
    layers, heads, size = shape
    return f"{layers} layers and {heads} heads of {size} (width {heads * size})"
