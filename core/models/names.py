"""What an RWKV model file's name says: its parameter count, training-data tag, date, format and
precision. No network, no streamlit.

    parse("rwkv7-g1a3-1.5b-20251015-ctx8192.pth")
    -> NameInfo(params=1.5, tag="G1a3", date=20251015, fmt="pth", quant="BF16", version=7)

BlinkDL names its RWKV-7 releases `rwkv7-<tag>-<size>-<yyyymmdd>-ctx<n>.pth` (the older World
series `RWKV-x070-World-<size>-v<n>-<yyyymmdd>-ctx<n>.pth`); GGUF repositories add the precision
(`Q8_0`, `F16`, `Q4_K_M`, ...) and sometimes write the date as `yymmdd`. A part the name does not
give is None; `with_repo` fills gaps from the repository's name (a GGUF repository such as
`RWKV7-G1l-1.5B-GGUF` names the tag and size once for all its files).

The training-data tags order quality G1b > G1a3 > G1a2 > G1a > G1 > G0a2 > G0 (and later letters
after b): `tag_rank` turns a tag into a tuple that sorts that way; the World series, with no tag,
sorts below every tag. For one size, a later date is better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

# the sizes of BlinkDL's RWKV-7 releases: (layers, width, total parameters). The total is read
# from the bf16 .pth files (bytes / 2); the embedding (65536 x width) is not read per token
SHAPES: dict[float, tuple[int, int, float]] = {
    0.1: (12, 768, 191.0e6),
    0.4: (24, 1024, 451.0e6),
    1.5: (24, 2048, 1.528e9),
    2.9: (32, 2560, 2.948e9),
    7.2: (32, 4096, 7.200e9),
    13.3: (61, 4096, 13.27e9),
}
VOCAB = 65536
# 0.1B and 0.4B lose too much below FP16 / Q8_0 (the release notes say so)
SMALL_SIZES = (0.1, 0.4)

_PARAMS = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_TAG = re.compile(r"(?<![a-z0-9])g(\d)([a-z]?)(\d*)(?![a-z0-9])", re.IGNORECASE)
_DATE8 = re.compile(r"(?<!\d)(20\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
_DATE6 = re.compile(r"(?<!\d)(2\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
_QUANT = re.compile(
    r"(?<![a-z0-9])(bf16|f16|fp16|f32|fp32|i?q\d(?:_[a-z0-9]+)*)(?![a-z0-9])", re.IGNORECASE
)
_VERSION = (
    (7, re.compile(r"rwkv-?7|x070|(?<![a-z0-9])v7(?![0-9])|goose", re.IGNORECASE)),
    (6, re.compile(r"rwkv-?6|x060|(?<![a-z0-9])v6(?![0-9])|finch", re.IGNORECASE)),
    (5, re.compile(r"rwkv-?5|x052|(?<![a-z0-9])v5(?![0-9])|eagle", re.IGNORECASE)),
)
_SERIES = re.compile(r"(?<![a-z])(world|pile)(?![a-z])", re.IGNORECASE)
# bits a weight takes, by precision (llama.cpp's block sizes; "K" quants about their average)
_BITS = {
    "F32": 32.0,
    "FP32": 32.0,
    "F16": 16.0,
    "FP16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "IQ4_XS": 4.25,
    "IQ4_NL": 4.5,
}


@dataclass(frozen=True)
class NameInfo:
    params: float | None = None  # billions, as the name writes it (0.1, 1.5, 13.3; 168M = 0.168)
    tag: str | None = None  # "G1a3"; None: no G tag (the World series, or not said)
    date: int | None = None  # yyyymmdd
    fmt: str = ""  # "pth" | "gguf" | ""
    quant: str | None = None  # "BF16" (a BlinkDL .pth), "F16", "Q8_0", "Q4_K_M", ...
    version: int | None = None  # RWKV version, when the name says it
    series: str | None = None  # "World", "Pile": the older series' word, when there is no tag

    @property
    def size_label(self) -> str:
        """ "1.5B", "13.3B", "168M"; "" when the name gives no size."""
        if self.params is None:
            return ""
        if self.params < 0.1 or (self.params < 1 and round(self.params, 1) != self.params):
            return f"{round(self.params * 1000):d}M"
        return f"{self.params:g}B"

    @property
    def tag_rank(self) -> tuple[int, int, int]:
        return tag_rank(self.tag)

    @property
    def bits(self) -> float | None:
        """Bits per weight of the file's precision, when known."""
        return quant_bits(self.quant)

    @property
    def shape(self) -> tuple[int, int, float] | None:
        """(layers, width, total parameters) of a release size, when this is one."""
        return SHAPES.get(self.params) if self.params is not None else None

    @property
    def title(self) -> str:
        """ "RWKV-7 G1a3 1.5B" (what a person calls it)."""
        parts = [f"RWKV-{self.version}" if self.version else "RWKV"]
        if self.tag or self.series:
            parts.append(self.tag or self.series or "")
        if self.size_label:
            parts.append(self.size_label)
        return " ".join(parts)

    def with_repo(self, repo: str) -> NameInfo:
        """Fill what the file name does not say from the repository's name."""
        other = parse(repo.rsplit("/", 1)[-1])
        return replace(
            self,
            params=self.params if self.params is not None else other.params,
            tag=self.tag or other.tag,
            date=self.date or other.date,
            version=self.version or other.version,
            series=self.series or other.series,
        )


