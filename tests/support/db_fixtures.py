"""Helpers of the persistence tests: a store in the test's data directory, and cards, PNGs and
pictures built here (never read from ../shared), with a PNG writer independent of
core.roleplay.cards.

The data directory itself comes from conftest.py (RP_DATA_DIR = a fresh tmp dir per test).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import zlib
from typing import Any

from PIL import Image

from core.store import Store, open_store

# the databases the store's tests run on (tests/integration/conftest.py, `db_url`)
DATABASES = ("sqlite", "postgresql")


def open_test_store(seed: bool = False) -> Store:
    """The store of the test's data directory; with `seed`, as the app opens it at start."""
    if seed:
        from core.roleplay.cards import open_app_store

        return open_app_store()
    return open_store()


def picture(size: tuple[int, int] = (48, 32), color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    """A small PNG with a text chunk of its own (metadata that must not survive re-encoding)."""
    im = Image.new("RGB", size, color)
    im.putpixel((0, 0), (1, 2, 3))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return add_text_chunks(out.getvalue(), {"parameters": "secret prompt"})


def jpeg_picture(size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format="JPEG")
    return out.getvalue()


def chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + ctype
        + body
        + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def add_text_chunks(png: bytes, texts: dict[str, str]) -> bytes:
    """Insert tEXt chunks right after IHDR (the spot some writers use)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ihdr_len = struct.unpack(">I", png[8:12])[0]
    cut = 8 + 12 + ihdr_len
    extra = b"".join(
        chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1"))
        for k, v in texts.items()
    )
    return png[:cut] + extra + png[cut:]


def text_chunks(png: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (an independent reader for the tests)."""
    out: dict[str, str] = {}
    pos = 8
    while pos < len(png):
        length, ctype = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if ctype == b"tEXt":
            k, _, v = body.partition(b"\x00")
            out[k.decode("latin-1")] = v.decode("latin-1")
        pos += 12 + length
    return out


def b64json(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8")).decode("ascii")


LOREBOOK: dict[str, Any] = {
    "name": "Harbour lore",
    "description": "Places of the harbour",
    "scan_depth": 4,
    "token_budget": 512,
    "recursive_scanning": False,
    "extensions": {"some_tool": {"x": 1}},
    "entries": [
        {
            "keys": ["lighthouse", "tower"],
            "content": "The lighthouse was built in 1887.",
            "extensions": {},
            "enabled": True,
            "insertion_order": 10,
            "case_sensitive": False,
            "name": "Lighthouse",
            "priority": 5,
            "id": 1,
            "comment": "",
            "selective": True,
            "secondary_keys": ["light"],
            "constant": False,
            "position": "before_char",
        },
        {
            "keys": ["港口"],
            "content": "港口在北边。",
            "extensions": {"depth": 4},
            "enabled": False,
            "insertion_order": 20,
        },
    ],
}


def card_data(**overrides: Any) -> dict[str, Any]:
    """A V2 `data` object with every field filled, unknown fields included."""
    data: dict[str, Any] = {
        "name": "Test Keeper",
        "description": (
            "{{char}} keeps the light.\r\nShe likes <b>tea</b> & <script>alert(1)</script>"
        ),
        "personality": "calm, dry",
        "scenario": "A foggy night on the island.",
        "first_mes": "Hello {{user}}, I am {{char}}.",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hello.",
        "creator_notes": "Made for the tests.",
        "system_prompt": "Be {{char}}.",
        "post_history_instructions": "Stay in character.",
        "alternate_greetings": ["Second greeting.", "第三个问候。"],
        "tags": ["test", "灯塔"],
        "creator": "the tests",
        "character_version": "1.2",
        "extensions": {
            "talkativeness": "0.5",
            "fav": False,
            "depth_prompt": {"prompt": "x", "depth": 4, "role": "system"},
            "rwkv_roleplay": {
                "user_name": "Visitor",
                "stop_strings": ["\nVisitor:", "THE END"],
                "sampling_preset": "creative",
            },
        },
        "character_book": copy.deepcopy(LOREBOOK),
        "some_future_field": {"nested": [1, 2, {"a": None}]},
        "another_unknown": 42,
    }
    data.update(overrides)
    return data


def v2_card(**overrides: Any) -> dict[str, Any]:
    data = card_data(**overrides)
    return {
        "name": data["name"],
        "description": data["description"],
        "first_mes": data["first_mes"],
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": data,
        "chat": "Test Keeper - 2024-1-1",
        "create_date": "2024-1-1 @10h",
    }


def v3_card(**overrides: Any) -> dict[str, Any]:
    data = card_data(**overrides)
    data.update(
        {
            "nickname": "Keeper",
            "creator_notes_multilingual": {"zh": "测试用"},
            "source": ["https://example.invalid/card"],
            "group_only_greetings": ["Hello, everyone."],
            "creation_date": 1700000000,
            "modification_date": 1700000500,
            "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        }
    )
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}


def card_png(card: dict[str, Any], key: str = "chara", image: bytes | None = None) -> bytes:
    return add_text_chunks(image or picture(), {key: b64json(card)})


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of a huge blank picture: 1 bit a pixel, compressing to almost nothing."""

    def chunk(t: bytes, b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(min(height, 2000))) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
