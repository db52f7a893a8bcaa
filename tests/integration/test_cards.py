"""Character cards: V2/V3 round trips as PNG and JSON, the older app's format, bad input, CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.config import BUNDLED_CHARACTERS_DIR
from core.errors import AppError
from core.roleplay import avatars, cards
from core.roleplay.cards import CardError, export_card, import_card, import_old_format, read_card
from core.store import Store, StoreError
from tests.support import REPO
from tests.support.db_fixtures import (
    LOREBOOK,
    add_text_chunks,
    b64json,
    bomb_png,
    card_png,
    chunk,
    picture,
    text_chunks,
    v2_card,
    v3_card,
)


@pytest.fixture
def store(sqlite_store: Any) -> Any:
    """Services over the store, on SQLite alone: the store's own tests (test_db*, test_undo,
    test_lorebooks, test_migrations, test_backup) run on PostgreSQL too, and copies of these
    cost CI about two minutes."""
    return sqlite_store


def avatar_files(data_dir: Path) -> list[Path]:
    d = data_dir / "avatars"
    return sorted(d.iterdir()) if d.exists() else []


def top_level(card: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in card.items() if k not in ("spec", "spec_version", "data")}


# --- reading ------------------------------------------------------------------------------


def test_read_v2_png():
    card = read_card(card_png(v2_card()), filename="k.png")
    assert card["spec"] == "chara_card_v2"
    d = card["data"]
    assert d["name"] == "Test Keeper" and d["alternate_greetings"][1] == "第三个问候。"
    assert d["character_book"] == LOREBOOK
    assert d["some_future_field"] == {"nested": [1, 2, {"a": None}]}
    assert d["group_only_greetings"] == []  # V3 fields get their defaults
    assert top_level(card) == {"chat": "Test Keeper - 2024-1-1", "create_date": "2024-1-1 @10h"}


def test_read_prefers_ccv3_and_falls_back_to_chara():
    v2 = v2_card(name="From V2")
    v3 = v3_card(name="From V3")
    both = add_text_chunks(picture(), {"chara": b64json(v2), "ccv3": b64json(v3)})
    assert read_card(both)["data"]["name"] == "From V3"
    broken_v3 = add_text_chunks(picture(), {"ccv3": "%%%not base64", "chara": b64json(v2)})
    assert read_card(broken_v3)["data"]["name"] == "From V2"


def test_read_v1_and_compressed_chunks():
    v1 = {"name": "Old", "description": "d", "first_mes": "hi", "talkativeness": "0.3"}
    png = picture()
    body = b"chara\x00\x00" + zlib.compress(b64json(v1).encode())
    cut = 33  # after the IHDR chunk
    ztxt = png[:cut] + chunk(b"zTXt", body) + png[cut:]
    card = read_card(ztxt)
    assert card["spec"] == "chara_card_v1" and card["data"]["first_mes"] == "hi"
    assert card["talkativeness"] == "0.3"
    itxt_body = b"chara\x00\x01\x00\x00\x00" + zlib.compress(b64json(v2_card()).encode())
    assert read_card(png[:cut] + chunk(b"iTXt", itxt_body) + png[cut:])["data"]["name"] == (
        "Test Keeper"
    )


def test_tags_as_a_string_and_missing_optional_fields():
    card = read_card(
        json.dumps({"spec": "chara_card_v2", "data": {"name": "N", "tags": "a, b"}}).encode()
    )
    d = card["data"]
    assert d["tags"] == ["a", "b"] and d["description"] == "" and d["alternate_greetings"] == []
    assert "character_book" not in d


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["v2", "v3"])
@pytest.mark.parametrize("container", ["png", "json"])
@pytest.mark.parametrize("out_fmt", ["png", "json"])
def test_round_trip_keeps_every_field(store: Store, spec: str, container: str, out_fmt: str):
    original = v2_card() if spec == "v2" else v3_card()
    if container == "png":
        key = "chara" if spec == "v2" else "ccv3"
        raw, name = card_png(original, key), "card.png"
    else:
        raw, name = json.dumps(original, ensure_ascii=False).encode(), "card.json"
    expected = read_card(raw, filename=name)

    character = import_card(store, raw, name)
    assert character.name == "Test Keeper"
    # fields landed in their columns
    assert character.description.startswith("{{char}} keeps the light.\r\n")
    assert "<script>alert(1)</script>" in character.description  # verbatim text
    assert character.greetings == [
        "Hello {{user}}, I am {{char}}.",
        "Second greeting.",
        "第三个问候。",
    ]
    assert character.example_dialogue.startswith("<START>")
    assert character.user_name == "Visitor"
    assert character.stop_strings == ["\nVisitor:", "THE END"]
    assert character.sampling_preset == "creative"
    assert character.tags == ["test", "灯塔"] and character.creator == "the tests"
    assert character.character_book == LOREBOOK
    assert "rwkv_roleplay" not in character.extensions
    assert character.extensions["depth_prompt"] == {"prompt": "x", "depth": 4, "role": "system"}
    assert character.card_extra["system_prompt"] == "Be {{char}}."
    assert character.card_extra["another_unknown"] == 42
    if container == "png":
        assert avatars.avatar_path(character.avatar) is not None
    else:
        assert character.avatar == ""

    exported = export_card(store, character.id, out_fmt)
    back = read_card(exported, filename=f"out.{out_fmt}")
    assert back["data"] == expected["data"]
    assert top_level(back) == top_level(expected)

    again = import_card(store, exported, f"out.{out_fmt}")
    assert again.name == "Test Keeper (2)"
    fields = set(type(again).model_fields) - {"id", "name", "created_at", "updated_at", "avatar"}
    for field in fields:
        assert getattr(again, field) == getattr(character, field), field


def test_png_export_has_both_chunks_and_the_avatar(store: Store):
    character = import_card(store, card_png(v3_card(), "ccv3", picture((64, 40))), "c.png")
    png = export_card(store, character.id, "png")
    chunks = text_chunks(png)
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    v3 = json.loads(base64.b64decode(chunks["ccv3"]))
    assert v2["spec"] == "chara_card_v2" and v2["spec_version"] == "2.0"
    assert v3["spec"] == "chara_card_v3" and v3["spec_version"] == "3.0"
    assert v2["data"]["name"] == v3["data"]["name"] == "Test Keeper"
    assert v2["name"] == "Test Keeper" and v2["first_mes"] == v2["data"]["first_mes"]
    assert v3["data"]["nickname"] == "Keeper" and v3["data"]["character_book"] == LOREBOOK
    assert "parameters" not in chunks  # the original picture's metadata was stripped
    im = Image.open(io.BytesIO(png))
    assert im.size == (64, 40)
    im.load()


def test_export_without_avatar_and_v2_json(store: Store):
    c = store.create_character({"name": "Plain", "greetings": ["Hi"], "user_name": "U"})
    png = export_card(store, c.id, "png")
    Image.open(io.BytesIO(png)).load()
    assert read_card(png)["data"]["first_mes"] == "Hi"
    v2 = json.loads(export_card(store, c.id, "json", spec="v2"))
    assert v2["spec"] == "chara_card_v2" and v2["data"]["extensions"]["rwkv_roleplay"] == {
        "user_name": "U"
    }
    with pytest.raises(CardError):
        export_card(store, c.id, "gif")
    with pytest.raises(CardError):
        export_card(store, 9999, "png")


def test_edits_show_in_the_export(store: Store):
    c = import_card(store, card_png(v2_card()), "c.png")
    store.update_character(c.id, {"scenario": "Changed", "greetings": ["Only one"]})
    d = read_card(export_card(store, c.id, "json"))["data"]
    assert d["scenario"] == "Changed" and d["first_mes"] == "Only one"
    assert d["alternate_greetings"] == []


# --- the older app's format ---------------------------------------------------------------


OLD = {
    "user": "阿远",
    "bot": "小林",
    "greeting": "（{{char}}抬起头）你好，{{user}}。",
    "bot_persona": "{{char}}是一位书店老板。",
    "example_message": "{{user}}: 你好\n\n{{char}}: 欢迎光临。",
    "use_qa": False,
}


def test_import_old_format(store: Store, tmp_path: Path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "小林.json").write_text(json.dumps(OLD, ensure_ascii=False), encoding="utf-8")
    (folder / "小林.png").write_bytes(picture((100, 100)))
    c = import_old_format(store, folder / "小林.json")
    assert c.name == "小林" and c.user_name == "阿远"
    assert c.greetings == [OLD["greeting"]] and c.description == OLD["bot_persona"]
    assert c.example_dialogue == OLD["example_message"]
    assert c.extensions == {"rwkv_roleplay": {"use_qa": False}}
    assert avatars.avatar_path(c.avatar) is not None
    conv = store.create_conversation(c.id)
    assert store.list_messages(conv.id)[0].text == "（小林抬起头）你好，阿远。"
    # import_card recognises the format too; a taken name gets a number
    assert import_card(store, folder / "小林.json").name == "小林 (2)"
    # exported as a card and read back, nothing is lost
    back = read_card(export_card(store, c.id, "png"))
    assert back["data"]["extensions"]["rwkv_roleplay"] == {"user_name": "阿远", "use_qa": False}
    # without a picture beside it
    (folder / "NoPic.json").write_text(json.dumps({**OLD, "bot": "NoPic"}), encoding="utf-8")
    assert import_old_format(store, folder / "NoPic.json").avatar == ""
    with pytest.raises(CardError, match="older app"):
        (folder / "x.json").write_text(json.dumps({"name": "x"}), encoding="utf-8")
        import_old_format(store, folder / "x.json")


# --- bad input ----------------------------------------------------------------------------


def bad_inputs() -> list[tuple[str, bytes, str]]:
    good = card_png(v2_card())
    bad_crc = bytearray(good)
    bad_crc[40] ^= 0xFF  # inside the first text chunk
    no_name = v2_card()
    no_name["data"]["name"] = "  "
    del no_name["name"]
    return [
        ("plain picture", picture(), "no character card"),
        ("truncated png", good[: len(good) // 2], "broken"),
        ("bad crc", bytes(bad_crc), "broken"),
        ("not base64", add_text_chunks(picture(), {"chara": "@@@ not base64 @@@"}), "base64"),
        (
            "not json",
            add_text_chunks(picture(), {"chara": base64.b64encode(b"{oops").decode()}),
            "JSON",
        ),
        ("json list", add_text_chunks(picture(), {"chara": b64json([1, 2])}), "not a JSON object"),
        ("no name", card_png(no_name), "no name"),
        ("no name json", json.dumps({"spec": "chara_card_v2", "data": {}}).encode(), "no name"),
        ("json garbage", b"{not json at all", "not valid JSON"),
        ("json no card", json.dumps({"hello": "world"}).encode(), "No character card"),
        ("not utf8", b'{"name": "\xff\xfe"}', "UTF-8"),
        ("random bytes", bytes(range(255, -1, -1)) * 2, "neither"),
        ("empty", b"", "empty"),
        ("bad field type", json.dumps({"name": "X", "description": {"a": 1}}).encode(), "text"),
        (
            "bad lorebook",
            json.dumps(
                {"spec": "chara_card_v2", "data": {"name": "X", "character_book": [1]}}
            ).encode(),
            "lorebook",
        ),
    ]


@pytest.mark.parametrize("label, data, message", bad_inputs(), ids=[b[0] for b in bad_inputs()])
def test_bad_cards_are_refused_and_nothing_is_written(
    store: Store, data_dir: Path, label: str, data: bytes, message: str
):
    with pytest.raises(CardError, match=message) as e:
        import_card(store, data, "upload.png")
    assert isinstance(e.value, AppError) and "\n" not in str(e.value)
    assert store.list_characters() == []
    assert avatar_files(data_dir) == []


def test_card_with_a_broken_or_bomb_picture_is_refused(store: Store, data_dir: Path):
    card = b64json(v2_card())
    bomb = add_text_chunks(bomb_png(12_000, 12_000), {"chara": card})
    with pytest.raises(avatars.AvatarError, match="pixels"):
        import_card(store, bomb, "bomb.png")
    assert store.list_characters() == [] and avatar_files(data_dir) == []


def ztxt_chunks(n: int, inflated: int, key: str = "junk") -> bytes:
    """`n` zTXt chunks (key0, key1, ...), each inflating to `inflated` zero bytes: a thousand
    times their size."""
    body = b"\x00" + zlib.compress(bytes(inflated), 9)
    return b"".join(chunk(b"zTXt", f"{key}{i}".encode() + b"\x00" + body) for i in range(n))


def test_junk_text_chunks_are_skipped_unread(store: Store, data_dir: Path):
    """A card padded with text chunks that inflate to 192 MB from a 200 KB file imports with its
    picture, in the memory the file needs (old code: 192 MB, then Pillow refused the picture)."""
    png = card_png(v2_card())
    cut = 33  # after IHDR: Pillow reads these chunks while opening the picture
    bomb = png[:cut] + ztxt_chunks(48, 4 * 2**20) + png[cut:]
    tracemalloc.start()
    try:
        c = import_card(store, bomb, "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c.name == "Test Keeper" and len(avatar_files(data_dir)) == 1
    assert peak < 10 * len(bomb) + 100 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_card_chunks_inflate_within_one_budget_for_the_file(store: Store, data_dir: Path):
    png = picture()
    half = zlib.compress(b"A" * (8 * 2**20 + 1))  # 16 MB for the whole file
    over = png[:33] + chunk(b"zTXt", b"chara\x00\x00" + zlib.compress(b"A" * 2**25)) + png[33:]
    two = (  # each chunk alone would do; together they are over
        png[:33]
        + chunk(b"iTXt", b"ccv3\x00\x01\x00\x00\x00" + half)
        + chunk(b"zTXt", b"chara\x00\x00" + half)
        + png[33:]
    )
    for data in (over, two):
        with pytest.raises(CardError, match="decompresses to more than 16 MB"):
            import_card(store, data, "big.png")
    assert store.list_characters() == [] and avatar_files(data_dir) == []


def test_a_50_mb_card_is_refused_before_reading(store: Store, tmp_path: Path, data_dir: Path):
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.write(card_png(v2_card()))
        f.truncate(50 * 1024 * 1024)
    with pytest.raises(CardError, match="MB"):
        import_card(store, big)
    with pytest.raises(CardError, match="MB"):
        import_card(store, b"\x89PNG\r\n\x1a\n" + bytes(50 * 1024 * 1024), "big.png")
    assert store.list_characters() == [] and avatar_files(data_dir) == []


def test_a_1_mb_persona_is_refused_and_nothing_is_written(store: Store, data_dir: Path):
    raw = card_png(v2_card(description="x" * 1_000_000))
    with pytest.raises(StoreError, match="description.*1,000,000.*limit"):
        import_card(store, raw, "big.png")
    assert store.list_characters() == [] and avatar_files(data_dir) == []


def test_unsafe_names_in_cards_are_cleaned(store: Store, data_dir: Path):
    for i, evil in enumerate(["../../etc/passwd", "a\\b", "..", "x\x00y\x1b", "/abs/path"]):
        card = v2_card(name=evil if evil != ".." else f"..{i}")
        c = import_card(store, card_png(card, image=picture(color=(i, i, i))), "c.png")
        assert "/" not in c.name and "\\" not in c.name and not c.name.startswith(".")
        assert all(ord(ch) >= 32 for ch in c.name)
        assert c.avatar.startswith("avatars/") and evil not in c.avatar
    # avatars are named by their content, never by the card's name
    assert all(len(p.stem) == 32 for p in avatar_files(data_dir))
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        p.name
        for p in data_dir.iterdir()
        if p.name in ("app.db", "app.db-wal", "app.db-shm", "avatars")
    )


def test_same_name_imports_get_numbers(store: Store):
    names = [import_card(store, card_png(v2_card()), "c.png").name for _ in range(3)]
    assert names == ["Test Keeper", "Test Keeper (2)", "Test Keeper (3)"]


def test_html_is_kept_as_text(store: Store):
    html = '<img src=x onerror="alert(1)"><script>document.cookie</script>'
    c = import_card(store, card_png(v2_card(name="<b>Bold</b>", scenario=html)), "c.png")
    assert c.name == "<b>Bold<-b>" and c.scenario == html  # "/" never stays in a name
    assert read_card(export_card(store, c.id, "json"))["data"]["scenario"] == html


# --- the characters folder -----------------------------------------------------------------


def test_sync_imports_cards_and_old_format_once(store: Store, tmp_path: Path):
    folder = tmp_path / "chars"
    folder.mkdir()
    (folder / "Card.png").write_bytes(card_png(v2_card(name="Card Person")))
    (folder / "Old.json").write_text(json.dumps({**OLD, "bot": "Old One"}), encoding="utf-8")
    (folder / "Old.png").write_bytes(picture())
    (folder / "plain.png").write_bytes(picture())  # no card: skipped with a warning
    imported = cards.sync_character_folders(store, [folder])
    assert sorted(c.name for c in imported) == ["Card Person", "Old One"]
    assert cards.sync_character_folders(store, [folder]) == []
    assert len(store.list_characters()) == 2


# --- command line -------------------------------------------------------------------------


def test_cli_import_and_export(data_dir: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("RP_DB_URL", raising=False)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(card_png(v2_card(name="CLI One")))
    (folder / "b.json").write_text(json.dumps(v3_card(name="CLI Two")), encoding="utf-8")
    assert cards.main(["import", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "CLI One" in out and "CLI Two" in out

    (folder / "bad.png").write_bytes(picture())
    (folder / "worse.json").write_text("{", encoding="utf-8")
    assert cards.main(["import", str(folder / "bad.png"), str(folder / "worse.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(str(folder / "bad.png") + ": ")
    assert err[1].startswith(str(folder / "worse.json") + ": ")

    out_png, out_json = tmp_path / "one.png", tmp_path / "two.json"
    assert cards.main(["export", "CLI One", str(out_png)]) == 0
    assert read_card(out_png)["data"]["name"] == "CLI One"
    assert cards.main(["export", "CLI Two", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["data"]["name"] == "CLI Two"
    assert cards.main(["export", "Nobody", str(tmp_path / "x.png")]) == 1
    assert cards.main(["export", "CLI One", str(tmp_path / "x.txt")]) == 1
    assert cards.main(["import", str(tmp_path / "missing.png")]) == 1


def test_cli_runs_as_a_module(data_dir: Path, tmp_path: Path):
    src = tmp_path / "card.png"
    src.write_bytes(card_png(v2_card(name="Module Card")))
    env = {**os.environ, "RP_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("RP_DB_URL", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.roleplay.cards",
            "import",
            str(src),
            str(tmp_path / "nope.json"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "Module Card" in run.stdout and "nope.json" in run.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.roleplay.cards",
            "export",
            "Module Card",
            str(tmp_path / "o.json"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "o.json").read_text())["spec"] == "chara_card_v3"


# --- properties ---------------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=200,
).map(lambda s: "".join(ch for ch in s if ch in "\t\n\r" or ord(ch) >= 32 and ord(ch) != 127))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    description=_TEXT,
    greetings=st.lists(_TEXT, max_size=4),
    unknown=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=3),
)
def test_any_text_survives_a_png_round_trip(store: Store, description, greetings, unknown):
    data = {"name": "Prop", "description": description, "extensions": {"x": unknown}}
    if greetings:
        data["first_mes"], data["alternate_greetings"] = greetings[0], greetings[1:]
    expected = read_card(json.dumps({"spec": "chara_card_v2", "data": data}).encode())
    c = import_card(store, card_png({"spec": "chara_card_v2", "data": data}), "p.png")
    try:
        back = read_card(export_card(store, c.id, "png"))
        assert back["data"] == expected["data"]
    finally:
        store.delete_character(c.id, chats="delete")


def test_bundled_characters_are_seeded_once(data_dir: Path, monkeypatch):
    monkeypatch.delenv("RP_DB_URL", raising=False)
    expected = sorted(f.stem for f in BUNDLED_CHARACTERS_DIR.glob("*.json"))
    s = cards.open_app_store()
    chars = s.list_characters()
    assert sorted(c.name for c in chars) == expected
    for c in chars:
        assert avatars.avatar_path(c.avatar) is not None
        assert c.greetings and c.description and c.user_name
    s.close()

    s = cards.open_app_store()  # a second start imports nothing again
    assert len(s.list_characters()) == len(expected)
    victim = s.list_characters()[0]
    s.delete_character(victim.id, chats="delete")
    s.close()
    s = cards.open_app_store()  # a deleted bundled character stays deleted
    assert victim.name not in [c.name for c in s.list_characters()]

    # a user drops an old-format character into the data dir's characters folder
    folder = data_dir / "characters"
    folder.mkdir()
    obj = {
        "user": "Me",
        "bot": "Dropped",
        "greeting": "Hello {{user}}",
        "bot_persona": "{{char}} was dropped in.",
        "example_message": "",
        "use_qa": False,
    }
    (folder / "Dropped.json").write_text(json.dumps(obj), encoding="utf-8")
    (folder / "Dropped.png").write_bytes(picture())
    (folder / "broken.json").write_text("{not json", encoding="utf-8")
    s.close()
    s = cards.open_app_store()
    dropped = s.get_character_by_name("Dropped")
    assert dropped is not None and dropped.user_name == "Me"
    assert avatars.avatar_path(dropped.avatar) is not None
    assert len(s.list_characters()) == len(expected)  # one deleted, one added
    s.close()


def test_seeding_copies_of_the_bundled_folder(data_dir: Path, tmp_path: Path, monkeypatch):
    """The same files in a second folder are not imported twice (names already taken)."""
    monkeypatch.delenv("RP_DB_URL", raising=False)
    shutil.copytree(BUNDLED_CHARACTERS_DIR, data_dir / "characters")
    s = cards.open_app_store()
    names = [c.name for c in s.list_characters()]
    assert len(names) == len(set(names)) == len(list(BUNDLED_CHARACTERS_DIR.glob("*.json")))
    s.close()


# --- broken input: only the module's own error, in a sentence -----------------------------------

_BIG_INT = b"9" * 5000  # json refuses integers of over 4300 digits with a bare ValueError
_NASTY = (_BIG_INT, b"[" * 3000, b"\\ud800", b"NaN", b"1e999", b"{", b'"', b"\xff", b"\x00")


@st.composite
def broken_card_json(draw: st.DrawFn) -> bytes:
    """A good card's JSON with a few bytes replaced, inserted or cut, some of them nasty."""
    raw = bytearray(json.dumps(v2_card(), ensure_ascii=False).encode())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw)))
        j = i + draw(st.integers(0, 8))
        raw[i:j] = draw(st.sampled_from(_NASTY) | st.binary(max_size=6))
    return bytes(raw)


