"""Batched decoding: the decode steps of every running generation go into one forward pass.

Decoding on a CPU is bound by memory bandwidth: a step reads every weight once, whether it
decodes one sequence or eight. The `Batcher` runs on the model thread (core/backends/
model_thread.py) while there is work: each step it gathers the jobs waiting (one token of each
generation's decode loop, and a chunk of each prompt being fed) and hands them to the back end's
`forward_batch`, which llama.cpp runs as one `llama_decode` with one sequence per job. A prompt
is fed in chunks of `PREFILL_CHUNK` tokens while other generations decode, so it never stalls
them for long. A generation joins at the next step after it asks, and leaves as soon as it stops
asking (it ended, was stopped, cancelled or closed); callers never see the batching.

Each generation has a `Stream`. The batcher waits a few milliseconds for the streams that were
in step at the last step (their threads resubmit within microseconds of getting their token), so
that they decode together; a stream that misses a step is not waited for again until it asks.

A pass of g sequences does not always cost less than g passes of one: on a 2-core CPU, llama.cpp
ran 2 sequences of an RWKV-7 q8_0 model in one pass at half the tokens per second of one (its
kernels for 2-3 columns are slower than its one-column kernel; see README "Batching"). So the
batcher learns what a pass of g one-token steps costs on this machine and this model
(`PassCosts`) and runs, each step, the number of sequences that makes the most tokens a second:
where batching does not pay, generations take turns as they did before batching existed.

A pass of several steps is compute-bound where a step alone is bound by memory: llama.cpp's
kernels for 2-8 columns did 3-4 times the work of its one-column kernel per weight read here.
So a back end may offer more threads for such passes than for a step alone (`wide_threads`:
every usable CPU, where the app's default leaves half of them free). More threads pay on an idle
machine (RWKV-7 0.1B f16, 2 cores, 8 sequences: 3.3-3.9 times one sequence's tokens a second
against 1.7-2.1 with one thread) and lose beside a busy program, whose core one of them then
waits for (0.7-0.9). `PassCosts` measures both and runs whichever makes more tokens a second
now, the narrow one when they are close.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.backends.base import Backend, State
from core.backends.model_thread import is_model_thread, on_model_thread, run_pending, submit

SAMPLE_IN_CALLER = True  # in a batch, each generation samples in its own thread (see `step`)
PREFILL_CHUNK = 64  # prompt tokens fed per step while other generations decode
WAIT_S = 0.02  # how long a step waits for the streams that were in step at the last one
# (they answer within microseconds on an idle machine; a loaded one can take milliseconds, and
# a step run without them would split the batch in two that then alternate)
REPROBE = 256  # every this many passes, one runs as large as it can, to measure that size again


class PassCosts:
    """Seconds a pass of g one-token decode steps takes, learned from the passes run, for each
    thread setting (narrow: the model's own; wide: the back end's `wide_threads`).

    Each (size, setting) keeps a moving average of its passes after the first (the first of a
    shape also builds llama.cpp's compute graph). `best(n)` measures one sequence first, then n
    (all that wait) until it is measured `TRUST` times, narrow then wide; then it is the measured
    (size up to n, setting) with the most tokens a second, preferring the larger size, then the
    narrow setting, within `SLACK` (a pass that carries every stream keeps them in step, and a
    measurement a little off should not split a batch that pays, nor take a core it gains
    little from)."""

    TRUST = 3  # passes of a size (after its first) before its cost is believed
    ALPHA = 0.25  # weight of a new pass in the moving average
    SLACK = 1.1  # a larger size is kept unless it makes 10 % fewer tokens a second

    def __init__(self) -> None:
        self._seen: dict[tuple[int, bool], int] = {}  # (size, wide) -> passes measured
        self._avg: dict[tuple[int, bool], float] = {}  # (size, wide) -> average seconds

    def record(self, size: int, seconds: float, wide: bool = False) -> None:
        key = (size, wide)
        n = self._seen.get(key, 0)
        self._seen[key] = n + 1
        if n == 0:
            return  # the first pass of a size: the compute graph is built, not a fair measure
        old = self._avg.get(key)
        self._avg[key] = seconds if old is None else old + self.ALPHA * (seconds - old)

    def cost(self, size: int, wide: bool = False) -> float | None:
        """The believed cost of a pass of `size`, None while it is not measured enough."""
        key = (size, wide)
        return self._avg.get(key) if self._seen.get(key, 0) > self.TRUST else None

    def best(self, n: int, widen: bool = False) -> tuple[int, bool]:
        """How many of `n` waiting one-token steps to run in one pass, and whether with the
        wide thread setting (`widen`: the back end has one)."""
        if n <= 1:
            return n, False
        if self.cost(1) is None:
            return 1, False  # what one sequence costs is the measure of every other size
        if self.cost(n) is None:
            return n, False  # not measured enough: tried
        if widen and self.cost(n, True) is None:
            return n, True
        settings = (False, True) if widen else (False,)
        rate = {  # tokens a second
            (g, w): g / c for g in range(1, n + 1) for w in settings if (c := self.cost(g, w))
        }
        top = max(rate.values())
        fast = [k for k, r in rate.items() if r * self.SLACK >= top]
        return max(fast, key=lambda k: (k[0], not k[1]))


@dataclass(eq=False)
class Stream:
    """One generation's decode loop, as the batcher sees it."""

    order: int = 0  # steps go into a pass in the order streams opened: the same order every
    # step lets llama.cpp reuse its compute graph
    expected: bool = False  # the batcher waits (briefly) for this stream's next step
    job: _Job | None = None  # its step waiting to run
    closed: bool = False


@dataclass(eq=False)
class _Job:
    tokens: list[int]  # still to feed
    state: State  # the state they follow
    consume: bool  # the caller (or the batcher, after a chunk) never uses `state` again
    after: Callable[[np.ndarray], Any] | None  # run on the logits, on the model thread
    stream: Stream | None
    fut: Future[tuple[np.ndarray, State, Any]] = field(default_factory=Future)


class Batcher:
    """Runs forward passes of many callers as batches on the model thread."""

    def __init__(self, backend: Backend, chunk: int = PREFILL_CHUNK, wait_s: float = WAIT_S):
        self.backend = backend  # the raw back end: every call here is on the model thread
        # the Backend protocol declares batching: max_batch 1 (its default) runs one sequence
        # at a time, through the protocol's default forward_batch
        self.max_batch = max(1, int(backend.max_batch))
        self.chunk = chunk
        self.wait_s = wait_s if self.max_batch > 1 else 0.0
        self._cv = threading.Condition()
        self._jobs: list[_Job] = []  # in the order they came
        self._streams: set[Stream] = set()
        self._driving = False
        self._opened = 0
        self.costs = PassCosts()
        self.learn_sizes = True  # False: every pass as large as fits (tests that need passes
        # shared whatever this machine's costs say)
        self.steps = 0  # forward passes run (for tests and benches)
        self.batched = 0  # jobs run in a pass with others

    # ------------------------------------------------------------------ callers
    def forward(
        self, tokens: list[int], state: State, consume: bool = False
    ) -> tuple[np.ndarray, State]:
        """Feed `tokens` after `state`: logits of the last one, new state. `state` is left as
        it was, unless `consume` (the caller never uses it again: the back end's `advance`)."""
        if is_model_thread():
            run = self.backend.advance if consume else self.backend.forward
            return run(tokens, state)
        logits, new, _ = self._submit(_Job(list(tokens), state, consume, None, None)).result()
        return logits, new

    def open(self) -> Stream:
        with self._cv:
            self._opened += 1
            stream = Stream(order=self._opened)
            self._streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        """The generation left: the batcher no longer waits for it."""
        with self._cv:
            stream.closed = True
            self._streams.discard(stream)
            self._cv.notify_all()

    def step(
        self,
        stream: Stream,
        tokens: list[int],
        state: State,
        consume: bool,
        after: Callable[[np.ndarray], Any] | None = None,
    ) -> tuple[np.ndarray, State, Any]:
        """One decode step of `stream`: (logits, new state, `after(logits)`).

        One sequence at a time (the rwkv back end), `after` (sampling) runs on the model thread
        right after the pass, which keeps numpy off the model's cores while it computes. In a
        batch every generation samples at the same moment, while the model waits for them all:
        each samples in its own thread then, so that they sample in parallel (numpy releases
        the GIL in its sorts and exponentials: 8 samplers took 0.3-0.5 of the time in turn)."""
        if is_model_thread():
            return self._direct(tokens, state, consume, after)
        with self._cv:
            alone = len(self._streams) <= 1 and not self._jobs and not self._driving
        if alone:  # nobody to batch with: one plain model call, as before batching existed
            return on_model_thread(self._direct, tokens, state, consume, after)
        here = SAMPLE_IN_CALLER and self.max_batch > 1 and after is not None
        job = _Job(list(tokens), state, consume, None if here else after, stream)
        logits, new, extra = self._submit(job).result()
        return logits, new, after(logits) if here and after is not None else extra

    def _direct(
        self,
        tokens: list[int],
        state: State,
        consume: bool,
        after: Callable[[np.ndarray], Any] | None,
    ) -> tuple[np.ndarray, State, Any]:
        try:
            t0 = time.perf_counter()
            logits, new = self._forward_batch([(tokens, state, consume)])[0]
            if len(tokens) == 1:
                self.costs.record(1, time.perf_counter() - t0)
        except Exception as e:
            inner = getattr(e, "error", None)  # a batch item's own error (BatchItemError)
            if isinstance(inner, Exception):
                raise inner from None
            raise
        return logits, new, after(logits) if after is not None else None

    def _submit(self, job: _Job) -> Future[tuple[np.ndarray, State, Any]]:
        with self._cv:
            if job.stream is not None:
                job.stream.job = job
                job.stream.expected = True
            self._jobs.append(job)
            start = not self._driving
            self._driving = True
            self._cv.notify_all()
        if start:
            submit(self._drive)
        return job.fut

    def _wide_threads(self) -> int | None:
        """The back end's thread count for passes of several steps, None when it has none."""
        if self.max_batch <= 1:
            return None
        n = self.backend.wide_threads
        return n if isinstance(n, int) and n > 0 else None

    def _forward_batch(
        self, items: list[tuple[list[int], State, bool]], threads: int | None = None
    ) -> list[Any]:
        return self.backend.forward_batch(items, threads=threads)

    # ------------------------------------------------------------------ the loop
    def _drive(self) -> None:
        """The batch loop, on the model thread, while jobs are waiting."""
        jobs: list[_Job] = []
        try:
            while True:
                run_pending()  # plain model calls (state saves, ...) wait one step at most
                with self._cv:
                    if not self._jobs:
                        self._driving = False
                        return
                    self._wait_for_streams()
                    jobs, threads = self._pick()
                    streaming = any(not s.closed for s in self._streams)
                self._run(jobs, streaming, threads)
                jobs = []
        except BaseException as e:  # a bug here must fail the callers, never hang them
            with self._cv:
                waiting, self._jobs = jobs + self._jobs, []
                self._driving = False
            for j in waiting:
                if not j.fut.done():
                    j.fut.set_exception(e)
            raise

    def _wait_for_streams(self) -> None:
        if self.wait_s <= 0:
            return
        deadline = time.perf_counter() + self.wait_s
        while True:
            late = [s for s in self._streams if s.expected and s.job is None and not s.closed]
            if not late or len(self._jobs) >= self._size(len(self._jobs) + len(late)):
                return
            left = deadline - time.perf_counter()
            if left <= 0:
                for s in late:
                    s.expected = False  # not waited for again until it asks
                return
            self._cv.wait(left)

    def _plan(self, n: int) -> tuple[int, int | None]:
        """How many of n jobs to run in the next pass, and the back end's wide thread count
        when the pass takes it (None: the model's own): as many as fit, unless passes of that
        many cost more here than smaller ones (`PassCosts`); every REPROBE passes, as many as
        fit (wide and narrow in turn), so that a size judged on a bad moment is measured again."""
        n = min(n, self.max_batch)
        if n <= 1 or not self.learn_sizes:
            return n, None
        threads = self._wide_threads()
        if self.steps % REPROBE == REPROBE - 1:
            wide = (self.steps // REPROBE) % 2 == 0
        else:
            n, wide = self.costs.best(n, threads is not None)
        return n, threads if wide else None

    def _size(self, n: int) -> int:
        return self._plan(n)[0]

    def _pick(self) -> tuple[list[_Job], int | None]:
        """Decode steps first, then prompt chunks, in arrival order, as `_plan` says."""
        steps = sorted(
            (j for j in self._jobs if j.stream is not None),
            key=lambda j: j.stream.order if j.stream is not None else 0,
        )
        feeds = [j for j in self._jobs if j.stream is None]
        size, threads = self._plan(len(self._jobs))
        jobs = (steps + feeds)[:size]
        taken = set(map(id, jobs))
        self._jobs = [j for j in self._jobs if id(j) not in taken]
        for j in jobs:
            if j.stream is not None:
                j.stream.job = None
        return jobs, threads

    def _run(self, jobs: list[_Job], streaming: bool, threads: int | None = None) -> None:
        cut = [len(j.tokens) if not streaming else min(len(j.tokens), self.chunk) for j in jobs]
        items = [(j.tokens[:k], j.state, j.consume) for j, k in zip(jobs, cut, strict=True)]
        steps_only = all(j.stream is not None and n == 1 for j, n in zip(jobs, cut, strict=True))
        if not (steps_only and len(jobs) > 1):
            threads = None  # a prompt's chunk, or a step alone, runs on the model's own count
        t0 = time.perf_counter()
        try:
            out = self._forward_batch(items, threads)
        except Exception as e:
            bad = getattr(e, "index", None)
            if isinstance(bad, int) and len(jobs) > 1 and 0 <= bad < len(jobs):
                # one job failed its checks before anything ran: it alone fails
                jobs[bad].fut.set_exception(getattr(e, "error", e))
                rest = jobs[:bad] + jobs[bad + 1 :]
                self._run(rest, streaming, threads)
                return
            for j in jobs:
                j.fut.set_exception(getattr(e, "error", e) if bad is not None else e)
            return
        if steps_only:
            seconds = time.perf_counter() - t0
            self.costs.record(len(jobs), seconds, threads is not None)  # decode steps only
        self.steps += 1
        if len(jobs) > 1:
            self.batched += len(jobs)
        unfinished: list[_Job] = []
        for j, k, (logits, state) in zip(jobs, cut, out, strict=True):
            j.tokens = j.tokens[k:]
            j.state = state
            if j.tokens:  # a prompt fed in chunks: its next chunk goes in the next step
                j.consume = True
                unfinished.append(j)
                continue
            try:
                extra = j.after(logits) if j.after is not None else None
            except Exception as e:
                j.fut.set_exception(e)
            else:
                j.fut.set_result((logits, state, extra))
        if unfinished:
            with self._cv:
                self._jobs = unfinished + self._jobs


def consume_together(replies: Iterable[Any]) -> list[Any]:
    """Consume several `Reply` iterators at once, one thread each (so that their steps are
    batched), and return their results in order."""
    replies = list(replies)
    errors: list[BaseException] = []

    def run(r: Any) -> None:
        try:
            r.consume()
        except BaseException as e:  # re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in replies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r.result for r in replies]
