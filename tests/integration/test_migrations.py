"""Alembic migrations: an old database keeps every row; a newer or foreign one is refused. On
SQLite and on PostgreSQL (`empty_db_url`), with the same assertions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, make_url, text
from sqlmodel import SQLModel

from core.store import StoreError, db_revision, known_revisions, make_engine, open_store, upgrade_db


def test_there_are_several_revisions():
    revs = known_revisions()
    assert revs[0] == "0001" and len(revs) >= 2


def _execute(url: str, script: str) -> None:
    """SQL statements (separated by ";" at a line's end) in one transaction."""
    engine = make_engine(url)
    try:
        with engine.begin() as con:
            for statement in script.split(";\n"):
                if statement.strip():
                    con.execute(text(statement))
    finally:
        engine.dispose()


def _db_at_first_revision(url: str) -> None:
    engine = make_engine(url)
    upgrade_db(engine, "0001")
    assert db_revision(engine) == "0001"
    cols = {c["name"] for c in inspect(engine).get_columns("conversations")}
    assert "character_name" not in cols  # really the old schema
    engine.dispose()
    ts = "2024-05-01 10:00:00.000000"
    _execute(
        url,
        f"""
        INSERT INTO characters (id, name, description, personality, scenario, greetings,
            example_dialogue, user_name, avatar, stop_strings, sampling_preset, tags,
            creator_notes, creator, character_version, character_book, extensions, card_extra,
            card_top, created_at, updated_at)
        VALUES
          (1, 'Old Alice', 'persona', '', '', '["Hi {{{{user}}}}", "Yo"]', '', 'Bob', '',
           '["\\nBob:"]', '', '["t"]', '', '', '', '{{"entries": []}}', '{{"x": 1}}', '{{}}',
           '{{}}', '{ts}', '{ts}'),
          (2, '老王', '', '', '', '[]', '', '', '', '[]', '', '[]', '', '', '', NULL, '{{}}',
           '{{}}', '{{}}', '{ts}', '{ts}');
        INSERT INTO conversations (id, character_id, title, model, sampling, user_name,
            created_at, updated_at)
        VALUES (1, 1, 'first chat', 'm.pth', '{{"temperature": 1.0}}', 'Bob', '{ts}', '{ts}'),
               (2, 2, 'second chat', '', '{{}}', '', '{ts}', '2024-05-02 10:00:00.000000'),
               (3, NULL, 'orphan chat', '', '{{}}', '', '{ts}', '2024-04-01 10:00:00.000000');
        INSERT INTO messages (id, conversation_id, position, role, name, text, alternatives,
            chosen, alt_meta, tokens, meta, created_at, updated_at)
        VALUES (1, 1, 0, 'char', '', 'Hi Bob', '["Hi Bob", "Yo"]', 0, '[{{}}, {{}}]', NULL,
                '{{}}', '{ts}', '{ts}'),
               (2, 1, 1, 'user', '', 'hello', '["hello"]', 0, '[{{}}]', '[1, 2]',
                '{{"tokens": 2}}', '{ts}', '{ts}'),
               (3, 2, 0, 'user', '', '你好', '["你好"]', 0, '[{{}}]', NULL, '{{}}', '{ts}', '{ts}');
        INSERT INTO app_settings (key, value) VALUES ('theme', '"dark"'),
               ('imported_character_files', '{{"Mira.json": "x"}}');
        """,
    )
    if url.startswith("postgresql"):  # rows given their ids: the sequences go on after them
        _execute(
            url,
            "".join(
                f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}));\n"
                for t in ("characters", "conversations", "messages")
            ),
        )


