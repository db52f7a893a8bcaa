"""A real `streamlit run Home.py` for the tests that need the server itself (e2e, listening),
and the browser that drives it: headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.support import REPO
from tests.support.required import unavailable

CHROMIUM = "/usr/bin/chromium"
# no GPU, no sandbox (root), and none of Chromium's own calls home
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START_S = 120  # the server's start-up may take this long on a loaded machine; nothing else is timed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def playwright_api() -> Any:
    """Playwright's sync API, with Chromium where the tests drive it; a skip (a failure under
    CI=true) when either is missing."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ModuleNotFoundError as e:
        if e.name != "playwright":
            raise  # installed but broken: an error, not a skip
        unavailable("Playwright is not installed (pip install -r requirements-dev.txt)")
    return sync_api


@contextmanager
def running_app(
    data: Path,
    log: Path,
    cwd: Path = REPO,
    host: str = "127.0.0.1",
    args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> Iterator[SimpleNamespace]:
    """The app served on a free port with `data` as its data directory (no RP_* variable of the
    caller's leaks in; `extra_env` adds some), until the block ends. Yields url, port and the
    process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
    env["RP_DATA_DIR"] = str(data)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "Home.py")]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--server.runOnSave", "false", "--server.port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + log.read_text())
            time.sleep(0.3)
        yield SimpleNamespace(url=url, port=port, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def embedded_app(root: Path, host: str = "127.0.0.1") -> Iterator[SimpleNamespace]:
    """The app on a new, empty data directory under `root` with its default model, the embedded
    one (required: without it the test is skipped, or fails under CI). Yields url, data, log."""
    from core.backends.embedded import embedded_model_path, missing_message

    if embedded_model_path() is None:
        unavailable(missing_message())
    data = root / "data"
    data.mkdir()
    log = root / "server.log"
    with running_app(data, log, host=host) as app:
        yield SimpleNamespace(url=app.url, data=data, log=log)


def app_store(app: SimpleNamespace) -> Any:
    """A Store on the running app's database (to check what the pages saved)."""
    from core.store import open_store

    return open_store(f"sqlite:///{app.data / 'app.db'}")


def ended_reply(store: Any, conv_id: int) -> Any:
    """The chat's last message when it is a reply that has ended (a reply is saved while it
    grows, marked "interrupted", and rewritten with its real stop reason when it ends; a
    greeting or a user's message has none), else None."""
    msgs = store.list_messages(conv_id)
    last = msgs[-1] if msgs else None
    if last is None or last.role == "user":
        return None
    return last if last.meta.get("stop") not in (None, "interrupted") else None


def wait_for(fn: Any, timeout: float) -> Any:
    """fn() once it is truthy, or its last value after `timeout` seconds (asked every 0.2 s)."""
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value or time.time() > deadline:
            return value
        time.sleep(0.2)


SETTLE_S = 300  # a bound for a page's run chain on a loaded machine (a reply included), never timed


class ScriptRuns:
    """The script runs of one browser page, read from its Streamlit websocket with Streamlit's
    own protobufs: rerun requests the page sent (a click, an input, a page load), runs the
    server started (`new_session`), and run chains that ended (`script_finished`, except a run
    stopped to run again: a callback, `st.rerun()`, a newer input). A new websocket (a reload,
    another page) starts the count afresh."""

    def __init__(self, page: Any) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self._back, self._fwd = BackMsg, ForwardMsg
        self.page = page
        self.ws: Any = None
        self._reset()
        page.on("websocket", self._on_websocket)

    def _reset(self) -> None:
        self.requested = 0  # rerun requests sent
        self.served = 0  # of them, those sent before the last run started
        self.running = False  # a run chain is under way
        self.ended = 0  # run chains ended

    def _on_websocket(self, ws: Any) -> None:
        if "/_stcore/stream" not in ws.url:
            return
        self.ws = ws
        self._reset()
        ws.on("framesent", lambda payload: self._sent(ws, payload))
        ws.on("framereceived", lambda payload: self._received(ws, payload))
        ws.on("close", lambda _ws: self._closed(ws))

    def _closed(self, ws: Any) -> None:
        if ws is self.ws:  # the page went away (a reload, a navigation): nothing to wait for
            self.ws = None
            self._reset()

    def _sent(self, ws: Any, payload: bytes | str) -> None:
        if ws is self.ws and isinstance(payload, bytes):
            if self._back.FromString(payload).WhichOneof("type") == "rerun_script":
                self.requested += 1

    def _received(self, ws: Any, payload: bytes | str) -> None:
        if ws is not self.ws or not isinstance(payload, bytes):
            return
        msg = self._fwd.FromString(payload)
        kind = msg.WhichOneof("type")
        if kind == "new_session":  # a run starts: it serves every request sent so far
            self.served, self.running = self.requested, True
        elif kind == "script_finished" and (
            msg.script_finished != self._fwd.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN
        ):
            self.running = False
            self.ended += 1

    def settled(self) -> bool:
        """No run chain is going, every request sent has been served, and one has ended."""
        return (
            self.ws is not None
            and not self.running
            and self.served >= self.requested
            and self.ended > 0
        )


def track_runs(page: Any) -> ScriptRuns:
    """Follow `page`'s script runs from now on (call it before the page opens the app)."""
    runs = ScriptRuns(page)
    _RUNS[id(page)] = runs
    return runs


_RUNS: dict[int, ScriptRuns] = {}


def settle(page: Any, timeout: float = SETTLE_S) -> None:
    """Wait until the page's script runs are over: every rerun it asked for (a click, an input,
    the page's load) has run, the chain of runs has ended, and the browser has drawn the last
    one (Streamlit's app element says "notRunning", and no animation that ends still runs).
    Events, not a quiet spell: a run that pauses for seconds (the model loading, a busy
    machine) is still waited for. Fails after `timeout` seconds, a bound for a stuck page,
    never a measure of speed."""
    runs = _RUNS.get(id(page))
    if runs is None:
        raise RuntimeError("track_runs(page) first, before the page opens the app")
    ms = timeout * 1000
    if runs.ws is None:
        page.wait_for_event("websocket", lambda ws: "/_stcore/stream" in ws.url, timeout=ms)
    if not runs.settled():
        # our handler sees each frame first (registered first), then this predicate
        runs.ws.wait_for_event("framereceived", lambda _payload: runs.settled(), timeout=ms)
    # ... and the browser has drawn it: the app says "notRunning", and no animation that ends
    # is still running (an expander opening moves what is below it; spinners loop forever)
    page.wait_for_function(
        """() => { const app = document.querySelector('[data-testid=stApp]');
                   return app && app.dataset.testScriptState === 'notRunning'
                          && app.dataset.testConnectionState === 'CONNECTED'
                          && document.getAnimations().every(a => a.playState !== 'running'
                               || a.effect?.getComputedTiming().iterations === Infinity); }""",
        timeout=ms,
    )


class HealthWatch:
    """Asks the server's /_stcore/health every `every` seconds from a thread of its own, for as
    long as the block runs, and records how long each answer took (a request that gets no answer
    in `limit` seconds counts as `limit` and as late). The block's work is what is tested: the
    server must stay responsive while it runs (issue 21: the health check timed out while one
    request froze the process).

        with HealthWatch(app.url) as health:
            ...hostile requests...
        health.check()              # every answer within `limit`, and there were some
    """

    def __init__(self, url: str, limit: float = 2.0, every: float = 0.25) -> None:
        self.url, self.limit, self.every = url, limit, every
        self.times: list[float] = []
        self.late: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=self.limit) as r:
                    ok = r.status == 200
            except OSError as e:
                ok = False
                self.late.append(f"after {time.monotonic() - t0:.1f} s: {e}")
            took = time.monotonic() - t0
            self.times.append(took)
            if ok and took > self.limit:
                self.late.append(f"answered after {took:.1f} s")
            self._stop.wait(self.every)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self._stop.set()
        self._thread.join(self.limit + 5)
        if exc is not None and self.late:  # the block failed, and the server was not answering
            raise AssertionError(
                f"health was late {len(self.late)} times while the block ran: {self.late[:5]}"
            ) from exc

    def check(self) -> None:
        assert self.times, "the health check never ran"
        assert not self.late, f"health was late {len(self.late)} times: {self.late[:5]}"
        assert max(self.times) < self.limit


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The resident memory of the process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def wait_idle(pid: int, timeout: float, window: float = 2.0, busy: float = 0.25) -> bool:
    """Whether the process `pid` goes idle (under `busy` of a CPU over `window` seconds) within
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < busy * window:
            return True
    return False
