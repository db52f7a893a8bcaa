"""Migrations in several threads of one process: the app opens its store on the model's loading
thread, while a test, the API or a restore may open another. Alembic runs a migration through
module-level proxies, so two at once ran each other's steps; core/store/database.py runs them
one at a time."""

from __future__ import annotations

import threading
from pathlib import Path

from core.store import open_store
from core.store.database import db_revision, known_revisions, make_engine, upgrade_db

ROUNDS = 8  # without the lock, 58 of 60 pairs failed: each round is a real chance to fail


def test_two_threads_migrating_two_new_databases_at_once(tmp_path: Path) -> None:
    head = known_revisions()[-1]
    errors: list[BaseException] = []

    def migrate(url: str, start: threading.Barrier) -> None:
        try:
            start.wait()
            upgrade_db(make_engine(url))
        except BaseException as e:  # collected: a thread's exception would be lost
            errors.append(e)

    for n in range(ROUNDS):
        urls = [f"sqlite:///{tmp_path / f'r{n}-{side}.db'}" for side in ("a", "b")]
        start = threading.Barrier(2)
        threads = [threading.Thread(target=migrate, args=(url, start)) for url in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, [str(e) for e in errors]
        for url in urls:
            assert db_revision(make_engine(url)) == head
            store = open_store(url)  # every table of the head revision is there and works
            try:
                ch = store.create_character({"name": f"R{n}"})
                assert store.create_conversation(ch.id).character_name == f"R{n}"
            finally:
                store.close()
