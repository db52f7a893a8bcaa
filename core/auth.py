"""Passwords: the hash stored for the app's password and the constant-time check of a try."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_PBKDF2 = "pbkdf2_sha256"
_ITERATIONS = 200_000


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    b64 = base64.b64encode
    return f"{_PBKDF2}${_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(entered: str, stored: str) -> bool:
    """Compare in constant time; `stored` is a hash_password() string or a plain password
    (the RP_PASSWORD environment variable, or a setting written by hand)."""
    if stored.startswith(_PBKDF2 + "$"):
        try:
            _, iters, salt, digest = stored.split("$")
            got = hashlib.pbkdf2_hmac(
                "sha256", entered.encode(), base64.b64decode(salt), int(iters)
            )
            return hmac.compare_digest(got, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    return hmac.compare_digest(entered.encode(), stored.encode())
