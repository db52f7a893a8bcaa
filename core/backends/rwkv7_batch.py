"""The rwkv package's RWKV-7 one-token forward, over a batch of B sequences at once.

On a CPU the package's `forward_one` reads every weight matrix once per token through a
matrix-vector product, and pays torch's per-op overhead (hundreds of small ops a token) each time.
Decoding the next token of B chats (or B versions of one reply) as [B, C] @ [C, C] products reads
the weights once for all of them and pays the overhead once (on the 0.1B shape here, one thread,
fp32: a step of 2 or 4 costs about what the package's step of one costs, a step of 8 about 1.7
times that). The math is
the package's (rwkv 0.8.32, `RWKV_x070.forward_one`, `RWKV_x070_TMix_one`, `RWKV_x070_CMix_one`)
with a leading batch dimension: norms and products are per sequence, so each sequence's logits
match the package's own within float rounding (the tests hold them to 1e-4).

States are the package's: per layer [att x_prev [C], att kv [H, N, N] float32, ffn x_prev [C]].
They are stacked into [B, ...] for the step, and the results are split into per-sequence lists
of their own (cloned), so a state someone keeps never pins the whole batch's memory, and the
input states are never changed.

The products: torch's fp32 `x @ W` goes to MKL, whose kernels for a few rows are slow on some
CPUs (on this project's AMD EPYC, 8 rows of the 0.1B model's head cost 5 times one row, where
they read the same weights). oneDNN multiplies a few rows at the cost of reading the weight once,
but only with the weight in its own blocked layout (`_reorder_linear_weight`, laid out for
PACK_BATCH rows; any count runs on it): there, 8 rows of the head cost about what one row costs
through MKL, where the plain [out, in] transpose still cost twice that. So on a CPU in fp32 the
step keeps its own blocked copy of the large matrices (head first, then the layers', up to
PACK_LIMIT_BYTES), made at the first batched step: a chat alone never pays for it. Two rows
are padded to PAD_ROWS: oneDNN's kernel for two rows was slower here than its kernel for four.
bf16 products already go to oneDNN and need no copy.

The state's two matrix-vector products (state @ kk, state @ r) are written as a product and a
sum over the last axis: bmm's path for one column cost 4 times that here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
PACK_LIMIT_BYTES = 2 << 30  # fp32 matrices copied for oneDNN (a 0.4B model's all)
PACK_BATCH = 8  # the rows oneDNN lays the copies out for (any count runs; see the module's doc)
PAD_ROWS = 4  # fewer rows are padded with zeros to this many (oneDNN's kernel for 2 is slow)
_MATRICES = (
    "att.receptance.weight",
    "att.key.weight",
    "att.value.weight",
    "att.output.weight",
    "ffn.key.weight",
    "ffn.value.weight",
)


class Rwkv7Batch:
    """Batched one-token steps over a loaded `RWKV_x070` model's weights (`model.z`)."""

    def __init__(self, model: Any) -> None:
        self.z: dict[str, Tensor] = model.z
        self.n_layer: int = int(model.n_layer)
        self.n_embd: int = int(model.n_embd)
        self.H: int = int(model.n_head)
        self.N: int = int(model.head_size)
        self.dtype: torch.dtype = self.z["emb.weight"].dtype
        self.device: torch.device = self.z["emb.weight"].device
        # per layer, the weights in the order the step uses them (one dict lookup per load)
        self.layers = [self._layer(i) for i in range(self.n_layer)]
        self.head: Tensor = self.z["head.weight"]  # [C, V]
        self._packed: dict[int, Tensor] | None = None  # id of a package matrix -> blocked copy

    def _pack(self) -> dict[int, Tensor]:
        """oneDNN's blocked copies of the large fp32 matrices (see the module's doc)."""
        if (
            self.dtype != torch.float32
            or self.device.type != "cpu"
            or not torch.backends.mkldnn.is_available()
            or not hasattr(torch.ops.mkldnn, "_linear_pointwise")  # private: gone in some build
            or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        ):
            return {}
        packed: dict[int, Tensor] = {}
        used = 0
        for w in [self.head] + [layer[n] for layer in self.layers for n in _MATRICES]:
            size = w.numel() * w.element_size()
            if used + size > PACK_LIMIT_BYTES:
                break
            packed[id(w)] = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), PACK_BATCH)
            used += size
        return packed

    def _mm(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, in] @ w [in, out] -> [B, out], through oneDNN when w has a blocked copy."""
        assert self._packed is not None
        wt = self._packed.get(id(w))
        if wt is None:
            return x @ w
        n = x.shape[0]
        if n < PAD_ROWS:
            x = torch.cat((x, x.new_zeros(PAD_ROWS - n, x.shape[1])))
        return torch.ops.mkldnn._linear_pointwise(x, wt, None, "none", [], "")[:n]

    @staticmethod
    def supports(model: Any) -> bool:
        """False for the package's DeepEmbed variant (RWKV_DE_VERSION, `ffn.s_emb`), which
        this step does not implement: such models run one sequence at a time."""
        z = getattr(model, "z", None)
        return isinstance(z, dict) and "blocks.0.ffn.s_emb.weight" not in z

    def _layer(self, i: int) -> dict[str, Tensor]:
        z, b = self.z, f"blocks.{i}."
        names = ["ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"]
        names += [
            f"att.{n}"
            for n in (
                "x_r x_w x_k x_v x_a x_g w0 w1 w2 a0 a1 a2 v0 v1 v2 g1 g2 k_k k_a r_k "
                "receptance.weight key.weight value.weight output.weight ln_x.weight ln_x.bias"
            ).split()
        ]
        names += ["ffn.x_k", "ffn.key.weight", "ffn.value.weight"]
        return {n: z[b + n] for n in names}

    @torch.no_grad()
    def forward(
        self, tokens: list[int], states: list[list[Tensor]]
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """One token for each of B sequences: logits [B, n_vocab] (the model's dtype) and
        each sequence's new state. `states[b]` is left as it was."""
        B, C = len(tokens), self.n_embd
        z = self.z
        if self._packed is None:
            self._packed = self._pack()
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)
        x = z["emb.weight"][idx]  # [B, C]
        new: list[list[Tensor]] = [[] for _ in range(B)]
        v_first = x  # set by layer 0
        for i, w in enumerate(self.layers):
            att_prev = torch.stack([s[3 * i] for s in states])  # [B, C]
            kv = torch.stack([s[3 * i + 1] for s in states])  # [B, H, N, N] float32
            ffn_prev = torch.stack([s[3 * i + 2] for s in states])  # [B, C]

            xx = F.layer_norm(x, (C,), weight=w["ln1.weight"], bias=w["ln1.bias"])  # [B, C]
            out, kv, v_first = self._tmix(i, w, xx, att_prev, v_first, kv)
            att_x = xx
            x = x + out  # [B, C]

            xx = F.layer_norm(x, (C,), weight=w["ln2.weight"], bias=w["ln2.bias"])  # [B, C]
            x = x + self._cmix(w, xx, ffn_prev)  # [B, C]

            for b in range(B):  # clones: a kept state holds only its own memory
                new[b] += [att_x[b].clone(), kv[b].clone(), xx[b].clone()]
        x = F.layer_norm(x, (C,), weight=z["ln_out.weight"], bias=z["ln_out.bias"])  # [B, C]
        return self._mm(x, self.head), new  # [B, V]

    def _tmix(
        self,
        layer: int,
        w: dict[str, Tensor],
        x: Tensor,  # [B, C]
        x_prev: Tensor,  # [B, C]
        v_first: Tensor,  # [B, C]
        state: Tensor,  # [B, H, N, N] float32
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`RWKV_x070_TMix_one` with a batch dimension: (output [B, C], state, v_first)."""
        B, H, N = x.shape[0], self.H, self.N
        xx = x_prev - x  # [B, C]
        xr, xw, xk = x + xx * w["att.x_r"], x + xx * w["att.x_w"], x + xx * w["att.x_k"]
        xv, xa, xg = x + xx * w["att.x_v"], x + xx * w["att.x_a"], x + xx * w["att.x_g"]

        r = self._mm(xr, w["att.receptance.weight"])  # [B, C]
        dw = torch.tanh(xw @ w["att.w1"]) @ w["att.w2"]  # [B, C]
        k = self._mm(xk, w["att.key.weight"])  # [B, C]
        v = self._mm(xv, w["att.value.weight"])  # [B, C]
        a = torch.sigmoid(w["att.a0"] + (xa @ w["att.a1"]) @ w["att.a2"])  # [B, C]
        g = torch.sigmoid(xg @ w["att.g1"]) @ w["att.g2"]  # [B, C]

        kk = F.normalize((k * w["att.k_k"]).view(B, H, N), dim=-1, p=2.0).view(B, H * N)
        k = k * (1 + (a - 1) * w["att.k_a"])  # [B, C]
        if layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(w["att.v0"] + (xv @ w["att.v1"]) @ w["att.v2"])
        decay = torch.exp(-0.606531 * torch.sigmoid((w["att.w0"] + dw).float()))  # [B, C] f32

        # the package's `state*w + state @ ab + vk`, with ab = (-kk) (kk*a)^T and vk = v k^T
        # both of rank one: state @ ab = (state @ -kk) (kk*a)^T, so the update is one rank-2
        # product added to the decayed state (N^2 work a head instead of the N^3 of state @ ab)
        # (state * u).sum(-1) is state @ u: 4 times faster here than bmm's matrix-vector path
        sa = (state * (-kk).float().view(B, H, 1, N)).sum(-1, keepdim=True)  # [B, H, N, 1]
        left = torch.cat((sa, v.float().view(B, H, N, 1)), dim=-1)  # [B, H, N, 2]
        right = torch.cat(((kk * a).float().view(B, H, 1, N), k.float().view(B, H, 1, N)), -2)
        state = state * decay.view(B, H, 1, N)  # [B, H, N, N], a tensor of this step's own
        state.view(B * H, N, N).baddbmm_(left.view(B * H, N, 2), right.view(B * H, 2, N))
        out = (state.to(dtype=x.dtype) * r.view(B, H, 1, N)).sum(-1, keepdim=True)  # [B, H, N, 1]

        out = F.group_norm(
            out.view(B, H * N),
            num_groups=H,
            weight=w["att.ln_x.weight"],
            bias=w["att.ln_x.bias"],
            eps=64e-5,
        )  # [B, C]
        bonus = (r * k * w["att.r_k"]).view(B, H, N).sum(dim=-1, keepdim=True)  # [B, H, 1]
        out = out + (bonus * v.view(B, H, N)).view(B, H * N)  # [B, C]
        return self._mm(out * g, w["att.output.weight"]), state, v_first

    def _cmix(self, w: dict[str, Tensor], x: Tensor, x_prev: Tensor) -> Tensor:
        """`RWKV_x070_CMix_one` with a batch dimension: output [B, C]."""
        k = x + (x_prev - x) * w["ffn.x_k"]  # [B, C]
        k = torch.relu(self._mm(k, w["ffn.key.weight"])) ** 2  # [B, 4C]
        return self._mm(k, w["ffn.value.weight"])  # [B, C]
