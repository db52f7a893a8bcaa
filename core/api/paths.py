"""Which requests are the API's: the paths under /v1/ and /api/. No imports: the server's
mount (core/api_mount.py) reads this before the API itself is imported."""

API_PREFIXES = ("/v1/", "/api/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/v1", "/api")
