"""The model catalog without the network: what file names say, how files are grouped, what a
pasted reference names, the catalog's data files, and the recommendation on made-up machines
(core/models/names.py, catalog.py, fit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ModelError
from core.models.catalog import (
    HubFile,
    group_files,
    load_catalog,
    offline_files,
    parse_reference,
)
from core.models.fit import estimate, recommend
from core.models.machine import Machine
from core.models.names import parse, tag_rank

GB = 10**9
GiB = 2**30


@pytest.mark.parametrize(
    ("name", "params", "tag", "date", "quant", "version"),
    [
        ("rwkv7-g1a3-1.5b-20251015-ctx8192.pth", 1.5, "G1a3", 20251015, "BF16", 7),
        ("rwkv7-g0a4-13.3b-20251114-ctx8192.pth", 13.3, "G0a4", 20251114, "BF16", 7),
        ("RWKV-x070-World-2.9B-v3-20250211-ctx4096.pth", 2.9, None, 20250211, "BF16", 7),
        ("RWKV-x070-Pile-168M-20241120-ctx4096.pth", 0.168, None, 20241120, "BF16", 7),
        (
            "rwkv7-g1e-2.9b-Q4_K_M-better_quantization-20260319.gguf",
            2.9,
            "G1e",
            20260319,
            "Q4_K_M",
            7,
        ),
        ("rwkv7-g1l-7.2b-q8_0-251120.gguf", 7.2, "G1l", 20251120, "Q8_0", 7),
        ("RWKV-v7-0.4B-G1-F16.gguf", 0.4, "G1", None, "F16", 7),
        ("RWKV-x060-World-7B-v2.1-20240507-ctx4096.pth", 7.0, None, 20240507, "BF16", 6),
    ],
)
def test_names_say_size_tag_date_precision_and_version(
    name: str, params: float, tag: str | None, date: int | None, quant: str, version: int
) -> None:
    info = parse(name)
    assert (info.params, info.tag, info.date, info.quant, info.version) == (
        params,
        tag,
        date,
        quant,
        version,
    )


def test_a_gguf_repository_names_what_its_files_do_not() -> None:
    info = parse("model-Q8_0.gguf").with_repo("shoumenchougou/RWKV7-G1l-1.5B-GGUF")
    assert (info.params, info.tag, info.quant, info.version) == (1.5, "G1l", "Q8_0", 7)
    assert info.title == "RWKV-7 G1l 1.5B"
    assert parse("RWKV-x070-Pile-168M-20241120-ctx4096.pth").title == "RWKV-7 Pile 168M"


def test_training_data_tags_sort_as_the_release_notes_say() -> None:
    order = ["G1l", "G1b", "G1a3", "G1a2", "G1a", "G1", "G0a2", "G0", None]
    assert sorted(order, key=tag_rank, reverse=True) == order


def test_files_are_grouped_by_size_and_newest_first() -> None:
    names = [
        "rwkv7-g1-1.5b-20250429-ctx4096.pth",
        "rwkv7-g1a3-1.5b-20251015-ctx8192.pth",
        "rwkv7-g1-0.1b-20250307-ctx4096.pth",
        "rwkv7-g1a-1.5b-20250922-ctx4096.pth",
        "rwkv7-g0a4-13.3b-20251114-ctx8192.pth",
        "README.pth",
    ]
    groups = group_files(HubFile("BlinkDL/rwkv7-g1", n) for n in names)
    assert [label for label, _ in groups] == ["0.1B", "1.5B", "13.3B", ""]
    assert [f.name for f in groups[1][1]] == [
        "rwkv7-g1a3-1.5b-20251015-ctx8192.pth",
        "rwkv7-g1a-1.5b-20250922-ctx4096.pth",
        "rwkv7-g1-1.5b-20250429-ctx4096.pth",
    ]


@pytest.mark.parametrize(
    ("text", "repo", "path", "revision", "endpoint"),
    [
        ("BlinkDL/rwkv7-g1", "BlinkDL/rwkv7-g1", None, "main", None),
        (
            "BlinkDL/rwkv7-g1/rwkv7-g1a3-1.5b.pth",
            "BlinkDL/rwkv7-g1",
            "rwkv7-g1a3-1.5b.pth",
            "main",
            None,
        ),
        ("https://huggingface.co/BlinkDL/rwkv7-g1", "BlinkDL/rwkv7-g1", None, "main", None),
        (
            "https://huggingface.co/BlinkDL/rwkv7-g1/blob/main/a%20b.pth",
            "BlinkDL/rwkv7-g1",
            "a b.pth",
            "main",
            None,
        ),
        (
            "huggingface.co/u/r-GGUF/resolve/abc123/sub/x-Q8_0.gguf?download=true",
            "u/r-GGUF",
            "sub/x-Q8_0.gguf",
            "abc123",
            None,
        ),
        (
            "https://hf-mirror.com/u/r/resolve/main/x.gguf",
            "u/r",
            "x.gguf",
            "main",
            "https://hf-mirror.com",
        ),
        ("https://huggingface.co/u/r/tree/dev", "u/r", None, "dev", None),
    ],
)
def test_a_pasted_repository_or_file_address(
    text: str, repo: str, path: str | None, revision: str, endpoint: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.repo, ref.path, ref.revision, ref.endpoint) == (repo, path, revision, endpoint)


@pytest.mark.parametrize(
    "text",
    ["", "rwkv", "https://huggingface.co/datasets/a/b", "a/b/config.json", "a/b/../c.pth", "/x"],
)
def test_what_is_not_a_model_reference_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ModelError) as e:
        parse_reference(text)
    assert str(e.value)


def test_the_bundled_catalog_and_a_users_extension(data_dir: Path) -> None:
    cat = load_catalog(data_dir)
    repos = [r.repo for r in cat.repositories]
    assert "BlinkDL/rwkv7-g1" in repos and any(r.endswith("-GGUF") for r in repos)
    assert cat.known_files and not cat.problems
    assert all(f.info.version == 7 and f.info.params for f in cat.known_files)

    (data_dir / "catalog.json").write_text(
        json.dumps(
            {
                "repositories": [{"repo": "me/my-rwkv7", "note": "mine"}, "BlinkDL/rwkv7-g1", "x"],
                "known_files": [{"repo": "me/my-rwkv7", "path": "m-0.4b-F16.gguf", "size": 9}],
            }
        )
    )
    cat = load_catalog(data_dir)
    repos = [r.repo for r in cat.repositories]
    assert repos[0] == "me/my-rwkv7" and repos.count("BlinkDL/rwkv7-g1") == 1
    assert cat.known_files[0].path == "m-0.4b-F16.gguf"
    assert len(cat.problems) == 1 and "'x'" in cat.problems[0]  # the bad entry, named
    # offline, Home's candidates are the known files (no listing was kept yet)
    assert offline_files(cat, data_dir)[0].repo == "me/my-rwkv7"

    (data_dir / "catalog.json").write_text("{not json")
    cat = load_catalog(data_dir)
    assert cat.problems and "BlinkDL/rwkv7-g1" in [r.repo for r in cat.repositories]


# --------------------------------------------------------------------------- recommendation
# A made-up listing in the shape of the real one: BlinkDL's .pth releases (real names and
# sizes) and GGUF repositories of the newest data (sizes from parameters x bits).
PTH = {
    "rwkv7-g1-0.1b-20250307-ctx4096.pth": 382_000_000,
    "rwkv7-g1-0.4b-20250324-ctx4096.pth": 902_000_000,
    "rwkv7-g1-1.5b-20250429-ctx4096.pth": 3_055_445_757,
    "rwkv7-g1a3-1.5b-20251015-ctx8192.pth": 3_055_445_757,
    "rwkv7-g1a-2.9b-20250924-ctx4096.pth": 5_896_274_949,
    "rwkv7-g0a3-7.2b-20251029-ctx8192.pth": 14_400_009_405,
    "rwkv7-g0a4-13.3b-20251114-ctx8192.pth": 26_540_871_429,
}
PARAMS = {"0.1": 191e6, "0.4": 451e6, "1.5": 1.528e9, "2.9": 2.948e9, "7.2": 7.2e9, "13.3": 13.27e9}
BITS = {"F16": 16, "Q8_0": 8.5, "Q4_K_M": 4.85, "Q2_K": 2.6}


def listing() -> list[HubFile]:
    files = [HubFile("BlinkDL/rwkv7-g1", n, size=s) for n, s in PTH.items()]
    for size in ("1.5", "2.9", "7.2", "13.3"):
        repo = f"shoumenchougou/RWKV7-G1l-{size}B-GGUF"
        for q, bits in BITS.items():
            name = f"rwkv7-g1l-{size}b-{q}-20251120.gguf"
            files.append(HubFile(repo, name, size=int(PARAMS[size] * bits / 8)))
    for size in ("0.1", "0.4"):
        repo = f"zhiyuan8/RWKV-v7-{size}B-G1-GGUF"
        for q in ("F16", "Q8_0", "Q4_K_M"):
            files.append(
                HubFile(repo, f"rwkv7-{size}B-g1-{q}.gguf", size=int(PARAMS[size] * BITS[q] / 8))
            )
    return files


def pick(machine: Machine) -> str | None:
    rec = recommend(listing(), machine)
    assert rec.why()
    return rec.file.name if rec.file else None


def test_a_laptop_gets_the_largest_model_that_still_chats_at_5_tokens_a_second() -> None:
    # 16 GB free, 20 GB/s: the 2.9B in Q8_0 decodes at about 5.4 tok/s, the 7.2B far slower
    laptop = Machine(16 * GiB, 32 * GiB, 20 * GB)
    assert pick(laptop) == "rwkv7-g1l-2.9b-Q8_0-20251120.gguf"
    rec = recommend(listing(), laptop)
    assert rec.estimate is not None and 5 <= (rec.estimate.best.tok_s or 0) < 7
    assert rec.bigger is not None and rec.bigger.info.size_label == "7.2B"


def test_the_development_machine_gets_the_newest_1_5b() -> None:
    # this project's 2-core box: 20 GB free, a numpy copy of about 10 GB/s under load: the
    # 1.5B Q8_0 reads 1.5 GB a token (5.4 tok/s), the 2.9B even at 4 bits 1.7 GB (4.7 tok/s)
    assert pick(Machine(20 * GiB, 24 * GiB, 10 * GB)) == "rwkv7-g1l-1.5b-Q8_0-20251120.gguf"
    # quiet, 25 GB/s: Q8_0 is fast enough, and lossless precision comes before speed
    assert pick(Machine(20 * GiB, 24 * GiB, 25 * GB)) == "rwkv7-g1l-2.9b-Q8_0-20251120.gguf"


def test_a_small_board_gets_a_0_4b_in_q8_0_never_a_4_bit_small_model() -> None:
    # 2 GB free, 4 GB/s: a 1.5B at 4 bits is too slow; 0.4B at 4 bits is not offered
    assert pick(Machine(2 * GiB, 4 * GiB, 4 * GB)) == "rwkv7-0.4B-g1-Q8_0.gguf"


def test_a_big_workstation_prefers_lossless_7_2b_to_a_4_bit_13_3b_only_when_speed_allows() -> None:
    ws = Machine(120 * GiB, 128 * GiB, 80 * GB)
    # the 13.3B Q8_0 reads 13.8 GB a token: 4.6 tok/s; its Q4_K_M is fast enough
    assert pick(ws) == "rwkv7-g1l-13.3b-Q4_K_M-20251120.gguf"
    # never a 2-bit file, however large
    assert "Q2_K" not in (pick(Machine(120 * GiB, 128 * GiB, 40 * GB)) or "")


def test_a_gpu_that_holds_the_7_2b_runs_the_pth_there() -> None:
    gpu = Machine(30 * GiB, 64 * GiB, 40 * GB, "RTX 4090", 23 * GiB, 900 * GB)
    assert pick(gpu) == "rwkv7-g0a3-7.2b-20251029-ctx8192.pth"
    e = estimate(next(f for f in listing() if f.name.startswith("rwkv7-g0a3-7.2b")), gpu)
    assert e.best.how == "rwkv-gpu" and (e.best.tok_s or 0) > 20


def test_a_pth_on_a_cpu_counts_its_conversion_and_says_so() -> None:
    only_pth = [f for f in listing() if f.name.endswith(".pth")]
    rec = recommend(only_pth, Machine(20 * GiB, 24 * GiB, 25 * GB))
    assert rec.file is not None and rec.file.name == "rwkv7-g1a-2.9b-20250924-ctx4096.pth"
    run = rec.estimate.best if rec.estimate else None
    assert run is not None and run.convert == "q8_0" and 3.0 * GB < run.disk < 3.3 * GB
    assert "Q8_0 GGUF" in rec.why() and "more on disk" in rec.why()
    # as the .pth itself (fp32 on the CPU), it would be far slower
    assert rec.estimate is not None and (rec.estimate.direct.tok_s or 0) < run.tok_s / 4


def test_nothing_fits_or_nothing_is_fast_enough_is_said() -> None:
    rec = recommend(listing(), Machine(300 * 2**20, GiB, 10 * GB))
    assert rec.file is None and "fits" in rec.why()
    slow = recommend(listing(), Machine(8 * GiB, 16 * GiB, 0.5 * GB))
    assert slow.file is None and slow.fastest is not None and "fastest" in slow.why()


def test_a_stalled_transfer_shows_its_speed_falling_to_nothing() -> None:
    from core.models.download import _Meter

    m = _Meter(window=5.0)
    m.samples.extend([(100.0, 0), (101.0, 10_000_000)])
    assert m.speed() == 10_000_000  # while bytes arrive
    assert m.speed(now=103.0) == 10_000_000 / 3  # nothing for 2 s: slower
    assert m.speed(now=120.0) == 0.0  # nothing within the window: stalled
