"""bench.report --add-to: a bench added to a full results file of the same machine, never to
another machine's, never to a partial file, and nothing written when the bench failed; the added
entry carries its own date and commit, and the table's source line names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report


def results_file(tmp_path: Path, **machine: Any) -> Path:
    doc = {
        "schema": 1,
        "date": "2026-12-07T22:32:12Z",
        "partial": False,
        "machine": {**report.machine(), **machine},
        "versions": {"git_commit": "a" * 40},
        "benches": {"api": {"result": {"turns": 20}, "loadavg_before": [1], "loadavg_after": [2]}},
    }
    path = tmp_path / "2026-12-07-vm.json"
    path.write_text(json.dumps(doc))
    return path


def cluster_result() -> dict[str, Any]:
    return {
        "setup": {"servers": 2, "clients": 6, "turns": 4, "concurrency": 2, "max_tokens": 16},
        "0.1b": {
            "affinity_cached_pct": 81.15,
            "affinity_cached_pct_after_turn1": 95.67,
            "roundrobin_cached_pct": 88.34,
            "affinity_ttft_p95_s": 4.0,
            "one_server_ttft_p95_s": 2.0,
            "p95_ratio": 2.0,
            "failover_lost_messages": 0,
            "failover_refeed_tokens": 12,
            "failover": {"acknowledged": 48, "moved_chats": 3},
        },
    }


def fake_run(result: dict[str, Any] | None):
    def run_all(names: list[str], quick: bool, timeout: float) -> dict[str, Any]:
        entry: dict[str, Any] = {"loadavg_before": [3.0], "loadavg_after": [4.0]}
        if result is None:
            entry["error"] = "exit 1: boom"
        else:
            entry["result"] = result
        return {
            "date": "2026-12-08T01:00:00Z",
            "command": "python -m bench.report --only cluster",
            "versions": {"git_commit": "b" * 40},
            "benches": {n: entry for n in names},
        }

    return run_all


def test_added_with_its_own_date_and_commit_and_named_in_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = results_file(tmp_path)
    monkeypatch.setattr(report, "run_all", fake_run(cluster_result()))
    monkeypatch.setattr(report, "write_tables", lambda p, check=False: 0)
    assert report.add_to(path, ["cluster"], 10) == 0
    doc = json.loads(path.read_text())
    assert doc["benches"]["api"]["result"] == {"turns": 20}  # the rest kept
    entry = doc["benches"]["cluster"]
    assert entry["date"] == "2026-12-08T01:00:00Z"
    assert entry["versions"]["git_commit"] == "b" * 40
    # the source line names the file relative to the repository: as if it were in bench/results
    table = report.render("cluster", doc, report.RESULTS / path.name)
    assert "| 81.2 % (95.7 %) |" in table
    assert "| 0 of 48 |" in table and "| 12 over 3 |" in table and "| 2.00 |" in table
    assert "`cluster` added on 2026-12-08 at commit bbbbbbb (--add-to)" in table


def test_a_failed_bench_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = results_file(tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr(report, "run_all", fake_run(None))
    assert report.add_to(path, ["cluster"], 10) == 1
    assert path.read_bytes() == before


@pytest.mark.parametrize("other", [{"host": "elsewhere"}, {"cpu_model": "another CPU"}])
def test_another_machines_file_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: dict[str, str]
) -> None:
    path = results_file(tmp_path, **other)
    monkeypatch.setattr(report, "run_all", lambda *a: pytest.fail("ran on another machine"))
    with pytest.raises(SystemExit, match="another machine"):
        report.add_to(path, ["cluster"], 10)


def test_a_partial_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = results_file(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "partial": True}))
    monkeypatch.setattr(report, "run_all", lambda *a: pytest.fail("ran for a partial file"))
    with pytest.raises(SystemExit, match="partial"):
        report.add_to(path, ["cluster"], 10)


def test_the_chaos_table_lists_each_long_finished_run_as_its_file_says(tmp_path: Path) -> None:
    def run(name: str, **result: Any) -> None:
        doc = {
            "machine": {"cpu_model": "AMD EPYC", "usable_cpus": 2, "ram_gib": 23.5, "host": "vm"},
            "versions": {"git_commit": "f590d3d0"},
            "loadavg_after": [2.5],
            "result": {"backend": "rwkv", "kills": 50, "lost_messages": 0, **result},
        }
        (tmp_path / name).write_text(json.dumps(doc))

    common = {"invariant_violations": 0, "failed_starts": 0, "wall_s": 1500}
    run("a.json", seed=501, ops=2000, finished=True, lost_messages=1, **common)
    run("b.json", seed=502, ops=2000, finished=False, **common)  # cut off: not a run
    run("c.json", seed=503, ops=150, finished=True, **common)  # a short one
    table = report.table_chaos(tmp_path)
    assert "| `a.json` | f590d3d | rwkv | 501 | 2,000 | 50 |" in table
    assert "| 1 | 0 | 0 |" in table  # the lost message shows
    assert "b.json" not in table and "c.json" not in table
    assert "2 CPUs" in table
    assert "No finished chaos run" in report.table_chaos(tmp_path / "none")
