"""Tiny RWKV models with random weights in the official BlinkDL tensor layout.

Tests and benchmarks build their models with this, so the project needs no downloaded weights:
    python -m tests.support.tiny_model --version 7 --layers 2 --width 128 --out /tmp/tiny-v7.pth

Shapes follow RWKV-LM's training code (v4 "RWKV-4", v5 = 5.2 "World", v6 "Finch", v7 "Goose");
the vocabulary is the real World vocabulary size, 65536.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

VOCAB = 65536
HEAD_SIZE = 64


def _lora_dim(width: int, factor: float, power: float) -> int:
    """RWKV-7's low-rank sizes, as in RWKV-LM: multiples of 32, at least 32."""
    return max(32, int(round(factor * (width**power) / 32) * 32))


def make_state_dict(
    version: int,
    layers: int,
    width: int,
    vocab: int = VOCAB,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random weights for RWKV-`version` (4, 5, 6 or 7) with `layers` blocks of `width`, each
    tensor made in `dtype` as it is drawn (a 2.9B shape in bf16 never holds all its weights in
    float32 at once; float32, the default, is what the tests use)."""
    if version not in (4, 5, 6, 7):
        raise ValueError(f"version must be 4, 5, 6 or 7, not {version}")
    if version >= 5 and width % HEAD_SIZE:
        raise ValueError(f"width must be a multiple of {HEAD_SIZE} for RWKV-{version}")
    gen = torch.Generator().manual_seed(seed)
    C = width
    H = C // HEAD_SIZE

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    def uni(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(*shape, generator=gen)).to(dtype)

    w: dict[str, torch.Tensor] = {"emb.weight": rnd(vocab, C, std=1e-2)}

    def mat(rows: int, cols: int) -> torch.Tensor:  # a [rows, cols] projection
        return rnd(rows, cols, std=1.0 / math.sqrt(cols))

    for i in range(layers):
        b = f"blocks.{i}."
        if i == 0:
            w[b + "ln0.weight"], w[b + "ln0.bias"] = torch.ones(C), torch.zeros(C)
        for ln in ("ln1", "ln2"):
            w[b + ln + ".weight"], w[b + ln + ".bias"] = (
                1 + rnd(C, std=0.1),
                rnd(C, std=0.1),
            )
        a, f = b + "att.", b + "ffn."
        if version == 7:
            for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
                w[a + name] = uni(1, 1, C)
            dd, da = _lora_dim(C, 1.8, 0.5), _lora_dim(C, 1.8, 0.5)
            dv, dg = _lora_dim(C, 1.3, 0.5), _lora_dim(C, 0.6, 0.8)
            w[a + "w0"] = uni(1, 1, C, lo=-6.0, hi=-0.5)  # [1,1,C] decay bias
            w[a + "w1"], w[a + "w2"] = rnd(C, dd), rnd(dd, C, std=0.1)
            w[a + "a0"] = rnd(1, 1, C, std=0.5)
            w[a + "a1"], w[a + "a2"] = rnd(C, da), rnd(da, C, std=0.1)
            if i > 0:  # layer 0 has no value residual
                w[a + "v0"] = rnd(1, 1, C, std=0.5) + 1
                w[a + "v1"], w[a + "v2"] = rnd(C, dv), rnd(dv, C, std=0.1)
            w[a + "g1"], w[a + "g2"] = rnd(C, dg), rnd(dg, C, std=0.1)
            w[a + "k_k"], w[a + "k_a"] = uni(1, 1, C, lo=0.5, hi=1.0), uni(1, 1, C)
            w[a + "r_k"] = rnd(H, HEAD_SIZE, std=0.1)  # [H, N]
            for name in ("receptance", "key", "value", "output"):
                w[a + name + ".weight"] = mat(C, C)
            w[a + "ln_x.weight"], w[a + "ln_x.bias"] = (
                1 + rnd(C, std=0.1),
                rnd(C, std=0.1),
            )
            w[f + "x_k"] = uni(1, 1, C)
            w[f + "key.weight"], w[f + "value.weight"] = mat(4 * C, C), mat(C, 4 * C)
            continue
        # versions 4 to 6
        if version == 6:
            for name in ("x", "w", "k", "v", "r", "g"):
                w[a + f"time_maa_{name}"] = uni(1, 1, C)
            w[a + "time_maa_w1"], w[a + "time_maa_w2"] = (
                rnd(C, 5 * 32),
                rnd(5, 32, C, std=0.1),
            )
            w[a + "time_decay"] = uni(1, 1, C, lo=-6.0, hi=-0.5)
            w[a + "time_decay_w1"], w[a + "time_decay_w2"] = (
                rnd(C, 64),
                rnd(64, C, std=0.1),
            )
            w[a + "time_faaaa"] = rnd(H, HEAD_SIZE, std=0.3)
        else:
            for name in ("k", "v", "r") + (("g",) if version == 5 else ()):
                w[a + f"time_mix_{name}"] = uni(1, 1, C)
            if version == 5:  # 5.2: per-head decay [H, N]
                w[a + "time_decay"] = uni(H, HEAD_SIZE, lo=-6.0, hi=-0.5)
                w[a + "time_faaaa"] = rnd(H, HEAD_SIZE, std=0.3)
            else:
                w[a + "time_decay"] = uni(C, lo=-6.0, hi=-0.5)
                w[a + "time_first"] = rnd(C, std=0.3)
        for name in ("receptance", "key", "value", "output") + (("gate",) if version >= 5 else ()):
            w[a + name + ".weight"] = mat(C, C)
        if version >= 5:
            w[a + "ln_x.weight"], w[a + "ln_x.bias"] = (
                1 + rnd(C, std=0.1),
                rnd(C, std=0.1),
            )
        ffn_dim = 4 * C if version == 4 else int(C * 3.5) // 32 * 32
        mix = "time_maa" if version == 6 else "time_mix"
        w[f + f"{mix}_k"], w[f + f"{mix}_r"] = uni(1, 1, C), uni(1, 1, C)
        w[f + "key.weight"], w[f + "value.weight"] = mat(ffn_dim, C), mat(C, ffn_dim)
        w[f + "receptance.weight"] = mat(C, C)
    w["ln_out.weight"], w["ln_out.bias"] = torch.ones(C), torch.zeros(C)
    w["head.weight"] = rnd(vocab, C, std=1.0 / math.sqrt(C))
    return w


def write_model(
    path: str | Path,
    version: int,
    layers: int,
    width: int,
    vocab: int = VOCAB,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random model to `path` (a `.pth` file) and return the path."""
    path = Path(path)
    sd = {
        k: v.to(dtype).contiguous()
        for k, v in make_state_dict(version, layers, width, vocab, seed, dtype).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version", type=int, choices=(4, 5, 6, 7), required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    out = write_model(a.out, a.version, a.layers, a.width, a.vocab, a.seed, dtype)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
