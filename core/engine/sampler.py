"""Sampling: temperature, top-p, top-k, min-p, presence and frequency penalties with decay.

Semantics follow the rwkv package's PIPELINE.sample_logits (the old app's behaviour): top-p and
top-k cut on the softmax of the logits, then temperature reshapes what is left. It is written to
cost well under 0.5 ms a token at vocabulary 65536 on a trained model: one softmax over the whole
vocabulary, then a sort of only the tokens that can be in the nucleus, and penalties applied only
to seen tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # >0; applied after the top-p/top-k cut; 0 means greedy
    top_p: float = 0.3  # keep the most likely tokens whose mass reaches top_p (1 = all)
    top_k: int = 0  # keep the k most likely tokens (0 = no limit)
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability
    presence_penalty: float = 0.5  # subtracted from the logit of any token already generated
    frequency_penalty: float = 0.5  # subtracted once per (decayed) occurrence
    penalty_decay: float = 0.996  # occurrences fade by this factor every token
    seed: int | None = None  # fixed seed: the same reply from the same state
    max_tokens: int = 300  # a reply stops after this many tokens
    # (token id, bias) pairs added to the logits before sampling (API `logit_bias`; -100 bans)
    logit_bias: tuple[tuple[int, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SamplingParams:
        """Build from a (possibly partial or stale) dict: unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def validated(self) -> SamplingParams:
        """A copy with every value clamped into its valid range."""
        return replace(
            self,
            temperature=min(max(float(self.temperature), 0.0), 5.0),
            top_p=min(max(float(self.top_p), 0.0), 1.0),
            top_k=max(int(self.top_k), 0),
            min_p=min(max(float(self.min_p), 0.0), 1.0),
            penalty_decay=min(max(float(self.penalty_decay), 0.0), 1.0),
            max_tokens=min(max(int(self.max_tokens), 1), 8192),
            logit_bias=_valid_bias(self.logit_bias),
        )


MAX_BIAS = 100.0  # OpenAI's range: -100 bans a token, +100 all but forces it


