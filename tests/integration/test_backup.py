"""Backups of the real SQLite file: made once a day, the newest seven kept, a damaged database
found at start, and restore, which keeps the database it replaces (also a damaged one)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.errors import StoreError
from core.store import default_url, open_store
from core.store.backup import (
    KEEP,
    backup_dir,
    backup_now,
    check_database,
    daily_backup,
    db_file,
    list_backups,
    restore,
)
from tests.support.crash import damage, kill_when_held

DAY = datetime(2026, 12, 2, 9, 30, 0)


@pytest.fixture
def db(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's database file with one character and a chat in it (store closed)."""
    monkeypatch.delenv("RP_DB_URL", raising=False)
    store = open_store()
    conv = store.create_conversation(store.create_character({"name": "Kept"}).id)
    store.add_message(conv.id, "user", "a line worth keeping")
    store.close()
    return db_file(default_url())


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def names(path: Path) -> list[str]:
    store = open_store(url(path))
    try:
        return [c.name for c in store.list_characters()]
    finally:
        store.close()


def test_a_backup_is_a_full_copy_and_the_daily_one_is_made_once_a_day(db: Path) -> None:
    first = daily_backup(url(db), DAY)
    assert first is not None and first.parent == backup_dir()
    assert names(first) == ["Kept"]
    assert first.stat().st_mode & 0o077 == 0  # as private as the chats in it
    assert daily_backup(url(db), DAY + timedelta(hours=10)) is None  # same day: no second copy
    second = daily_backup(url(db), DAY + timedelta(days=1))
    assert second is not None and [b.path for b in list_backups()] == [second, first]


def test_only_the_newest_seven_are_kept(db: Path) -> None:
    made = [backup_now(url(db), DAY + timedelta(days=i)) for i in range(KEEP + 3)]
    assert [b.path for b in list_backups()] == made[::-1][:KEEP]
    assert not any(p.exists() for p in made[:3])


def test_restore_brings_the_backup_back_and_keeps_the_replaced_database(db: Path) -> None:
    backup = backup_now(url(db), DAY)
    store = open_store()
    store.create_character({"name": "Added after the backup"})
    store.close()

    kept = restore(url(db), backup, DAY + timedelta(hours=1))
    assert names(db) == ["Kept"]
    assert names(kept) == ["Added after the backup", "Kept"]  # nothing lost
    assert kept in [b.path for b in list_backups()]
    assert next(b for b in list_backups() if b.path == kept).note == "before-restore"
    store = open_store()  # and the app's store opens on it, messages and all
    conv = store.list_conversations()[0]
    assert [m.text for m in store.list_messages(conv.id)] == ["a line worth keeping"]
    store.close()


def test_a_damaged_database_is_found_and_can_be_restored_over(db: Path) -> None:
    backup = backup_now(url(db), DAY)
    damage(db)
    with pytest.raises(StoreError, match=rf"{db}.*damaged"):
        check_database(url(db))
    damaged = db.read_bytes()

    kept = restore(url(db), backup, DAY + timedelta(hours=1))
    assert kept.read_bytes() == damaged  # kept byte for byte: SQLite could not copy it
    check_database(url(db))
    assert names(db) == ["Kept"]


def test_a_file_that_is_no_database_is_kept_too(db: Path) -> None:
    backup = backup_now(url(db), DAY)
    db.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError, match="not a database"):
        check_database(url(db))
    kept = restore(url(db), backup)
    assert kept.read_bytes().startswith(b"this is not a database")
    assert names(db) == ["Kept"]


@pytest.mark.parametrize("bad", ["garbage", "damaged", "newer", "missing"])
def test_a_bad_backup_is_refused_and_nothing_is_touched(db: Path, bad: str) -> None:
    path = backup_dir() / "app-2026-12-01-120000.db"
    backup_dir().mkdir(exist_ok=True)
    if bad == "garbage":
        path.write_bytes(b"\0" * 5000)
    elif bad in ("damaged", "newer"):
        path.write_bytes(backup_now(url(db), DAY).read_bytes())
        if bad == "damaged":
            damage(path)
        else:
            con = sqlite3.connect(path)
            con.execute("UPDATE alembic_version SET version_num = 'from_the_future'")
            con.commit()
            con.close()
    before = db.read_bytes()
    n_backups = len(list_backups())
    with pytest.raises(StoreError, match=r"backup .*(choose another)"):
        restore(url(db), path)
    assert db.read_bytes() == before
    assert len(list_backups()) == n_backups  # no copy of the current one either


