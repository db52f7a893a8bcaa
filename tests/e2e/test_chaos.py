"""The chaos run, short (issue 24): `python -m bench.chaos` with 150 random operations and 5
kill -9 of a real `streamlit run Home.py`, on a tiny random RWKV-7 run by the rwkv package and
the same model run by llama.cpp: a full tmpfs data directory, damaged checkpoints, a locked
database, kills during starts that migrate, backups, restores, imports, group chats and
lorebooks. Nothing acknowledged may be lost, the state invariant must hold after every restart,
and the app must start every time.

The seed is fixed (each back end its own) so that CI is the same run each time; it is printed,
and RP_CHAOS_SEED=N replays another (RP_CHAOS_SEED=fresh draws one). Seeds that found a fault:
305 (a regenerate cut off undid a later choice of version; fixed in core/api/native.py), and
544013653 and 602 on llama.cpp (the run's own checks: README, "Chaos";
tests/unit/test_chaos_checks.py). The tmpfs needs root: without it the test skips
(fails under CI=true), saying so.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.required import unavailable

pytestmark = pytest.mark.timeout(900)

OPS, KILLS = 150, 5
CI_SEEDS = {"rwkv": 305, "llama": 306}


@pytest.mark.parametrize("backend", ["rwkv", "llama"])
def test_chaos_short_run_loses_nothing(tmp_path: Path, backend: str) -> None:
    if os.geteuid() != 0:
        unavailable("the chaos run mounts a tmpfs for its disk-full fault: it needs root")
    asked = os.environ.get("RP_CHAOS_SEED") or str(CI_SEEDS[backend])
    seed = random.SystemRandom().randrange(2**31) if asked == "fresh" else int(asked)
    print(f"chaos seed {seed} on {backend} (replay: RP_CHAOS_SEED={seed})")
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
    cmd = [sys.executable, "-m", "bench.chaos", "--ops", str(OPS), "--kills", str(KILLS)]
    cmd += ["--seed", str(seed), "--backend", backend, "--tmpfs-mb", "48", "--self-check"]
    cmd += ["--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if "cannot mount a tmpfs" in run.stderr:
        unavailable(run.stderr.strip().splitlines()[-1])
    assert run.returncode == 0, f"seed {seed}: the chaos run failed:\n{run.stderr[-4000:]}"
    result = json.loads(out.read_text())
    print(json.dumps(result))
    where = f"seed {seed} (RP_CHAOS_SEED={seed} replays it): {result['violations']}"
    assert result["ops"] == OPS and result["kills"] == KILLS, where
    assert result["disk_full_events"] >= 1 and result["corrupted_checkpoints"] >= 1, where
    assert result["acked_messages"] > OPS // 2, where
    assert result["lost_messages"] == 0, where
    assert result["invariant_violations"] == 0, where
    assert result["failed_starts"] == 0, where
    # the checks themselves can fail: an altered acknowledged text and a reply from scratch
    # on a transcript that differs are both caught
    assert result["self_check"] == {
        "altered_message_caught": True,
        "altered_transcript_caught": True,
    }
