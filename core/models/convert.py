"""Convert a BlinkDL RWKV `.pth` (RWKV-6 or RWKV-7) into a GGUF file that llama.cpp runs.

llama.cpp's own converter reads only Hugging Face checkpoints; this one reads the official `.pth`
layout directly and writes the tensor names, shapes and metadata that llama.cpp's `rwkv6` /
`rwkv7` loaders expect (the same layout its `convert_hf_to_gguf.py` produces), with the World
vocabulary stored in the file (`tokenizer.ggml.model = "rwkv"`).

    python -m core.models.convert SRC.pth models/DST.gguf --type f16|q8_0|f32 [--force]

`ConvertJob` runs one in a background thread for a page that starts it and polls it (progress,
cancel, the result or the error); one job writes a given file at a time.

The GGUF is written only inside the models folder, under a `.gguf` name, never in the data
directory, and never over an existing file unless the caller says so (`overwrite=True`, the CLI's
`--force`, the page's confirmation): a typed destination cannot destroy a chat database or a
user's file. The source must be a `.pth`; it is memory-mapped read-only (copy-on-write).

The file is written to a temporary name in the destination folder and renamed at the end: a
failed or cancelled conversion leaves nothing behind. Tensors are converted one at a time, so the
memory needed is about one tensor, not the whole model.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import gguf
import numpy as np
import torch

from core import config
from core.backends.rwkv import detect_version, read_weights
from core.backends.tokenizer import WORLD_VOCAB_SIZE, vocab_entries
from core.errors import ModelError

TYPES = ("f32", "f16", "q8_0")
SUPPORTED_VERSIONS = (6, 7)
_Q = gguf.GGMLQuantizationType
_FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# llama.cpp keeps these in float32 whatever the file type (as its converter does)
_ALWAYS_F32 = (
    "time_mix_first",
    "time_mix_w1",
    "time_mix_w2",
    "time_mix_decay_w1",
    "time_mix_decay_w2",
    "time_mix_lerp_fused",
)
_SPARE_BYTES = 64 * 2**20  # free space to keep beyond the estimated file size

Progress = Callable[[float, str], None]


class ConversionCancelled(ModelError):
    """The user stopped the conversion; nothing was written."""


class DestinationExists(ModelError):
    """The destination is an existing file and replacing it was not confirmed."""


@dataclass
class _Tensor:
    """One GGUF tensor: its name, its shape (torch order) and how to make its data."""

    name: str
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]
    qtype: gguf.GGMLQuantizationType = _Q.F32

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape)) if self.shape else 1
        if self.qtype == _Q.F32:
            return 4 * n
        if self.qtype == _Q.F16:
            return 2 * n
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return n // block * size


def _squeeze(t: torch.Tensor) -> torch.Tensor:
    return t.squeeze()


_Fn = Callable[[torch.Tensor], torch.Tensor]
_Add = Callable[..., None]  # add(gguf_name, pth_key, fn=None)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1)


def _plan(
    sd: dict[str, torch.Tensor],
    n_layer: int,
    lerps: Callable[[str], list[str]],
    block: Callable[[_Add, int, str, str, str], None],
) -> list[_Tensor]:
    """The GGUF tensors of an RWKV model: what versions share (embedding, norms, the fused
    token-shift lerp, output), with `block(add, layer, att, ffn, gguf_prefix)` for the rest."""
    out: list[_Tensor] = []

    def add(name: str, key: str, fn: _Fn | None = None) -> None:
        src = sd[key]
        shape = tuple((fn(torch.empty(src.shape, device="meta")) if fn else src).shape)
        out.append(_Tensor(name, shape, lambda: fn(sd[key]) if fn else sd[key]))

    add("token_embd.weight", "emb.weight")
    add("token_embd_norm.weight", "blocks.0.ln0.weight")
    add("token_embd_norm.bias", "blocks.0.ln0.bias")
    for i in range(n_layer):
        b, a, f, g = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn.", f"blk.{i}."
        add(g + "attn_norm.weight", b + "ln1.weight")
        add(g + "attn_norm.bias", b + "ln1.bias")
        add(g + "attn_norm_2.weight", b + "ln2.weight")
        add(g + "attn_norm_2.bias", b + "ln2.bias")
        keys = lerps(a)
        C = sd[keys[0]].numel()
        out.append(
            _Tensor(
                g + "time_mix_lerp_fused.weight",
                (len(keys), 1, 1, C),
                lambda keys=keys: torch.stack([sd[k].reshape(1, 1, -1) for k in keys], 0),
            )
        )
        block(add, i, a, f, g)
        add(g + "time_mix_ln.weight", a + "ln_x.weight")
        add(g + "time_mix_ln.bias", a + "ln_x.bias")
    add("output_norm.weight", "ln_out.weight")
    add("output_norm.bias", "ln_out.bias")
    add("output.weight", "head.weight")
    return out


def _block_v7(add: _Add, i: int, a: str, f: str, g: str) -> None:
    for p in ("w", "a", "v", "g"):
        # layer 0 has no value residual: llama.cpp wants the tensors anyway, unused, so
        # layer 0's a0/a1/a2 stand in for them (as llama.cpp's converter does)
        src = "a" if (p == "v" and i == 0) else p
        if p != "g":
            add(g + f"time_mix_{p}0.weight", a + f"{src}0", _squeeze)
        add(g + f"time_mix_{p}1.weight", a + f"{src}1", _t)
        add(g + f"time_mix_{p}2.weight", a + f"{src}2", _t)
    add(g + "time_mix_k_k.weight", a + "k_k", _squeeze)
    add(g + "time_mix_k_a.weight", a + "k_a", _squeeze)
    add(g + "time_mix_r_k.weight", a + "r_k", lambda x: x.flatten())
    for name in ("key", "value", "receptance", "output"):
        add(g + f"time_mix_{name}.weight", a + f"{name}.weight")
    add(g + "channel_mix_lerp_k.weight", f + "x_k", _squeeze)
    add(g + "channel_mix_key.weight", f + "key.weight")
    add(g + "channel_mix_value.weight", f + "value.weight")


def _block_v6(add: _Add, i: int, a: str, f: str, g: str) -> None:
    add(g + "time_mix_lerp_x.weight", a + "time_maa_x", _squeeze)
    add(g + "time_mix_w1.weight", a + "time_maa_w1", _t)
    add(g + "time_mix_w2.weight", a + "time_maa_w2", lambda x: x.permute(0, 2, 1))
    add(g + "time_mix_decay.weight", a + "time_decay", _squeeze)
    add(g + "time_mix_decay_w1.weight", a + "time_decay_w1", _t)
    add(g + "time_mix_decay_w2.weight", a + "time_decay_w2", _t)
    add(g + "time_mix_first.weight", a + "time_faaaa")
    for name in ("key", "value", "receptance", "gate", "output"):
        add(g + f"time_mix_{name}.weight", a + f"{name}.weight")
    add(g + "channel_mix_lerp_k.weight", f + "time_maa_k", _squeeze)
    add(g + "channel_mix_lerp_r.weight", f + "time_maa_r", _squeeze)
    for name in ("key", "receptance", "value"):
        add(g + f"channel_mix_{name}.weight", f + f"{name}.weight")


def _plan_v7(sd: dict[str, torch.Tensor], n_layer: int) -> list[_Tensor]:
    return _plan(sd, n_layer, lambda a: [a + f"x_{c}" for c in "rwkvag"], _block_v7)


def _plan_v6(sd: dict[str, torch.Tensor], n_layer: int) -> list[_Tensor]:
    return _plan(sd, n_layer, lambda a: [a + f"time_maa_{c}" for c in "wkvrg"], _block_v6)


def _choose_type(t: _Tensor, out_type: str) -> gguf.GGMLQuantizationType:
    """The storage type of one tensor, following llama.cpp's rules."""
    if (
        out_type == "f32"
        or len(t.shape) <= 1
        or not t.name.endswith(".weight")
        or t.name.endswith("_norm.weight")
        or any(f".{k}.weight" in t.name for k in _ALWAYS_F32)
    ):
        return _Q.F32
    if out_type == "q8_0" and t.shape[-1] % gguf.GGML_QUANT_SIZES[_Q.Q8_0][0] == 0:
        return _Q.Q8_0
    return _Q.F16


