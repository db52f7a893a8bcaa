"""Copies of the database in `data/backups/`, and putting one back.

PostgreSQL (`RP_DB_URL=postgresql+psycopg://...`) is backed up and checked by its own tools, and
several app servers share it, so the app makes no daily copy of it and restores none: "Back up
now" runs `pg_dump` (custom format, `app-....dump`) where it is installed, and Settings says what
to run instead (`postgres_advice`). The rest of this module is about the SQLite file.

`daily_backup` runs when the app opens its store: at most one copy a day, made with
`VACUUM INTO` (a consistent, compact copy taken while the app runs), the newest `KEEP` kept.
A copy is written under a temporary name and renamed once whole, so a crash midway leaves no
half a backup under a backup's name (nor one that counts as the day's).
`restore` never loses the current database silently: it is copied beside the backups first
(`...-before-restore.db`), byte for byte when SQLite can no longer read it. Each function takes
the database URL (as `open_store` does); close the Store before a restore, open it again after.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from core.config import data_dir
from core.errors import StoreError
from core.store.database import (
    known_revisions,
    revision_schema,
    schema_differences,
    sqlite_schema,
)

log = logging.getLogger(__name__)

KEEP = 7
_PARTIAL = ".partial"  # a backup being written: ".app-....db.<random>.partial", then renamed
STALE_S = 3600  # seconds after which such a file is one that a killed process left
_NAME = re.compile(r"^app-(\d{4}-\d{2}-\d{2})-(\d{6})(-[a-z0-9-]+)?\.(?:db|dump)$")
_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite's files beside a database


@dataclass(frozen=True)
class Backup:
    path: Path
    made: datetime
    size: int
    note: str  # "" for a backup, "before-restore" for the copy a restore kept


def backup_dir() -> Path:
    return data_dir() / "backups"


def is_postgres(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except ArgumentError:
        return False


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """`url` as libpq's tools take it (postgresql://, no driver), without its password, and the
    environment that gives them the password (never on a command line: `ps` shows those)."""
    parsed = make_url(url)
    env = {"PGPASSWORD": parsed.password} if parsed.password else {}
    plain = parsed.set(drivername="postgresql")._replace(password=None)
    return plain.render_as_string(hide_password=False), env


def pg_dump_program() -> str | None:
    """`pg_dump` on this machine (Debian: the postgresql-client package), else None."""
    return shutil.which("pg_dump")


def postgres_advice(url: str) -> dict[str, str]:
    """What PostgreSQL's own tools do in place of the app's SQLite copies and checks, as
    commands for this database (its URL without the password): Settings shows them."""
    where, _ = _libpq(url)
    return {
        "url": where,
        "backup": f"pg_dump --format=custom --file=rp-$(date +%F).dump '{where}'",
        "restore": (
            "pg_restore --clean --if-exists --no-owner --single-transaction "
            f"--dbname='{where}' rp-DATE.dump"
        ),
        "check": f"pg_amcheck --heapallindexed '{where}'",
    }


def db_file(url: str) -> Path:
    """The SQLite file of the database URL `url`; StoreError for databases that are not one."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError("RP_DB_URL is not a database URL: fix or unset it.") from e
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        where = parsed.render_as_string(hide_password=True)
        raise StoreError(
            f"Backups are made of the SQLite file the app keeps in its data folder; this app "
            f"uses {where} (RP_DB_URL). Back that database up with its own tools."
        )
    return Path(parsed.database).resolve()


def list_backups(folder: Path | None = None) -> list[Backup]:
    """The backups, newest first."""
    folder = folder or backup_dir()
    found: list[tuple[datetime, int, int, Backup]] = []
    for p in folder.glob("app-*") if folder.is_dir() else ():
        m = _NAME.match(p.name)
        if m:
            made = datetime.strptime(f"{m[1]} {m[2]}", "%Y-%m-%d %H%M%S")
            note = (m[3] or "").lstrip("-")
            # two made in one second are "...-120001.db" then "...-120001-2.db": the number
            # orders them (by name, "." sorts after "-"; file times may be equal)
            n = re.search(r"(?:^|-)(\d+)$", note)
            st = p.stat()
            found.append(
                (made, int(n[1]) if n else 1, st.st_mtime_ns, Backup(p, made, st.st_size, note))
            )
    return [b for *_, b in sorted(found, key=lambda f: f[:3], reverse=True)]


