"""Sampling: temperature, top-p, top-k, min-p, presence and frequency penalties with decay, and
DRY ("don't repeat yourself", `Dry`): a penalty on the token that would extend a repeat of
earlier text.

Semantics follow the rwkv package's PIPELINE.sample_logits (the old app's behaviour): top-p and
top-k cut on the softmax of the logits, then temperature reshapes what is left. It is written to
cost well under 0.5 ms a token at vocabulary 65536 on a trained model: one softmax over the whole
vocabulary, then a sort of only the tokens that can be in the nucleus, and penalties applied only
to seen tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

# SillyTavern's default sequence breakers: a new line, a colon (`Name:`), a quote, an asterisk
DRY_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")
DRY_RANGE = 4096  # recent tokens DRY compares by default (llama.cpp's default is the context)
MAX_DRY_RANGE = 65536
MAX_DRY_MULTIPLIER = 100.0
MAX_DRY_BASE = 10.0
MAX_DRY_ALLOWED = 100
MAX_BREAKERS = 32  # sequence breakers of one request
MAX_BREAKER_CHARS = 64


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
    # DRY (see `Dry`), with SillyTavern's names and defaults: a token that would extend a repeat
    # of n tokens of the recent text loses multiplier * base ** (n - allowed_length)
    dry_multiplier: float = 0.0  # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2  # repeats up to this long are free
    dry_sequence_breakers: tuple[str, ...] = DRY_BREAKERS  # a repeat never runs across these
    dry_range: int = 0  # recent tokens DRY looks at (chat + reply so far); 0: DRY_RANGE

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
            dry_multiplier=min(max(float(self.dry_multiplier), 0.0), MAX_DRY_MULTIPLIER),
            dry_base=min(max(float(self.dry_base), 1.0), MAX_DRY_BASE),
            dry_allowed_length=min(max(int(self.dry_allowed_length), 1), MAX_DRY_ALLOWED),
            dry_sequence_breakers=valid_breakers(self.dry_sequence_breakers),
            dry_range=min(max(int(self.dry_range), 0), MAX_DRY_RANGE),
        )


def valid_breakers(value: Any) -> tuple[str, ...]:
    """Sequence breakers as a tuple of distinct non-empty strings (a list from JSON is taken;
    anything else, and strings past the limits, dropped)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return DRY_BREAKERS
    out: list[str] = []
    for b in items:
        if isinstance(b, str) and b and len(b) <= MAX_BREAKER_CHARS and b not in out:
            out.append(b)
    return tuple(out[:MAX_BREAKERS])


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


# DRY as SillyTavern recommends it for role play (multiplier 0.8, base 1.75, allowed length 2):
# against a reply that copies an earlier line word for word (issue 23: a group's members posted
# the same 36-token line 13 times in a row)
_DRY_ON = {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2}
# RWKV's recommended decoding (BlinkDL, RWKV-LM / ChatRWKV: temperature 1, top-p 0.3, presence
# and frequency penalty 0.5, decay 0.996), also the chat demo's defaults; with DRY
_RWKV = SamplingParams(
    temperature=1.0, top_p=0.3, presence_penalty=0.5, frequency_penalty=0.5, **_DRY_ON
)
# small instruct transformers (SmolLM2, Qwen, Llama chat GGUFs) without their own values: the
# usual llama.cpp-style cut (top-k 40, top-p 0.9, min-p 0.05) at a temperature below 1, light
# penalties (these are subtracted from logits, not llama.cpp's repeat multiplier), DRY
_INSTRUCT = SamplingParams(
    temperature=0.7,
    top_p=0.9,
    top_k=40,
    min_p=0.05,
    presence_penalty=0.3,
    frequency_penalty=0.3,
    **_DRY_ON,
)

