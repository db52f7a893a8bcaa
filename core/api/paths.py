"""Which requests are the API's: the paths under /v1/ and /api/, and llama.cpp's own routes at the
top (core/api/llamacpp.py: /completion, /tokenize...). No imports: the server's mount
(core/api_mount.py) reads this before the API itself is imported."""

API_PREFIXES = ("/v1/", "/api/")
# llama.cpp's server routes outside the prefixes (core/api/llamacpp.py PATHS: a test checks)
TOP_PATHS = frozenset(
    ("/completion", "/completions", "/tokenize", "/detokenize", "/props", "/health")
)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/v1", "/api") or path in TOP_PATHS
