"""What this machine offers a model: free memory (RAM, and GPU memory where there is a GPU) and
memory bandwidth, which bounds how fast a model decodes (each token reads the whole model once).
No streamlit.

    m = probe(runtime.current().settings)   # bandwidth measured once and kept as a setting
    m.ram_free, m.bandwidth, m.gpu_free

The bandwidth is a short numpy copy (64 MiB, best of a few; about 0.2 s), counted as bytes read
plus bytes written per second, measured the first time it is needed and saved (AppSettings.
set_memory_bandwidth); a GPU's, where torch sees one, likewise. Tests build a `Machine` by hand.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_COPY_BYTES = 64 * 2**20  # larger than a CPU cache (per core complex), quick to allocate
_REPEATS = 4


class Bandwidths(Protocol):
    """Where measured bandwidths are kept: the app's settings (core.settings.AppSettings)."""

    def memory_bandwidth(self) -> float | None: ...
    def set_memory_bandwidth(self, bytes_per_s: float) -> None: ...
    def gpu_bandwidth(self) -> float | None: ...
    def set_gpu_bandwidth(self, bytes_per_s: float) -> None: ...


@dataclass(frozen=True)
class Machine:
    ram_free: int  # bytes available to a new program now
    ram_total: int
    bandwidth: float | None  # bytes/s (read + written) of main memory; None: unknown
    gpu_name: str = ""
    gpu_free: int | None = None  # bytes; None: no GPU
    gpu_bandwidth: float | None = None

    @property
    def has_gpu(self) -> bool:
        return self.gpu_free is not None


def ram() -> tuple[int, int]:
    """(available, total) bytes of RAM; (0, 0) when the system does not say."""
    try:
        fields: dict[str, int] = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields.get("MemAvailable", fields.get("MemFree", 0)), fields.get("MemTotal", 0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (OSError, ValueError, AttributeError):
        return 0, 0


def measure_bandwidth(nbytes: int = _COPY_BYTES, repeats: int = _REPEATS) -> float:
    """Main memory's bandwidth in bytes/s: the best of `repeats` numpy copies of `nbytes`
    (bytes read plus bytes written over the time)."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch both: page faults are not bandwidth
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        dt = time.perf_counter() - t
        if dt > 0:
            best = max(best, 2 * src.nbytes / dt)
    del src, dst
    return best


def _nvidia_present() -> bool:
    """Cheap: is there an NVIDIA driver at all (before importing torch to ask)?"""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def gpu() -> tuple[str, int, int] | None:
    """(name, free bytes, total bytes) of the first CUDA GPU torch sees, or None."""
    if not _nvidia_present():
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(0)
        return torch.cuda.get_device_name(0), int(free), int(total)
    except Exception:  # no torch, a broken driver: no GPU, as far as we can tell
        return None


def measure_gpu_bandwidth(nbytes: int = 256 * 2**20, repeats: int = _REPEATS) -> float | None:
    """The GPU memory's bandwidth in bytes/s (a device-to-device copy, read + written)."""
    try:
        import torch

        src = torch.ones(nbytes // 2, dtype=torch.float16, device="cuda")
        dst = torch.empty_like(src)
        dst.copy_(src)
        torch.cuda.synchronize()
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            if dt > 0:
                best = max(best, 2 * nbytes / dt)
        del src, dst
        torch.cuda.empty_cache()
        return best or None
    except Exception:
        return None


def probe(settings: Bandwidths | None = None, measure: bool = True) -> Machine:
    """This machine now. The bandwidths come from `settings` when measured before; else they
    are measured (`measure`) and saved there."""
    free, total = ram()
    bandwidth = settings.memory_bandwidth() if settings is not None else None
    if bandwidth is None and measure:
        bandwidth = measure_bandwidth()
        if settings is not None and bandwidth > 0:
            try:
                settings.set_memory_bandwidth(bandwidth)
            except Exception:  # a store that cannot be written: measured again next time
                pass
    found = gpu()
    if found is None:
        return Machine(free, total, bandwidth or None)
    name, gfree, _ = found
    gbw = settings.gpu_bandwidth() if settings is not None else None
    if gbw is None and measure:
        gbw = measure_gpu_bandwidth()
        if settings is not None and gbw:
            try:
                settings.set_gpu_bandwidth(gbw)
            except Exception:
                pass
    return Machine(free, total, bandwidth or None, name, gfree, gbw)