PRESETS: dict[str, SamplingParams] = {
    # the old gradio app's role-play values, with DRY
    "roleplay": SamplingParams(
        temperature=2.0, top_p=0.6, top_k=0, presence_penalty=0.2, frequency_penalty=0.2, **_DRY_ON
    ),
    "chat": _RWKV,
    "creative": SamplingParams(
        temperature=1.2,
        top_p=0.8,
        min_p=0.02,
        presence_penalty=0.3,
        frequency_penalty=0.3,
        **_DRY_ON,
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
    """Decayed occurrence counts of generated tokens, O(1) per token; and the DRY penalty when
    a `Dry` is given (fed the same tokens).

    The true count of token t is `_stored[t] * _scale`; decaying every count is one multiply of
    `_scale`, and adding an occurrence adds `1 / _scale` to one entry.
    """

    def __init__(self, n_vocab: int, decay: float, dry: Dry | None = None) -> None:
        self._stored = np.zeros(n_vocab, dtype=np.float64)
        self._seen: list[int] = []
        self._seen_arr: np.ndarray | None = None
        self._scale = 1.0
        self._decay = decay
        self.dry = dry

    def add(self, token: int) -> None:
        self._scale *= self._decay
        if self._scale < 1e-200:  # renormalise before underflow
            self._stored *= self._scale
            self._scale = 1.0
        if self._stored[token] == 0.0:
            self._seen.append(token)
            self._seen_arr = None
        self._stored[token] += 1.0 / max(self._scale, 1e-300)
        if self.dry is not None:
            self.dry.push(token)

    def apply(self, logits: np.ndarray, presence: float, frequency: float) -> None:
        """Lower the logits of seen tokens in place (and those DRY penalises)."""
        if self.dry is not None:
            self.dry.apply(logits)
        if not self._seen or (presence == 0.0 and frequency == 0.0):
            return
        if self._seen_arr is None:
            self._seen_arr = np.array(self._seen, dtype=np.int64)
        ids = self._seen_arr
        logits[ids] -= (presence + frequency * self._stored[ids] * self._scale).astype(logits.dtype)


class VocabText:
    """Every token's bytes joined in one string (0 bytes between), to find the tokens that
    contain a piece of text with one regular-expression scan (about 15 ms over 65536 tokens,
    where a test per token took 0.5 s)."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.n = len(pieces)
        self._blob = b"\0".join(pieces)
        lengths = np.fromiter((len(p) + 1 for p in pieces), dtype=np.int64, count=self.n)
        self._starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if self.n else lengths

    def containing(self, needles: Sequence[str]) -> np.ndarray:
        """bool [n]: the tokens whose bytes contain one of `needles` (UTF-8)."""
        mask = np.zeros(self.n, dtype=bool)
        for needle in needles:
            raw = needle.encode("utf-8")
            if not raw or b"\0" in raw:
                continue
            at = [m.start() for m in re.finditer(re.escape(raw), self._blob)]
            if at:  # a match lies within one token: the 0 bytes between tokens never match
                mask[np.searchsorted(self._starts, np.array(at), side="right") - 1] = True
        return mask


def breaker_mask(
    breakers: tuple[str, ...], n_vocab: int, token_bytes: Callable[[int], bytes]
) -> np.ndarray:
    """Which tokens are DRY sequence breakers: those whose text contains one of `breakers`
    (bool [n_vocab]). llama.cpp and koboldcpp do the same for a breaker inside one token (a
    breaker split over several tokens, which they also follow, is not matched here). The
    engine keeps a `VocabText` of its vocabulary and asks it directly."""
    return VocabText([token_bytes(t) for t in range(n_vocab)]).containing(breakers)


_FLOAT_MAX_LOG = 88.7228391  # log(float32 max): base ** exponent is kept below it
_DRY_MAX_PENALTY = 1e30
_DRY_SLACK = 1024  # tokens a Dry takes past its window before it drops the oldest


def suffix_matches(tokens: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """m[j] = how many tokens ending at j equal the tokens at the end of `tokens` (the longest
    common suffix of tokens[: j + 1] and tokens), not counting past the last breaker
    (`breaks`: bool per token); m[-1] = 0 (the end itself). int32 [L].

    Vectorised over j, one round per matched length: the round k keeps the j whose k-th token
    back still matches, which after the first rounds are few."""
    n = tokens.size
    m = np.zeros(n, dtype=np.int32)
    if n < 2:
        return m
    at = np.flatnonzero(breaks)
    limit = n - 1 - (int(at[-1]) if at.size else -1)  # tokens at the end after the last breaker
    active = np.arange(n - 1)  # [L - 1] candidate ends of an earlier occurrence
    k = 0
    while active.size and k < limit:
        active = active[active >= k]
        active = active[tokens[active - k] == tokens[n - 1 - k]]
        m[active] += 1
        k += 1
    return m


class Dry:
    """DRY ("don't repeat yourself", koboldcpp's and llama.cpp's sampler, over token ids): a
    token that would extend a repeat of earlier text is penalised.

    The context is the last `dry_range` tokens (the chat's recent tokens, then the reply as it
    grows). Where the last n tokens of the context also occur earlier, followed by token t, and
    n >= allowed_length, t loses multiplier * base ** (n - allowed_length) from its logit (n is
    the longest such match for t; the exponent is capped so the power stays finite). A repeat
    never runs across a sequence breaker (a token whose text contains one), and a breaker token
    is never penalised.

    Cheap per token: the match length of every earlier position against the current end is
    kept (`_m`), and a new token updates it in one vectorised step: m'[j] = m[j - 1] + 1 where
    tokens[j] is the new token, else 0 (all 0 after a breaker). The penalty reads the positions
    with m >= allowed_length. The first computation (`suffix_matches`) is once per reply.
    """

    def __init__(
        self, context: Sequence[int] | np.ndarray, params: SamplingParams, breaks: np.ndarray
    ) -> None:
        self.multiplier = float(params.dry_multiplier)
        self.base = float(params.dry_base)
        self.allowed = max(1, int(params.dry_allowed_length))
        self.window = int(params.dry_range) or DRY_RANGE
        self._max_exp = _FLOAT_MAX_LOG / math.log(self.base) if self.base > 1.000001 else 0.0
        self._breaks = breaks  # bool [n_vocab]
        ctx = np.asarray(context, dtype=np.int64)[-self.window :]
        cap = self.window + _DRY_SLACK
        self._tok = np.zeros(cap, dtype=np.int64)
        self._m = np.zeros(cap, dtype=np.int32)
        self._n = ctx.size
        self._tok[: self._n] = ctx
        self._m[: self._n] = suffix_matches(ctx, self._is_breaker(ctx))

    def _is_breaker(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(ids.size, dtype=bool)
        inside = (ids >= 0) & (ids < self._breaks.size)
        out[inside] = self._breaks[ids[inside]]
        return out

    def push(self, token: int) -> None:
        """The context grows by `token` (sampled and kept)."""
        n = self._n
        if n == self._tok.size:  # full: keep the window's worth of the newest
            w = self.window
            self._tok[:w] = self._tok[n - w : n]
            self._m[:w] = self._m[n - w : n]
            n = w
        tok, m = self._tok, self._m
        if 0 <= token < self._breaks.size and self._breaks[token]:
            m[:n] = 0
        elif n:
            eq = tok[:n] == token  # [n]
            grown = np.where(eq[1:], m[: n - 1] + 1, 0)  # from the old values, before writing
            m[0] = 1 if eq[0] else 0
            m[1:n] = grown
        tok[n] = token
        m[n] = 0
        self._n = n + 1

    def penalties(self) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, amounts) that `apply` subtracts."""
        n = self._n
        none = (np.zeros(0, np.int64), np.zeros(0, np.float64))
        if n < 2 or self.multiplier <= 0.0:
            return none
        m = self._m[: n - 1]
        ends = np.flatnonzero(m >= self.allowed)  # earlier occurrences of the current end
        if not ends.size:
            return none
        nxt = self._tok[ends + 1]  # the token that followed each
        lengths = m[ends]
        ids, inv = np.unique(nxt, return_inverse=True)
        longest = np.zeros(ids.size, dtype=np.int32)
        np.maximum.at(longest, inv, lengths)
        keep = ~self._is_breaker(ids)
        ids, longest = ids[keep], longest[keep]
        exp = (longest - self.allowed).astype(np.float64)
        if self._max_exp > 0.0:
            exp = np.minimum(exp, self._max_exp)
        # capped far below float32's largest: a penalty that large already rules a token out
        return ids, np.minimum(self.multiplier * np.power(self.base, exp), _DRY_MAX_PENALTY)

    def apply(self, logits: np.ndarray) -> None:
        """Subtract the penalties from `logits` in place."""
        ids, amounts = self.penalties()
        if ids.size:
            inside = ids < logits.size
            logits[ids[inside]] -= amounts[inside].astype(logits.dtype)


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
