"""Model back ends: the Backend protocol and what loads one.

`base` holds the protocol every back end implements, `loader` picks and loads one for a file
(on the model thread, `model_thread`), `rwkv` runs BlinkDL `.pth` files on the rwkv package,
`llama` runs GGUF files on llama.cpp after `gguf_file` has checked them, `tokenizer` is the
RWKV World tokenizer, `embedded` finds the default model. Importing this package imports
neither torch nor llama.cpp: the loader imports the one it needs.
"""

from core.backends.base import Backend, ModelInfo, State, file_identity
from core.backends.loader import BACKENDS, list_model_files, load_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "ModelInfo",
    "State",
    "file_identity",
    "list_model_files",
    "load_backend",
]
