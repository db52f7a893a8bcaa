"""The old app's command-line flags, given after `--` to `streamlit run`.

    streamlit run Home.py -- --model models/x.pth --strategy "cuda fp16i8" --cuda_on 1 --jit_on 1

The gradio app took `--model --strategy --cuda_on --jit_on --lang --port --listen --share`.
`--port` / `--listen` / `--share` belong to the server now (`--server.port`,
`--server.address`); they are accepted and reported as ignored so that old command lines still
start. Unknown flags are ignored too, never fatal: a typo must not stop the app from starting.
No streamlit import here.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.config import MODELS_DIR, REPO_ROOT

BACKENDS = ("auto", "rwkv", "llama")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


@dataclass(frozen=True)
class CliArgs:
    model: str | None = None  # model file as given (resolved by resolve_model_path)
    strategy: str | None = None  # rwkv strategy, e.g. "cuda fp16i8"
    backend: str | None = None  # "auto" | "rwkv" | "llama"
    cuda_on: bool | None = None
    jit_on: bool | None = None
    lang: str | None = None  # "en" | "zh"
    ignored: tuple[str, ...] = field(default_factory=tuple)  # flags accepted but not used

    @property
    def any_model_flag(self) -> bool:
        return any(
            v is not None for v in (self.model, self.strategy, self.backend, self.cuda_on)
        ) or (self.jit_on is not None)


def _flag(value: str) -> bool:
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, not {value!r}")


def _lang(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("zh") or v in ("cn", "chinese", "中文"):
        return "zh"
    if v.startswith("en") or v == "english":
        return "en"
    raise argparse.ArgumentTypeError(f"expected en or zh, not {value!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # never exit the app over a bad flag
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="streamlit run Home.py --", add_help=False, allow_abbrev=False)
    p.add_argument("--model", type=str)
    p.add_argument("--strategy", type=str)
    p.add_argument("--backend", type=str, choices=BACKENDS)
    p.add_argument("--cuda_on", "--cuda-on", type=_flag)
    p.add_argument("--jit_on", "--jit-on", type=_flag)
    p.add_argument("--lang", type=_lang)
    # the gradio app's server flags: accepted, not used
    p.add_argument("--port", type=str)
    p.add_argument("--listen", action="store_true")
    p.add_argument("--share", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[CliArgs, list[str]]:
    """Parse the flags after `--` (default: sys.argv[1:]).

    Returns the flags and a list of warnings (unknown or ignored flags, bad values), which the
    app shows once; a bad value is dropped, the rest still applies.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    warnings: list[str] = []
    parser = _parser()
    try:
        ns, unknown = parser.parse_known_args(argv)
    except ValueError:
        # parse again flag by flag, so one bad value does not drop the others (and is reported)
        ns, unknown = _parse_leniently(parser, argv, warnings)
    if unknown:
        warnings.append("unknown flags ignored: " + " ".join(unknown))
    ignored = tuple(
        name
        for name, on in (
            ("--port", ns.port is not None),
            ("--listen", ns.listen),
            ("--share", ns.share),
        )
        if on
    )
    if ignored:
        warnings.append(
            " ".join(ignored) + " ignored: use streamlit's --server.port / --server.address"
        )
    args = CliArgs(
        model=ns.model or None,
        strategy=(ns.strategy or "").strip() or None,
        backend=ns.backend,
        cuda_on=ns.cuda_on,
        jit_on=ns.jit_on,
        lang=ns.lang,
        ignored=ignored,
    )
    return args, warnings


def _parse_leniently(
    parser: argparse.ArgumentParser, argv: list[str], warnings: list[str]
) -> tuple[argparse.Namespace, list[str]]:
    ns = parser.parse_known_args([])[0]
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        chunk = [tok]
        if tok.startswith("--") and "=" not in tok and i + 1 < len(argv):
            if not argv[i + 1].startswith("--"):
                chunk.append(argv[i + 1])
        i += len(chunk)
        try:
            part, unk = parser.parse_known_args(chunk)
        except ValueError as e:
            warnings.append(str(e))
            continue
        unknown += unk
        for k, v in vars(part).items():
            if v not in (None, False):
                setattr(ns, k, v)
    return ns, unknown


def resolve_model_path(model: str | None) -> str | None:
    """Find the file a `--model` value means. The old app took paths without `.pth`, relative
    to the working directory; try that, the repository and models/ with and without the
    extension. Returns the path as given when nothing matches (the loader then says what is
    wrong)."""
    if not model:
        return None
    raw = Path(model).expanduser()
    bases = [Path.cwd(), REPO_ROOT, MODELS_DIR] if not raw.is_absolute() else [Path("/")]
    for base in bases:
        p = base / raw
        for cand in (p, p.with_name(p.name + ".pth"), p.with_name(p.name + ".gguf")):
            if cand.is_file():
                return str(cand.resolve())
    return str(raw)


_CACHE: tuple[CliArgs, list[str]] | None = None


def cli_args(main_script: str = "Home.py") -> tuple[CliArgs, list[str]]:
    """The flags of this process, parsed once.

    `streamlit run Home.py -- ...` sets sys.argv to ["Home.py", ...]; under any other program
    (pytest running AppTest, a bench script) argv is not ours and no flags apply."""
    global _CACHE
    if _CACHE is None:
        ours = bool(sys.argv) and Path(sys.argv[0]).name == main_script
        _CACHE = parse_args(sys.argv[1:]) if ours else (CliArgs(), [])
    return _CACHE
