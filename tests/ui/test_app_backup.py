"""A database that cannot be opened gets a page saying which file, what is wrong and what to do,
with the backups to restore; Settings backs up and restores (the app's store reopened on the
restored file); and the Threads setting reaches the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.store import default_url
from core.store.backup import backup_now, list_backups
from tests.support.crash import damage
from tests.support.ui import check, errors, follow, open_app, store

SETTINGS = "pages/settings.py"
CHARACTERS = "pages/characters.py"


def character_names(at) -> list[str]:
    """The characters the Characters page lists (its cards' bold names)."""
    follow(at, CHARACTERS).run()
    check(at)
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**")]


def choose(at, key: str, backup: Path) -> None:
    """Pick `backup` in a backup select box (its options are shown newest first)."""
    at.selectbox(key=key).select_index([b.path for b in list_backups()].index(backup))


def seed(name: str) -> Path:
    """A database with one character, and a backup of it."""
    s = store()
    s.create_character({"name": name})
    s.close()
    return backup_now(default_url())


@pytest.mark.parametrize("harm", ["garbage", "damaged pages"])
def test_a_database_that_cannot_be_opened_says_what_to_do_and_restores(
    app_env: Path, harm: str
) -> None:
    backup = seed("Kept")
    db = app_env / "app.db"
    if harm == "garbage":
        db.write_bytes(b"not a database at all " * 200)
    else:
        damage(db)  # the header is fine; a page in the middle is not
    harmed = db.read_bytes()

    at = open_app()  # no traceback: open_app fails on an exception
    assert at.title[0].value == "The database cannot be used"
    assert [c.value for c in at.code] == [str(db)]
    problem = " ".join(errors(at))
    assert "What is wrong:" in problem
    assert ("damaged" if harm == "damaged pages" else "not a database") in problem
    assert any("What to do: restore a backup" in m.value for m in at.markdown)
    assert db.read_bytes() == harmed  # nothing was changed by looking

    choose(at, "db_problem_backup", backup)
    at.button(key="db_problem_restore").click().run()
    check(at)
    assert any("Restored the backup" in s.value for s in at.success)
    kept = [b for b in list_backups() if b.note == "before-restore"]
    assert len(kept) == 1 and kept[0].path.read_bytes() == harmed  # the harmed file is kept
    assert "Kept" in character_names(at)


def test_back_up_now_and_restore_in_settings(app_env: Path) -> None:
    at = open_app(SETTINGS)
    assert len(list_backups()) == 1  # the daily backup, made when the app opened its store
    s = store()
    s.create_character({"name": "Before"})
    at.button(key="backup_now").click().run()
    check(at)
    made = list_backups()[0].path
    # said where it happened (a toast), and the new copy is the one selected to restore
    assert [x.value.replace("\\", "") for x in at.toast] == [f"Backup written: {made.name}"]
    assert at.selectbox(key="settings_backup").value == made.name
    s.create_character({"name": "After the backup"})
    s.close()
    assert {"After the backup", "Before"} <= set(character_names(at))

    follow(at, SETTINGS).run()
    choose(at, "settings_backup", made)
    at.button(key="settings_restore").click().run()
    check(at)
    assert any("Restored the backup" in x.value for x in at.success)
    names = character_names(at)  # the app's own store reads the restored file
    assert "Before" in names and "After the backup" not in names
    kept = [b.path for b in list_backups() if b.note == "before-restore"]
    assert len(kept) == 1
    follow(at, SETTINGS).run()
    check(at)
    assert any("kept before a restore" in o for o in at.selectbox(key="settings_backup").options)


def test_the_threads_setting_reaches_the_model(app_env: Path) -> None:
    import torch

    import pages.ui_common as ui
    from core.backends.model_thread import on_model_thread
    from core.backends.threads import default_threads, usable_cpus

    if usable_cpus() < 2:
        pytest.skip("one CPU: a single thread count")
    at = open_app(SETTINGS)
    at.button(key="load_model").click().run()
    check(at)
    engine = ui.loaded_engine()
    assert engine is not None
    auto = default_threads()
    assert engine.raw_backend.n_threads == auto == on_model_thread(torch.get_num_threads)

    n = 2 if auto == 1 else 1
    at.number_input(key="set_threads").set_value(n).run()
    check(at)
    assert store().get_setting("threads") == n
    assert on_model_thread(torch.get_num_threads) == n  # at once, on the loaded model
    assert any(f"computes with {n} threads" in c.value for c in at.caption)
    at.button(key="unload_model").click().run()
    at.button(key="load_model").click().run()
    check(at)
    assert ui.loaded_engine().raw_backend.n_threads == n  # and at the next load


def test_from_a_network_the_problem_page_restores_nothing(app_env: Path) -> None:
    from streamlit import config

    seed("Kept")
    (app_env / "app.db").write_bytes(b"not a database at all " * 200)
    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")  # reachable from other machines
    try:
        at = open_app()
    finally:
        config.set_option("server.address", old)
    assert at.title[0].value == "The database cannot be used"
    assert not [b for b in at.button if b.key == "db_problem_restore"]
    assert any("only when opened on the machine the app runs on" in i.value for i in at.info)


def test_settings_on_postgres_says_what_its_own_tools_do_and_backs_up_with_pg_dump(
    app_env: Path, postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With RP_DB_URL on PostgreSQL, Settings → Backups says that PostgreSQL's tools back up,
    restore and check it (with the commands for this database, its password left out), has no
    restore controls, and "Back up now" writes a pg_dump into the backups folder."""
    name, url = postgres.new_database()
    monkeypatch.setenv("RP_DB_URL", url.replace("postgres@", "postgres:pw@"))  # trust: unused
    try:
        at = open_app(SETTINGS)
        text = " ".join(c.value for c in at.caption)
        assert "PostgreSQL" in text and "pg_dump" in text and "pg_amcheck" in text
        code = "\n".join(c.value for c in at.code)
        assert "pg_dump --format=custom" in code and "pg_restore" in code and "pw" not in code
        assert not [s for s in at.selectbox if s.key == "settings_backup"]
        assert list_backups() == []  # no daily copy of a shared database
        at.button(key="backup_now").click().run()
        check(at)
        [made] = list_backups()
        assert made.path.suffix == ".dump" and made.size > 0
        assert [x.value.replace("\\", "") for x in at.toast] == [f"Backup written: {made.path}"]
    finally:
        from core import runtime

        runtime.reset()
        postgres.drop(name)