def tag_rank(tag: str | None) -> tuple[int, int, int]:
    """A sortable rank of a training-data tag: G1b > G1a3 > G1a2 > G1a > G1 > G0a2 > G0 > none."""
    if not tag:
        return (-1, 0, 0)
    m = _TAG.fullmatch(tag)
    if m is None:
        return (-1, 0, 0)
    major, letter, sub = m.groups()
    return (int(major), ord(letter.lower()) if letter else 0, int(sub) if sub else 0)


def quant_bits(quant: str | None) -> float | None:
    if not quant:
        return None
    q = quant.upper()
    if q in _BITS:
        return _BITS[q]
    m = re.match(r"I?Q(\d)", q)
    return float(m.group(1)) + 0.5 if m else None


def _strip_ext(name: str) -> tuple[str, str]:
    low = name.lower()
    for ext in ("pth", "gguf"):
        if low.endswith("." + ext):
            return name[: -len(ext) - 1], ext
    return name, ""


@lru_cache(maxsize=4096)
def parse(name: str) -> NameInfo:
    """Read a model file's (or a repository's) name; see the module's docstring."""
    base = name.rsplit("/", 1)[-1]
    stem, fmt = _strip_ext(base)
    # "ctx4096" and "v2.8"-style versions are not sizes or dates
    clean = re.sub(r"ctx\d+k?", " ", stem, flags=re.IGNORECASE)
    params = None
    for m in _PARAMS.finditer(clean):
        value = float(m.group(1))
        params = value / 1000 if m.group(2).lower() == "m" else value
        break
    tag = None
    m = _TAG.search(clean)
    if m is not None:
        major, letter, sub = m.groups()
        tag = f"G{major}{letter.lower()}{sub}"
    date = None
    m8 = _DATE8.search(clean)
    if m8 is not None:
        date = int("".join(m8.groups()))
    else:
        m6 = _DATE6.search(clean)
        if m6 is not None:
            date = int("20" + "".join(m6.groups()))
    quant = None
    mq = _QUANT.search(clean)
    if mq is not None:
        quant = mq.group(1).upper().replace("FP16", "F16").replace("FP32", "F32")
    elif fmt == "pth":
        quant = "BF16"  # BlinkDL's releases are bf16
    version = next((v for v, rx in _VERSION if rx.search(clean)), None)
    ms = _SERIES.search(clean)
    series = ms.group(1).capitalize() if ms is not None else None
    return NameInfo(
        params=params, tag=tag, date=date, fmt=fmt, quant=quant, version=version, series=series
    )
