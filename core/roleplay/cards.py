"""Character cards: SillyTavern V1/V2/V3 (PNG or JSON) and the older app's JSON format.

A V2 card is a PNG with a tEXt chunk "chara" holding base64 JSON {"spec": "chara_card_v2",
"data": {...}}; V3 uses the chunk "ccv3" and spec "chara_card_v3". We read either (preferring
ccv3), and write both. Every field of `data` survives an import and an export: those with a
column of their own land there, the lorebook (`character_book`) and `extensions` are kept as they
came, and all other fields go to `Character.card_extra` (keys beside `data` to `card_top`).
Our own fields (user name, stop strings, sampling preset) travel in
`data.extensions["rwkv_roleplay"]`.

The older app's format is NAME.json with keys user, bot, greeting, bot_persona, example_message,
use_qa, beside NAME.png (its avatar).

Command line:
    python -m core.roleplay.cards import FILE_OR_DIR...
    python -m core.roleplay.cards export NAME OUT.png|OUT.json
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.config import BUNDLED_CHARACTERS_DIR, data_dir, make_private, write_atomic
from core.errors import AppError
from core.roleplay import avatars
from core.store import (
    MAX_LORE_ENTRIES,
    Store,
    StoreError,
    clean_name,
    open_store,
    validate_character,
)
from core.store.models import Character, utcnow
from core.text import loads_json

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 20 * 1024 * 1024  # a card file (PNG or JSON) larger than this is refused
MAX_CARD_JSON = 16 * 1024 * 1024  # decoded card JSON
MAX_CARD_TEXT = 16 * 1024 * 1024  # the card chunks of one PNG, decompressed, all together
CARD_CHUNKS = ("chara", "ccv3")  # the text chunks that hold a card
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
EXT_KEY = "rwkv_roleplay"  # our namespace in data.extensions
SEED_SETTING = "imported_character_files"
OLD_FORMAT_SPEC = "rwkv_roleplay_legacy"

_STRING_FIELDS = (
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
)
# fields of `data` with a Character column (all others are kept in card_extra)
_MAPPED = {
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "alternate_greetings",
    "mes_example",
    "creator_notes",
    "creator",
    "character_version",
    "tags",
    "character_book",
    "extensions",
}
# V1 fields that V2 writers repeat beside `data`: regenerated on export, not kept
_V1_MIRRORS = {
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creatorcomment",
    "tags",
    "creator",
    "spec",
    "spec_version",
    "data",
}
_V1_ALIASES = {  # older (TavernAI / Pygmalion) names of V1 fields
    "char_name": "name",
    "char_persona": "description",
    "world_scenario": "scenario",
    "char_greeting": "first_mes",
    "example_dialogue": "mes_example",
    "creatorcomment": "creator_notes",
}
_OLD_FORMAT_KEYS = ("user", "bot", "greeting", "bot_persona", "example_message", "use_qa")


class CardError(AppError):
    """A character card could not be read or written; the message says why."""


# --- PNG chunks ------------------------------------------------------------------------------


def _inflate(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)  # + 1: a max_length of 0 would mean no limit
    except zlib.error:
        raise CardError(
            "This PNG is broken: a compressed text chunk does not decompress."
        ) from None
    if len(out) > limit or d.unconsumed_tail:
        raise CardError(
            f"The card in this PNG decompresses to more than {MAX_CARD_TEXT // 2**20} MB."
        )
    return out


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(type, body, start, end) of each chunk of a PNG, up to IEND, checking the structure and
    every chunk's CRC on the way; raises CardError for a broken PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise CardError("This file is not a PNG.")
    pos, n = len(PNG_SIGNATURE), len(data)
    first = True
    while True:
        if pos + 8 > n:
            raise CardError("This PNG is broken: it is cut short (no IEND chunk).")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > n:
            raise CardError("This PNG is broken: it is cut short.")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : end])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            name = ctype.decode("latin-1", "replace")
            raise CardError(f"This PNG is broken: the checksum of a {name!r} chunk is wrong.")
        if first and ctype != b"IHDR":
            raise CardError("This PNG is broken: it does not start with a header chunk.")
        first = False
        yield ctype, body, pos, end
        if ctype == b"IEND":
            return
        pos = end


def png_text_chunks(data: bytes) -> dict[str, bytes]:
    """The card chunks of a PNG (tEXt, zTXt or iTXt named "chara" or "ccv3", in any case) as
    {lowercase keyword: raw value}. Checks the whole PNG; raises CardError for a broken one.

    Only card chunks are decompressed, and all of them together to at most MAX_CARD_TEXT bytes:
    other text chunks (a picture's metadata, or junk that inflates a thousandfold) are skipped
    unread, so the memory an import needs stays near the file's size."""
    texts: dict[str, bytes] = {}
    budget = MAX_CARD_TEXT
    for ctype, body, _start, _end in _chunks(data):
        if ctype not in _TEXT_CHUNKS:
            continue
        key_raw, sep, rest = body.partition(b"\x00")
        key = key_raw.decode("latin-1").lower()
        if not sep or key not in CARD_CHUNKS:
            continue
        if ctype == b"tEXt":
            texts[key] = rest
        elif ctype == b"zTXt" and rest[:1] == b"\x00":
            texts[key] = _inflate(rest[1:], budget)
            budget -= len(texts[key])
        elif ctype == b"iTXt" and len(rest) >= 2:
            compressed, value = rest[0], rest[2:]
            _lang, _, value = value.partition(b"\x00")
            _tkey, _, value = value.partition(b"\x00")
            texts[key] = _inflate(value, budget) if compressed else value
            budget -= len(texts[key]) if compressed else 0
    return texts


def _chunk(ctype: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(ctype + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc)


def write_png_text(png: bytes, texts: dict[str, str]) -> bytes:
    """`png` with tEXt chunks `texts` (keyword: ASCII value) put before IEND, replacing any
    text chunks of the same keywords."""
    keys = {k.lower() for k in texts}
    out = [PNG_SIGNATURE]
    for ctype, body, start, end in _chunks(png):
        if ctype == b"IEND":
            for key, value in texts.items():
                out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("ascii")))
            out.append(png[start:end])
            break
        keyword = body.partition(b"\x00")[0].decode("latin-1").lower()
        if not (ctype in _TEXT_CHUNKS and keyword in keys):
            out.append(png[start:end])
    return b"".join(out)


