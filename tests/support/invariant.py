"""The state invariant as a property check (docs/ARCHITECTURE.md, "The state invariant"): after
any sequence of operations on a chat, the state the engine would use for the next reply gives the
same logits as feeding the stored transcript from scratch, and the engine got there feeding only
the tokens its cache does not hold.

The token count is what sees a cache that silently loses states: a lost checkpoint, or one the
back end refuses (`Engine._advance` discards it and feeds again), still ends in the right logits;
only the count grows. `Expected` keeps what the cache holds as documented (docs/ARCHITECTURE.md,
"The state cache"): in memory the checkpoints a feed keeps (`kept_checkpoints`: after its last
few messages, a few spread over the others, and at the prompt's end; after every message in a
short feed), on disk the last message of a prefill, every reply and the state each reply started
from; a restart keeps only the disk. Where the back end cuts states (a transformer's KV cache)
a feed keeps only its end, which holds every prefix of it, and a reply's tip holds its start
with the logits there. A chat that starts from a character's state file has checkpoints of its
own (`Chunks.start`).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from core.chat.context import group_join_note, joined_context
from core.engine import Engine
from core.engine.batch import consume_together
from core.engine.engine import kept_checkpoints
from core.engine.sampler import SamplingParams
from core.prompt import CharacterContext, Message, PromptFormat
from core.roleplay.lore import Book, activate, new_entry
from core.store import Character
from tests.support.state_file import start_state, state_file

# the property tests' settings; the seed comes from the run (tests/conftest.py: a fresh one
# each CI run, printed in the header, or --hypothesis-seed / the "replay" profile to replay)
PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CTX = CharacterContext(
    name="小雪", user_name="Bob", persona="{{char}} is a snow fox.", example_dialogue="{{user}}: hi"
)
# the character card edited: another description, another name (in every {{char}} too)
CHARACTERS = [CTX, replace(CTX, persona="{{char}} is an old wolf."), replace(CTX, name="Rex")]
# lorebook entries that fire on WORDS; a reply's fired entries are fed before it and stored with
# it (Message.before); a book's constant entry goes in the opening (core/lore.py)
LORE = Book(
    "World",
    [
        new_entry(0, key=["cat"], content="Cats rule {{user}}'s town."),
        new_entry(1, key=["/hel+o/i"], content="Greetings are sacred here.", order=50),
        new_entry(2, key=["你好"], keysecondary=["why"], selectiveLogic=2, content="远方。"),
        new_entry(3, key=["look"], content="{{char}} sees far.", probability=50),
        new_entry(4, constant=True, content="The town has one law: be kind."),
    ],
)
CHARACTERS.append(replace(CTX, persona=f"{CTX.persona}\n{activate([LORE], []).text(True)}"))
# a character with an RWKV state file (of the tiny models' shape): its chat starts from the
# file's state, with checkpoints of its own; a model without an RWKV state runs it without
CHARACTERS.append(replace(CTX, start_state=start_state(state_file(seed=7), "fox.pth")))
# a group chat (core/chat/context.py): one opening joining its members' cards, replies under
# each member's name; a member who joined late has its card fed before the next reply, stored
GROUP = joined_context(
    [
        Character(name="Ada", description="{{char}} leads.", example_dialogue="{{char}}: Go."),
        Character(name="小雪", description="{{char}}是雪狐。", scenario="A ship."),
    ],
    "Bob",
)
JOIN = group_join_note(Character(name="Dee", description="{{char}} is new here."), "Bob")
# who else speaks or is written: the narrator, another named character, the user
SPEAKERS = [Message("narrator"), Message("char", name="Lina"), Message("user")]
WORDS = [
    "hello",
    "你好",
    "the cat",
    "🎉",
    "line one\nline two",
    "why?",
    "  spaced  ",
    "ok\n\n\nok",
    "{{char}}, look!",
]
SEED = st.integers(0, 2**16)

op = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(WORDS), SEED),
    st.tuples(st.just("regenerate"), SEED),
    st.tuples(st.just("edit"), st.integers(0, 50), st.sampled_from(WORDS)),
    st.tuples(st.just("delete"), st.integers(1, 3)),
    # one message removed from the middle; an undo puts back the latest removal (a delete or a
    # cut) at its place: the same text, so the same checkpoint keys (core/store/removals.py)
    st.tuples(st.just("cut"), st.integers(0, 50)),
    st.tuples(st.just("undo")),
    st.tuples(st.just("stop"), st.sampled_from(WORDS), st.integers(1, 4)),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("continue"), SEED),
    st.tuples(st.just("speak"), st.sampled_from(SPEAKERS), SEED),
    st.tuples(st.just("write"), st.sampled_from(SPEAKERS), st.sampled_from(WORDS)),
    st.tuples(st.just("character"), st.sampled_from(CHARACTERS)),
    # a group chat: the user's message, a member's reply (with a late member's card, or not)
    st.tuples(st.just("group"), st.sampled_from(["Ada", "小雪", "Dee"]), SEED, st.booleans()),
    # lore: the user's message fires entries, fed before the reply and stored with it
    st.tuples(st.just("lore"), st.sampled_from(WORDS), SEED),
    # batching: n versions of the next reply decoded together, one of them kept
    st.tuples(st.just("versions"), st.integers(2, 3), SEED, st.integers(0, 2)),
)


class Chunks(list[tuple[str, bool]]):
    """A prompt as the engine cuts it: (text, ends a message), and the state it is fed from:
    the sha256 of the character's state file ("" for the model's own initial state)."""

    def __init__(self, items: list[tuple[str, bool]], start: str = "") -> None:
        super().__init__(items)
        self.start = start

    def key(self, k: int) -> tuple[str, ...]:
        """What identifies the prefix of the first k chunks."""
        return (self.start, *(t for t, _ in self[:k]))


class Counted:
    """A real back end that counts the tokens it was fed (by calls that succeeded)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fed = 0

    def forward(self, tokens: list[int], state: Any) -> Any:
        out = self.inner.forward(tokens, state)
        self.fed += len(tokens)
        return out

    def advance(self, tokens: list[int], state: Any) -> Any:
        out = self.inner.advance(tokens, state)
        self.fed += len(tokens)
        return out

    def forward_batch(self, items: list[tuple[list[int], Any, bool]], threads: Any = None) -> Any:
        """Batched back ends (llama.cpp, and RWKV-7 on the rwkv package: `versions` runs
        through a batched step there) decode several sequences in one pass (with `threads`
        where the batcher widened it)."""
        out = self.inner.forward_batch(items, threads=threads)
        self.fed += sum(len(t) for t, _, _ in items)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Expected:
    """The prefixes (as chunk texts) the engine has checkpointed: every one it made in this
    process (`mem`), and those on disk."""

    fmt: PromptFormat
    tokenize: Callable[[str], list[int]]
    evicts: bool  # memory may have dropped some of `mem`
    state_files: bool = True  # the model has an RWKV state, which a state file sets
    cuts: bool = False  # a checkpoint holds every prefix of it (Backend.cuts_states)
    mem: set[tuple[str, ...]] = field(default_factory=set)
    disk: set[tuple[str, ...]] = field(default_factory=set)
    # where states cut: the prefixes whose logits a checkpoint keeps (a feed's end, a reply's
    # start in its tip); a prompt held whole without them costs one decode step (Engine._cut)
    logits: set[tuple[str, ...]] = field(default_factory=set)
    logits_disk: set[tuple[str, ...]] = field(default_factory=set)

    def chunks(
        self, ctx: CharacterContext, hist: list[Message], speaker: Message | None, open_last=False
    ) -> Chunks:
        """The documented cut: opening, each message's header and body, the next speaker's
        header; for a continue, the last body left open and no header after it."""
        fmt = self.fmt
        st = ctx.start_state
        usable = st is not None and not st.problem and self.state_files
        out = Chunks([(fmt.opening(ctx), True)] if fmt.opening(ctx) else [])
        out.start = st.sha256 if usable and st is not None else ""
        for i, m in enumerate(hist):
            if m.before:  # lore fed before the message (Message.before)
                out.append((fmt.note(m.before, ctx), False))
            out.append((fmt.header(m, ctx), False))
            if open_last and i == len(hist) - 1:
                out.append((fmt.open_body(m.text, m, ctx), False))
            else:
                out.append((fmt.body(m.text, m, ctx), True))
        if speaker is not None and not open_last:
            if speaker.before:
                out.append((fmt.note(speaker.before, ctx), False))
            out.append((fmt.header(speaker, ctx), False))
        return out

    def _sizes(self, chunks: Chunks) -> list[int]:
        return [len(self.tokenize(text)) for text, _ in chunks]

    @staticmethod
    def _resume(chunks: Chunks, known: set[tuple[str, ...]]) -> int:
        return next((k for k in range(len(chunks), 0, -1) if chunks.key(k) in known), 0)

    def _need(self, chunks: Chunks, known: set[tuple[str, ...]], logits: set, step: bool) -> int:
        k = self._resume(chunks, known)
        if step and self.cuts and k == len(chunks) > 0 and chunks.key(k) not in logits:
            return 1  # held whole inside a longer checkpoint: its last token fed again
        return sum(self._sizes(chunks)[k:])

    def bounds(self, chunks: Chunks, step: bool = True) -> tuple[int, int]:
        """Tokens the engine must feed for `chunks`: the fewest (every checkpoint it made is
        still in memory) and the most (only the disk is left). `step`: counting the decode
        step that gives the logits of a prompt held whole inside a longer checkpoint (the
        back end's count; a reply's `fed_tokens` leaves it out)."""
        return (
            self._need(chunks, self.mem | self.disk, self.logits, step),
            self._need(chunks, self.disk, self.logits_disk, step),
        )

    def reopened(self) -> None:
        """A new engine on the same folder: only the disk's checkpoints are left."""
        self.mem.clear()
        self.logits &= self.logits_disk

    def fed(self, chunks: Chunks, tokens: int | None, to_disk: bool) -> None:
        """Note the checkpoints the engine made feeding `chunks`, resuming where feeding `tokens`
        says it did. Unknown (None) after eviction: as many as it may have made in memory, and
        only those it must have written to disk."""
        sizes = self._sizes(chunks)
        if tokens is None:
            first = first_disk = self._resume(chunks, self.mem | self.disk)
            if self.evicts:
                first = self._resume(chunks, self.disk)
        elif (
            self.cuts and tokens == 1 and self._resume(chunks, self.mem | self.disk) == len(chunks)
        ):
            first = first_disk = len(chunks)  # the one decode step of a prompt held whole
        else:
            starts = [k for k in range(len(sizes) + 1) if sum(sizes[k:]) == tokens]
            assert starts, f"fed {tokens} tokens: not a suffix of the prompt's chunks {sizes}"
            first = first_disk = starts[0]
        ends = [i for i, (_, boundary) in enumerate(chunks) if boundary]
        if self.cuts:  # the feed's end, holding every prefix; on disk when it ends a message
            if first < len(chunks):
                self.mem |= self._prefixes(chunks, len(chunks))
                self.logits.add(chunks.key(len(chunks)))
                if to_disk and ends and ends[-1] == len(chunks) - 1:
                    self.disk |= self._prefixes(chunks, len(chunks))
                    self.logits_disk.add(chunks.key(len(chunks)))
            return
        for i in kept_checkpoints(ends, first, len(chunks)):
            self.mem.add(chunks.key(i + 1))
        if to_disk and ends and ends[-1] >= first_disk:
            self.disk.add(chunks.key(ends[-1] + 1))

    @staticmethod
    def _prefixes(chunks: Chunks, k: int) -> set[tuple[str, ...]]:
        return {chunks.key(j) for j in range(1, k + 1)}

    def reply_kept(self, chunks: Chunks, start: Chunks | None = None) -> None:
        """A finished reply's checkpoint, rebuilt from its stored text, and the state it
        started from (the prompt `start`: a regenerate starts there): memory and disk."""
        key = chunks.key(len(chunks))
        self.mem.add(key)
        self.disk.add(key)
        if self.cuts:
            self.mem |= self._prefixes(chunks, len(chunks))
            self.disk |= self._prefixes(chunks, len(chunks))
            self.logits.add(key)
            self.logits_disk.add(key)
            if start is not None:  # the tip keeps the logits of its reply's start
                self.logits.add(start.key(len(start)))
                self.logits_disk.add(start.key(len(start)))
        elif start is not None:
            self.disk.add(start.key(len(start)))