@pytest.mark.parametrize("bad", ["sqlite://", "postgresql://u:secret@host/db", "not a url"])
def test_backups_need_the_sqlite_file(bad: str) -> None:
    with pytest.raises(StoreError, match="RP_DB_URL") as e:
        db_file(bad)
    assert "secret" not in str(e.value)


def test_two_backups_in_one_second_list_the_later_one_first(db: Path) -> None:
    first = backup_now(url(db), DAY)
    second = backup_now(url(db), DAY)  # "Back up now" in the second the app made its daily one
    third = backup_now(url(db), DAY)
    assert (second.name, third.name) == (first.name[:-3] + "-2.db", first.name[:-3] + "-3.db")
    for f in (first, second, third):  # file times can be equal: the names must decide
        os.utime(f, ns=(0, 0))
    assert [b.path for b in list_backups()] == [third, second, first]


# A backup killed with SIGKILL in the middle of SQLite's VACUUM INTO: a progress handler on the
# backup's connection holds it once a file has appeared in the backups folder (VACUUM INTO
# creates its target at the start and fills it at the end), and says so; then it is killed.
_KILLED_BACKUP = r"""
import sqlite3, sys, threading
from datetime import datetime
from pathlib import Path
from core.store.backup import daily_backup

url, folder, day = sys.argv[1], Path(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
real = sqlite3.connect

def connect(*args, **kwargs):
    con = real(*args, **kwargs)
    def hold():
        if any(p.is_file() for p in folder.glob("*")):
            print("holding", flush=True)
            threading.Event().wait()
        return 0
    con.set_progress_handler(hold, 50)
    return con

sqlite3.connect = connect
daily_backup(url, day)
print("finished", flush=True)
"""


def _kill_mid_backup(db: Path, day: datetime) -> None:
    args = [url(db), str(backup_dir()), day.isoformat()]
    kill_when_held(_KILLED_BACKUP, args, dict(os.environ))


def test_a_backup_killed_midway_leaves_no_backup_and_nothing_readable(db: Path) -> None:
    _kill_mid_backup(db, DAY)
    left = [p for p in backup_dir().iterdir() if p.is_file()]
    assert left, "the kill left nothing to look at: the test did not hold the backup"
    for p in left:  # private from its first byte: it holds the chats
        assert p.stat().st_mode & 0o077 == 0, f"{p.name} is {oct(p.stat().st_mode)}"
    assert list_backups() == []  # a torn copy is not a backup, to list or to restore
    made = daily_backup(url(db), DAY + timedelta(hours=1))  # nor that day's backup
    assert made is not None and names(made) == ["Kept"]
    assert [b.path for b in list_backups()] == [made]


def test_a_torn_copy_from_before_is_not_that_days_backup(db: Path) -> None:
    whole = backup_now(url(db), DAY)
    torn = whole.with_name("app-2026-12-02-080000.db")  # as an older version left it
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    made = daily_backup(url(db), DAY + timedelta(hours=1))
    assert made is not None and names(made) == ["Kept"]
    assert [b.path for b in list_backups()] == [made]  # the torn one is gone


def test_a_temporary_file_left_by_a_killed_backup_is_removed_later(db: Path) -> None:
    _kill_mid_backup(db, DAY)
    left = [p for p in backup_dir().iterdir() if p.is_file()]
    hours_ago = (DAY - timedelta(hours=2)).timestamp()
    for p in left:
        os.utime(p, (hours_ago, hours_ago))
    backup_now(url(db), DAY + timedelta(days=1))
    assert not any(p.exists() for p in left)
    assert [p.name for p in backup_dir().iterdir()] == [list_backups()[0].path.name]


def _other_schema(path: Path, change: str) -> None:
    """A copy of the app's database whose tables are not what its Alembic stamp says."""
    con = sqlite3.connect(path)
    if change == "a column missing":  # stamped with this version's revision, made by another
        con.execute("ALTER TABLE characters DROP COLUMN personality")
    elif change == "a table missing":
        con.execute("DROP TABLE lorebooks")
    elif change == "a table of another app":
        con.execute("CREATE TABLE plugins (id INTEGER PRIMARY KEY, blob TEXT)")
    elif change == "an older stamp on newer tables":  # 0002's stamp: 0003 would run again
        con.execute("UPDATE alembic_version SET version_num = '0002'")
    con.commit()
    con.close()


