"""The whole thing on one machine: PostgreSQL, N app servers on their own ports, HAProxy in front.

    python -m deploy.cluster --servers 2 --port 8500 --dir ~/rp-cluster [--model models/x.gguf]

then open http://127.0.0.1:8500 (pages, /v1, /api). Ctrl-C stops everything. The folder keeps
the database cluster (`pg/`), the shared state checkpoints (`states/`, RP_STATE_DIR), the app's
data directory shared by the servers (`data/`: avatars, characters' state files), HAProxy's
configuration and every log; the next run starts from them. deploy/README.md says how to run the
same on several machines. `Cluster` is what bench/cluster.py and the cluster test start.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from deploy.haproxy import HEALTH, haproxy_config, running_haproxy
from deploy.postgres import LocalPostgres, free_port

REPO = Path(__file__).resolve().parent.parent
START_S = 180  # an app server's start on a busy machine (Streamlit, the store, nothing else)


@dataclass
class AppServer:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_app(
    name: str,
    env: dict[str, str],
    log: Path,
    port: int | None = None,
    args: tuple[str, ...] = (),
) -> AppServer:
    """`streamlit run Home.py` on 127.0.0.1:`port` with `env` (RP_* variables) added to a clean
    environment; does not wait for it (`wait_healthy`)."""
    port = port or free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "Home.py")]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--server.runOnSave", "false", "--server.address", "127.0.0.1"]
    cmd += ["--server.port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    return AppServer(name, port, proc, log)


def wait_healthy(servers: list[AppServer], timeout: float = START_S) -> None:
    deadline = time.monotonic() + timeout
    for s in servers:
        while True:
            try:
                with urllib.request.urlopen(s.url + HEALTH, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if s.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{s.name} did not start:\n" + s.log.read_text()[-3000:])
            time.sleep(0.3)


def stop_app(server: AppServer, kill: bool = False) -> None:
    if server.proc.poll() is None:
        if kill:
            server.proc.send_signal(signal.SIGKILL)
        else:
            server.proc.terminate()
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


@dataclass
class Cluster:
    """PostgreSQL (or `db_url`), `n` app servers sharing a state folder and a data directory,
    and HAProxy on `port`. `env` adds variables to every app server (RP_MODEL...)."""

    folder: Path
    n: int = 2
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    db_url: str | None = None
    affinity: bool = True
    fast_db: bool = False  # PostgreSQL without fsync: tests and benches only
    app_args: tuple[str, ...] = ()
    pg_dir: Path | None = None  # PostgreSQL's folder (default: folder/pg)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.port = self.port or free_port()
        self.servers: list[AppServer] = []
        self.pg: LocalPostgres | None = None
        self._stack = ExitStack()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app_env(self) -> dict[str, str]:
        assert self.db_url is not None
        return {
            "RP_DB_URL": self.db_url,
            "RP_STATE_DIR": str(self.folder / "states"),
            "RP_DATA_DIR": str(self.folder / "data"),
            **self.env,
        }

    def start(self) -> Cluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            if self.db_url is None:
                self.pg = LocalPostgres(self.pg_dir or self.folder / "pg", fast=self.fast_db)
                self._stack.callback(self.pg.stop)
                self.pg.start()
                try:
                    self.db_url = self.pg.create_database("rp")
                except Exception as e:  # there from a run before
                    if "already exists" not in str(e):
                        raise
                    self.db_url = self.pg.url("rp")
                from core.store import open_store

                open_store(self.db_url).close()  # migrated once, before the servers race to
            self._stack.callback(self.stop_servers)
            self.servers = [
                start_app(
                    f"app{i + 1}",
                    self.app_env(),
                    self.folder / f"app{i + 1}.log",
                    args=self.app_args,
                )
                for i in range(self.n)
            ]
            wait_healthy(self.servers)
            config = haproxy_config(
                [(s.name, f"127.0.0.1:{s.port}") for s in self.servers],
                bind=f"127.0.0.1:{self.port}",
                affinity=self.affinity,
            )
            self.haproxy = self._stack.enter_context(
                running_haproxy(config, self.folder, url=self.url)
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def stop_servers(self) -> None:
        for s in self.servers:
            stop_app(s)

    def kill(self, name: str) -> AppServer:
        """`kill -9` of one app server."""
        server = next(s for s in self.servers if s.name == name)
        stop_app(server, kill=True)
        return server

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.cluster", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--servers", type=int, default=2, help="app servers (default 2)")
    ap.add_argument("--port", type=int, default=8500, help="HAProxy's port (default 8500)")
    ap.add_argument("--dir", default="rp-cluster", help="the cluster's folder (kept)")
    ap.add_argument("--model", default="", help="a model file or a model server's URL (RP_MODEL)")
    ap.add_argument("--db-url", default=None, help="an existing database instead of a local one")
    ap.add_argument("--pg-dir", default=None, help="PostgreSQL's folder (default: DIR/pg)")
    args = ap.parse_args(argv)
    env = {"RP_MODEL": args.model} if args.model else {}
    cluster = Cluster(Path(args.dir), args.servers, args.port, env, args.db_url)
    cluster.pg_dir = Path(args.pg_dir) if args.pg_dir else None
    with cluster:
        print(f"PostgreSQL: {cluster.db_url}")
        for s in cluster.servers:
            print(f"{s.name}: {s.url} (log {s.log})")
        print(f"HAProxy: {cluster.url}  (Ctrl-C stops everything)", flush=True)
        try:
            while all(s.proc.poll() is None for s in cluster.servers):
                time.sleep(1)
            print("an app server stopped: see its log", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