def _world_tokens(vocab_size: int) -> tuple[list[bytes], list[int]]:
    """The World vocabulary as llama.cpp's RWKV tokenizer reads it: id 0 is `<s>`, each token
    is written as the inside of its Python bytes literal, unused ids at the end are pads."""
    tokens: list[bytes] = [b"<s>"]
    types: list[int] = [gguf.TokenType.CONTROL]
    try:
        entries = vocab_entries()  # read once per process, without the ast module
    except (OSError, ValueError) as e:
        raise ModelError(f"The World vocabulary file cannot be read: {e}") from e
    for idx, raw in entries:
        if idx != len(tokens):
            raise ModelError(f"The World vocabulary file is damaged near token {idx}.")
        tokens.append(repr(raw)[2:-1].encode("utf-8"))
        types.append(gguf.TokenType.NORMAL)
    for i in range(1, vocab_size - len(tokens) + 1):
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
    return tokens, types


def _hparams(writer: gguf.GGUFWriter, sd: dict[str, torch.Tensor], version: int) -> None:
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n_embd = int(sd["emb.weight"].shape[1])
    writer.add_context_length(1048576)  # RWKV is not context-limited
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_layer_norm_eps(1e-5)
    writer.add_feed_forward_length(int(sd["blocks.0.ffn.key.weight"].shape[0]))
    writer.add_head_count(0)  # required by llama.cpp, unused
    if version == 7:
        writer.add_wkv_head_size(int(sd["blocks.0.att.r_k"].shape[-1]))
        writer.add_decay_lora_rank(int(sd["blocks.0.att.w1"].shape[1]))
        writer.add_iclr_lora_rank(int(sd["blocks.0.att.a1"].shape[1]))
        v1 = next((sd[k] for k in sorted(sd) if k.endswith("att.v1")), sd["blocks.0.att.a1"])
        writer.add_value_residual_mix_lora_rank(int(v1.shape[1]))
        writer.add_gate_lora_rank(int(sd["blocks.0.att.g1"].shape[1]))
    else:
        writer.add_wkv_head_size(int(sd["blocks.0.att.time_faaaa"].shape[-1]))
        writer.add_rescale_every_n_layers(0)
        writer.add_time_mix_extra_dim(int(sd["blocks.0.att.time_maa_w1"].shape[1]) // 5)
        writer.add_time_decay_extra_dim(int(sd["blocks.0.att.time_decay_w1"].shape[1]))


def _data(t: _Tensor) -> np.ndarray:
    x = t.make().detach().to(torch.float32).contiguous().numpy()
    if t.qtype == _Q.F32:
        return x
    if t.qtype == _Q.F16:
        return x.astype(np.float16)
    return gguf.quants.quantize(x, t.qtype)


def _check_source(sd: dict[str, torch.Tensor], name: str) -> int:
    version = detect_version(sd, name)
    if version not in SUPPORTED_VERSIONS:
        raise ModelError(
            f"{name} is an RWKV-{version} model; llama.cpp runs only RWKV-6 and RWKV-7, so it "
            "cannot be converted to GGUF. Load the .pth itself with the rwkv back end instead."
        )
    rows = int(sd["emb.weight"].shape[0])
    if rows != WORLD_VOCAB_SIZE:
        raise ModelError(
            f"{name} has a vocabulary of {rows} tokens; only RWKV World models "
            f"({WORLD_VOCAB_SIZE} tokens) can be converted."
        )
    return version


@dataclass
class Plan:
    """What a conversion will write: checked before any file is touched."""

    version: int
    weights: dict[str, torch.Tensor]  # memory-mapped source tensors
    tensors: list[_Tensor]
    estimate: int  # bytes of the GGUF, about


def plan(src: str | Path, type: str = "f16") -> Plan:
    """Check a `.pth` and list what the GGUF will hold."""
    if type not in TYPES:
        raise ModelError(f"Unknown GGUF type '{type}': choose one of {', '.join(TYPES)}.")
    p = Path(src).expanduser()
    if p.suffix.lower() != ".pth":
        raise ModelError(f"{p.name} is not a .pth file: only BlinkDL .pth models are converted.")
    sd = read_weights(p)
    version = _check_source(sd, p.name)
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    try:
        tensors = (_plan_v7 if version == 7 else _plan_v6)(sd, n_layer)
    except (KeyError, RuntimeError, IndexError) as e:
        raise ModelError(
            f"{p.name} looks like RWKV-{version} but a tensor is missing or misshapen ({e}); "
            "the file may be damaged or of an unusual variant that cannot be converted."
        ) from e
    for t in tensors:
        t.qtype = _choose_type(t, type)
    estimate = sum(t.nbytes for t in tensors) + 4 * 2**20  # + vocabulary and headers
    return Plan(version, sd, tensors, estimate)


def check_destination(dst: str | Path, models_dir: Path | None = None) -> Path:
    """The resolved path `dst` names, if a conversion may write there: a `.gguf` file inside the
    models folder (`models_dir`, default config.MODELS_DIR) and outside the data directory.
    Raises ModelError saying why not. An existing file passes: see `convert(overwrite)`.

    Resolved first, so `..` and symbolic links are judged by where they lead (a source, being a
    .pth, can then never be the destination)."""
    root = (models_dir or config.MODELS_DIR).resolve()
    path = Path(dst).expanduser().resolve()
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"The destination {path.name} must be a file name ending in .gguf.")
    if not path.is_relative_to(root):
        raise ModelError(f"GGUF files are written only inside the models folder {root}.")
    if path.is_relative_to(config.data_dir()):
        raise ModelError("The destination is inside the app's data directory: choose another.")
    if path.is_dir():
        raise ModelError(f"{path} is a folder: give the name of the GGUF file to write.")
    if not path.parent.is_dir():
        raise ModelError(f"The destination folder {path.parent} does not exist.")
    return path


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise DestinationExists(f"{path.name} already exists; it is replaced only if you confirm.")