def test_upgrade_keeps_every_row(empty_db_url: str):
    _db_at_first_revision(empty_db_url)

    store = open_store(empty_db_url)
    assert db_revision(store.engine) == known_revisions()[-1]

    alice = store.get_character(1)
    assert alice is not None and alice.name == "Old Alice"
    assert alice.greetings == ["Hi {{user}}", "Yo"] and alice.stop_strings == ["\nBob:"]
    assert alice.tags == ["t"] and alice.character_book == {"entries": []}
    assert alice.extensions == {"x": 1} and alice.user_name == "Bob"
    assert alice.created_at.year == 2024
    assert store.get_character_by_name("老王").id == 2

    convs = store.list_conversations()
    assert [c.id for c in convs] == [2, 1, 3]  # newest updated first
    first = store.get_conversation(1)
    assert first.title == "first chat" and first.sampling == {"temperature": 1.0}
    # the column added by 0002 was filled from the characters table
    assert first.character_name == "Old Alice"
    assert store.get_conversation(2).character_name == "老王"
    assert store.get_conversation(3).character_name == ""

    msgs = store.list_messages(1)
    assert [(m.position, m.role, m.text) for m in msgs] == [
        (0, "char", "Hi Bob"),
        (1, "user", "hello"),
    ]
    assert msgs[0].alternatives == ["Hi Bob", "Yo"] and msgs[1].tokens == [1, 2]
    assert msgs[1].meta == {"tokens": 2}
    assert store.list_messages(2)[0].text == "你好"
    assert store.get_setting("theme") == "dark"

    # and the upgraded database works as a new one does
    m = store.add_message(1, "char", "new")
    assert m.position == 2
    store.delete_character(1, chats="keep")
    assert store.get_conversation(1).character_name == "Old Alice"
    store.close()


def test_downgrade_and_upgrade_again(empty_db_url: str):
    store = open_store(empty_db_url)
    cid = store.create_character({"name": "Keep me"}).id
    store.create_conversation(cid)
    store.close()
    engine = make_engine(empty_db_url)
    upgrade_db(engine, "head")
    from alembic import command

    from core.store.database import alembic_config

    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert db_revision(engine) == "0001"
    engine.dispose()
    store = open_store(empty_db_url)
    assert store.list_conversations()[0].character_name == "Keep me"
    store.close()


def test_models_match_the_migrations(empty_db_url: str):
    engine = make_engine(empty_db_url)
    upgrade_db(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    engine.dispose()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprint(url: str) -> object:
    """What must not change when a database is refused: a SQLite file's bytes; a PostgreSQL
    database's tables, with their columns and rows."""
    if url.startswith("sqlite"):
        return _sha(Path(make_url(url).database or ""))
    engine = make_engine(url)
    try:
        with engine.connect() as con:
            tables = sorted(inspect(con).get_table_names())
            return {
                t: (
                    [c["name"] for c in inspect(con).get_columns(t)],
                    sorted(map(tuple, con.execute(text(f"SELECT * FROM {t}")).all()), key=repr),
                )
                for t in tables
            }
    finally:
        engine.dispose()


def test_database_of_a_newer_app_is_refused_untouched(empty_db_url: str):
    open_store(empty_db_url).close()
    _execute(
        empty_db_url,
        "UPDATE alembic_version SET version_num = '9999_from_the_future';\n"
        "CREATE TABLE future_things (id INTEGER)",
    )
    before = _fingerprint(empty_db_url)

    with pytest.raises(StoreError, match="newer version") as e:
        open_store(empty_db_url)
    assert "9999_from_the_future" in str(e.value)
    assert _fingerprint(empty_db_url) == before
    engine = make_engine(empty_db_url)
    with engine.connect() as con:
        assert con.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            "9999_from_the_future"
        )
    engine.dispose()


def test_foreign_database_is_refused_untouched(empty_db_url: str):
    _execute(
        empty_db_url,
        "CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT);\n"
        "INSERT INTO recipes (id, name) VALUES (1, 'soup')",
    )
    before = _fingerprint(empty_db_url)
    with pytest.raises(StoreError, match="not made by this app"):
        open_store(empty_db_url)
    assert _fingerprint(empty_db_url) == before


def test_a_file_that_is_not_a_database_is_refused(data_dir: Path):
    path = data_dir / "notes.db"
    path.write_bytes(b"just some text, not SQLite " * 100)
    before = _sha(path)
    with pytest.raises(StoreError, match="Cannot open"):
        open_store(f"sqlite:///{path}")
    assert _sha(path) == before
