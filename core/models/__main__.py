"""The model catalog from a terminal, for servers with no browser:

    python -m core.models list [--endpoint URL]
    python -m core.models get NAME|REPO/FILE|URL [--endpoint URL] [--force]

`list` asks the Hub (or the mirror) for the files of the catalog's repositories and prints them
by size, with whether each fits this machine, its decode speed here, and the recommended one.
`get` downloads one file into the models folder with a progress bar; NAME is a file name from
the catalog (`rwkv7-g1a3-1.5b-20251015-ctx8192.pth`), REPO/FILE names any file of any
repository (`BlinkDL/rwkv7-g1/rwkv7-g1a3-1.5b-20251015-ctx8192.pth`), URL is its address on the
Hub or a mirror. Interrupted (Ctrl-C, or killed), `get` resumes where it stopped when run again.

The endpoint is `--endpoint`, else the app's setting (Settings → Download from), else
$HF_ENDPOINT, else https://huggingface.co.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

from core.errors import AppError, ModelError
from core.models.catalog import (
    HubFile,
    load_catalog,
    lookup,
    offline_files,
    parse_reference,
    save_listing,
)
from core.models.download import DestinationExists, DownloadCancelled, Progress, download_file
from core.models.fit import estimate, fmt_bytes, fmt_speed, recommend
from core.models.hub import host

if TYPE_CHECKING:
    from core.models.machine import Machine
    from core.settings import AppSettings


def _settings() -> AppSettings:
    """The app's settings (its store is opened only when a setting is needed)."""
    from core import runtime

    return runtime.current().settings


def _endpoint(given: str | None) -> str:
    from core.settings import check_endpoint

    if given:
        return check_endpoint(given)
    try:
        return _settings().hub_endpoint()
    except AppError:
        import os

        from core.settings import DEFAULT_HUB

        return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_HUB


def _machine() -> Machine:
    from core.models.machine import probe

    try:
        settings = _settings()
    except AppError:
        settings = None
    return probe(settings)


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60:d}m{s % 60:02d}s"


