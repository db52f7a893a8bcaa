"""Which model files fit this machine, how fast each would decode here, and which one to
recommend. Pure arithmetic over a `Machine` (core/models/machine.py); no network, no streamlit.

Decoding one token reads the whole model once (all but the embedding, which is a lookup of one
row), so its speed is about memory bandwidth / bytes read per token, times how much of the
bandwidth the back end reaches:
- llama.cpp (GGUF, on the CPU): 0.8 of the measured copy bandwidth. On the 2-core development
  machine an f16 RWKV-7 0.1B decoded at 90.7 tok/s, 282 MB a token = 25.6 GB/s, against a
  numpy copy of 25 GB/s measured there: about 1.0 on a quiet machine, 0.8 leaves room for load.
- the rwkv package on the CPU (`cpu fp32`, a .pth widened to 32 bits, twice its size in RAM):
  0.45 (24.9 tok/s at 564 MB a token there).
- the rwkv package on a GPU (`cuda fp16`): 0.5 of the GPU's measured copy bandwidth.
GGUF files run on the CPU (the app's llama.cpp build); a .pth runs on the GPU when there is one
and it fits there. On a CPU, a .pth is best converted to a Q8_0 GGUF (core/models/convert.py):
the estimate counts that conversion, and says so.

The recommendation: among RWKV files whose size the name gives, the best quality that fits in
free memory and decodes at `MIN_TOK_S` or faster. Quality: the size first, then the precision
(Q8_0 or better counts as lossless, 4 to 8 bits as one step down; below 4 bits, and below Q8_0
for 0.1B/0.4B, never), then the training data; then a file that runs as downloaded before one
to convert (a smaller download, no second copy), then the later date, then the faster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.models.catalog import HubFile
from core.models.machine import Machine
from core.models.names import SMALL_SIZES, VOCAB, NameInfo

MIN_TOK_S = 5.0  # a speed worth chatting at
LLAMA_EFFICIENCY = 0.8
RWKV_CPU_EFFICIENCY = 0.45
RWKV_GPU_EFFICIENCY = 0.5
RAM_SHARE = 0.9  # of the memory free now, what a model may take (the rest: the app, the OS)
GPU_SHARE = 0.95
RUN_OVERHEAD = 300 * 2**20  # bytes beside the weights: the runtime, the vocabulary, states
Q8_BITS = 8.5
CONVERT_TYPES = {"q8_0": Q8_BITS, "f16": 16.0}


@dataclass(frozen=True)
class Run:
    """One way to run a file here."""

    how: str  # "gguf" (llama.cpp on the CPU), "rwkv-gpu" (cuda fp16), "rwkv-cpu" (cpu fp32)
    memory: int  # bytes it needs, in RAM (or GPU memory for rwkv-gpu)
    free: int  # bytes free there
    tok_s: float | None  # decode speed estimate; None: the bandwidth is unknown
    convert: str | None = None  # "q8_0" / "f16": a GGUF to make from the .pth first
    disk: int = 0  # bytes that GGUF takes on disk

    @property
    def fits(self) -> bool:
        share = GPU_SHARE if self.how == "rwkv-gpu" else RAM_SHARE
        return self.free <= 0 or self.memory <= self.free * share

    @property
    def device(self) -> str:
        return "gpu" if self.how == "rwkv-gpu" else "cpu"


@dataclass(frozen=True)
class Estimate:
    file: HubFile
    size: int  # bytes of the file (from the listing, else from the name)
    direct: Run  # the file as downloaded
    conversions: tuple[Run, ...] = ()  # a .pth on a CPU: as a Q8_0 or F16 GGUF

    @property
    def info(self) -> NameInfo:
        return self.file.info

    @property
    def best(self) -> Run:
        """The run the recommendation counts: the file as it is, unless it is a .pth on a CPU,
        then its fastest conversion that fits (Q8_0); when nothing fits, the run that needs the
        least memory."""
        fitting = [r for r in self.conversions if r.fits]
        if fitting and (not self.direct.fits or self.direct.how == "rwkv-cpu"):
            return max(fitting, key=lambda r: r.tok_s or 0.0)
        if self.direct.fits or not self.conversions:
            return self.direct
        return min((self.direct, *self.conversions), key=lambda r: r.memory)


def _embedding_share(info: NameInfo) -> float:
    """The part of the weights that is the embedding (not read per token)."""
    shape = info.shape
    if shape is None:
        return 0.0
    _, width, total = shape
    return VOCAB * width / total


def file_size(f: HubFile) -> int:
    """The file's size: the listing's, else what its name implies (parameters x bits)."""
    if f.size:
        return f.size
    info = f.info
    params = info.shape[2] if info.shape else (info.params or 0) * 1e9
    return int(params * (info.bits or 16.0) / 8)


def estimate(f: HubFile, machine: Machine) -> Estimate:
    info = f.info
    size = file_size(f)
    per_token = 1.0 - _embedding_share(info)
    bits = info.bits or 16.0

    def speed(weights: float, bandwidth: float | None, efficiency: float) -> float | None:
        if not bandwidth or weights <= 0:
            return None
        return bandwidth * efficiency / (weights * per_token)

    if info.fmt == "gguf":
        memory = int(size * 1.05) + RUN_OVERHEAD
        direct = Run(
            "gguf", memory, machine.ram_free, speed(size, machine.bandwidth, LLAMA_EFFICIENCY)
        )
        return Estimate(f, size, direct)
    # a .pth: on the GPU in fp16 where it fits there, else on the CPU in fp32
    fp16 = size * 16.0 / bits
    gpu_run = None
    if machine.has_gpu:
        gpu_run = Run(
            "rwkv-gpu",
            int(fp16 * 1.05) + RUN_OVERHEAD,
            machine.gpu_free or 0,
            speed(fp16, machine.gpu_bandwidth, RWKV_GPU_EFFICIENCY),
        )
    fp32 = size * 32.0 / bits
    cpu_run = Run(
        "rwkv-cpu",
        int(fp32 * 1.05) + RUN_OVERHEAD,
        machine.ram_free,
        speed(fp32, machine.bandwidth, RWKV_CPU_EFFICIENCY),
    )
    direct = gpu_run if gpu_run is not None and gpu_run.fits else cpu_run
    conversions = []
    for target, target_bits in CONVERT_TYPES.items():
        gguf = int(size * target_bits / bits)
        conversions.append(
            Run(
                "gguf",
                int(gguf * 1.05) + RUN_OVERHEAD,
                machine.ram_free,
                speed(gguf, machine.bandwidth, LLAMA_EFFICIENCY),
                convert=target,
                disk=gguf,
            )
        )
    return Estimate(f, size, direct, tuple(conversions))


def precision_class(info: NameInfo) -> int:
    """2: Q8_0 or better (lossless enough); 1: 4 to 8 bits; 0: not to recommend (below 4 bits,
    and below Q8_0 for the 0.1B and 0.4B, which lose too much)."""
    bits = info.bits if info.bits is not None else 16.0
    if bits >= 8:
        return 2
    if bits < 4 or (info.params in SMALL_SIZES):
        return 0
    return 1


def _rank(e: Estimate) -> tuple[float, int, tuple[int, int, int], int, int, float]:
    run = e.best
    return (
        e.info.params or 0.0,
        precision_class(e.info),
        e.info.tag_rank,
        1 if run.convert is None else 0,
        e.info.date or 0,
        run.tok_s or 0.0,
    )


@dataclass(frozen=True)
class Recommendation:
    """The file to get (`estimate` None when nothing qualifies) and what decided it:
    `bigger` is the best estimate of a larger size that was passed over (too slow or too big),
    `fastest` the fastest file that fits, when nothing is fast enough."""

    estimate: Estimate | None
    min_tok_s: float
    bigger: Estimate | None = None
    fastest: Estimate | None = None

    @property
    def file(self) -> HubFile | None:
        return self.estimate.file if self.estimate is not None else None

    def why(self) -> str:
        """Why, in English (the CLI's words; the pages say it in the user's language)."""
        if self.estimate is None:
            if self.fastest is None:
                return (
                    "No file of the catalog fits in this machine's free memory (or its speed "
                    "here is unknown)."
                )
            run = self.fastest.best
            return (
                f"Nothing decodes at {self.min_tok_s:g} tokens/s here; the fastest that fits is "
                f"{self.fastest.info.title} at about {fmt_speed(run.tok_s)} tokens/s."
            )
        run = self.estimate.best
        parts = [
            f"The best quality that fits in free memory ({fmt_bytes(run.memory)} of "
            f"{fmt_bytes(run.free)}) and decodes at about {fmt_speed(run.tok_s)} tokens/s here "
            f"(at least {self.min_tok_s:g})"
        ]
        if run.convert:
            parts.append(
                f"once converted to a {run.convert.upper()} GGUF ({fmt_bytes(run.disk)} more "
                "on disk; the app offers it after the download)"
            )
        if self.bigger is not None:
            b = self.bigger.best
            reason = (
                f"would need {fmt_bytes(b.memory)}"
                if not b.fits
                else f"would decode at about {fmt_speed(b.tok_s)} tokens/s"
            )
            parts.append(f"the {self.bigger.info.size_label} {reason}")
        return "; ".join(parts) + "."


def eligible(e: Estimate, min_tok_s: float = MIN_TOK_S) -> bool:
    run = e.best
    return (
        e.info.params is not None
        and e.info.version in (7, None)
        and precision_class(e.info) > 0
        and run.fits
        and run.tok_s is not None
        and run.tok_s >= min_tok_s
    )


def recommend(
    files: Iterable[HubFile], machine: Machine, min_tok_s: float = MIN_TOK_S
) -> Recommendation:
    """The file to recommend on `machine` (see the module's docstring)."""
    estimates = [estimate(f, machine) for f in files]
    sized = [e for e in estimates if e.info.params is not None and precision_class(e.info) > 0]
    good = [e for e in sized if eligible(e, min_tok_s)]
    if not good:
        fitting = [e for e in sized if e.best.fits and e.best.tok_s is not None]
        fastest = max(fitting, key=lambda e: e.best.tok_s or 0.0) if fitting else None
        return Recommendation(None, min_tok_s, fastest=fastest)
    best = max(good, key=_rank)
    larger = [e for e in sized if (e.info.params or 0) > (best.info.params or 0)]
    bigger = None
    if larger:
        smallest = min(e.info.params or 0 for e in larger)
        same = [e for e in larger if e.info.params == smallest]
        bigger = max(same, key=lambda e: (e.best.fits, e.best.tok_s or 0.0))
    return Recommendation(best, min_tok_s, bigger=bigger)


def fmt_bytes(n: float | None) -> str:
    """ "3.1 GB", "382 MB" (decimal units, as the Hub shows sizes)."""
    if n is None:
        return "?"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def fmt_speed(tok_s: float | None) -> str:
    if tok_s is None:
        return "?"
    return f"{tok_s:.0f}" if tok_s >= 10 else f"{tok_s:.1f}"
