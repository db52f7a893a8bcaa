"""Download a model file from the Hub (or a mirror) into the models folder, through
`huggingface_hub`, the Hub's own client: its metadata call (`get_hf_file_metadata`: ETag = the
LFS SHA-256, size, commit, the CDN's address after the Hub's redirect) and its HTTP transfer
(`http_get`: ranged reads, its retries, its shared HTTP session). No HTTP code of ours, no
streamlit.

    path = download_file(hub_file, "https://huggingface.co", progress=print)
    job = DownloadJob.start(hub_file, endpoint)    # the same in a background thread
    job.progress()  ->  Progress(phase, done, total, speed, eta)

How a file arrives:
- The size and SHA-256 come from the server first; the free disk space is checked before any
  byte is fetched (what is still missing, plus 64 MiB).
- Bytes go to a partial file of ours, `models/.downloads/NAME.part` (0600), hashed as they are
  written, beside `NAME.part.json`, which records which version of which file it holds (the
  ETag). A process killed mid-download leaves both; the next download of that file (in any
  process) checks the bytes on disk against the record, hashes them, and asks only for the rest
  (`Range: bytes=N-`). A partial of another version of the file is discarded. huggingface_hub's
  own cache and its per-process `.incomplete` files are not used, so none are left behind.
- Whatever the server says about Xet storage, the transfer is plain HTTP with ranges: a server
  without Xet headers (a mirror, the tests' stand-in) and one with them work the same way.
- At the end the SHA-256 (for a file kept in git rather than LFS: its git blob hash, the ETag)
  must match, or the partial file is deleted and the error says so. Only then is the file moved
  into `models/`, never over an existing file unless `overwrite` (the page asks first; the CLI's
  `--force`). A partial file is locked while it is written: a second process downloading the
  same file is refused, not interleaved.
- Memory stays bounded: the library streams 10 MB chunks.
- `cancel` stops it; the partial file is kept, so a later download resumes (`discard_partial`
  removes it).

`DownloadJob` keeps one download per destination file per process: a second `start` for a file
being downloaded (another browser tab, the Home page and Settings) returns the running job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import urlsplit

from core import config
from core.config import write_atomic
from core.errors import ModelError
from core.models.catalog import MODEL_SUFFIXES, HubFile
from core.models.fit import fmt_bytes
from core.models.hub import METADATA_TIMEOUT_S, HubError, explain, host, is_official, token_for

PARTIAL_DIR = ".downloads"
SPARE_BYTES = 64 * 2**20  # free space kept beyond what the file still needs
_HASH_BLOCK = 4 * 2**20


class DownloadCancelled(ModelError):
    """The user stopped the download; the bytes received are kept for a later resume."""


class ChecksumMismatch(ModelError):
    """The file that arrived is not the file the server described; it was deleted."""


class DestinationExists(ModelError):
    """A file of that name is already in the models folder and replacing it was not confirmed."""


@dataclass(frozen=True)
class Progress:
    phase: str  # "starting", "checking" (hashing bytes already on disk), "downloading",
    #             "verifying", "done", "failed", "cancelled"
    done: int = 0  # bytes on disk
    total: int | None = None
    speed: float | None = None  # bytes/s over the last seconds
    eta: float | None = None  # seconds left at that speed
    resumed_from: int = 0  # bytes that were already on disk when this download started

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


ProgressFn = Callable[[Progress], None]


# --------------------------------------------------------------------------- where files go
def destination(file: HubFile, models_dir: Path | None = None) -> Path:
    """Where `file` is written: `models/<its name>`. ModelError when its name is not one the
    app writes (a .pth or .gguf, not hidden) or the place is not inside the models folder."""
    root = (models_dir or config.MODELS_DIR).expanduser()
    name = file.name
    if (
        not name.lower().endswith(MODEL_SUFFIXES)
        or name.startswith(".")
        or name != os.path.basename(name)
        or "\\" in name
    ):
        raise ModelError(f"{name!r} is not a model file name the app downloads (.pth, .gguf).")
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ModelError(f"{name!r} would be written outside the models folder {root}.")
    if path.is_relative_to(config.data_dir()):
        raise ModelError("The models folder is inside the app's data directory: choose another.")
    return path


def partial_paths(dest: Path) -> tuple[Path, Path]:
    """The partial file and its record for `dest`."""
    folder = dest.parent / PARTIAL_DIR
    return folder / f"{dest.name}.part", folder / f"{dest.name}.part.json"


def partial_size(file: HubFile, models_dir: Path | None = None) -> int:
    """Bytes of `file` already on disk from an earlier, unfinished download (0: none)."""
    part, record = partial_paths(destination(file, models_dir))
    try:
        return part.stat().st_size if record.exists() else 0
    except OSError:
        return 0


def discard_partial(file: HubFile, models_dir: Path | None = None) -> None:
    """Delete what an unfinished download of `file` left (not while one runs)."""
    dest = destination(file, models_dir)
    job = DownloadJob.find(dest)
    if job is not None and not job.done:
        raise ModelError(f"{dest.name} is being downloaded: cancel it first.")
    for p in partial_paths(dest):
        p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- hashing
def _hasher(expected: str, size: int) -> Any:
    """A hash object for the digest `expected` names: SHA-256 (64 hex digits, an LFS file) or
    git's blob SHA-1 (40 hex digits, a file kept in git), which starts with a header."""
    if len(expected) == 64:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % size)
    return h


