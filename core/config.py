"""Where things live: the repository, the models folder and the run-time data directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
MODELS_DIR: Path = REPO_ROOT / "models"
BUNDLED_CHARACTERS_DIR: Path = REPO_ROOT / "data" / "characters"


def data_dir() -> Path:
    """The run-time data directory: `$RP_DATA_DIR` if set, else `data/` in the repository.

    Everything a user creates (database, state checkpoints, avatars) is written below it.
    """
    env = os.environ.get("RP_DATA_DIR")
    path = Path(env).expanduser() if env else REPO_ROOT / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
