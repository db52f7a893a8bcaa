"""A PostgreSQL server of its own in a directory: Debian's `postgresql` package (or any
PostgreSQL whose `initdb`, `pg_ctl` and `postgres` are found), a cluster made with `initdb`,
listening on 127.0.0.1 and a port of its own, stopped with `pg_ctl stop`.

    with LocalPostgres(Path("/srv/rp-pg")) as pg:        # initdb once, start, stop at the end
        url = pg.create_database("rp")                     # postgresql+psycopg://...@127.0.0.1:PORT/rp

Used by the tests (one server per test session), `python -m deploy.cluster` and
`bench/cluster.py`. PostgreSQL's `initdb` refuses to run as root: as root, the cluster is made
and run by the `postgres` user (`runuser -u postgres`), and the directory given to it.
Connections from 127.0.0.1 are trusted (`initdb --auth=trust`): for one machine only; on
several machines use a password or certificates (deploy/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

START_S = 60


class PostgresMissing(RuntimeError):
    """PostgreSQL's programs are not installed."""


def pg_bin_dir() -> Path:
    """Where `initdb` and `pg_ctl` are: $PG_BIN, Debian's /usr/lib/postgresql/<newest>/bin, or
    PATH. PostgresMissing when none has them."""
    env = os.environ.get("PG_BIN", "")
    candidates = [Path(env)] if env else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0),
        reverse=True,
    )
    candidates += versions
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise PostgresMissing(
        "PostgreSQL is not installed (no initdb): apt-get install postgresql, or set PG_BIN"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class LocalPostgres:
    """A PostgreSQL cluster in `directory` (made on the first start), on 127.0.0.1:`port`.

    `fast` turns off fsync and synchronous commits: for tests and benches, whose data may be
    lost in a power cut; never for a server that keeps chats."""

    def __init__(
        self, directory: Path, port: int | None = None, fast: bool = False, user: str = "postgres"
    ) -> None:
        self.dir = Path(directory).resolve()
        self.data = self.dir / "pgdata"
        self.port = port or free_port()
        self.fast = fast
        self.user = user  # the database's superuser, made by initdb
        self.bin = pg_bin_dir()
        self.log = self.dir / "postgres.log"
        self._started = False

    # ---------------------------------------------------------------- the cluster
    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program, as the postgres user when this process is root."""
        full = list(cmd)
        if _as_root():
            full = ["runuser", "-u", "postgres", "--", *full]
        return subprocess.run(full, check=check, capture_output=True, text=True, cwd="/")

    def init(self) -> None:
        """initdb, unless the cluster exists already."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if _as_root():
            shutil.chown(self.dir, "postgres", "postgres")
            reach = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(self.dir)])
            if reach.returncode != 0:
                raise RuntimeError(
                    f"The postgres user cannot enter {self.dir} (a folder above it is private to "
                    "root): put PostgreSQL's folder where it can, such as /var/lib/rp-pg, or "
                    "run as another user."
                )
        if (self.data / "PG_VERSION").is_file():
            return
        res = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",  # byte order for text, as SQLite sorts it
            "--data-checksums",  # PostgreSQL checks every page it reads
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed: {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> LocalPostgres:
        self.init()
        opts = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.dir}",
            "-c max_connections=200",
        ]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        res = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(START_S),
            "-o",
            " ".join(opts),
            "start",
            check=False,
        )
        if res.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {res.stderr.strip()}\n{log}")
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop", check=False)
        self._started = False

    def kill_connections(self, dbname: str) -> None:
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        )

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- databases
    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        """One statement, outside a transaction (CREATE DATABASE cannot run in one)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, autocommit=True
        ) as con:
            con.execute(statement)  # type: ignore[arg-type]

    def create_database(self, dbname: str, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); its SQLAlchemy URL."""
        _check_name(dbname)
        if template:
            _check_name(template)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sql(
                    f'CREATE DATABASE "{dbname}"' + (f' TEMPLATE "{template}"' if template else "")
                )
                return self.url(dbname)
            except Exception as e:  # the template in use by a closing connection: try again
                if "being accessed by other users" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def drop_database(self, dbname: str) -> None:
        _check_name(dbname)
        self.sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a database name this helper makes: {name!r}")