def _picture(png: bytes) -> bytes:
    """The PNG without its text chunks, for the avatar: Pillow would inflate them too (up to
    64 MB, and it refuses a picture with a text chunk over 1 MB)."""
    kept = (png[a:b] for ctype, _body, a, b in _chunks(png) if ctype not in _TEXT_CHUNKS)
    return PNG_SIGNATURE + b"".join(kept)


# --- reading cards ---------------------------------------------------------------------------


def _decode_payload(raw: bytes, chunk: str) -> dict[str, Any]:
    text = raw.strip()
    if not text.startswith(b"{"):  # the usual case: base64 of UTF-8 JSON
        text = re.sub(rb"\s+", b"", text)
        text += b"=" * (-len(text) % 4)
        try:
            text = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CardError(
                f"The card in this PNG (chunk {chunk!r}) is not valid base64."
            ) from None
    if len(text) > MAX_CARD_JSON:
        raise CardError(f"The card in this PNG is larger than {MAX_CARD_JSON // 2**20} MB.")
    return _parse_json(text, f"The card in this PNG (chunk {chunk!r})")


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = loads_json(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CardError(f"{what} is not UTF-8 text.") from None
    except json.JSONDecodeError as e:
        raise CardError(f"{what} is not valid JSON: {e}.") from None
    except ValueError:  # json's other refusal: an integer of over 4300 digits
        raise CardError(f"{what} cannot be read: a number in it has too many digits.") from None
    except RecursionError:
        raise CardError(f"{what} cannot be read: it is nested too deeply.") from None
    if not isinstance(obj, dict):
        raise CardError(f"{what} is not a JSON object.")
    return obj


def _as_text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    raise CardError(f"The card's field {field!r} should be text, not {type(value).__name__}.")


def _as_text_list(value: Any, field: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise CardError(f"The card's field {field!r} should be a list of texts.")
    return [_as_text(v, field) for v in value if v is not None]


def _as_tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return [t for t in _as_text_list(value, "tags") if t.strip()]


def is_old_format(obj: dict[str, Any]) -> bool:
    """Whether a JSON object is a character of the older app (NAME.json beside NAME.png)."""
    return "data" not in obj and "bot" in obj and ("bot_persona" in obj or "greeting" in obj)


def _old_format_card(obj: dict[str, Any], fallback_name: str) -> dict[str, Any]:
    ours: dict[str, Any] = {}
    if obj.get("user"):
        ours["user_name"] = _as_text(obj.get("user"), "user")
    if "use_qa" in obj:
        ours["use_qa"] = bool(obj["use_qa"])
    data = {
        "name": _as_text(obj.get("bot"), "bot") or fallback_name,
        "description": _as_text(obj.get("bot_persona"), "bot_persona"),
        "first_mes": _as_text(obj.get("greeting"), "greeting"),
        "mes_example": _as_text(obj.get("example_message"), "example_message"),
        "extensions": {EXT_KEY: ours} if ours else {},
    }
    top = {k: v for k, v in obj.items() if k not in _OLD_FORMAT_KEYS}
    return {"spec": OLD_FORMAT_SPEC, "spec_version": "1", "data": data, **top}


def normalize_card(obj: Any, fallback_name: str = "") -> dict[str, Any]:
    """A card object of any supported kind as {"spec", "spec_version", "data", ...other top-level
    keys}, where `data` has every V3 field (with defaults) plus all fields it came with."""
    if not isinstance(obj, dict):
        raise CardError("The card is not a JSON object.")
    if isinstance(obj.get("data"), dict):
        spec = obj.get("spec") if isinstance(obj.get("spec"), str) else "chara_card_v2"
        version = _as_text(obj.get("spec_version"), "spec_version") or "2.0"
        data = dict(obj["data"])
        top = {k: v for k, v in obj.items() if k not in _V1_MIRRORS}
    elif is_old_format(obj):
        return normalize_card(_old_format_card(obj, fallback_name))
    elif any(k in obj for k in ("name", "char_name")):  # V1: the fields at the top level
        spec, version = "chara_card_v1", "1.0"
        data = {}
        for key, value in obj.items():
            key = _V1_ALIASES.get(key, key)
            if key in _STRING_FIELDS or key == "tags":
                data.setdefault(key, value)
        top = {k: v for k, v in obj.items() if k not in _V1_MIRRORS and k not in _V1_ALIASES}
    elif "data" in obj:
        raise CardError("The card's 'data' is not a JSON object.")
    else:
        raise CardError("No character card found: the JSON has no 'data' and no 'name'.")

    for field in _STRING_FIELDS:
        data[field] = _as_text(data.get(field), field)
    if not clean_name(data["name"]):
        raise CardError("The card has no name (its field 'name' is missing or empty).")
    data["alternate_greetings"] = _as_text_list(
        data.get("alternate_greetings"), "alternate_greetings"
    )
    data["group_only_greetings"] = _as_text_list(
        data.get("group_only_greetings"), "group_only_greetings"
    )
    data["tags"] = _as_tags(data.get("tags"))
    extensions = data.get("extensions")
    data["extensions"] = dict(extensions) if isinstance(extensions, dict) else {}
    if data.get("character_book") is None:
        data.pop("character_book", None)
    elif not isinstance(data["character_book"], dict):
        raise CardError("The card's lorebook (character_book) is not a JSON object.")
    else:  # counted before anything reads an entry: a lorebook file's limit (issue 21)
        entries = data["character_book"].get("entries")
        if isinstance(entries, list | dict) and len(entries) > MAX_LORE_ENTRIES:
            raise CardError(
                f"The card's lorebook has {len(entries):,} entries; the limit is "
                f"{MAX_LORE_ENTRIES:,}."
            )
    return {"spec": spec, "spec_version": version, "data": data, **top}


def _load(path_or_bytes: str | os.PathLike[str] | bytes, filename: str | None) -> bytes:
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        try:
            size = path.stat().st_size
            if size > MAX_CARD_BYTES:
                raise CardError(_too_large(size))
            data = path.read_bytes()
        except OSError as e:
            raise CardError(f"Cannot read the file: {e.strerror or e}.") from None
    if len(data) > MAX_CARD_BYTES:
        raise CardError(_too_large(len(data)))
    if not data:
        raise CardError("The file is empty.")
    return data


def _too_large(size: int) -> str:
    return (
        f"The file is {size / 1e6:.1f} MB; cards larger than "
        f"{MAX_CARD_BYTES / 1e6:.0f} MB are refused."
    )


def _read(
    path_or_bytes: str | os.PathLike[str] | bytes, filename: str | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """(normalised card, its picture (the PNG without text chunks) or None)."""
    data = _load(path_or_bytes, filename)
    if filename is None and not isinstance(path_or_bytes, bytes | bytearray | memoryview):
        filename = Path(path_or_bytes).name
    stem = Path(filename or "").stem
    if data.startswith(PNG_SIGNATURE):
        texts = png_text_chunks(data)
        errors: list[CardError] = []
        for chunk in ("ccv3", "chara"):
            if chunk in texts:
                try:
                    card = normalize_card(_decode_payload(texts[chunk], chunk), stem)
                    return card, _picture(data)
                except CardError as e:  # a broken ccv3 next to a good chara: use chara
                    errors.append(e)
        if errors:
            raise errors[0]
        raise CardError(
            "This PNG has no character card in it (no 'chara' or 'ccv3' text chunk): it is a "
            "plain picture. Use a card PNG exported by SillyTavern or a card site."
        )
    if data.lstrip()[:1] in (b"{", b"\xef") or (filename or "").lower().endswith(".json"):
        return normalize_card(_parse_json(data, "The card file"), stem), None
    raise CardError("This file is neither a PNG character card nor a JSON character card.")


def read_card(
    path_or_bytes: str | os.PathLike[str] | bytes, filename: str | None = None
) -> dict[str, Any]:
    """Read a card (PNG or JSON; V1, V2, V3 or the older app's format) without storing it.

    Returns the normalised card: {"spec", "spec_version", "data": {name, description,
    personality, scenario, first_mes, mes_example, alternate_greetings, tags, ... every other
    field it had}, ...keys the card had beside data}. Raises CardError.
    """
    return _read(path_or_bytes, filename)[0]


# --- cards <-> characters ----------------------------------------------------------------------


def card_to_values(card: dict[str, Any]) -> dict[str, Any]:
    """Character fields (as for Store.create_character, without avatar) of a normalised card."""
    d = card["data"]
    extensions = dict(d["extensions"])
    ours = extensions.pop(EXT_KEY, None)
    ours = dict(ours) if isinstance(ours, dict) else {}
    user_name = ours.pop("user_name", "")
    stop_strings = ours.pop("stop_strings", [])
    preset = ours.pop("sampling_preset", "")
    if ours:
        extensions[EXT_KEY] = ours
    greetings = [d["first_mes"], *d["alternate_greetings"]]
    return {
        "name": d["name"],
        "description": d["description"],
        "personality": d["personality"],
        "scenario": d["scenario"],
        "greetings": greetings if greetings != [""] else [],  # "" alone: no greeting at all
        "example_dialogue": d["mes_example"],
        "user_name": user_name if isinstance(user_name, str) else "",
        "stop_strings": stop_strings if isinstance(stop_strings, list) else [],
        "sampling_preset": preset if isinstance(preset, str) else "",
        "tags": d["tags"],
        "creator_notes": d["creator_notes"],
        "creator": d["creator"],
        "character_version": d["character_version"],
        "character_book": d.get("character_book"),
        "extensions": extensions,
        "card_extra": {k: v for k, v in d.items() if k not in _MAPPED},
        "card_top": {k: v for k, v in card.items() if k not in ("spec", "spec_version", "data")},
    }


def character_to_card(character: Character, spec: str = "v3") -> dict[str, Any]:
    """The card object of a character: V3 ({"spec": "chara_card_v3", ...}) or V2."""
    greetings = list(character.greetings)
    extensions = json.loads(json.dumps(character.extensions))
    ours = dict(extensions.get(EXT_KEY) or {})
    for key, value in (
        ("user_name", character.user_name),
        ("stop_strings", list(character.stop_strings)),
        ("sampling_preset", character.sampling_preset),
    ):
        if value:
            ours[key] = value
    if ours:
        extensions[EXT_KEY] = ours
    data: dict[str, Any] = {
        "name": character.name,
        "description": character.description,
        "personality": character.personality,
        "scenario": character.scenario,
        "first_mes": greetings[0] if greetings else "",
        "mes_example": character.example_dialogue,
        "creator_notes": character.creator_notes,
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": greetings[1:],
        "tags": list(character.tags),
        "creator": character.creator,
        "character_version": character.character_version,
        "extensions": extensions,
        "group_only_greetings": [],
    }
    if character.character_book is not None:
        data["character_book"] = character.character_book
    data.update({k: v for k, v in character.card_extra.items() if k not in _MAPPED})
    top = {k: v for k, v in character.card_top.items() if k not in _V1_MIRRORS}
    if spec == "v3":
        return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data, **top}
    mirrors = {  # V1 fields, for readers that know only V1
        "name": data["name"],
        "description": data["description"],
        "personality": data["personality"],
        "scenario": data["scenario"],
        "first_mes": data["first_mes"],
        "mes_example": data["mes_example"],
        "creatorcomment": data["creator_notes"],
        "tags": data["tags"],
        "creator": data["creator"],
    }
    return {**mirrors, **top, "spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def _b64(obj: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8")).decode("ascii")


def export_card(store: Store, character_id: int, fmt: str = "png", spec: str = "v3") -> bytes:
    """A character as a card: "png" (the avatar with both a V2 "chara" and a V3 "ccv3" chunk)
    or "json" (V3, or V2 with spec="v2")."""
    character = store.get_character(character_id)
    if character is None:
        raise CardError(f"There is no character with id {character_id}.")
    if fmt == "json":
        card = character_to_card(character, "v2" if spec == "v2" else "v3")
        return (json.dumps(card, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    if fmt != "png":
        raise CardError(f'Cards are exported as "png" or "json", not {fmt!r}.')
    image = avatars.read_avatar(character.avatar) or avatars.placeholder_png(character.name)
    return write_png_text(
        image,
        {
            "chara": _b64(character_to_card(character, "v2")),
            "ccv3": _b64(character_to_card(character, "v3")),
        },
    )


def export_filename(name: str, fmt: str) -> str:
    """A file name for a download of a character's card."""
    safe = re.sub(r'[<>:"|?*]', "_", clean_name(name)) or "character"
    return f"{safe[:80]}.{fmt}"


def _import_values(
    store: Store, values: dict[str, Any], image: bytes | None, unique: bool
) -> Character:
    """Store a character and its avatar: all checks first, so a refusal writes nothing."""
    validate_character({**values, "avatar": ""})
    rel = avatars.save_avatar(image) if image is not None else ""
    try:
        return store.create_character({**values, "avatar": rel}, unique=unique)
    except BaseException:
        if rel:
            store.collect_avatar(rel)
        raise


def import_card(
    store: Store,
    path_or_bytes: str | os.PathLike[str] | bytes,
    filename: str | None = None,
) -> Character:
    """Import a card (PNG or JSON, any supported kind). A taken name becomes "Name (2)".

    The card's picture becomes the avatar (re-encoded). Raises CardError, AvatarError or
    StoreError (all AppError) and then stores nothing.
    """
    card, png = _read(path_or_bytes, filename)
    if (
        png is None
        and card["spec"] == OLD_FORMAT_SPEC
        and not isinstance(path_or_bytes, bytes | bytearray | memoryview)
    ):
        png = _sibling_image(Path(path_or_bytes))
    return _import_values(store, card_to_values(card), png, unique=True)


def _sibling_image(json_path: Path) -> bytes | None:
    for suffix in (".png", ".jpg", ".jpeg", ".webp"):
        candidate = json_path.with_suffix(suffix)
        if candidate.is_file():
            return _load(candidate, candidate.name)
    return None


def import_old_format(
    store: Store, json_path: str | os.PathLike[str], unique: bool = True
) -> Character:
    """Import NAME.json of the older app (with NAME.png beside it as the avatar, if present)."""
    path = Path(json_path)
    obj = _parse_json(_load(path, path.name), "The character file")
    if not is_old_format(obj):
        raise CardError(
            "This JSON is not a character of the older app (it needs the keys 'bot' and "
            "'bot_persona' or 'greeting')."
        )
    card = normalize_card(obj, path.stem)
    return _import_values(store, card_to_values(card), _sibling_image(path), unique=unique)


# --- the characters folder -----------------------------------------------------------------------


def character_dirs() -> list[Path]:
    """Folders whose character files are imported on start: the bundled one, and
    data_dir()/characters when the data directory is elsewhere."""
    dirs = [BUNDLED_CHARACTERS_DIR.resolve()]
    user_dir = (data_dir() / "characters").resolve()
    if user_dir != dirs[0]:
        dirs.append(user_dir)
    return dirs


def _candidate_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    jsons = {p.stem for p in files if p.suffix.lower() == ".json"}
    return [
        p
        for p in files
        if p.suffix.lower() == ".json" or (p.suffix.lower() == ".png" and p.stem not in jsons)
    ]


def open_app_store(url: str | None = None) -> Store:
    """The store as the app opens it at start: migrated, with the characters of the character
    folders that were never imported seeded into it (the bundled ones on first start; files a
    user adds later on the next start), and the data directory made private again."""
    try:
        store = open_store(url)
    finally:  # after SQLite made its files (the database, its WAL and SHM), even if it failed
        make_private()
    try:
        sync_character_folders(store)
    except BaseException:
        store.close()
        raise
    return store


def sync_character_folders(store: Store, dirs: Iterable[Path] | None = None) -> list[Character]:
    """Import character files never imported before (old-format JSON with its PNG, or card PNG
    and JSON files) whose name is not taken. Each file is tried once: its name is recorded in
    the setting "imported_character_files", so a character the user deleted stays deleted.
    Problems are logged, never raised: this runs on every start."""
    done = store.get_setting(SEED_SETTING, {})
    done = dict(done) if isinstance(done, dict) else {}
    imported: list[Character] = []
    changed = False
    for folder in dirs if dirs is not None else character_dirs():
        if not folder.is_dir():
            continue
        for path in _candidate_files(folder):
            if path.name in done:
                continue
            done[path.name] = utcnow().isoformat(timespec="seconds")
            changed = True
            try:
                card, png = _read(path)
                if store.get_character_by_name(clean_name(card["data"]["name"])) is not None:
                    continue
                if png is None and card["spec"] == OLD_FORMAT_SPEC:
                    png = _sibling_image(path)
                imported.append(_import_values(store, card_to_values(card), png, unique=False))
            except AppError as e:
                log.warning("character file %s not imported: %s", path, e)
    if changed:
        store.set_setting(SEED_SETTING, done)
    return imported


# --- command line --------------------------------------------------------------------------------


def _expand(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(_candidate_files(p) if p.is_dir() else [p])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.roleplay.cards", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_import = sub.add_parser("import", help="import card files (PNG/JSON) or folders of them")
    p_import.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    p_export = sub.add_parser("export", help="export a character as OUT.png or OUT.json")
    p_export.add_argument("name")
    p_export.add_argument("out", metavar="OUT")
    args = parser.parse_args(argv)

    try:
        store = open_app_store()
    except AppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "import":
            files = _expand(args.paths)
            if not files:
                print("error: no card files found", file=sys.stderr)
                return 1
            failed = 0
            for path in files:
                try:
                    character = import_card(store, path)
                except AppError as e:
                    failed += 1
                    print(f"{path}: {e}", file=sys.stderr)
                else:
                    print(f"{path}: imported as {character.name!r} (id {character.id})")
            return 1 if failed else 0

        out = Path(args.out)
        fmt = out.suffix.lower().lstrip(".")
        if fmt not in ("png", "json"):
            print(f"{out}: the output file must end in .png or .json", file=sys.stderr)
            return 1
        character = store.get_character_by_name(args.name)
        if character is None or character.id is None:
            print(f"{args.name}: there is no character with this name", file=sys.stderr)
            return 1
        try:
            write_atomic(out.expanduser().resolve(), export_card(store, character.id, fmt))
        except (AppError, OSError) as e:
            print(f"{out}: {e}", file=sys.stderr)
            return 1
        print(f"{out}: exported {character.name!r}")
        return 0
    finally:
        store.close()


__all__ = [
    "CardError",
    "StoreError",
    "character_to_card",
    "export_card",
    "export_filename",
    "import_card",
    "import_old_format",
    "main",
    "normalize_card",
    "read_card",
    "open_app_store",
    "sync_character_folders",
]

if __name__ == "__main__":
    sys.exit(main())