def convert(
    src: str | Path,
    dst: str | Path,
    type: str = "f16",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    overwrite: bool = False,
    models_dir: Path | None = None,
) -> Path:
    """Convert `src` (.pth) to `dst` (.gguf in the models folder) with tensors in `type` (f32,
    f16 or q8_0); an existing `dst` is replaced only with `overwrite`.

    `progress(fraction, message)` is called as the work goes; setting `cancel` stops it with
    ConversionCancelled. Any failure raises ModelError and leaves no file behind."""
    src_p = Path(src).expanduser()
    dst_p = check_destination(dst, models_dir)
    if not overwrite:
        _refuse_existing(dst_p)
    report = progress or (lambda _f, _m: None)
    report(0.0, f"Reading {src_p.name}")
    pl = plan(src_p, type)
    sd, tensors, version = pl.weights, pl.tensors, pl.version
    folder = dst_p.parent
    tmp = folder / f".{dst_p.name}.{secrets.token_hex(4)}.part"
    try:
        open(tmp, "xb").close()  # created with the usual permissions, unlike mkstemp's 0600
    except OSError as e:
        raise ModelError(f"Cannot write in {folder}: {e.strerror or e}.") from e
    free = shutil.disk_usage(folder).free
    if free < pl.estimate + _SPARE_BYTES:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"Not enough free disk space in {folder}: the GGUF needs about "
            f"{pl.estimate / 2**20:.0f} MiB and {free / 2**20:.0f} MiB are free."
        )
    writer: gguf.GGUFWriter | None = None
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[_arch(version)])
        writer.add_name(src_p.stem)
        writer.add_file_type(_FILE_TYPE[type])
        if type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _hparams(writer, sd, version)
        tokens, types = _world_tokens(int(sd["emb.weight"].shape[0]))
        writer.add_tokenizer_model("rwkv")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_chat_template("rwkv-world")
        writer.add_eot_token_id(261)  # "\n\n" ends a turn, as llama.cpp's converter marks it
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(t.nbytes for t in tensors)
        done = 0
        for t in tensors:
            if cancel is not None and cancel.is_set():
                raise ConversionCancelled("Conversion cancelled; no file was written.")
            report(done / total, f"Converting {t.name}")
            data = _data(t)
            if data.nbytes != t.nbytes:
                raise ModelError(
                    f"Internal error: {t.name} has {data.nbytes} bytes, not {t.nbytes}."
                )
            writer.write_tensor_data(data)
            done += t.nbytes
        writer.close()
        writer = None
        if cancel is not None and cancel.is_set():
            raise ConversionCancelled("Conversion cancelled; no file was written.")
        if not overwrite:  # the file may have appeared while converting
            _refuse_existing(dst_p)
        os.replace(tmp, dst_p)
    except BaseException as e:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, ModelError):
            raise
        if isinstance(e, OSError):
            if e.errno == 28:  # ENOSPC
                raise ModelError(f"The disk filled up while writing {dst_p.name}.") from e
            raise ModelError(f"Could not write {dst_p}: {e.strerror or e}.") from e
        if isinstance(e, Exception):
            raise ModelError(f"Conversion of {src_p.name} failed: {e}") from e
        raise
    report(1.0, f"Wrote {dst_p.name}")
    return dst_p