def _digest_of(etag: str | None, listed: str | None) -> str | None:
    """The digest to check: the server's ETag when it is one (the file now), else the
    listing's SHA-256."""
    if etag and re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{40}", etag.lower()):
        return etag.lower()
    return listed.lower() if listed else None


class _Sink:
    """The file object `http_get` writes to: our partial file, hashed as it grows, stopping at
    the next chunk once `cancel` is set."""

    def __init__(
        self,
        f: IO[bytes],
        expected: str,
        size: int,
        start: int,
        hasher: Any,
        on_write: Callable[[int], None],
        cancel: threading.Event,
    ) -> None:
        self.f, self.expected, self.size = f, expected, size
        self.pos = start
        self.hasher = hasher
        self.on_write = on_write
        self.cancel = cancel

    def write(self, data: bytes) -> int:
        if self.cancel.is_set():
            raise DownloadCancelled("Download cancelled; what arrived is kept.")
        self.f.write(data)
        self.f.flush()  # on disk (in the OS) before the next chunk: a kill keeps it
        self.hasher.update(data)
        self.pos += len(data)
        self.on_write(self.pos)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only used by http_get to start over when a server ignores a range: rewind (the file
        and its hash) to `offset`."""
        if whence != 0:
            raise OSError("unsupported seek")
        self.f.seek(offset)
        self.f.truncate(offset)
        self.hasher = _hash_prefix(self.f, self.expected, self.size, offset, self.cancel)
        self.f.seek(offset)
        self.pos = offset
        return offset

    def truncate(self, size: int | None = None) -> int:
        self.seek(self.pos if size is None else size)
        return self.pos

    def flush(self) -> None:
        self.f.flush()


def _hash_prefix(
    f: IO[bytes],
    expected: str,
    size: int,
    length: int,
    cancel: threading.Event,
    report: Callable[[int], None] | None = None,
) -> Any:
    """The hash object after the first `length` bytes of `f` (read in blocks)."""
    h = _hasher(expected, size)
    f.seek(0)
    left = length
    while left > 0:
        if cancel.is_set():
            raise DownloadCancelled("Download cancelled; what arrived is kept.")
        block = f.read(min(_HASH_BLOCK, left))
        if not block:
            raise ModelError("The partial file is shorter than it was; start again.")
        h.update(block)
        left -= len(block)
        if report is not None:
            report(length - left)
    return h


class _Meter:
    """Speed over the last few seconds, and the time left at that speed."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, done: int) -> None:
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def speed(self, now: float | None = None) -> float | None:
        """Bytes/s over the window up to `now` (default: the last sample): a transfer that has
        stopped sending slows down to 0 as time passes without a new sample."""
        if len(self.samples) < 2 and now is None:
            return None
        t1, b1 = self.samples[-1]
        end = t1 if now is None else max(now, t1)
        start = [(t, b) for t, b in self.samples if end - t <= self.window]
        t0, b0 = start[0] if start and start[0][0] < end else self.samples[-1]
        if end - t0 <= 0:
            return None
        if t0 == t1 and now is not None:  # nothing arrived within the window
            return 0.0
        return (b1 - b0) / (end - t0)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """The partial file opened for writing (created 0600), with an exclusive lock: a second
    process downloading the same file is refused instead of interleaving bytes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    f = os.fdopen(fd, "r+b")
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not on this system: one process at a time is the user's to keep
            pass
        except OSError as e:
            raise ModelError(
                f"{path.name.removesuffix('.part')} is being downloaded by another program "
                "(another app process or `python -m core.models get`): wait for it."
            ) from e
        yield f
    finally:
        f.close()


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _move_into_place(part: Path, dest: Path, overwrite: bool) -> None:
    """`part` becomes `dest`; an existing `dest` is kept unless `overwrite` (atomically: a hard
    link cannot replace a file, so a file that appeared meanwhile is never overwritten)."""
    if overwrite:
        os.replace(part, dest)
        return
    try:
        os.link(part, dest)
    except FileExistsError as e:
        raise DestinationExists(
            f"{dest.name} already exists in the models folder; it is replaced only if you "
            "confirm. The downloaded file is kept: download again with Replace to use it."
        ) from e
    except OSError:  # hard links not supported here: check, then rename
        if dest.exists():
            raise DestinationExists(
                f"{dest.name} already exists in the models folder; it is replaced only if you "
                "confirm."
            ) from None
        os.replace(part, dest)
        return
    part.unlink()


# --------------------------------------------------------------------------- the download
def download_file(
    file: HubFile,
    endpoint: str,
    models_dir: Path | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download `file` from `endpoint` (its own endpoint, if it has one) into the models folder
    and return its path. See the module's docstring; ModelError (HubError, ChecksumMismatch,
    DownloadCancelled, DestinationExists) says what went wrong."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    endpoint = (file.endpoint or endpoint).rstrip("/")
    cancel = cancel or threading.Event()
    report = progress or (lambda _p: None)
    dest = destination(file, models_dir)
    if dest.exists() and not overwrite:
        raise DestinationExists(
            f"{dest.name} already exists in the models folder; it is replaced only if you confirm."
        )
    what = f"{file.path} of {file.repo}"
    report(Progress("starting"))
    url = hf_hub_url(file.repo, file.path, revision=file.revision, endpoint=endpoint)
    token = token_for(endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, timeout=METADATA_TIMEOUT_S, endpoint=endpoint)
    except Exception as e:
        raise explain(e, endpoint, what) from e
    size = meta.size or file.size
    expected = _digest_of(meta.etag, file.sha256)
    if size is None:
        raise HubError(f"{host(endpoint)} did not say how large {file.name} is; not downloaded.")
    if expected is None:
        raise HubError(
            f"{host(endpoint)} gave no SHA-256 for {file.name}, so the file could not be "
            "checked; not downloaded. (The Hub gives one for every model file: is the address "
            "a Hub or a Hub mirror?)"
        )
    if file.sha256 and len(expected) == 64 and file.sha256 != expected:
        file = replace(file, sha256=expected)  # it changed since it was listed: the newest
    part, record_path = partial_paths(dest)
    part.parent.mkdir(mode=0o700, exist_ok=True)
    record = {
        "repo": file.repo,
        "path": file.path,
        "revision": file.revision,
        "endpoint": endpoint,
        "commit": meta.commit_hash,
        "digest": expected,
        "size": size,
    }
    meter = _Meter()
    with _locked(part) as f:  # ours from here: the record and the bytes are read under the lock
        old = _read_record(record_path)
        f.seek(0, os.SEEK_END)
        have = f.tell()
        if old.get("digest") != expected or old.get("size") != size or have > size:
            f.truncate(0)  # another version's bytes, or none: start over
            have = 0
            write_atomic(record_path, json.dumps(record))
        need = size - have
        free = _free_bytes(part.parent)
        if free < need + SPARE_BYTES:
            if have == 0:  # nothing of ours to keep
                part.unlink(missing_ok=True)
                record_path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    part.parent.rmdir()
            raise ModelError(
                f"Not enough free disk space for {file.name}: it needs {fmt_bytes(need)} more "
                f"(and {fmt_bytes(SPARE_BYTES)} to spare) in {dest.parent}, and "
                f"{fmt_bytes(free)} are free. Nothing was downloaded."
            )
        if have:
            report(Progress("checking", 0, have, resumed_from=have))
            hasher = _hash_prefix(
                f,
                expected,
                size,
                have,
                cancel,
                lambda n: report(Progress("checking", n, have, resumed_from=have)),
            )
        else:
            hasher = _hasher(expected, size)
        f.seek(have)
        meter.add(have)

        def on_write(pos: int) -> None:
            meter.add(pos)
            speed = meter.speed()
            eta = (size - pos) / speed if speed else None
            report(Progress("downloading", pos, size, speed, eta, have))

        sink = _Sink(f, expected, size, have, hasher, on_write, cancel)
        report(Progress("downloading", have, size, None, None, have))
        location = meta.location or url
        headers = build_hf_headers(token=token)
        if urlsplit(location).netloc != urlsplit(url).netloc and not is_official(location):
            headers.pop("authorization", None)  # a CDN's signed address: no token to it
        try:
            http_get(
                location,
                sink,  # type: ignore[arg-type]  # a file-like object of ours
                resume_size=have,
                headers=headers,
                expected_size=size,
                displayed_filename=file.name,
                tqdm_class=_quiet_class(),
            )
        except (DownloadCancelled, ModelError):
            raise
        except Exception as e:
            raise explain(e, endpoint, f"{file.name}") from e
        if sink.pos != size:
            raise HubError(
                f"{file.name} ended at {fmt_bytes(sink.pos)} of {fmt_bytes(size)}; what arrived "
                "is kept: download again to resume."
            )
        report(Progress("verifying", size, size, None, None, have))
        got = sink.hasher.hexdigest()
        if got != expected:
            f.close()
            part.unlink(missing_ok=True)
            record_path.unlink(missing_ok=True)
            kind = "SHA-256" if len(expected) == 64 else "git hash"
            raise ChecksumMismatch(
                f"{file.name} arrived damaged: its {kind} is {got[:16]}…, and {host(endpoint)} "
                f"says it should be {expected[:16]}…. The file was deleted; nothing was added to "
                "the models folder. Try again (a mirror may serve a bad copy)."
            )
        f.flush()
        os.fsync(f.fileno())
        _move_into_place(part, dest, overwrite)  # still locked: no one else touches it now
    record_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        part.parent.rmdir()  # only when empty
    report(Progress("done", size, size, None, 0.0, have))
    return dest


@functools.cache
def _quiet_class() -> type:
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Quiet(hf_tqdm):  # type: ignore[misc, valid-type]
        """huggingface_hub's bar, silent: the app shows its own progress."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