def _new_path(folder: Path, now: datetime, note: str = "") -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    base = f"app-{now:%Y-%m-%d-%H%M%S}" + (f"-{note}" if note else "")
    path, n = folder / f"{base}.db", 2
    while path.exists():  # two in one second
        path, n = folder / f"{base}-{n}.db", n + 1
    return path


def _vacuum_into(source: Path, dest: Path) -> None:
    """A copy of `source` at `dest`, whole or not at all: SQLite writes it under a temporary
    name (made 0600 before the first byte: a copy of the chats is as private as the database),
    renamed to `dest` once it is complete and on disk. A process killed meanwhile leaves only
    that temporary file, which no listing counts and a later backup removes."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{_PARTIAL}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        con = sqlite3.connect(source, timeout=15, isolation_level=None)
        try:
            con.execute("VACUUM INTO ?", (str(tmp),))  # into an empty file: allowed
        finally:
            con.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """The rename in `folder` on disk too (where the system allows a directory's fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _whole(path: Path) -> bool:
    """Whether `path` looks like a complete SQLite file, from its header alone (no need to read
    it all): the magic string, and the database size the header gives (valid when its change
    counter matches) equal to the file's. A copy cut short by a crash is not."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return False
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    return head[24:28] == head[92:96] and pages > 0 and pages * page_size == size


def _remove_stale(folder: Path) -> None:
    """The temporary files of backups that never finished (a process killed midway), once they
    are old enough that no backup still running can be writing them."""
    for p in folder.glob(f".app-*{_PARTIAL}") if folder.is_dir() else ():
        try:
            if time.time() - p.stat().st_mtime > STALE_S:
                p.unlink()
        except OSError:
            pass


def _pg_dump(url: str, dest: Path) -> None:
    """`pg_dump` of the PostgreSQL database `url` into `dest`, whole or not at all (a temporary
    name made 0600 first, renamed once pg_dump has finished)."""
    program = pg_dump_program()
    if program is None:
        raise StoreError(
            "This app keeps its data in PostgreSQL, and pg_dump is not installed on this "
            "machine (apt-get install postgresql-client): back the database up where it runs, "
            "with pg_dump."
        )
    where, env = _libpq(url)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{_PARTIAL}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        res = subprocess.run(
            [program, "--format=custom", f"--file={tmp}", where],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if res.returncode != 0:
            raise StoreError(f"pg_dump could not back up the database: {res.stderr.strip()}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def backup_now(url: str, now: datetime | None = None) -> Path:
    """Copy the database into data/backups/ now; keep the newest KEEP copies. PostgreSQL:
    with pg_dump, as `app-....dump`."""
    if is_postgres(url):
        dest = _new_path(backup_dir(), now or datetime.now()).with_suffix(".dump")
        _remove_stale(dest.parent)
        try:
            _pg_dump(url, dest)
        except OSError as e:
            raise StoreError(f"Could not write the backup {dest}: {e}. Is the disk full?") from e
        for old in list_backups()[KEEP:]:
            _remove(old.path)
        return dest
    source = db_file(url)
    dest = _new_path(backup_dir(), now or datetime.now())
    _remove_stale(dest.parent)
    try:
        _vacuum_into(source, dest)
    except sqlite3.Error as e:
        dest.unlink(missing_ok=True)
        raise StoreError(f"Could not back up the database {source}: {e}.") from e
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise StoreError(f"Could not write the backup {dest}: {e}. Is the disk full?") from e
    for old in list_backups()[KEEP:]:
        _remove(old.path)
    return dest


def daily_backup(url: str, now: datetime | None = None) -> Path | None:
    """A backup unless one was made today (or the database is not a SQLite file: PostgreSQL
    is backed up by its own tools, once for all the app servers on it). Never raises: it runs
    at every start, and a failed backup must not keep the app from starting."""
    if is_postgres(url):
        return None
    now = now or datetime.now()
    try:
        today = [b for b in list_backups() if b.made.date() == now.date()]
        if any(_whole(b.path) for b in today):
            return None
        for b in today:  # cut short by a crash (an older version wrote in place): worthless
            if not b.note:
                _remove(b.path)
        return backup_now(url, now)
    except (StoreError, OSError) as e:
        log.warning("daily backup skipped: %s", e)
        return None


def check_database(url: str) -> None:
    """SQLite's quick check of the whole file; StoreError naming the file when it is damaged.
    Nothing to check for a file not made yet, or a database that is not a SQLite file
    (PostgreSQL checks its own pages as it reads them, with data checksums, and pg_amcheck
    checks tables and indexes: `postgres_advice`)."""
    try:
        path = db_file(url)
    except StoreError:
        return
    if not path.exists():
        return
    try:
        con = sqlite3.connect(path, timeout=15)
        try:
            problems = [r[0] for r in con.execute("PRAGMA quick_check").fetchmany(3)]
        finally:
            con.close()
    except sqlite3.Error as e:
        problems = [str(e)]
    if problems != ["ok"]:
        raise StoreError(f"The database {path} is damaged: {'; '.join(problems)}.")


def check_backup(path: Path) -> None:
    """A backup this app can open: a readable SQLite file at a revision it knows, whose tables
    and columns are the ones this app's migrations make at that revision (a file stamped with a
    known revision by another program, or changed by hand, would break every page after it)."""
    if not path.is_file():
        raise StoreError(f"There is no backup {path.name}: choose another.")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            revision = con.execute("SELECT version_num FROM alembic_version").fetchone()
            found = sqlite_schema(con)
        finally:
            con.close()
    except sqlite3.Error as e:
        raise StoreError(f"The backup {path.name} cannot be read ({e}): choose another.") from e
    if ok != "ok":
        raise StoreError(f"The backup {path.name} is damaged ({ok}): choose another.")
    if revision is None or revision[0] not in known_revisions():
        raise StoreError(
            f"The backup {path.name} was made by another version of the app: choose another."
        )
    differences = schema_differences(found, revision_schema(revision[0]))
    if differences:
        raise StoreError(
            f"The backup {path.name} says it is at revision {revision[0]}, but its tables are "
            f"not that revision's ({'; '.join(differences[:5])}). It was not made by this app "
            "or was changed by hand: choose another."
        )


def restore(url: str, backup: Path, now: datetime | None = None) -> Path:
    """Put `backup` in place of the database (its Store closed); returns where the database it
    replaced was kept. A bad backup is refused, nothing touched. Not for PostgreSQL, which
    other app servers may be using: StoreError with pg_restore's command."""
    if is_postgres(url):
        raise StoreError(
            "This app keeps its data in PostgreSQL: stop every app server that uses it, then "
            f"restore with pg_restore: {postgres_advice(url)['restore']}"
        )
    target = db_file(url)
    check_backup(backup)
    keep = _new_path(backup_dir(), now or datetime.now(), "before-restore")
    tmp = target.with_name(target.name + ".restoring")
    try:
        if target.exists():
            try:
                _vacuum_into(target, keep)
            except sqlite3.Error:  # damaged: keep its bytes as they are, with its journal
                keep.unlink(missing_ok=True)
                for suffix in ("", *_COMPANIONS):
                    if Path(f"{target}{suffix}").exists():
                        shutil.copy2(f"{target}{suffix}", f"{keep}{suffix}")
        shutil.copyfile(backup, tmp)
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # the old journal must not be replayed into the restored file
        for suffix in _COMPANIONS:
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"Could not restore {backup.name} over {target}: {e}.") from e
    return keep


def _remove(path: Path) -> None:
    for suffix in ("", *_COMPANIONS):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
