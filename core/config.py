"""Where things live: the repository, the models folder (`models/`, or `$RP_MODELS_DIR`) and the
run-time data directory, which is private to the user who runs the app (0700, its files 0600)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
# $RP_MODELS_DIR moves it (read at import: a server or a test's subprocess sets it before)
MODELS_DIR: Path = (
    Path(os.environ["RP_MODELS_DIR"]).expanduser()
    if os.environ.get("RP_MODELS_DIR")
    else REPO_ROOT / "models"
)
BUNDLED_CHARACTERS_DIR: Path = REPO_ROOT / "data" / "characters"


def data_dir() -> Path:
    """The run-time data directory: `$RP_DATA_DIR` if set, else `data/` in the repository.

    Everything a user creates (database, state checkpoints, avatars) is written below it.
    """
    env = os.environ.get("RP_DATA_DIR")
    path = Path(env).expanduser() if env else REPO_ROOT / "data"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path.resolve()


def default_url(data: Path | None = None) -> str:
    """The database: `$RP_DB_URL` if set, else the SQLite file `app.db` in the data directory
    (`data`, by default `data_dir()`). Here, not in core.store, so that the server can name it
    before it imports SQLAlchemy (core/runtime.py)."""
    env = os.environ.get("RP_DB_URL", "").strip()
    return env or f"sqlite:///{(data if data is not None else data_dir()) / 'app.db'}"


def make_private(root: Path | None = None) -> None:
    """Take group and other access away from the data directory and everything below it (0700
    folders, 0600 files): chats, checkpoints and avatars that an older version or a loose umask
    left readable to other users of the machine. Called at start. Symbolic links (and what they
    point at) and the bundled characters (repository files) are left as they are."""
    top = root or data_dir()
    bundled = BUNDLED_CHARACTERS_DIR.resolve()
    for folder, dirs, files in os.walk(top):
        here = Path(folder)
        dirs[:] = [d for d in dirs if (here / d).resolve() != bundled]
        for path in (here, *(here / f for f in files)):
            try:
                st = path.lstat()
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                    path.chmod(stat.S_IMODE(st.st_mode) & 0o700)
            except OSError as e:  # another user's file, a read-only disk: say so, go on
                log.warning("cannot make %s private: %s", path, e.strerror or e)


def write_atomic(target: Path, data: bytes | str) -> None:
    """Write `data` to `target` whole or not at all: a private (0600) temporary file beside it,
    synced, then renamed over it; a failure leaves `target` as it was and no temporary file."""
    import tempfile

    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp: 0600
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