def _as_png(data: bytes) -> bytes:
    return add_text_chunks(picture(), {"chara": base64.b64encode(data).decode()})


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=broken_card_json(), png=st.booleans())
@example(data=b'{"name": "X", "description": ' + _BIG_INT + b"}", png=False)
@example(data=b'{"spec": "chara_card_v2", "data": {"name": "X", "n": ' + _BIG_INT + b"}}", png=True)
@example(data=b'{"name": "X\\ud800", "description": "\\udc00"}', png=True)
def test_broken_cards_raise_only_card_errors(store: Store, data: bytes, png: bool):
    raw, name = (_as_png(data), "c.png") if png else (data, "c.json")
    try:
        read_card(raw, name)
    except CardError as e:
        assert str(e) and "\n" not in str(e) and "sys." not in str(e)
    try:
        c = import_card(store, raw, name)
    except AppError as e:
        assert str(e) and "sys." not in str(e)
    else:
        store.delete_character(c.id, chats="delete")


def test_a_huge_number_or_a_lone_surrogate_in_a_card(store: Store):
    big = b'{"spec": "chara_card_v2", "data": {"name": "X", "x": ' + _BIG_INT + b"}}"
    for raw in (big, _as_png(big)):
        with pytest.raises(CardError, match="a number in it has too many digits"):
            import_card(store, raw, "big.png")
    # JavaScript cut an emoji in half: the half becomes U+FFFD, the rest of the card is kept
    half = b'{"name": "Half\\ud83d", "description": "ok \\ud83d\\ude00", "tags": ["\\udc00"]}'
    c = import_card(store, _as_png(half), "half.png")
    assert (c.name, c.description, c.tags) == ("Half\ufffd", "ok \U0001f600", ["\ufffd"])
