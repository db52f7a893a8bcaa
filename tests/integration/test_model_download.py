"""The model catalog and downloads against a stand-in Hub on 127.0.0.1 (tests/support/
local_hub.py), through the real `huggingface_hub` client: listing a repository's files with size
and SHA-256, a download that is checked and loads, a process killed mid-download that resumes
with only the missing bytes, a corrupted byte, 404 / 500 / a stalled connection, a full disk,
two tabs asking for one file, cancel, and the CLI with $HF_ENDPOINT.

The served model is a tiny random-weight RWKV-7 `.pth` (tests/support/tiny_model.py), 69 MB in
fp32: more than the library's 10 MB chunks, so a partial file has whole chunks on disk. Where a
test needs the transfer to be at a given point, the server holds its response there (an event)
rather than racing a timer.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.backends.loader import list_model_files
from core.errors import ModelError
from core.models.catalog import Catalog, HubFile, RepoEntry, list_repo, lookup
from core.models.download import (
    ChecksumMismatch,
    DestinationExists,
    DownloadCancelled,
    DownloadJob,
    discard_partial,
    download_file,
    partial_paths,
    partial_size,
)
from core.models.hub import HubError
from tests.support import REPO
from tests.support.local_hub import HubFileSpec, LocalHub, go_online, local_hub

REPO_ID = "BlinkDL/rwkv7-g1"
NAME = "rwkv7-g1a3-0.1b-20251015-ctx4096.pth"
CHUNK = 10 * 2**20  # huggingface_hub's DOWNLOAD_CHUNK_SIZE: what reaches the disk at a time

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    go_online(monkeypatch)  # these tests talk to a server on 127.0.0.1, on purpose


@pytest.fixture
def hub(online: None, tiny_models) -> Iterator[LocalHub]:
    with local_hub() as h:
        h.add_file(REPO_ID, NAME, Path(tiny_models(7)))
        h.add(REPO_ID, "README.md", HubFileSpec.of(b"# RWKV-7 G1\n", lfs=False))
        h.add(REPO_ID, "rwkv7-g1a3-1.5b-20251015-ctx8192.pth", HubFileSpec.listed(3_055_445_757))
        yield h


@pytest.fixture
def source(tiny_models) -> bytes:
    return Path(tiny_models(7)).read_bytes()


def served(hub: LocalHub) -> HubFile:
    return next(f for f in list_repo(REPO_ID, hub.url).files if f.name == NAME)


def visible(models: Path) -> list[str]:
    """What the app shows of the models folder."""
    return [p.name for p in list_model_files(models)]


def wait_until(fn, timeout: float = 120.0) -> None:  # noqa: ANN001
    """Wait for a condition the test caused (never for a duration); fail if it never holds."""
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


# --------------------------------------------------------------------------- listing
def test_the_files_of_a_repository_with_size_and_sha256(hub: LocalHub, source: bytes) -> None:
    listing = lookup(Catalog((RepoEntry(REPO_ID), RepoEntry("nobody/nothing"))), hub.url)
    assert not listing.offline
    files = {f.name: f for f in listing.files}
    assert set(files) == {NAME, "rwkv7-g1a3-1.5b-20251015-ctx8192.pth"}  # not the README
    assert files[NAME].size == len(source)
    assert files[NAME].sha256 == hashlib.sha256(source).hexdigest()
    assert files["rwkv7-g1a3-1.5b-20251015-ctx8192.pth"].size == 3_055_445_757
    assert listing.errors == [
        f"127.0.0.1:{hub.port} has no repository nobody/nothing (404: not found)."
    ]
    assert f"/api/models/{REPO_ID}/revision/main" in [r.path for r in hub.requests]


def test_no_network_is_one_line_after_one_attempt(
    online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.models.catalog as catalog

    tried: list[str] = []
    real = catalog.list_repo

    def counted(repo: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        tried.append(repo)
        return real(repo, *args, **kwargs)

    monkeypatch.setattr(catalog, "list_repo", counted)
    repos = (RepoEntry(REPO_ID), RepoEntry("a/b"), RepoEntry("c/d"))
    listing = lookup(Catalog(repos), "http://127.0.0.1:9")
    assert listing.offline and not listing.files and tried == [REPO_ID]
    assert listing.errors[0].startswith("Cannot reach 127.0.0.1:9")


# --------------------------------------------------------------------------- downloading
def test_download_checks_the_file_and_it_loads(hub: LocalHub, models: Path, source: bytes) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    file = served(hub)
    phases: list[str] = []
    path = download_file(file, hub.url, progress=lambda p: phases.append(p.phase))
    assert path == models / NAME and path.read_bytes() == source
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (models / ".downloads").exists()
    assert phases[0] == "starting" and phases[-2:] == ["verifying", "done"]
    # plain HTTP: the Hub's HEAD (a redirect to the "CDN", another host), one GET there; no
    # Xet headers from this server, so the library sees no Xet file and nothing else is asked
    meta = get_hf_file_metadata(hf_hub_url(REPO_ID, NAME, endpoint=hub.url))
    assert meta.xet_file_data is None and meta.location.startswith("http://localhost:")
    routes = [
        (r.method, r.path.split("/")[1] if r.path.startswith("/lfs") else r.path)
        for r in hub.requests
    ]
    assert routes[:3] == [
        ("GET", f"/api/models/{REPO_ID}/revision/main"),
        ("HEAD", f"/{REPO_ID}/resolve/main/{NAME}"),
        ("GET", "lfs"),
    ]
    # ... and the app loads it and writes with it
    from core import runtime
    from core.settings import ModelChoice

    runtime.reset()
    try:
        rt = runtime.current()
        rt.choose(ModelChoice(path=str(path)))
        engine = rt.load()
        assert engine.info.path == str(path) and engine.info.n_layer == 2
    finally:
        runtime.reset()
    # again: the file is there, and is not replaced without a yes
    with pytest.raises(DestinationExists):
        download_file(file, hub.url)
    path.write_bytes(b"the user's own file")
    with pytest.raises(DestinationExists):
        download_file(file, hub.url)
    assert path.read_bytes() == b"the user's own file"
    assert download_file(file, hub.url, overwrite=True).read_bytes() == source


def _cli(hub: LocalHub, *args: str, endpoint: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "core.models", *args]
    if endpoint:
        cmd += ["--endpoint", hub.url]
    return cmd


def _env(models: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RP_", "HF_ENDPOINT"))}
    env.update(RP_MODELS_DIR=str(models), RP_DATA_DIR=str(data), HF_HUB_OFFLINE="0", **extra)
    return env


def test_a_killed_download_resumes_and_fetches_only_the_rest(
    hub: LocalHub, models: Path, data_dir: Path, source: bytes, tmp_path: Path
) -> None:
    part, record = partial_paths(models / NAME)
    hub.hold_after = 2 * CHUNK + CHUNK // 2  # the server stops in the third chunk, and waits
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        _cli(hub, "get", f"{REPO_ID}/{NAME}"),
        cwd=REPO,
        env=_env(models, data_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert hub.reached.wait(120), (tmp_path / "first.log").read_text()
        wait_until(lambda: part.exists() and part.stat().st_size >= 2 * CHUNK)
        first.kill()  # SIGKILL: no clean-up of any kind
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    on_disk = part.stat().st_size
    assert on_disk == 2 * CHUNK and record.exists() and visible(models) == []
    assert hub.transfers()[0].sent == 2 * CHUNK + CHUNK // 2
    hub.release.set()

    second = subprocess.run(
        _cli(hub, "get", f"{REPO_ID}/{NAME}"),
        cwd=REPO,
        env=_env(models, data_dir),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(models / NAME)
    assert (models / NAME).read_bytes() == source
    resumed = hub.transfers()[1]
    assert resumed.range == f"bytes={on_disk}-" and resumed.status == 206
    assert resumed.sent == len(source) - on_disk  # the bytes on disk were not fetched again
    assert len(hub.transfers()) == 2 and not part.exists() and not record.exists()
    assert "converted" in second.stderr or "GGUF" in second.stderr  # the converter is offered


def test_a_partial_file_of_another_version_is_not_reused(
    hub: LocalHub, models: Path, source: bytes
) -> None:
    part, record = partial_paths(models / NAME)
    part.parent.mkdir()
    part.write_bytes(b"x" * 1000)
    record.write_text('{"digest": "' + "0" * 64 + f'", "size": {len(source)}}}')
    assert download_file(served(hub), hub.url).read_bytes() == source
    assert hub.transfers()[0].range is None and hub.transfers()[0].sent == len(source)


def test_a_server_that_ignores_the_range_still_gives_a_checked_file(
    hub: LocalHub, models: Path, source: bytes
) -> None:
    part, record = partial_paths(models / NAME)
    part.parent.mkdir()
    part.write_bytes(source[:CHUNK])  # an earlier download's first chunk
    digest = hashlib.sha256(source).hexdigest()
    record.write_text('{"digest": "' + digest + f'", "size": {len(source)}}}')
    hub.ignore_range = True
    assert download_file(served(hub), hub.url).read_bytes() == source
    t = hub.transfers()[0]
    assert t.range == f"bytes={CHUNK}-" and t.status == 200 and t.sent == len(source)


def test_a_corrupted_byte_is_refused_and_deleted(hub: LocalHub, models: Path) -> None:
    hub.corrupt_at = 12345
    with pytest.raises(ChecksumMismatch) as e:
        download_file(served(hub), hub.url)
    assert "SHA-256" in str(e.value) and "deleted" in str(e.value)
    assert visible(models) == [] and not any(models.rglob("*.part"))
    assert partial_size(served(hub), models) == 0


def test_404_and_500_are_said_and_leave_models_unchanged(hub: LocalHub, models: Path) -> None:
    missing = HubFile(REPO_ID, "rwkv7-g1a3-0.4b-20251015-ctx4096.pth")
    with pytest.raises(HubError) as e:
        download_file(missing, hub.url)
    assert "404" in str(e.value) and missing.path in str(e.value)
    hub.fail[f"/{REPO_ID}/resolve"] = 500
    with pytest.raises(HubError) as e:
        download_file(served(hub), hub.url)
    assert "500" in str(e.value) and "server error" in str(e.value)
    assert list(models.iterdir()) == []


def test_a_stalled_connection_is_said_and_models_unchanged(
    hub: LocalHub, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # the library waits HF_HUB_DOWNLOAD_TIMEOUT for data, and retries 5 times: 1 s each here
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    hub.stall_after = 2**20
    with pytest.raises(HubError) as e:
        download_file(served(hub), hub.url)
    assert "stopped answering" in str(e.value)
    assert visible(models) == [] and not (models / NAME).exists()
    assert len(hub.transfers()) >= 2  # the library retried with a range before giving up


def test_not_enough_disk_is_refused_before_any_byte(
    hub: LocalHub, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    real = shutil.disk_usage

    def small(path: str | os.PathLike[str]):  # noqa: ANN202
        return real(path)._replace(free=50 * 2**20)  # 50 MiB free: less than the file

    monkeypatch.setattr("core.models.download.shutil.disk_usage", small)
    with pytest.raises(ModelError) as e:
        download_file(served(hub), hub.url)
    assert "Not enough free disk space" in str(e.value) and "Nothing was downloaded" in str(e.value)
    assert hub.transfers() == [] and visible(models) == []


def test_two_tabs_asking_for_one_file_make_one_download(
    hub: LocalHub, models: Path, source: bytes
) -> None:
    hub.hold_after = CHUNK  # the first transfer waits: the second ask comes while it runs
    file = served(hub)
    jobs: list[DownloadJob] = []
    start = threading.Barrier(2)

    def tab() -> None:
        start.wait()
        jobs.append(DownloadJob.start(file, hub.url))

    tabs = [threading.Thread(target=tab) for _ in range(2)]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert hub.reached.wait(60)
    assert jobs[0] is jobs[1] and DownloadJob.start(file, hub.url) is jobs[0]
    assert DownloadJob.running() == [jobs[0]]
    hub.release.set()
    assert jobs[0].wait(120) and jobs[0].error is None, jobs[0].error
    assert jobs[0].result == models / NAME and (models / NAME).read_bytes() == source
    assert len(hub.transfers()) == 1
    jobs[0].dismiss()
    assert DownloadJob.for_file(file) is None


def test_cancel_keeps_what_arrived_and_a_later_download_resumes(
    hub: LocalHub, models: Path, source: bytes
) -> None:
    hub.hold_after = CHUNK + CHUNK // 2
    file = served(hub)
    job = DownloadJob.start(file, hub.url)
    assert hub.reached.wait(60)
    wait_until(lambda: partial_size(file) >= CHUNK)
    job.cancel(timeout=0)  # it stops at its next chunk
    hub.release.set()  # the server drops the connection; the library asks again, gets a chunk
    assert job.wait(60)
    assert isinstance(job.error, DownloadCancelled) and job.progress().phase == "cancelled"
    assert partial_size(file) == CHUNK and visible(models) == []
    resumed = DownloadJob.start(file, hub.url)
    assert resumed is not job and resumed.wait(120) and resumed.error is None, resumed.error
    assert (models / NAME).read_bytes() == source
    assert hub.transfers()[-1].range == f"bytes={CHUNK}-"
    # what a cancelled download left can also be thrown away
    (models / NAME).unlink()
    part, record = partial_paths(models / NAME)
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(b"x")
    record.write_text("{}")
    discard_partial(file)
    assert not part.exists() and not record.exists()


def test_a_second_process_on_the_same_file_is_refused(hub: LocalHub, models: Path) -> None:
    part, _ = partial_paths(models / NAME)
    part.parent.mkdir()
    with open(part, "ab") as other:  # as another process downloading it would hold it
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ModelError) as e:
            download_file(served(hub), hub.url)
    assert "being downloaded by another program" in str(e.value)
    assert visible(models) == []


def test_the_cli_lists_through_hf_endpoint(hub: LocalHub, models: Path, data_dir: Path) -> None:
    (data_dir / "catalog.json").write_text('{"repositories": ["' + REPO_ID + '"]}')
    out = subprocess.run(
        _cli(hub, "list", endpoint=False),
        cwd=REPO,
        env=_env(models, data_dir, HF_ENDPOINT=hub.url),  # no --endpoint, no setting
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert "Listing" in out.stderr and f"127.0.0.1:{hub.port}" in out.stderr
    assert NAME in out.stdout and "0.1B" in out.stdout and "1.5B" in out.stdout
    assert "Recommended:" in out.stdout and "python -m core.models get" in out.stdout