@pytest.mark.parametrize(
    "change",
    [
        "a column missing",
        "a table missing",
        "a table of another app",
        "an older stamp on newer tables",
    ],
)
def test_a_backup_of_another_schema_is_refused_and_nothing_is_touched(
    db: Path, change: str
) -> None:
    path = backup_dir() / "app-2026-12-01-120000.db"
    backup_dir().mkdir(exist_ok=True)
    path.write_bytes(backup_now(url(db), DAY).read_bytes())
    _other_schema(path, change)
    before = db.read_bytes()
    n_backups = len(list_backups())
    with pytest.raises(StoreError, match=r"backup .*(choose another)") as e:
        restore(url(db), path)
    assert "tables" in str(e.value)  # says what differs
    assert db.read_bytes() == before
    assert len(list_backups()) == n_backups
    assert names(db) == ["Kept"]  # and the app's database still opens


@pytest.mark.parametrize("upgraded", [False, True])
def test_a_backup_at_an_older_revision_or_upgraded_from_one_is_restored(
    db: Path, upgraded: bool
) -> None:
    from core.store import make_engine, upgrade_db

    old = backup_dir() / "app-2026-12-01-120000.db"
    backup_dir().mkdir(exist_ok=True)
    engine = make_engine(url(old))
    upgrade_db(engine, "0001")  # what the first version of the app made
    engine.dispose()
    if upgraded:  # then opened by this version: its columns added by migrations, in their order
        open_store(url(old)).close()
    restore(url(db), old)
    assert names(db) == []  # opened (and upgraded) by this version


# --- PostgreSQL: its own tools ---------------------------------------------------------------


@pytest.fixture
def pg_db(postgres, monkeypatch: pytest.MonkeyPatch):
    """A PostgreSQL database (RP_DB_URL) with one character and a chat in it (store closed)."""
    name, url = postgres.new_database()
    monkeypatch.setenv("RP_DB_URL", url)
    store = open_store()
    conv = store.create_conversation(store.create_character({"name": "Kept"}).id)
    store.add_message(conv.id, "user", "a line worth keeping")
    store.close()
    yield url
    postgres.drop(name)


def test_postgres_is_backed_up_by_pg_dump_and_pg_restore_brings_it_back(
    pg_db: str, postgres
) -> None:
    """ "Back up now" on PostgreSQL is a pg_dump (custom format) in data/backups, listed like the
    SQLite copies; pg_restore puts every row back into an empty database. No daily copy (each
    app server on the database would make one), and no restore by the app: it says how."""
    assert daily_backup(pg_db, DAY) is None
    made = backup_now(pg_db, DAY)
    assert made.name == "app-2026-12-02-093000.dump" and made.parent == backup_dir()
    assert oct(made.stat().st_mode & 0o777) == "0o600"
    assert [b.path for b in list_backups()] == [made]
    with pytest.raises(StoreError, match="pg_restore"):
        restore(pg_db, made)
    check_database(pg_db)  # nothing to check here: PostgreSQL checks its own pages

    name, url = postgres.empty_database()
    target = url.replace("postgresql+psycopg", "postgresql")
    res = subprocess.run(
        ["pg_restore", "--no-owner", f"--dbname={target}", str(made)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    store = open_store(url)
    [kept] = store.list_characters()
    assert kept.name == "Kept"
    [conv] = store.list_conversations(kept.id)
    assert [m.text for m in store.list_messages(conv.id)] == ["a line worth keeping"]
    store.close()
    postgres.drop(name)


def test_postgres_advice_names_the_database_without_its_password() -> None:
    from core.store.backup import postgres_advice

    advice = postgres_advice("postgresql+psycopg://rp:s3cret@db.example:5432/rp")
    assert advice["url"] == "postgresql://rp@db.example:5432/rp"
    assert all("s3cret" not in v for v in advice.values())
    assert advice["backup"].startswith("pg_dump ") and "pg_restore " in advice["restore"]
