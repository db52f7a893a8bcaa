"""How many threads a model computes with.

torch and llama.cpp run a team of threads that spin at each barrier, waiting for the slowest member.
When the team has as many threads as the machine has cores and any other program wants a core (a
browser, an editor), one member is descheduled and the rest spin for it: on 2 cores beside one busy
process, llama.cpp decoded 1.9 tok/s with 2 threads and 26.6 with 1 (docs/ARCHITECTURE.md,
"Threading"), and the rwkv package collapsed the same way. The default leaves half the cores free,
which also counts one thread per physical core on machines with two hardware threads per core
(`bench/threads.py` measures every count alone and beside a busy process).
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    return max(1, usable_cpus() // 2)


def resolve_threads(n: int | None) -> int:
    """`n` threads (at most one per usable CPU), or the default for None / 0 / nonsense."""
    try:
        n = int(n or 0)
    except (TypeError, ValueError):
        n = 0
    return min(n, usable_cpus()) if n > 0 else default_threads()
