"""The prefix state cache (docs/ARCHITECTURE.md, "The state cache"): checkpoints keyed by the
model's identity and the exact token prefix, in a memory LRU and a disk store with size budgets.

A key is a chain hash: key(prefix + chunk) = sha256(key(prefix) + tokens of chunk), seeded with
the model's identity, so two chats that share an opening share its checkpoints.

A checkpoint file is MAGIC, the sha256 of the rest, then the rest: a 4-byte header length, the
JSON header, the logits and the back end's state bytes. A file whose digest does not match (a
damaged disk, a torn write) or without one (an older version's file) is a miss and is deleted,
never restored: a wrong state would silently change every reply after it. Files are written to a
temporary name, fsynced, then renamed, and are private to the user (0600 in a 0700 folder).

The disk tier may be a folder that several processes or machines share (`shared`, $RP_STATE_DIR):
a file's name is its key (the model's identity and the token chain, so equal names hold equal
states), its header repeats the key and is checked on read, temporary names are unique across
processes and machines, a rename makes a file appear whole or not at all, and the size budget is
kept by re-counting the folder (other servers write to it too) and deleting the least recently
used files, whoever wrote them.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.backends.base import State

MAGIC = b"RPSTATE2"  # the checkpoint file format: this magic, then a sha256 of the rest
_DIGEST = len(MAGIC) + 32
RESCAN_S = 30.0  # a shared folder's size is counted again this often (others write to it too)
STALE_TMP_S = 3600.0  # a temporary file this old was left by a writer that died: removed


@dataclass
class Checkpoint:
    logits: np.ndarray  # float32 [n_vocab], logits after the last token of the prefix
    state: State  # the model state after the prefix
    n_tokens: int  # length of the prefix in tokens


def chain_key(prev: str, tokens: list[int]) -> str:
    return hashlib.sha256(bytes.fromhex(prev) + np.asarray(tokens, np.int32).tobytes()).hexdigest()


def root_key(identity: str) -> str:
    return hashlib.sha256(b"rwkv-rp-state-v1\0" + identity.encode()).hexdigest()


class StateCache:
    def __init__(
        self,
        to_bytes: Callable[[State], bytes],
        from_bytes: Callable[[bytes], State],
        directory: Path | None,
        mem_budget_mb: float = 512,
        disk_budget_mb: float = 2048,
        nbytes: Callable[[State], int | None] | None = None,
    ) -> None:
        self._to_bytes = to_bytes
        self._nbytes = nbytes  # a state's size without serialising it; None where all are equal
        self._from_bytes = from_bytes
        self.dir = directory
        self.mem_budget = int(mem_budget_mb * 2**20)
        self.disk_budget = int(disk_budget_mb * 2**20)
        self._mem: OrderedDict[str, tuple[Checkpoint, int]] = OrderedDict()
        self._mem_bytes = 0
        self._state_nbytes: int | None = None
        self._lock = threading.Lock()
        self._disk_bytes: int | None = None
        self.shared = False  # the folder is shared with other processes or machines
        self._scanned = 0.0  # when the folder's size was last counted
        self.hits_mem = self.hits_disk = self.misses = 0
        self.damaged = 0  # files dropped: a wrong digest, no digest, or refused by the back end
        # disk writes happen on a writer thread, off the path to the first token
        self._queue: queue.Queue[tuple[str, Checkpoint]] = queue.Queue()
        self._pending: dict[str, Checkpoint] = {}
        self._writer: threading.Thread | None = None
        if self.dir is not None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # ---- memory
    def _size(self, cp: Checkpoint) -> int:
        n = self._nbytes(cp.state) if self._nbytes is not None else None
        if n is not None:  # a transformer's KV cache grows with the context
            return n + cp.logits.nbytes
        if self._state_nbytes is None:  # RWKV: every state has the same size
            self._state_nbytes = len(self._to_bytes(cp.state))
        return self._state_nbytes + cp.logits.nbytes

    def get(self, key: str) -> Checkpoint | None:
        with self._lock:
            hit = self._mem.get(key)
            if hit is not None:
                self._mem.move_to_end(key)
                self.hits_mem += 1
                return hit[0]
        with self._lock:
            cp = self._pending.get(key)
        if cp is None:
            cp = self._read_disk(key)
        if cp is not None:
            self.hits_disk += 1
            self.put(key, cp, disk=False)
        else:
            self.misses += 1
        return cp

    def put(self, key: str, cp: Checkpoint, disk: bool = False) -> None:
        size = self._size(cp)
        with self._lock:
            if key in self._mem:
                self._mem_bytes -= self._mem.pop(key)[1]
            self._mem[key] = (cp, size)
            self._mem_bytes += size
            while self._mem_bytes > self.mem_budget and len(self._mem) > 1:
                _, (_, s) = self._mem.popitem(last=False)
                self._mem_bytes -= s
        if disk and self.dir is not None and self.disk_budget > 0:
            with self._lock:
                self._pending[key] = cp
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(
                        target=self._write_loop, name="state-cache-writer", daemon=True
                    )
                    self._writer.start()
            self._queue.put((key, cp))

    def _write_loop(self) -> None:
        while True:
            key, cp = self._queue.get()
            try:
                self._write_disk(key, cp)
            finally:
                with self._lock:
                    if self._pending.get(key) is cp:
                        del self._pending[key]
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every checkpoint sent to disk is written."""
        self._queue.join()

    def discard(self, key: str) -> None:
        """Forget one checkpoint, in memory and on disk."""
        self.flush()
        with self._lock:
            hit = self._mem.pop(key, None)
            if hit is not None:
                self._mem_bytes -= hit[1]
        if self.dir is not None:
            (self.dir / f"{key}.state").unlink(missing_ok=True)

    # ---- disk
    def _read_disk(self, key: str) -> Checkpoint | None:
        if self.dir is None:
            return None
        path = self.dir / f"{key}.state"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            data = b""
        try:
            if data[: len(MAGIC)] != MAGIC:
                raise ValueError("not a checkpoint of this version")
            body = memoryview(data)[_DIGEST:]
            if hashlib.sha256(body).digest() != data[len(MAGIC) : _DIGEST]:
                raise ValueError("damaged")
            n = int.from_bytes(body[:4], "little")
            head = json.loads(bytes(body[4 : 4 + n]))
            if head.get("key", key) != key:  # whole, but another checkpoint's: never restored
                raise ValueError("not this key's checkpoint")
            off = 4 + n
            logits = np.frombuffer(body, np.float32, head["n_logits"], off).copy()
            off += logits.nbytes
            state = self._from_bytes(bytes(body[off:]))
            if self._state_nbytes is None:  # its size, known without serialising it again
                self._state_nbytes = len(body) - off
            os.utime(path)  # recently used: evicted last
            return Checkpoint(logits, state, int(head["n_tokens"]))
        except Exception:  # a damaged file is only a miss; drop it
            with self._lock:
                self.damaged += 1
            path.unlink(missing_ok=True)
            return None

    def _write_disk(self, key: str, cp: Checkpoint) -> None:
        if self.dir is None or self.disk_budget <= 0:
            return
        path = self.dir / f"{key}.state"
        if path.is_file():
            os.utime(path)
            return
        head = json.dumps(
            {"n_logits": int(cp.logits.size), "n_tokens": cp.n_tokens, "key": key}
        ).encode()
        body = b"".join(
            (
                len(head).to_bytes(4, "little"),
                head,
                np.ascontiguousarray(cp.logits, np.float32).tobytes(),
                self._to_bytes(cp.state),
            )
        )
        # unique across threads, processes and machines sharing the folder
        tmp = path.with_name(f"{key}.tmp-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC)
                f.write(hashlib.sha256(body).digest())
                f.write(body)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.replace(tmp, path)
        except OSError:  # a full disk only costs speed
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            stale = self.shared and time.monotonic() - self._scanned > RESCAN_S
            if self._disk_bytes is None or stale:
                self._disk_bytes = self._scan_disk()
                self._scanned = time.monotonic()
            else:
                self._disk_bytes += _DIGEST + len(body)
            over = self._disk_bytes > self.disk_budget
        if over:
            self._evict_disk()

    def _scan_disk(self) -> int:
        assert self.dir is not None
        return sum(p.stat().st_size for p in self.dir.glob("*.state"))

    def on_disk(self, key: str) -> bool:
        """Whether a file holds `key` (written by this process or another one): a look by name,
        nothing read."""
        return self.dir is not None and (self.dir / f"{key}.state").is_file()

    def _evict_disk(self) -> None:
        assert self.dir is not None
        now = time.time()
        for p in self.dir.glob("*.tmp-*"):  # left by a writer killed midway
            try:
                if now - p.stat().st_mtime > STALE_TMP_S:
                    p.unlink()
            except OSError:
                pass
        files = []
        for p in self.dir.glob("*.state"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(f[1] for f in files)
        for _, size, p in files:
            if total <= self.disk_budget * 0.9:
                break
            p.unlink(missing_ok=True)
            total -= size
        with self._lock:
            self._disk_bytes = total

    # ---- management
    def set_budget(self, mem_mb: float, disk_mb: float) -> None:
        self.mem_budget, self.disk_budget = int(mem_mb * 2**20), int(disk_mb * 2**20)
        with self._lock:
            while self._mem_bytes > self.mem_budget and self._mem:
                _, (_, s) = self._mem.popitem(last=False)
                self._mem_bytes -= s
        if self.dir is not None:
            self._evict_disk()

    def clear(self) -> None:
        self.flush()
        with self._lock:
            self._mem.clear()
            self._mem_bytes = 0
            if self.dir is not None:
                for p in self.dir.glob("*.state"):
                    p.unlink(missing_ok=True)
                self._disk_bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            mem_entries, mem_bytes = len(self._mem), self._mem_bytes
        disk_files = list(self.dir.glob("*.state")) if self.dir is not None else []
        return {
            "mem_entries": mem_entries,
            "mem_bytes": mem_bytes,
            "disk_entries": len(disk_files),
            "disk_bytes": sum(p.stat().st_size for p in disk_files if p.exists()),
            "mem_budget": self.mem_budget,
            "disk_budget": self.disk_budget,
            "hits_mem": self.hits_mem,
            "hits_disk": self.hits_disk,
            "misses": self.misses,
            "damaged": self.damaged,
        }