# --------------------------------------------------------------------------- in the background
class DownloadJob:
    """One download in a background thread, for pages that start it and poll it:

        job = DownloadJob.start(hub_file, endpoint)   # the running job, if that file has one
        job.progress()                                 # Progress(phase, done, total, speed, eta)
        job.result                                     # the file in models/, or job.error

    One job per destination file per process: `start` for a file being downloaded returns the
    running job (two tabs, Home and Settings: one download). Jobs stay listed after they end,
    so that any page can show the result, until `dismiss`. Leaving a page does not stop one;
    `cancel` does (the bytes received are kept for a resume)."""

    _jobs: ClassVar[dict[Path, DownloadJob]] = {}  # destination -> its latest job
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, file: HubFile, endpoint: str, dest: Path, models_dir: Path | None, overwrite: bool
    ) -> None:
        self.file, self.endpoint, self.dest = file, endpoint, dest
        self.models_dir, self.overwrite = models_dir, overwrite
        self.result: Path | None = None
        self.error: ModelError | None = None
        self.started = time.time()
        self.ended: float | None = None
        self._progress = Progress("starting")
        self._meter = _Meter()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-download", daemon=True)

    @property
    def key(self) -> str:
        """A short stable id of its destination (widget keys)."""
        return hashlib.sha1(str(self.dest).encode()).hexdigest()[:12]

    @classmethod
    def start(
        cls,
        file: HubFile,
        endpoint: str,
        models_dir: Path | None = None,
        overwrite: bool = False,
    ) -> DownloadJob:
        """Start downloading `file` (download_file's arguments), or return the job already
        downloading it. ModelError at once when its name or place is refused."""
        dest = destination(file, models_dir)
        with cls._lock:
            job = cls._jobs.get(dest)
            if job is not None and not job.done:
                return job
            job = cls(file, endpoint, dest, models_dir, overwrite)
            cls._jobs[dest] = job
            job._thread.start()
        return job

    @classmethod
    def find(cls, dest: Path) -> DownloadJob | None:
        with cls._lock:
            return cls._jobs.get(dest)

    @classmethod
    def for_file(cls, file: HubFile, models_dir: Path | None = None) -> DownloadJob | None:
        try:
            return cls.find(destination(file, models_dir))
        except ModelError:
            return None

    @classmethod
    def jobs(cls) -> list[DownloadJob]:
        """Every job not dismissed: running ones first, then the most recent."""
        with cls._lock:
            found = list(cls._jobs.values())
        return sorted(found, key=lambda j: (j.done, -j.started))

    @classmethod
    def running(cls) -> list[DownloadJob]:
        return [j for j in cls.jobs() if not j.done]

    def _run(self) -> None:
        try:
            self.result = download_file(
                self.file,
                self.endpoint,
                models_dir=self.models_dir,
                overwrite=self.overwrite,
                progress=self._report,
                cancel=self._cancel,
            )
        except ModelError as e:
            self.error = e
            phase = "cancelled" if isinstance(e, DownloadCancelled) else "failed"
            self._progress = replace(self._progress, phase=phase, speed=None, eta=None)
        except Exception as e:  # never a traceback on a thread nobody reads: said, kept
            self.error = ModelError(f"Downloading {self.file.name} failed: {e}")
            self._progress = replace(self._progress, phase="failed", speed=None, eta=None)
        finally:
            self.ended = time.time()

    def _report(self, p: Progress) -> None:
        if p.phase == "downloading":
            self._meter.add(p.done)
        self._progress = p

    def progress(self) -> Progress:
        """Where it is now; while bytes arrive, its speed and time left over the last seconds
        (a transfer that stalled shows 0 bytes/s and no time left)."""
        p = self._progress
        if p.phase != "downloading" or not self._meter.samples:
            return p
        speed = self._meter.speed(time.monotonic())
        eta = (p.total - p.done) / speed if speed and p.total else None
        return replace(p, speed=speed, eta=eta)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and self.ended is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait at most `timeout` seconds for the end; whether it has ended."""
        self._thread.join(timeout)
        return self.done

    def cancel(self, timeout: float | None = 30) -> None:
        """Stop at the next chunk (its error becomes DownloadCancelled; the bytes received are
        kept) and wait at most `timeout` seconds for the thread."""
        self._cancel.set()
        self._thread.join(timeout)

    @classmethod
    def reset(cls) -> None:
        """Cancel every running job and forget them all (tests: a fresh process)."""
        with cls._lock:
            jobs = list(cls._jobs.values())
            cls._jobs.clear()
        for job in jobs:
            job.cancel(timeout=30)

    def dismiss(self) -> None:
        """Forget an ended job (its result or error has been seen)."""
        if not self.done:
            return
        with self._lock:
            if self._jobs.get(self.dest) is self:
                del self._jobs[self.dest]
