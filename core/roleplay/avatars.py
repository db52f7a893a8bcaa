"""Avatar images: checked, re-encoded as plain PNG and stored under data_dir()/avatars.

Each saved picture gets a new random file name (never anything a user typed), so a file just
saved belongs to its caller alone: removing it again when the character is not saved after all
cannot hurt another character (core.roleplay.characters.CharacterService.save does so). Copies
of a character share the file; the store deletes a file when no character uses it any more
(`Store.collect_avatar`).
"""

from __future__ import annotations

import hashlib
import io
import uuid
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from core.config import data_dir, write_atomic
from core.errors import AppError

AVATAR_DIR_NAME = "avatars"
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # an upload larger than this is refused before decoding
MAX_IMAGE_PIXELS = 40_000_000  # width x height, checked from the header before decoding
MAX_AVATAR_SIDE = 1024  # stored avatars fit in this square
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class AvatarError(AppError):
    """An avatar image was refused (not an image, too large, broken)."""


def decode_image(data: bytes, what: str = "The image") -> Image.Image:
    """Decode `data` as a picture, after checking its size in bytes and in pixels.

    Returns a loaded image (first frame of an animation). Raises AvatarError with the reason.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise AvatarError(
            f"{what} is {len(data) / 1e6:.1f} MB; the limit is {MAX_IMAGE_BYTES / 1e6:.0f} MB. "
            "Use a smaller picture."
        )
    if not data:
        raise AvatarError(f"{what} is empty.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise AvatarError(
                f"{what} is not a picture this app can read (PNG, JPEG, WebP, GIF or BMP)."
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise AvatarError(
                f"{what} has far too many pixels (limit {MAX_IMAGE_PIXELS // 1_000_000} million)."
                " Use a smaller picture."
            ) from None
        except (OSError, ValueError, SyntaxError) as e:
            raise AvatarError(f"{what} is broken: {e}") from None
        w, h = im.size
        if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
            raise AvatarError(
                f"{what} is {w}x{h} pixels; the limit is {MAX_IMAGE_PIXELS // 1_000_000} "
                "million pixels. Use a smaller picture."
            )
        try:
            if im.format == "JPEG":
                im.draft("RGB", (MAX_AVATAR_SIDE * 2, MAX_AVATAR_SIDE * 2))
            im.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as e:
            raise AvatarError(f"{what} is broken: {e}") from None
    return im


def encode_avatar(data: bytes, what: str = "The avatar") -> bytes:
    """The picture in `data` as a clean PNG (no metadata), at most MAX_AVATAR_SIDE a side."""
    im = decode_image(data, what)
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block is not worth refusing the picture for
        pass
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    im = im.convert("RGBA" if has_alpha else "RGB")
    im.thumbnail((MAX_AVATAR_SIDE, MAX_AVATAR_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def avatars_dir() -> Path:
    path = data_dir() / AVATAR_DIR_NAME
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def save_avatar(data: bytes) -> str:
    """Check and re-encode an uploaded picture, store it; returns its path relative to data_dir().

    Raises AvatarError when the data is not a usable picture. Nothing is written then.
    """
    png = encode_avatar(data)
    name = uuid.uuid4().hex + ".png"
    write_atomic(avatars_dir() / name, png)
    return f"{AVATAR_DIR_NAME}/{name}"


def avatar_path(rel: str | None) -> Path | None:
    """The file of a stored avatar, or None when `rel` is empty, missing or points elsewhere.

    Only plain files directly inside data_dir()/avatars are ever returned.
    """
    if not rel or not isinstance(rel, str) or "\\" in rel or "\x00" in rel:
        return None
    parts = PurePosixPath(rel).parts
    if len(parts) != 2 or parts[0] != AVATAR_DIR_NAME or parts[1] in (".", ".."):
        return None
    base = (data_dir() / AVATAR_DIR_NAME).resolve()
    path = (base / parts[1]).resolve()
    if path.parent != base or not path.is_file():
        return None
    return path


def is_avatar_ref(rel: str) -> bool:
    """Whether `rel` has the form of a stored avatar path (the file may be missing)."""
    parts = PurePosixPath(rel).parts
    return (
        "\\" not in rel
        and len(parts) == 2
        and parts[0] == AVATAR_DIR_NAME
        and parts[1] not in (".", "..")
        and parts[1].endswith(".png")
    )


def remove_avatar_file(rel: str) -> None:
    """Delete a stored avatar file (callers check that no character uses it)."""
    path = avatar_path(rel)
    if path is not None:
        path.unlink(missing_ok=True)


def read_avatar(rel: str | None) -> bytes | None:
    path = avatar_path(rel)
    return path.read_bytes() if path is not None else None


def placeholder_png(name: str, size: int = 256) -> bytes:
    """A plain coloured disc, the picture of a character that has none (cards must be a PNG)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    color = (64 + digest[0] % 160, 64 + digest[1] % 160, 64 + digest[2] % 160)
    im = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(im).ellipse((size // 8, size // 8, size * 7 // 8, size * 7 // 8), fill=color)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()