class ConvertJob:
    """One conversion in a background thread, for a page that starts it and polls it:

        job = ConvertJob.start(src, dst, "f16", overwrite=False)
        while not job.wait(0.25):
            fraction, message = job.progress()
        job.result  # the GGUF written; or job.error, the ModelError (nothing was written)

    `cancel()` stops it and waits for the thread (no file is left). One job per destination
    file at a time: `start` refuses a second one while the first writes that file."""

    _active: ClassVar[dict[Path, ConvertJob]] = {}  # destination -> the job writing it
    _active_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, src: Path, dst: Path, type: str, overwrite: bool, models_dir: Path | None
    ) -> None:
        self.src, self.dst, self.type = src, dst, type
        self.overwrite, self.models_dir = overwrite, models_dir
        self.result: Path | None = None
        self.error: Exception | None = None
        self._fraction, self._message = 0.0, ""
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convert", daemon=True)

    @classmethod
    def start(
        cls,
        src: str | Path,
        dst: str | Path,
        type: str = "f16",
        overwrite: bool = False,
        models_dir: Path | None = None,
    ) -> ConvertJob:
        """Start converting `src` to `dst` (the arguments of `convert`). ModelError at once
        when `dst` may not be written or another job is writing it."""
        path = check_destination(dst, models_dir)
        job = cls(Path(src).expanduser(), path, type, overwrite, models_dir)
        with cls._active_lock:
            if path in cls._active:
                raise ModelError(
                    f"{path.name} is being written by another conversion: wait for it to end, "
                    "or cancel it."
                )
            cls._active[path] = job
        job._thread.start()
        return job

    def _run(self) -> None:
        try:
            self.result = convert(
                self.src,
                self.dst,
                self.type,
                progress=self._report,
                cancel=self._cancel,
                overwrite=self.overwrite,
                models_dir=self.models_dir,
            )
        except Exception as e:  # ModelError, and anything unexpected: kept for the caller
            self.error = e
        finally:
            with self._active_lock:
                if self._active.get(self.dst) is self:
                    del self._active[self.dst]

    def _report(self, fraction: float, message: str) -> None:
        self._fraction, self._message = min(max(float(fraction), 0.0), 1.0), str(message)

    def progress(self) -> tuple[float, str]:
        """How far it is (0 to 1) and what it does now."""
        return self._fraction, self._message

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait at most `timeout` seconds for the end; whether it has ended."""
        self._thread.join(timeout)
        return self.done

    def cancel(self, timeout: float | None = 60) -> None:
        """Stop the conversion (its error becomes ConversionCancelled) and wait at most
        `timeout` seconds for the thread to end."""
        self._cancel.set()
        self._thread.join(timeout)


def _arch(version: int) -> gguf.MODEL_ARCH:
    return gguf.MODEL_ARCH.RWKV7 if version == 7 else gguf.MODEL_ARCH.RWKV6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.models.convert", description="Convert an RWKV-6/7 .pth to GGUF."
    )
    p.add_argument("src", help="BlinkDL .pth file (RWKV-6 or RWKV-7, World vocabulary)")
    p.add_argument("dst", help="GGUF file to write in models/ (a bare file name goes there)")
    p.add_argument("--type", choices=TYPES, default="f16", help="tensor type (default f16)")
    p.add_argument("--force", action="store_true", help="replace an existing destination file")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a = p.parse_args(argv)
    dst = Path(a.dst)
    if dst.name == a.dst:
        dst = config.MODELS_DIR / dst
    last = [-1]

    def show(frac: float, msg: str) -> None:
        pct = int(frac * 100)
        if not a.quiet and pct != last[0]:
            last[0] = pct
            print(f"\r{pct:3d}% {msg[:60]:<60}", end="", file=sys.stderr, flush=True)

    try:
        out = convert(a.src, dst, a.type, progress=show, overwrite=a.force)
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return 130
    except DestinationExists as e:
        print(f"\nerror: {e} Add --force to replace it.", file=sys.stderr)
        return 1
    except ModelError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    if not a.quiet:
        print(file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
