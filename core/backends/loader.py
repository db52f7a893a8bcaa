"""Choose and load a back end for a model file: `.pth` through the rwkv package, `.gguf` through
llama.cpp, and nothing at all (no path) means the embedded default model."""

from __future__ import annotations

from pathlib import Path

from core.backends.base import Backend
from core.backends.model_thread import on_model_thread
from core.config import MODELS_DIR
from core.errors import ModelError

BACKENDS = ("auto", "rwkv", "llama")


def list_model_files(directory: Path = MODELS_DIR) -> list[Path]:
    """Model files a user put in `models/` (and one folder below), sorted by name."""
    if not directory.is_dir():
        return []
    found = [
        p
        for pattern in ("*.pth", "*.gguf", "*/*.pth", "*/*.gguf")
        for p in directory.glob(pattern)
        if p.is_file()
    ]
    return sorted(set(found), key=lambda p: str(p).lower())


def resolve_backend(path: Path | None, backend: str) -> str:
    if backend not in BACKENDS:
        raise ModelError(f"Unknown back end '{backend}': choose one of {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    if path is None or path.suffix.lower() == ".gguf":
        return "llama"
    return "rwkv"


def load_backend(
    path: str | Path | None = None,
    backend: str = "auto",
    strategy: str = "cpu fp32",
    cuda_on: bool = False,
    jit_on: bool = True,
    n_threads: int | None = None,
) -> Backend:
    """Load a model (on the model thread, where it will run) to compute with `n_threads`
    (None: core.backends.threads.default_threads()). Raises ModelError with a message for the
    user when it cannot."""
    p: Path | None = Path(path).expanduser() if path not in (None, "") else None
    if p is None:
        from core.backends.embedded import embedded_model_path, missing_message

        p = embedded_model_path()
        if p is None:
            raise ModelError(missing_message())
    kind = resolve_backend(p, backend)
    if kind == "rwkv":
        if p.suffix.lower() == ".gguf":
            raise ModelError(f"{p.name} is a GGUF file: load it with the llama.cpp back end.")
        from core.backends.rwkv import RwkvBackend

        return on_model_thread(RwkvBackend, p, strategy, cuda_on, jit_on, n_threads)
    if p.suffix.lower() == ".pth":
        raise ModelError(
            f"{p.name} is a .pth file: load it with the rwkv back end, or convert it to GGUF "
            "in Settings to run it with llama.cpp."
        )
    from core.backends.llama import LlamaBackend

    return on_model_thread(LlamaBackend, p, n_threads)


def set_threads(backend: Backend, n: int | None) -> None:
    """Change a loaded model's thread count (None: the default), on the model thread: torch
    keeps the count per calling thread, and the change lands between two model calls."""
    on_model_thread(backend.set_threads, n)