class Bar:
    """A one-line progress bar on a terminal (stderr): bytes, speed, time left."""

    def __init__(self, name: str, out: TextIO = sys.stderr, width: int = 24) -> None:
        self.name, self.out, self.width = name, out, width
        self.last = 0.0
        self.tty = out.isatty()

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.phase in ("done", "verifying", "checking") and p.done == p.total
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        filled = int(p.fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        if p.phase == "checking":
            text = f"checking {fmt_bytes(p.done)} already on disk"
        elif p.phase == "verifying":
            text = "checking the SHA-256"
        elif p.phase == "done":
            text = f"{fmt_bytes(p.total)}, SHA-256 checked"
        elif p.phase == "starting":
            text = "asking the server"
        else:
            speed = f"{fmt_bytes(p.speed)}/s" if p.speed else "-"
            text = f"{fmt_bytes(p.done)} / {fmt_bytes(p.total)}  {speed}  {_fmt_time(p.eta)} left"
        line = f"[{bar}] {p.fraction:4.0%}  {text}"
        if self.tty:
            print(f"\r{line:<78}", end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def end(self) -> None:
        if self.tty:
            print(file=self.out)


def cmd_list(args: argparse.Namespace) -> int:
    from core.models.catalog import group_files

    endpoint = _endpoint(args.endpoint)
    catalog = load_catalog()
    for problem in catalog.problems:
        print(f"note: {problem}", file=sys.stderr)
    print(f"Listing {len(catalog.repositories)} repositories on {host(endpoint)}…", file=sys.stderr)
    listing = lookup(catalog, endpoint)
    if listing.offline:
        print(f"error: {listing.errors[0]}", file=sys.stderr)
        return 1
    save_listing(listing)
    for error in listing.errors:
        print(f"note: {error}", file=sys.stderr)
    machine = _machine()
    rec = recommend(listing.files, machine)
    where = f"{fmt_bytes(machine.ram_free)} of RAM free"
    if machine.has_gpu:
        where += f", {machine.gpu_name} with {fmt_bytes(machine.gpu_free)} free"
    if machine.bandwidth:
        where += f", memory bandwidth {fmt_bytes(machine.bandwidth)}/s"
    print(f"This machine: {where}.")
    for label, files in group_files(listing.files):
        print(f"\n{label or 'size not in the name'}")
        for f in files:
            e = estimate(f, machine)
            run = e.best
            fits = "fits" if run.fits else f"needs {fmt_bytes(run.memory)}"
            speed = f"~{fmt_speed(run.tok_s)} tok/s" if run.tok_s else ""
            if run.convert:
                speed += f" as {run.convert.upper()}"
            mark = "  <- recommended" if rec.file == f else ""
            print(f"  {f.ref:<72} {fmt_bytes(e.size):>8}  {fits:<14} {speed}{mark}")
    print()
    if rec.file is not None:
        print(f"Recommended: {rec.file.ref}\n  {rec.why()}")
        print(f"  Get it: python -m core.models get {rec.file.name}")
    else:
        print(rec.why())
    return 0


def _find(name: str, endpoint: str) -> HubFile:
    """The catalog's file called `name` (known offline, else listed now)."""
    catalog = load_catalog()
    for f in offline_files(catalog):
        if f.name == name:
            return f
    listing = lookup(catalog, endpoint)
    if listing.offline:
        raise ModelError(listing.errors[0])
    save_listing(listing)
    for f in listing.files:
        if f.name == name:
            return f
    raise ModelError(
        f"No file named {name} in the catalog's repositories on {host(endpoint)}; "
        "`python -m core.models list` shows them, or give REPO/FILE."
    )


def cmd_get(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args.endpoint)
    target = args.target.strip()
    if "/" in target:
        ref = parse_reference(target)
        if ref.path is None:
            raise ModelError(
                f"{ref.repo} is a repository: give one of its files, as {ref.repo}/FILE "
                "(`python -m core.models list` shows the catalog's)."
            )
        file = ref.file()
    else:
        file = _find(target, endpoint)
    where = host(file.endpoint or endpoint)
    print(f"Downloading {file.ref} from {where}", file=sys.stderr)
    bar = Bar(file.name)
    cancel = threading.Event()
    try:
        path = download_file(
            file,
            endpoint,
            overwrite=args.force,
            progress=None if args.quiet else bar,
            cancel=cancel,
        )
    except KeyboardInterrupt:
        bar.end()
        print("cancelled: what arrived is kept; run the same command to resume.", file=sys.stderr)
        return 130
    finally:
        if not args.quiet:
            bar.end()
    print(path)
    if path.suffix == ".pth":
        e = estimate(replace(file, size=path.stat().st_size), _machine())
        q8 = next((r for r in e.conversions if r.convert == "q8_0"), None)
        if q8 is not None and e.direct.how == "rwkv-cpu":
            stem = path.stem
            print(
                f"On a CPU, llama.cpp runs it two to four times faster as a GGUF "
                f"(Q8_0: {fmt_bytes(q8.disk)} on disk, about {fmt_speed(q8.tok_s)} tokens/s "
                f"here): python -m core.models.convert {path} {stem}-q8_0.gguf --type q8_0",
                file=sys.stderr,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.models",
        description="List and download RWKV models from the Hub (or a mirror).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="the catalog's files, what fits here, the recommended one")
    pl.add_argument("--endpoint", help="the Hub or a mirror, e.g. https://hf-mirror.com")
    pg = sub.add_parser("get", help="download a file into the models folder")
    pg.add_argument("target", help="NAME (from `list`), REPO/FILE, or the file's address")
    pg.add_argument("--endpoint", help="the Hub or a mirror, e.g. https://hf-mirror.com")
    pg.add_argument("--force", action="store_true", help="replace a file of that name")
    pg.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        return cmd_list(args) if args.cmd == "list" else cmd_get(args)
    except DestinationExists as e:
        print(f"error: {e} Add --force to replace it.", file=sys.stderr)
        return 1
    except DownloadCancelled as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 130
    except AppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