def check_invariant(
    backend: Any, ops: list[tuple], tol: float = 1e-4, mem_budget_mb: float | None = None
) -> int:
    """Run `ops` against a transcript kept as the database would keep it. After each, the state
    for the next reply must give the logits of the transcript fed from scratch (within `tol`),
    and every reply and that state must have fed only the tokens the cache does not hold. With a
    memory budget (small enough to evict), that count may lie between "every checkpoint kept"
    and "only the disk's". Returns how many feeds eviction made longer."""
    counted = Counted(backend)
    budget = {} if mem_budget_mb is None else {"mem_budget_mb": mem_budget_mb}
    cache_dir = Path(tempfile.mkdtemp(prefix="states-"))
    longer = 0
    try:
        eng = Engine(counted, cache_dir=cache_dir, **budget)
        want = Expected(
            eng.format,
            backend.tokenize,
            evicts=mem_budget_mb is not None,
            state_files=backend.wkv_shape() is not None,
            cuts=bool(backend.cuts_states),
        )
        ctx = CTX
        hist: list[Message] = [Message("char", "Welcome, {{user}}.")]
        removed: list[tuple[int, list[Message]]] = []  # what an undo puts back, latest last

        def check_fed(what: str, tokens: int, bounds: tuple[int, int]) -> None:
            nonlocal longer
            least, most = bounds
            if not want.evicts:
                assert tokens == least, f"{what} fed {tokens} tokens, not {least}: {hist}"
            else:
                assert least <= tokens <= most, f"{what} fed {tokens}, not {least}-{most}: {hist}"
                longer += tokens > least

        def reply(speaker: Message, seed: int, max_tokens=6, cancel_after=None, cont=False) -> None:
            prompt = want.chunks(ctx, hist, None if cont else speaker, open_last=cont)
            bounds = want.bounds(prompt, step=False)
            params = SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_tokens=max_tokens)
            cancel = threading.Event()
            r = eng.reply(ctx, hist, speaker, params, cancel=cancel, continue_last=cont)
            for n, _ in enumerate(r, 1):
                if cancel_after is not None and n >= cancel_after:
                    cancel.set()
            check_fed("the reply", r.result.fed_tokens, bounds)
            want.fed(prompt, r.result.fed_tokens, to_disk=False)
            if not r.result.text:
                return
            who = hist.pop() if cont else speaker
            hist.append(Message(who.role, r.result.text, who.name, who.before))
            if cont:  # the whole message is fed again from its closed form
                want.fed(want.chunks(ctx, hist, None), None, to_disk=True)
            else:
                want.reply_kept(want.chunks(ctx, hist, None), prompt)

        def versions(n: int, seed: int, keep: int) -> None:
            """Regenerate with n versions at once (one batch, one prompt feed); keep one."""
            if len(hist) < 2 or hist[-1].role == "user":
                return
            last = hist.pop()
            speaker = Message(last.role, "", last.name)
            prompt = want.chunks(ctx, hist, speaker)
            bounds = want.bounds(prompt, step=False)
            params = SamplingParams(temperature=1.0, top_p=0.9, seed=seed, max_tokens=6)
            results = consume_together(eng.reply_versions(ctx, hist, speaker, params, n))
            check_fed("the versions", sum(r.fed_tokens for r in results), bounds)
            want.fed(prompt, sum(r.fed_tokens for r in results), to_disk=False)
            kept = [r.text for r in results if r.text]
            for text in kept:  # every version's checkpoint was recorded
                want.reply_kept(
                    want.chunks(ctx, [*hist, Message(last.role, text, last.name)], None), prompt
                )
            hist.append(
                Message(last.role, kept[keep % len(kept)] if kept else last.text, last.name)
            )

        for o in ops:
            kind = o[0]
            if kind == "send":
                hist.append(Message("user", o[1]))
                reply(Message("char"), o[2])
            elif kind == "regenerate" and len(hist) > 1 and hist[-1].role != "user":
                last = hist.pop()
                reply(Message(last.role, "", last.name), o[1])
            elif kind == "edit" and hist:
                hist[o[1] % len(hist)].text = o[2]
            elif kind == "delete":
                at = max(0, len(hist) - o[1])
                if hist[at:]:
                    removed.append((at, hist[at:]))
                del hist[at:]
            elif kind == "cut" and hist:
                at = o[1] % len(hist)
                removed.append((at, [hist.pop(at)]))
            elif kind == "undo" and removed:  # back at its place; what came since moves down
                at, back = removed.pop()
                hist[at:at] = back
            elif kind == "stop":
                hist.append(Message("user", o[1]))
                reply(Message("char"), 1234, max_tokens=12, cancel_after=o[2])
            elif kind == "continue" and hist:
                reply(Message("char"), o[1], cont=True)
            elif kind == "speak":
                reply(o[1], o[2])
            elif kind == "write":
                hist.append(Message(o[1].role, o[2], o[1].name))
            elif kind == "character":
                ctx = o[1]
            elif kind == "group":
                ctx = GROUP
                hist.append(Message("user", "hello, all"))
                reply(Message("char", name=o[1], before=JOIN if o[3] else ""), o[2])
            elif kind == "lore":
                hist.append(Message("user", o[1]))
                fired = activate([LORE], [m.text for m in hist], seed=o[2])
                reply(Message("char", before=fired.text()), o[2])
            elif kind == "versions":
                versions(o[1], o[2], o[3])
            elif kind == "reopen":
                eng.flush()  # a restart after the writes (a crash before them only loses speed)
                eng = Engine(counted, cache_dir=cache_dir, **budget)
                want.reopened()
            prompt = want.chunks(ctx, hist, Message("char"))
            bounds = want.bounds(prompt)
            eng.settle()  # a reply's checkpoint is made after it ends: not this feed's tokens
            before = counted.fed
            cached, _ = eng.state_for(ctx, hist, Message("char"))
            fed = counted.fed - before
            fresh, _ = eng.reference_state(ctx, hist, Message("char"))
            diff = float(np.abs(cached - fresh).max())
            assert diff <= tol, f"after {o}: logits differ by {diff}: {hist}"
            check_fed(f"after {o}, the next reply's state", fed, bounds)
            want.fed(prompt, fed, to_disk=True)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return longer
