"""What a crash or a bad disk leaves behind: a database with a damaged page, and a reply cut by
SIGKILL while it was being generated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from core.store import open_store
from tests.support import REPO


def damage(path: Path) -> None:
    """Fill the SQLite file `path` with enough rows to span many pages, then overwrite one page
    in the middle: the header is intact (the file opens), reading the rows fails."""
    store = open_store(f"sqlite:///{path}")
    conv = store.create_conversation(store.create_character({"name": "Big"}).id)
    for i in range(300):
        store.add_message(conv.id, "user", f"{i} " + "filler " * 100)
    store.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\xa5" * 4096)


# The app's way of generating and saving a reply (core.chat.ReplySaver driving Engine.reply, as
# the Chat page does), on a real tiny model forced to say " la" forever, never a stop string.
# After `hold` tokens the model holds the reply (it waits on an event nobody sets) and says so:
# every piece before has been yielded and saved by then, and the reply cannot end on its own.
_CHILD = r"""
import sys, threading
from core.backends.rwkv import RwkvBackend
from core.chat import ReplySaver, conversation_context, prompt_messages
from core.engine import Engine
from core.engine.sampler import SamplingParams
from core.prompt import Message
from core.store import open_store
from tests.support.forced import ForcedBackend

model, conv_id, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Holds(ForcedBackend):
    def forward(self, tokens, state):
        if self.pos >= hold:
            print("holding", flush=True)
            threading.Event().wait()
        return super().forward(tokens, state)

store = open_store()
backend = Holds(RwkvBackend(model, "cpu fp32"))
backend.say(" la" * 100_000)
engine = Engine(backend)
saver = ReplySaver(store, conv_id, "new", meta={"model": "tiny"}, every_s=0.0)
reply = engine.reply(
    conversation_context(store, conv_id),
    prompt_messages(store, conv_id),
    Message("char"),
    SamplingParams(max_tokens=8192),
    on_finish=lambda res: saver.finish(res.text, res.meta()),
)
for _ in saver.track(reply):
    pass
print("finished", flush=True)
"""


def kill_when_held(code: str, args: list[str], env: dict[str, str], then=None) -> None:
    """Run `code` in a child Python with `args`; once it prints "holding" (it has reached the
    moment to cut and waits there), call `then()` if given, kill it with SIGKILL and reap it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the child holds (or it ended)
        if line != "holding\n":
            raise AssertionError(f"the child did not hold: {line!r} {proc.stderr.read()}")
        if then is not None:
            then()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def kill_mid_reply(model: Path, conv_id: int, data_dir: Path, hold: int = 40) -> str:
    """Generate a reply in conversation `conv_id` in another process and kill it with SIGKILL
    while the reply is held going, once its partial save is in the database; returns the text
    saved by then."""
    env = {**os.environ, "RP_DATA_DIR": str(data_dir)}
    env.pop("RP_DB_URL", None)
    seen = []

    def look() -> None:
        store = open_store(f"sqlite:///{data_dir / 'app.db'}")
        seen.append(store.list_messages(conv_id)[-1])  # the reply in progress, as saved so far
        store.close()
        assert seen[0].role == "char" and seen[0].meta["stop"] == "interrupted", seen[0]

    kill_when_held(_CHILD, [str(model), str(conv_id), str(hold)], env, then=look)
    return seen[0].text
