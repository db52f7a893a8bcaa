"""The store: CRUD of characters, conversations, messages and settings; validation; avatars;
seeding of the bundled characters."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy.exc import IntegrityError

from core import chat
from core.config import BUNDLED_CHARACTERS_DIR
from core.errors import AppError
from core.prompt import CharacterContext
from core.roleplay import avatars
from core.store import MAX_TEXT, Store, StoreError, clean_name, open_store
from core.store.models import CharacterCreate, CharacterUpdate
from tests.support.db_fixtures import bomb_png, jpeg_picture, picture


def make(store: Store, name: str = "Alice", **fields: object) -> int:
    c = store.create_character(CharacterCreate(name=name, **fields))  # type: ignore[arg-type]
    assert c.id is not None
    return c.id


# --- the database file -------------------------------------------------------------------


def test_default_database_is_a_wal_sqlite_file_in_the_data_dir(sqlite_store: Store, data_dir: Path):
    db = data_dir / "app.db"
    assert db.is_file()
    assert str(sqlite_store.engine.url).endswith(str(db))
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_rp_db_url_and_argument_pick_the_database(tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("RP_DB_URL", url)
    s = open_store()
    make(s, "Bob")
    s.close()
    assert (tmp_path / "other.db").is_file()
    monkeypatch.delenv("RP_DB_URL")
    s2 = open_store(url)
    assert [c.name for c in s2.list_characters()] == ["Bob"]
    s2.close()


def test_in_memory_url_works():
    s = open_store("sqlite://")
    cid = make(s, "Mem")
    conv = s.create_conversation(cid)
    s.add_message(conv.id, "user", "hi")
    assert [m.text for m in s.list_messages(conv.id)] == ["hi"]


def test_foreign_keys_are_enforced(store: Store):
    with pytest.raises(StoreError):
        store.add_message(12345, "user", "orphan")
    cid = make(store, "Has chats")
    conv = store.create_conversation(cid)
    store.add_message(conv.id, "user", "hi")
    # nothing goes by cascade: deleting rows that others point to is refused (each statement
    # in a transaction of its own, on the store's own connections: SQLite's have foreign keys on)
    for sql in (
        f"DELETE FROM characters WHERE id = {cid}",
        f"DELETE FROM conversations WHERE id = {conv.id}",
        "INSERT INTO messages (conversation_id, position, role, name, text, alternatives,"
        " chosen, alt_meta, meta, created_at, updated_at) VALUES (999, 0, 'user', '', 'x',"
        " '[]', 0, '[]', '{}', '2024-01-01', '2024-01-01')",
    ):
        with pytest.raises(IntegrityError):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(sql)


# --- characters --------------------------------------------------------------------------


def test_character_crud(store: Store):
    cid = make(
        store,
        "Alice",
        description="A <i>test</i> persona",
        greetings=["Hi {{user}}", "Yo"],
        tags=["a", "b", "a", ""],
        stop_strings=["\nBob:", ""],
        character_book={"entries": [{"keys": ["k"], "content": "c"}]},
        extensions={"x": {"y": 1}},
    )
    c = store.get_character(cid)
    assert c is not None and c.name == "Alice"
    assert c.description == "A <i>test</i> persona"  # HTML is stored verbatim, as text
    assert c.greetings == ["Hi {{user}}", "Yo"]
    assert c.tags == ["a", "b"]
    assert c.stop_strings == ["\nBob:"]
    assert c.character_book == {"entries": [{"keys": ["k"], "content": "c"}]}
    assert c.created_at.tzinfo is not None
    assert store.get_character_by_name("Alice").id == cid
    assert store.get_character(999) is None

    updated = store.update_character(cid, CharacterUpdate(scenario="On a ship", greetings=["New"]))
    assert updated.scenario == "On a ship" and updated.greetings == ["New"]
    assert updated.description == "A <i>test</i> persona"  # unset fields are kept
    assert updated.updated_at >= c.updated_at
    again = store.get_character(cid)
    assert again.scenario == "On a ship" and again.extensions == {"x": {"y": 1}}

    make(store, "bob")
    make(store, "Carol", tags=["pirate"])
    assert [c.name for c in store.list_characters()] == ["Alice", "bob", "Carol"]
    assert [c.name for c in store.list_characters("CAR")] == ["Carol"]
    assert [c.name for c in store.list_characters("pirate")] == ["Carol"]
    assert store.list_characters("%") == []  # LIKE wildcards are plain characters

    store.delete_character(cid, chats="delete")
    assert store.get_character(cid) is None


def test_objects_are_usable_after_the_session_closed(store: Store):
    cid = make(store, "Alice", greetings=["Hello"])
    conv = store.create_conversation(cid)
    objects = [store.list_characters()[0], store.get_conversation(conv.id)]
    objects += store.list_messages(conv.id)
    store.engine.dispose()
    assert objects[0].greetings == ["Hello"]
    assert objects[1].title and objects[1].character_name == "Alice"
    assert objects[2].text == "Hello"


def test_duplicate_names_are_refused_on_create_and_update(store: Store):
    make(store, "Alice")
    with pytest.raises(StoreError, match="already exists"):
        make(store, "Alice")
    with pytest.raises(StoreError, match="already exists"):
        make(store, "  Alice ")  # the same name once cleaned
    bob = make(store, "Bob")
    with pytest.raises(StoreError, match="already exists"):
        store.update_character(bob, CharacterUpdate(name="Alice"))
    assert store.get_character(bob).name == "Bob"
    c = store.create_character({"name": "Alice"}, unique=True)
    assert c.name == "Alice (2)"
    assert store.create_character({"name": "Alice (2)"}, unique=True).name == "Alice (3)"


def test_unsafe_names_are_cleaned():
    assert clean_name("../../etc/passwd") == "-..-etc-passwd"
    assert clean_name("..") == ""
    assert clean_name("a\\b/c") == "a-b-c"
    assert clean_name("Bad\x00Na\nme\x1b[31m\u202e") == "Bad Na me [31m"
    assert clean_name("  .hidden  name ") == "hidden name"
    assert clean_name("小雪") == "小雪"


def test_unsafe_names_are_stored_cleaned_or_refused(store: Store):
    c = store.create_character(CharacterCreate(name="../evil\x00/name\n"))
    assert c.name == "-evil -name"
    for bad in ["", "   ", "..", "\x00\x01", " . . "]:
        with pytest.raises(StoreError, match="name"):
            store.create_character(CharacterCreate(name=bad))
    with pytest.raises(StoreError, match="limit"):
        store.create_character(CharacterCreate(name="x" * 500))


def test_too_long_fields_are_refused_with_a_clear_message(store: Store):
    with pytest.raises(StoreError) as e:
        make(store, "Big", description="x" * 1_000_000)
    assert "description" in str(e.value) and "1,000,000" in str(e.value)
    assert isinstance(e.value, AppError)
    make(store, "Max", description="y" * MAX_TEXT)  # the limit itself is fine
    with pytest.raises(StoreError, match="Greeting 2"):
        make(store, "G", greetings=["ok", "z" * (MAX_TEXT + 1)])
    with pytest.raises(StoreError, match="lorebook"):
        store.create_character({"name": "L", "character_book": ["not", "a", "dict"]})
    with pytest.raises(StoreError, match="no field"):
        store.create_character({"name": "F", "favourite_colour": "red"})
    assert [c.name for c in store.list_characters()] == ["Max"]


def test_control_characters_are_removed_from_text_but_newlines_kept(store: Store):
    cid = make(store, "C", description="a\x00b\tc\r\nd\x07")
    assert store.get_character(cid).description == "ab\tc\r\nd"


def test_duplicate_character(store: Store):
    rel = avatars.save_avatar(picture())
    cid = make(store, "Alice", avatar=rel, greetings=["Hi"], tags=["t"])
    conv = store.create_conversation(cid)
    copy = store.duplicate_character(cid)
    assert copy.id != cid and copy.name == "Alice (2)"
    assert copy.greetings == ["Hi"] and copy.tags == ["t"] and copy.avatar == rel
    assert store.list_conversations(copy.id) == []
    assert store.duplicate_character(cid).name == "Alice (3)"
    # the avatar file is shared: deleting one character keeps it for the others
    store.delete_character(cid, chats="delete")
    assert avatars.avatar_path(rel) is not None
    assert store.get_conversation(conv.id) is None


def test_delete_character_keep_or_delete_chats(store: Store):
    a = make(store, "Alice", greetings=["Hi"])
    b = make(store, "Bob")
    conv_a = store.create_conversation(a)
    store.add_message(conv_a.id, "user", "hello")
    conv_b = store.create_conversation(b)
    store.add_message(conv_b.id, "user", "hey")

    with pytest.raises(StoreError, match="delete.*keep"):
        store.delete_character(a, chats="whatever")
    with pytest.raises(TypeError):
        store.delete_character(a)  # type: ignore[call-arg]  # no default: the UI must ask
    assert store.get_character(a) is not None

    store.delete_character(a, chats="keep")
    kept = store.get_conversation(conv_a.id)
    assert kept is not None and kept.character_id is None and kept.character_name == "Alice"
    assert [m.text for m in store.list_messages(conv_a.id)] == ["Hi", "hello"]
    assert chat.conversation_context(store, conv_a.id).name == "Alice"

    store.delete_character(b, chats="delete")
    assert store.get_conversation(conv_b.id) is None
    assert store.list_messages(conv_b.id) == []
    with pytest.raises(StoreError, match="no character"):
        store.delete_character(b, chats="delete")


def test_renaming_a_character_renames_its_chats(store: Store):
    cid = make(store, "Alice")
    conv = store.create_conversation(cid)
    store.update_character(cid, {"name": "Alicia"})
    assert store.get_conversation(conv.id).character_name == "Alicia"


def test_character_context(store: Store):
    cid = make(
        store,
        "Alice",
        description="desc",
        personality="pers",
        scenario="scen",
        example_dialogue="{{user}}: a\n{{char}}: b",
        stop_strings=["END"],
        user_name="Bob",
    )
    c = store.get_character(cid)
    ctx = chat.character_context(store, c)
    assert isinstance(ctx, CharacterContext)
    assert (ctx.name, ctx.user_name, ctx.persona, ctx.personality, ctx.scenario) == (
        "Alice",
        "Bob",
        "desc",
        "pers",
        "scen",
    )
    assert ctx.example_dialogue.startswith("{{user}}") and ctx.stop_strings == ["END"]
    assert chat.character_context(store, c, user_name="Zed").user_name == "Zed"
    store.update_character(cid, {"user_name": ""})
    store.set_setting("user_name", "Default Person")
    store.set_setting("user_persona", "I am a sailor.")
    ctx = chat.character_context(store, store.get_character(cid))
    assert ctx.user_name == "Default Person" and ctx.user_persona == "I am a sailor."


# --- avatars -----------------------------------------------------------------------------


def test_save_avatar_reencodes_and_strips_metadata(data_dir: Path):
    rel = avatars.save_avatar(picture((3000, 1500)))
    path = avatars.avatar_path(rel)
    assert path is not None and path.parent == data_dir / "avatars"
    assert rel.startswith("avatars/") and rel.endswith(".png")
    im = Image.open(path)
    assert im.format == "PNG" and max(im.size) == 1024 and im.size == (1024, 512)
    assert "parameters" not in im.info  # the upload's text chunk is gone
    again = avatars.save_avatar(picture((3000, 1500)))  # each save is a file of its own
    assert again != rel and avatars.avatar_path(again).read_bytes() == path.read_bytes()
    avatars.remove_avatar_file(again)
    assert avatars.avatar_path(again) is None and avatars.avatar_path(rel) is not None
    rel_jpeg = avatars.save_avatar(jpeg_picture())
    assert Image.open(avatars.avatar_path(rel_jpeg)).format == "PNG"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a picture"),
        (b"<svg width='1' height='1'></svg>", "not a picture"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "picture|broken"),
    ],
)
def test_save_avatar_refuses_non_images(data: bytes, message: str, data_dir: Path):
    with pytest.raises(avatars.AvatarError, match=message):
        avatars.save_avatar(data)
    assert not any((data_dir / "avatars").glob("*")) if (data_dir / "avatars").exists() else True


def test_save_avatar_refuses_truncated_image(data_dir: Path):
    good = picture((200, 200))
    with pytest.raises(avatars.AvatarError):
        avatars.save_avatar(good[: len(good) // 2])


def test_save_avatar_refuses_huge_files_before_decoding(monkeypatch):
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1))
    with pytest.raises(avatars.AvatarError, match="MB"):
        avatars.save_avatar(b"\x89PNG" + b"\x00" * (50 * 1024 * 1024))
    assert opened == []


def test_save_avatar_refuses_decompression_bombs(data_dir: Path):
    for w, h in [(10_000, 10_000), (60_000, 60_000)]:  # 100 M and 3.6 G pixels
        data = bomb_png(w, h)
        assert len(data) < 1_000_000
        with pytest.raises(avatars.AvatarError, match="pixels"):
            avatars.save_avatar(data)
    assert not (data_dir / "avatars").exists() or not any((data_dir / "avatars").iterdir())


def test_avatar_path_never_leaves_the_avatars_dir(data_dir: Path, tmp_path: Path):
    rel = avatars.save_avatar(picture())
    assert avatars.avatar_path(rel) is not None
    (data_dir / "secret.txt").write_text("x")
    outside = tmp_path / "outside.png"
    outside.write_bytes(picture())
    os.symlink(outside, data_dir / "avatars" / "link.png")
    for bad in [
        "",
        None,
        "secret.txt",
        "avatars/../secret.txt",
        "../secret.txt",
        "/etc/passwd",
        str(data_dir / rel),
        "avatars/link.png",
        "avatars\\..\\secret.txt",
        "avatars/sub/x.png",
        "avatars/missing.png",
        "avatars/x\x00.png",
    ]:
        assert avatars.avatar_path(bad) is None, bad


def test_character_avatar_must_be_a_stored_avatar(store: Store, data_dir: Path):
    (data_dir / "avatars").mkdir(exist_ok=True)
    for bad in ["/etc/passwd", "../x.png", "avatars/nope.png"]:
        with pytest.raises(StoreError, match="avatar"):
            make(store, "A", avatar=bad)


def test_replacing_and_deleting_avatars_removes_unused_files(store: Store):
    first = avatars.save_avatar(picture(color=(1, 1, 1)))
    second = avatars.save_avatar(picture(color=(2, 2, 2)))
    cid = make(store, "A", avatar=first)
    store.update_character(cid, CharacterUpdate(avatar=second))
    assert avatars.avatar_path(first) is None and avatars.avatar_path(second) is not None
    store.delete_character(cid, chats="delete")
    assert avatars.avatar_path(second) is None


# --- conversations and messages ------------------------------------------------------------


def test_create_conversation_adds_the_greeting(store: Store):
    cid = make(store, "Alice", greetings=["Hi {{user}}, I'm {{char}}.", "", "<USER>! It's <BOT>."])
    conv = store.create_conversation(cid, model="m.gguf", sampling={"temperature": 1.1})
    assert conv.character_id == cid and conv.character_name == "Alice"
    assert conv.user_name == "User" and conv.model == "m.gguf"
    assert conv.sampling == {"temperature": 1.1} and "Alice" in conv.title
    (greeting,) = store.list_messages(conv.id)
    assert (greeting.position, greeting.role) == (0, "char")
    assert greeting.text == "Hi User, I'm Alice."
    assert greeting.alternatives == ["Hi User, I'm Alice.", "User! It's Alice."]
    assert greeting.chosen == 0

    conv2 = store.create_conversation(cid, title="Named", user_name="Bob")
    assert conv2.title == "Named" and conv2.user_name == "Bob"
    assert store.list_messages(conv2.id)[0].text == "Hi Bob, I'm Alice."

    silent = make(store, "Silent")
    assert store.list_messages(store.create_conversation(silent).id) == []
    with pytest.raises(StoreError):
        store.create_conversation(9999)


def test_list_rename_update_delete_conversations(store: Store):
    a, b = make(store, "A"), make(store, "B")
    c1 = store.create_conversation(a, title="one")
    c2 = store.create_conversation(b, title="two")
    c3 = store.create_conversation(a, title="three")
    assert [c.id for c in store.list_conversations()] == [c3.id, c2.id, c1.id]
    store.add_message(c1.id, "user", "bump")  # updating a chat moves it to the top
    assert [c.id for c in store.list_conversations()] == [c1.id, c3.id, c2.id]
    assert [c.id for c in store.list_conversations(a)] == [c1.id, c3.id]
    assert len(store.list_conversations(limit=2)) == 2

    assert store.rename_conversation(c2.id, "  renamed \n").title == "renamed"
    with pytest.raises(StoreError, match="empty"):
        store.rename_conversation(c2.id, "   ")
    updated = store.update_conversation(c2.id, sampling={"top_p": 0.5}, model="x.pth")
    assert (updated.sampling, updated.model) == ({"top_p": 0.5}, "x.pth")
    assert store.get_conversation(c2.id).sampling == {"top_p": 0.5}
    with pytest.raises(StoreError, match="no field"):
        store.update_conversation(c2.id, character_id=5)
    with pytest.raises(StoreError):
        store.update_conversation(c2.id, sampling={"bad": object()})

    store.add_message(c2.id, "user", "x")
    store.delete_conversation(c2.id)
    assert store.get_conversation(c2.id) is None and store.list_messages(c2.id) == []
    assert store.get_character(b) is not None


def test_messages_add_edit_alternatives_delete_rewind(store: Store):
    cid = make(store, "A")
    conv = store.create_conversation(cid)
    texts = ["one", "two", "three", "four", "five"]
    msgs = [
        store.add_message(conv.id, "user" if i % 2 == 0 else "char", t, meta={"n": i})
        for i, t in enumerate(texts)
    ]
    assert [m.position for m in msgs] == [0, 1, 2, 3, 4]
    assert msgs[1].meta == {"n": 1} and msgs[1].alternatives == ["two"]
    narrator = store.add_message(conv.id, "narrator", "<script>x</script>", name="Storm")
    assert (narrator.position, narrator.name) == (5, "Storm")
    with pytest.raises(StoreError, match="role"):
        store.add_message(conv.id, "system", "x")
    with pytest.raises(StoreError, match="limit"):
        store.add_message(conv.id, "user", "x" * 200_001)

    m = store.edit_message(msgs[1].id, "TWO")
    assert m.text == "TWO" and m.alternatives == ["TWO"]
    m = store.add_alternative(msgs[1].id, "deux", meta={"tok_s": 9.5})
    assert (m.text, m.chosen, m.alternatives, m.meta) == (
        "deux",
        1,
        ["TWO", "deux"],
        {"tok_s": 9.5},
    )
    m = store.add_alternative(msgs[1].id, "zwei", select=False)
    assert (m.text, m.chosen, m.alternatives) == ("deux", 1, ["TWO", "deux", "zwei"])
    m = store.select_alternative(msgs[1].id, 0)
    assert (m.text, m.chosen) == ("TWO", 0)
    m = store.select_alternative(msgs[1].id, 1)
    assert m.meta == {"tok_s": 9.5}
    m = store.edit_message(msgs[1].id, "deux!")
    assert m.alternatives == ["TWO", "deux!", "zwei"] and m.chosen == 1
    for bad in (3, -1):
        with pytest.raises(StoreError, match="does not exist"):
            store.select_alternative(msgs[1].id, bad)
    stored = store.get_message(msgs[1].id)
    assert (stored.text, stored.alternatives, stored.chosen) == (
        "deux!",
        ["TWO", "deux!", "zwei"],
        1,
    )

    store.delete_message(msgs[2].id)
    left = store.list_messages(conv.id)
    assert [m.text for m in left] == ["one", "deux!", "four", "five", "<script>x</script>"]
    assert [m.position for m in left] == [0, 1, 2, 3, 4]
    assert store.add_message(conv.id, "user", "six").position == 5

    assert store.rewind(conv.id, 2).messages == 4
    assert [m.text for m in store.list_messages(conv.id)] == ["one", "deux!"]
    assert store.add_message(conv.id, "char", "again").position == 2
    assert [(m.role, m.text) for m in chat.prompt_messages(store, conv.id)][-1] == ("char", "again")
    with pytest.raises(StoreError, match="no message"):
        store.edit_message(99999, "x")


def test_settings(store: Store):
    assert store.get_setting("missing") is None
    assert store.get_setting("missing", {"d": 1}) == {"d": 1}
    store.set_setting("theme", "dark")
    store.set_setting("sampling", {"temperature": 0.8, "stops": ["a", "b"], "n": None})
    store.set_setting("theme", "light")
    assert store.get_setting("theme") == "light"
    assert store.get_setting("sampling") == {"temperature": 0.8, "stops": ["a", "b"], "n": None}
    with pytest.raises(StoreError):
        store.set_setting("bad", {1, 2})
    with pytest.raises(StoreError):
        store.set_setting("nan", float("nan"))


def test_errors_are_app_errors():
    assert issubclass(StoreError, AppError) and issubclass(avatars.AvatarError, AppError)


# --- bundled characters ---------------------------------------------------------------------


def test_bundled_characters_exist_in_the_old_format():
    files = sorted(BUNDLED_CHARACTERS_DIR.glob("*.json"))
    assert len(files) >= 3
    names = []
    for f in files:
        obj = json.loads(f.read_text(encoding="utf-8"))
        assert set(obj) == {"user", "bot", "greeting", "bot_persona", "example_message", "use_qa"}
        assert obj["bot"] == f.stem and obj["greeting"] and obj["bot_persona"]
        png = f.with_suffix(".png")
        assert png.is_file() and png.stat().st_size < 30_000
        Image.open(io.BytesIO(png.read_bytes())).verify()
        names.append(obj["bot"])
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in n) for n in names)  # a Chinese one
    assert any(n.isascii() for n in names)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_clean_name_never_leaves_a_path_or_control_character(name: str):
    cleaned = clean_name(name)
    assert "/" not in cleaned and "\\" not in cleaned
    assert not cleaned.startswith((".", " ")) and cleaned == cleaned.strip()
    assert all(ord(ch) >= 32 and not 0x7F <= ord(ch) <= 0x9F for ch in cleaned)
    assert clean_name(cleaned) == cleaned


# --- PostgreSQL's counterparts of SQLite's settings ------------------------------------------


def test_on_postgres_a_writer_waits_for_the_write_lock_then_says_the_database_is_busy(
    postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's BEGIN IMMEDIATE and busy timeout, on PostgreSQL: a write transaction takes the
    store's advisory lock first, waits for another holder up to the lock timeout, and then
    fails with the same StoreUnavailable ("busy") as SQLite; reads never wait for it."""
    import psycopg

    import core.store.database as database
    from core.errors import StoreUnavailable

    monkeypatch.setattr(database, "LOCK_TIMEOUT_S", 1)
    name, url = postgres.new_database()
    store = open_store(url)
    try:
        u = store.engine.url
        with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s)", (database.WRITE_LOCK,))
            with pytest.raises(StoreUnavailable, match="busy"):
                store.set_setting("theme", "dark")
            assert store.get_setting("theme") is None  # a read goes on meanwhile
        store.set_setting("theme", "dark")  # the other transaction ended: the lock is free
        assert store.get_setting("theme") == "dark"
        with store.engine.connect() as con:
            assert con.exec_driver_sql("SHOW timezone").scalar() == "UTC"
    finally:
        store.close()
        postgres.drop(name)
