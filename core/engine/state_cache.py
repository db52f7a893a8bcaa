"""The prefix state cache (docs/ARCHITECTURE.md, "The state cache"): checkpoints keyed by the
model's identity and the exact token prefix, in a memory LRU and a disk store with size budgets.

A key is a chain hash: key(prefix + chunk) = sha256(key(prefix) + tokens of chunk), seeded with
the model's identity, so two chats that share an opening share its checkpoints.

Retention (docs/ARCHITECTURE.md, "The state cache"): the disk store keeps, for every chat, the
checkpoints that make its common operations instant, its *tip* (the state after its last reply:
reopening the chat, the next turn) and the state its last reply started from (regenerate);
`pin_reply` marks them (in `pins.json` beside the files) and a later turn of the same chat
hands both back to the plain LRU. When the disk is over its budget, the least recently used
plain checkpoints go first, then the states before a last reply and older versions of a last
reply, then chats' tips, the least recently used chat first.

Where the back end can cut a state to a prefix of its tokens (a transformer's KV cache), one
checkpoint stands for every prefix of it: `put(..., lineage=)` names the prefixes' keys and
token counts, `holder(key)` finds a checkpoint that holds a prefix, and a checkpoint written to
disk deletes the files of its prefixes (a chat keeps one file, its tip, not one per message:
the data directory grows with a chat's length, not with its square). The lineage is in the
file's header, read back after a restart.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.backends.base import State

MAGIC = b"RPSTATE2"  # the checkpoint file format: this magic, then a sha256 of the rest
_DIGEST = len(MAGIC) + 32
RESCAN_S = 30.0  # a shared folder's size is counted again this often (others write to it too)
STALE_TMP_S = 3600.0  # a temporary file this old was left by a writer that died: removed
PINS_FILE = "pins.json"  # the pinned checkpoints (`pin_reply`)
VERSIONS_KEPT = 3  # versions of a chat's last reply whose tips are pinned (swipes, x3)
# eviction ranks: what goes first when the disk is over budget
PLAIN, BEFORE, TIP = 0, 1, 2
HOLDERS = 4  # checkpoints remembered as holding one prefix (chats that share an opening)
LINEAGE_MAX = 200_000  # prefixes remembered
Lineage = list[tuple[str, int]]  # (key of a prefix, its tokens)


@dataclass
class Checkpoint:
    logits: np.ndarray  # float32 [n_vocab], logits after the last token of the prefix
    state: State  # the model state after the prefix
    n_tokens: int  # length of the prefix in tokens
    # where states cut: the logits after some of the prefixes it holds, by key (a chat's
    # tip keeps those of its last reply's start: a regenerate samples from them at once)
    prefix_logits: dict[str, np.ndarray] = field(default_factory=dict)


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
        self._queue: queue.Queue[tuple[str, Checkpoint, Lineage | None]] = queue.Queue()
        self._pending: dict[str, Checkpoint] = {}
        self._writer: threading.Thread | None = None
        # pinned keys: a chat's tip -> {"kind": "tip", "before": key, "t": time}, the state
        # its last reply started from -> {"kind": "before"}; read from PINS_FILE when first used
        self._pins: dict[str, dict[str, Any]] | None = None
        # a prefix's key -> checkpoints that hold it, newest last: (their key, its tokens)
        self._lineage: OrderedDict[str, list[tuple[str, int]]] = OrderedDict()
        self._lineage_read = False  # the disk files' lineage read (after a restart)
        if self.dir is not None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # ---- memory
    def _size(self, cp: Checkpoint) -> int:
        n = self._nbytes(cp.state) if self._nbytes is not None else None
        if n is not None:  # a transformer's KV cache grows with the context
            return n + cp.logits.nbytes + sum(a.nbytes for a in cp.prefix_logits.values())
        if self._state_nbytes is None:  # RWKV: every state has the same size
            self._state_nbytes = len(self._to_bytes(cp.state))
        return self._state_nbytes + cp.logits.nbytes

    def state_bytes(self, state: State) -> int:
        """A state's size as stored (without its logits)."""
        return self._size(Checkpoint(np.zeros(0, np.float32), state, 0))

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

    def put(
        self, key: str, cp: Checkpoint, disk: bool = False, lineage: Lineage | None = None
    ) -> None:
        """Keep `cp` under `key` in memory, and with `disk` in a file. `lineage`: the keys and
        token counts of the prefixes `cp` holds (where states can be cut; see the module's
        doc); on disk their own files are then deleted."""
        size = self._size(cp)
        if lineage:
            with self._lock:
                self._remember(key, lineage)
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
            self._queue.put((key, cp, lineage))

    def _remember(self, key: str, lineage: Lineage) -> None:
        """`key` holds the prefixes of `lineage` (with self._lock held)."""
        for prefix, n in lineage:
            if prefix == key:
                continue
            holders = [h for h in self._lineage.pop(prefix, []) if h[0] != key]
            self._lineage[prefix] = [*holders[-(HOLDERS - 1) :], (key, n)]
        while len(self._lineage) > LINEAGE_MAX:
            self._lineage.popitem(last=False)

    def holder(self, key: str, want_logits: bool = False) -> tuple[Checkpoint, int, str] | None:
        """A checkpoint that holds the prefix `key` (put with a lineage), the prefix's token
        count and the checkpoint's key: the newest one still in memory or on disk (with
        `want_logits`, the newest that also has the prefix's logits, if any has). None when
        there is none."""
        if not self._lineage_read and self.dir is not None:
            self._read_lineage()
        with self._lock:
            holders = list(self._lineage.get(key, ()))
        found = None
        for hkey, n in reversed(holders):
            cp = self.get(hkey)
            if cp is not None and cp.n_tokens >= n:
                if not want_logits or key in cp.prefix_logits:
                    return cp, n, hkey
                found = found or (cp, n, hkey)
        return found

    def _read_lineage(self) -> None:
        """The lineage of the checkpoint files (their headers), once: after a restart."""
        assert self.dir is not None
        found: list[tuple[float, str, Lineage]] = []
        for p in self.dir.glob("*.state"):
            try:
                with open(p, "rb") as f:
                    if f.read(_DIGEST)[: len(MAGIC)] != MAGIC:
                        continue
                    n = int.from_bytes(f.read(4), "little")
                    head = json.loads(f.read(n))
                found.append((p.stat().st_mtime, p.stem, head.get("lineage") or []))
            except (OSError, ValueError):
                continue  # a damaged file is dropped when it is read
        with self._lock:
            self._lineage_read = True
            for _, key, lineage in sorted(found):  # the newest ends up last
                self._remember(key, [(str(k), int(n)) for k, n in lineage])

    def _write_loop(self) -> None:
        while True:
            key, cp, lineage = self._queue.get()
            try:
                self._write_disk(key, cp, lineage)
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
            pins = self._load_pins()
            if pins.pop(key, None) is not None:
                self._save_pins()
        if self.dir is not None:
            (self.dir / f"{key}.state").unlink(missing_ok=True)

    # ---- retention
    def _load_pins(self) -> dict[str, dict[str, Any]]:
        """The pins (with self._lock held), read from PINS_FILE the first time: entries whose
        file is gone (a damaged one, deleted by hand) are dropped."""
        if self._pins is None:
            self._pins = {}
            if self.dir is not None:
                try:
                    raw = json.loads((self.dir / PINS_FILE).read_text())
                except (OSError, ValueError):
                    raw = {}
                if isinstance(raw, dict):
                    self._pins = {
                        k: v
                        for k, v in raw.items()
                        if isinstance(v, dict)
                        and v.get("kind") in ("tip", "before")
                        and (self.dir / f"{k}.state").is_file()
                    }
        return self._pins

    def _save_pins(self) -> None:
        """Write the pins (with self._lock held): to a temporary name, then renamed. Losing
        them costs only the policy's preference, never a wrong state."""
        if self.dir is None or self._pins is None:
            return
        path = self.dir / PINS_FILE
        # unique across processes and machines: a shared folder (RP_STATE_DIR) has other writers
        tmp = path.with_name(f"{PINS_FILE}.tmp-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self._pins, f)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def pin_reply(
        self, tip: str, before: str | None, ancestors: Iterable[str], keep_before: bool = True
    ) -> None:
        """A chat's last reply ended: `tip` is the checkpoint after it, `before` the one it
        started from (None: none worth keeping, a continued message). Both are kept when the
        disk is over budget, after every plain checkpoint has gone (see the module's doc).
        Pins among `ancestors` (the keys of the prompt before the reply: the same chat's
        previous tip and before) become plain checkpoints; of the tips that started from the
        same `before` (versions of one reply) the newest VERSIONS_KEPT stay pinned.
        `keep_before` False: `before` only groups the versions (the tip holds it: states that
        can be cut)."""
        if self.dir is None:
            return
        with self._lock:
            pins = self._load_pins()
            for key in set(ancestors) - {before}:
                pins.pop(key, None)
            if before is not None:
                if keep_before:
                    pins[before] = {"kind": "before"}
                versions = sorted(
                    (v["t"], k)
                    for k, v in pins.items()
                    if v["kind"] == "tip" and v.get("before") == before and k != tip
                )
                for _, k in versions[: max(0, len(versions) - (VERSIONS_KEPT - 1))]:
                    del pins[k]
            pins[tip] = {"kind": "tip", "before": before, "t": time.time()}
            self._save_pins()

    def _ranks(self) -> dict[str, int]:
        """Each pinned key's eviction rank (with self._lock held): TIP for the newest version
        of each chat's last reply, BEFORE for the state before it and the older versions."""
        pins = self._load_pins()
        newest: dict[str | None, tuple[float, str]] = {}
        for k, v in pins.items():
            if v["kind"] == "tip":
                group = v.get("before") or k
                if group not in newest or v["t"] > newest[group][0]:
                    newest[group] = (v["t"], k)
        ranks = dict.fromkeys(pins, BEFORE)
        for _, k in newest.values():
            ranks[k] = TIP
        return ranks

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
            prefix_logits = {}
            for k in head.get("prefix_logits", []):
                prefix_logits[str(k)] = np.frombuffer(body, np.float32, logits.size, off).copy()
                off += logits.nbytes
            state = self._from_bytes(bytes(body[off:]))
            if self._state_nbytes is None:  # its size, known without serialising it again
                self._state_nbytes = len(body) - off
            os.utime(path)  # recently used: evicted last
            return Checkpoint(logits, state, int(head["n_tokens"]), prefix_logits)
        except Exception:  # a damaged file is only a miss; drop it
            with self._lock:
                self.damaged += 1
            path.unlink(missing_ok=True)
            return None

    def _write_disk(self, key: str, cp: Checkpoint, lineage: Lineage | None = None) -> None:
        if self.dir is None or self.disk_budget <= 0:
            return
        path = self.dir / f"{key}.state"
        if path.is_file():
            os.utime(path)
            return
        meta: dict[str, Any] = {
            "n_logits": int(cp.logits.size),
            "n_tokens": cp.n_tokens,
            "key": key,
        }
        if lineage:
            meta["lineage"] = [[k, n] for k, n in lineage if k != key]
        extra = {k: a for k, a in cp.prefix_logits.items() if a.size == cp.logits.size}
        if extra:
            meta["prefix_logits"] = list(extra)
        head = json.dumps(meta).encode()
        body = b"".join(
            (
                len(head).to_bytes(4, "little"),
                head,
                np.ascontiguousarray(cp.logits, np.float32).tobytes(),
                *(np.ascontiguousarray(a, np.float32).tobytes() for a in extra.values()),
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
        freed = self._drop_prefixes(key, lineage) if lineage else 0
        with self._lock:
            stale = self.shared and time.monotonic() - self._scanned > RESCAN_S
            if self._disk_bytes is None or stale:
                self._disk_bytes = self._scan_disk()
                self._scanned = time.monotonic()
            else:
                self._disk_bytes += _DIGEST + len(body) - freed
            over = self._disk_bytes > self.disk_budget
        if over:
            self._evict_disk()

    def _drop_prefixes(self, key: str, lineage: Lineage) -> int:
        """Delete the files of the prefixes that `key`'s file now holds; their bytes."""
        assert self.dir is not None
        freed, gone = 0, []
        for prefix, _ in lineage:
            if prefix == key:
                continue
            p = self.dir / f"{prefix}.state"
            try:
                size = p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
            freed += size
            gone.append(prefix)
        if gone:
            with self._lock:
                pins = self._load_pins()
                if any(pins.pop(k, None) is not None for k in gone):
                    self._save_pins()
        return freed

    def _scan_disk(self) -> int:
        assert self.dir is not None
        return sum(p.stat().st_size for p in self.dir.glob("*.state"))

    def on_disk(self, key: str) -> bool:
        """Whether a file holds `key` (written by this process or another one): a look by name,
        nothing read."""
        return self.dir is not None and (self.dir / f"{key}.state").is_file()

    def _evict_disk(self) -> None:
        """Down to 90 % of the budget: plain checkpoints first, then the states before a
        chat's last reply (and older versions of it), then chats' tips; the least recently
        used (file time, refreshed on read) first within each."""
        assert self.dir is not None
        now = time.time()
        for p in self.dir.glob("*.tmp-*"):  # left by a writer killed midway
            try:
                if now - p.stat().st_mtime > STALE_TMP_S:
                    p.unlink()
            except OSError:
                pass
        with self._lock:
            ranks = self._ranks()
        files = []
        for p in self.dir.glob("*.state"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((ranks.get(p.stem, PLAIN), st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(f[2] for f in files)
        gone: list[str] = []
        for rank, _, size, p in files:
            if total <= self.disk_budget * 0.9:
                break
            p.unlink(missing_ok=True)
            total -= size
            if rank != PLAIN:
                gone.append(p.stem)
        with self._lock:
            self._disk_bytes = total
            if gone:
                pins = self._load_pins()
                for k in gone:
                    pins.pop(k, None)
                self._save_pins()

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
            self._lineage.clear()
            if self.dir is not None:
                for p in self.dir.glob("*.state"):
                    p.unlink(missing_ok=True)
                self._disk_bytes = 0
                self._pins = {}
                self._save_pins()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            mem_entries, mem_bytes = len(self._mem), self._mem_bytes
            ranks = self._ranks() if self.dir is not None else {}
        sizes: dict[str, int] = {}
        for p in self.dir.glob("*.state") if self.dir is not None else []:
            try:
                sizes[p.stem] = p.stat().st_size
            except FileNotFoundError:
                continue
        tips = [k for k, r in ranks.items() if r == TIP and k in sizes]
        return {
            "mem_entries": mem_entries,
            "mem_bytes": mem_bytes,
            "disk_entries": len(sizes),
            "disk_bytes": sum(sizes.values()),
            "chats_kept": len(tips),  # chats whose tip is on disk (reopened at no cost)
            "pinned_bytes": sum(sizes[k] for k in ranks if k in sizes),
            "mem_budget": self.mem_budget,
            "disk_budget": self.disk_budget,
            "hits_mem": self.hits_mem,
            "hits_disk": self.hits_disk,
            "misses": self.misses,
            "damaged": self.damaged,
        }