def _valid_bias(pairs: Any) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as sorted (token id >= 0, bias clamped to +-MAX_BIAS) pairs; a dict (from
    a request) or a list of pairs (from JSON) is taken; entries that are not numbers dropped."""
    items = pairs.items() if isinstance(pairs, dict) else pairs or ()
    out: dict[int, float] = {}
    for item in items:
        try:
            tok, bias = int(item[0]), float(item[1])
        except (TypeError, ValueError, IndexError):
            continue
        if tok >= 0 and np.isfinite(bias):
            out[tok] = min(max(bias, -MAX_BIAS), MAX_BIAS)
    return tuple(sorted(out.items()))


# logit_bias as arrays, by the identity of its tuple: hashing a long tuple every token would
# cost more than sampling (5 ms for a bias on every token of a 65536 vocabulary)
_BIAS_ARRAYS: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}


def _bias_arrays(pairs: tuple[tuple[int, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    hit = _BIAS_ARRAYS.get(id(pairs))
    if hit is not None and hit[0] is pairs:
        return hit[1], hit[2]
    ids = np.array([t for t, _ in pairs], dtype=np.int64)
    bias = np.array([b for _, b in pairs], dtype=np.float32)
    if len(_BIAS_ARRAYS) >= 64:
        _BIAS_ARRAYS.clear()
    _BIAS_ARRAYS[id(pairs)] = (pairs, ids, bias)  # holds `pairs`, so its id stays its own
    return ids, bias


# RWKV's recommended decoding (BlinkDL, RWKV-LM / ChatRWKV: temperature 1, top-p 0.3, presence
# and frequency penalty 0.5, decay 0.996), also the chat demo's defaults
_RWKV = SamplingParams(temperature=1.0, top_p=0.3, presence_penalty=0.5, frequency_penalty=0.5)
# small instruct transformers (SmolLM2, Qwen, Llama chat GGUFs) without their own values: the
# usual llama.cpp-style cut (top-k 40, top-p 0.9, min-p 0.05) at a temperature below 1, light
# penalties (these are subtracted from logits, not llama.cpp's repeat multiplier)
_INSTRUCT = SamplingParams(
    temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, presence_penalty=0.3, frequency_penalty=0.3
)

PRESETS: dict[str, SamplingParams] = {
    # the old gradio app's role-play values
    "roleplay": SamplingParams(
        temperature=2.0, top_p=0.6, top_k=0, presence_penalty=0.2, frequency_penalty=0.2
    ),
    "chat": _RWKV,
    "creative": SamplingParams(
        temperature=1.2,
        top_p=0.8,
        min_p=0.02,
        presence_penalty=0.3,
        frequency_penalty=0.3,
    ),
    "precise": SamplingParams(
        temperature=0.7,
        top_p=0.2,
        top_k=40,
        presence_penalty=0.1,
        frequency_penalty=0.1,
    ),
    "greedy": SamplingParams(
        temperature=0.0, top_p=1.0, presence_penalty=0.0, frequency_penalty=0.0
    ),
    "rwkv": _RWKV,
    "instruct": _INSTRUCT,
    # the loaded model's own: "rwkv" for RWKV models, the values a GGUF's authors wrote in it
    # (general.sampling.*) over "instruct" for other GGUF models (`model_preset`); these values
    # are what is shown before a model is known
    "auto": _INSTRUCT,
}
DEFAULT_PRESET = "auto"
AUTO_PRESET = "auto"


def known_preset(name: object) -> str:
    """A saved preset name as used: the default one when it is not a preset (any more)."""
    return name if isinstance(name, str) and name in PRESETS else DEFAULT_PRESET


# keys of ModelInfo.extra["sampling"] (read from a GGUF's general.sampling.*) -> our fields
_GGUF_SAMPLING = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}


def model_preset(
    arch: str = "", backend: str = "", recommended: dict | None = None
) -> SamplingParams:
    """The "auto" preset for a model: RWKV's values for an RWKV model (any back end), else the
    values its GGUF recommends (`recommended`: general.sampling.* without the prefix) over the
    "instruct" preset; "instruct" when nothing is known."""
    if arch.startswith("rwkv") or backend == "rwkv":
        return PRESETS["rwkv"]
    values = {_GGUF_SAMPLING[k]: v for k, v in (recommended or {}).items() if k in _GGUF_SAMPLING}
    if not values:
        return PRESETS["instruct"]
    return replace(PRESETS["instruct"], **values).validated()


class Penalties:
    """Decayed occurrence counts of generated tokens, O(1) per token.

    The true count of token t is `_stored[t] * _scale`; decaying every count is one multiply of
    `_scale`, and adding an occurrence adds `1 / _scale` to one entry.
    """

    def __init__(self, n_vocab: int, decay: float) -> None:
        self._stored = np.zeros(n_vocab, dtype=np.float64)
        self._seen: list[int] = []
        self._seen_arr: np.ndarray | None = None
        self._scale = 1.0
        self._decay = decay

    def add(self, token: int) -> None:
        self._scale *= self._decay
        if self._scale < 1e-200:  # renormalise before underflow
            self._stored *= self._scale
            self._scale = 1.0
        if self._stored[token] == 0.0:
            self._seen.append(token)
            self._seen_arr = None
        self._stored[token] += 1.0 / max(self._scale, 1e-300)

    def apply(self, logits: np.ndarray, presence: float, frequency: float) -> None:
        """Lower the logits of seen tokens in place."""
        if not self._seen or (presence == 0.0 and frequency == 0.0):
            return
        if self._seen_arr is None:
            self._seen_arr = np.array(self._seen, dtype=np.int64)
        ids = self._seen_arr
        logits[ids] -= (presence + frequency * self._stored[ids] * self._scale).astype(logits.dtype)


_BLOCK = 256


def first_reaching(values: np.ndarray, target: float) -> int:
    """First index i with sum(values[: i + 1]) > target (clamped to the last index).

    A cumulative sum over 65536 floats costs numpy ~0.2 ms; summing blocks first and then one
    block costs a tenth of that."""
    n = values.size
    pad = (-n) % _BLOCK
    v = np.concatenate((values, np.zeros(pad, values.dtype))) if pad else values
    block_cum = np.cumsum(v.reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64))  # [n / B]
    b = min(int(np.searchsorted(block_cum, target, side="right")), block_cum.size - 1)
    before = float(block_cum[b - 1]) if b > 0 else 0.0
    inner = np.cumsum(v[b * _BLOCK : (b + 1) * _BLOCK], dtype=np.float64)  # [B]
    j = min(int(np.searchsorted(inner, target - before, side="right")), _BLOCK - 1)
    return min(b * _BLOCK + j, n - 1)


def nucleus_threshold(probs: np.ndarray, top_p: float) -> float:
    """Smallest probability kept by top-p: the tokens with p >= threshold are the shortest prefix
    of the descending order whose mass reaches `top_p` (ties kept together, as PIPELINE does).

    Sorting all 65536 probabilities costs ~1.4 ms, most of a token's sampling. A trained model's
    nucleus is a few hundred tokens at most, so the candidates are first cut at a fraction of
    the top probability (`_candidates`): when the tokens above the cut already hold `top_p`, the
    nucleus lies among them and only they are sorted. A flat distribution (random weights)
    sorts everything, as before."""
    total = float(probs.sum(dtype=np.float64))
    low = total * (1.0 - top_p)  # the low tail's mass that top-p drops
    cand = _candidates(probs, total - low)
    below = total - float(cand.sum(dtype=np.float64))  # mass outside the candidates
    if cand.size >= _BRACKET_MIN:
        cut = _bracketed(cand, low - below)
        if cut is not None:
            return cut
    # drop the low tail whose mass stays at or below `low`: the first entry that takes the
    # running sum past it is the smallest kept (the tokens outside `cand` are all in that tail)
    asc = np.sort(cand)  # [m] ascending
    return float(asc[first_reaching(asc, low - below)])


_BRACKET_MIN = 8192  # candidates from which `_bracketed` is tried before a full sort
_SAMPLE = 1024  # probabilities in `_bracketed`'s sample
_MARGIN = 24  # sample entries each side of the estimated crossing (about 5 % of all values)


def _bracketed(values: np.ndarray, target: float) -> float | None:
    """`sort(values)[first_reaching(sort(values), target)]` without sorting everything (None
    when the guess below misses; the caller sorts then).

    A flat distribution (random weights) keeps most of the vocabulary in its nucleus, and a
    sort of all 65536 costs ~1.5 ms. A sorted sample of every m-th value estimates where the
    running mass crosses `target`; two sample values a margin either side bracket it. Every
    value below the bracket comes before it in the sorted order, so only the values inside are
    sorted: if the mass below stays at or under `target` and the bracket's own mass takes it
    past, the crossing is inside, at the same value a full sort finds."""
    step = max(1, values.size // _SAMPLE)
    sample = np.sort(values[::step])  # [s] ascending
    est = np.cumsum(sample, dtype=np.float64) * step  # estimated mass up to each sample value
    i = int(np.searchsorted(est, target, side="right"))
    lo = float(sample[i - _MARGIN]) if i - _MARGIN >= 0 else -np.inf
    hi = float(sample[i + _MARGIN]) if i + _MARGIN < sample.size else np.inf
    under = values < lo
    mass_under = float((values * under).sum(dtype=np.float64))  # all before the bracket
    if mass_under > target:
        return None
    inside = np.sort(values[(values >= lo) & (values < hi)])  # [k] ascending
    if inside.size == 0 or mass_under + float(inside.sum(dtype=np.float64)) <= target:
        return None
    return float(inside[first_reaching(inside, target - mass_under)])


def _candidates(probs: np.ndarray, mass: float) -> np.ndarray:
    """The probabilities above a cut that keeps at least `mass` and as few as it easily can
    (all of them when no cut does, or when the cut would keep more than a quarter).

    Each cut is first judged on a strided sample of every 64th probability: where the sample
    says that far more than a quarter lie above it (a flat distribution), all are kept without
    the full pass over the vocabulary (two such passes were half of a token's sampling on
    random weights). The sample only chooses which cuts to check; what is returned is exact."""
    n = probs.size
    step = max(1, n // _SAMPLE)
    sample = probs[::step]  # [n / step], a view
    cut = float(probs.max()) / 256.0
    while cut > 0.0:
        if np.count_nonzero(sample >= cut) > sample.size // 3:
            break  # surely more than a quarter above the cut
        above = probs[probs >= cut]  # [m]
        if above.size > n // 4:
            break
        if float(above.sum(dtype=np.float64)) >= mass:
            return above
        cut /= 16.0
    return probs


def sample(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    penalties: Penalties | None = None,
    banned: np.ndarray | None = None,
) -> int:
    """Pick the next token from float32 `logits` [n_vocab]. `logits` is not modified."""
    x = np.array(logits, dtype=np.float32, copy=True)  # [n_vocab]
    if penalties is not None:
        penalties.apply(x, params.presence_penalty, params.frequency_penalty)
    if params.logit_bias:
        ids, bias = _bias_arrays(params.logit_bias)
        keep = ids < x.size  # a bias for a token this model does not have is ignored
        x[ids[keep]] += bias[keep]
    if banned is not None and banned.size:
        x[banned] = -np.inf
    if params.temperature <= 0.0 or params.top_k == 1:
        return int(np.argmax(x))
    cand = None
    if 0 < params.top_k < x.size:
        cand = np.argpartition(x, -params.top_k)[-params.top_k :]  # [k]
        x = x[cand]
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()  # probabilities
    cut = 0.0
    if params.top_p < 1.0:
        cut = nucleus_threshold(p, params.top_p)
    if params.min_p > 0.0:
        cut = max(cut, params.min_p * float(p.max()))
    keep = np.flatnonzero(p >= cut)  # [m]
    w = np.exp(x[keep] / params.temperature) if params.temperature != 1.0 else p[keep]
    tok = keep[first_reaching(w, rng.random() * float(w.sum(dtype=np.float64)))]
    return int(tok if cand is None else cand[tok])
