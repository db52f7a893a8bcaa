"""The sampler: each knob does what it says (DRY checked against its definition by brute force),
and seeds make replies reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.engine.sampler import (
    DRY_BREAKERS,
    PRESETS,
    Dry,
    Penalties,
    SamplingParams,
    _bracketed,
    breaker_mask,
    first_reaching,
    nucleus_threshold,
    sample,
)


def _probs(seed: int = 0, n: int = 65536, scale: float = 2.0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=n).astype(np.float32) * scale
    p = np.exp(x - x.max())
    return p / p.sum()


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_nucleus_is_the_shortest_descending_prefix_reaching_top_p(top_p: float) -> None:
    p = _probs()
    cut = nucleus_threshold(p, top_p)
    kept = np.sort(p[p >= cut])[::-1]
    assert kept.sum() >= top_p * (1 - 1e-5)
    assert kept[:-1].sum() < top_p * (1 + 1e-5)  # one token fewer would not reach it


def test_top_k_and_min_p_and_greedy() -> None:
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    top5 = set(np.argsort(logits)[-5:].tolist())
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=5, presence_penalty=0)
    assert {sample(logits, params, rng) for _ in range(300)} <= top5
    greedy = SamplingParams(temperature=0.0)
    assert sample(logits, greedy, rng) == int(np.argmax(logits))
    minp = SamplingParams(temperature=1.0, top_p=1.0, min_p=0.5)
    p = np.exp(logits - logits.max())
    allowed = set(np.flatnonzero(p >= 0.5).tolist())
    assert {sample(logits, minp, rng) for _ in range(300)} <= allowed


def test_penalties_lower_seen_tokens_and_decay() -> None:
    pen = Penalties(10, decay=0.5)
    pen.add(3)
    pen.add(3)
    logits = np.zeros(10, np.float32)
    pen.apply(logits, presence=1.0, frequency=1.0)
    # count of token 3: (1 * 0.5) + 1 = 1.5 after the second add
    assert logits[3] == pytest.approx(-(1.0 + 1.5))
    assert np.count_nonzero(logits) == 1


def test_banned_tokens_are_never_sampled() -> None:
    logits = np.zeros(50, np.float32)
    logits[7] = 10
    rng = np.random.default_rng(0)
    p = SamplingParams(temperature=1.0, top_p=1.0)
    assert all(sample(logits, p, rng, banned=np.array([7])) != 7 for _ in range(50))


def test_a_seed_fixes_the_draws_and_other_seeds_draw_others() -> None:
    logits = np.random.default_rng(3).normal(size=65536).astype(np.float32)
    p = PRESETS["roleplay"]

    def draws(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sample(logits, p, rng) for _ in range(20)]

    a = draws(42)
    assert a == draws(42)  # a reply can be made again
    assert len(set(a)) > 1 and draws(43) != a  # the draws come from the generator


LOGITS = np.array([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)


def _expected(temperature: float, top_p: float) -> np.ndarray:
    """The sampler's documented distribution: top-p cut on the softmax of the logits (the
    shortest most-likely-first prefix reaching top_p), then temperature over what is left."""
    p = np.exp(LOGITS - LOGITS.max())
    p /= p.sum()
    order = np.argsort(-p)
    kept = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
    w = np.zeros(LOGITS.size)
    w[kept] = np.exp(LOGITS[kept] / temperature)
    return w / w.sum()


# softmax of LOGITS: 0.442 0.268 0.163 0.060 0.036 ..., so top_p 0.6 keeps 2, 0.8 keeps 3, 0.95
# keeps 5; with the temperature before the cut, (2.0, 0.8) would keep 5
@pytest.mark.parametrize(
    ("temperature", "top_p"),
    [(1.0, 1.0), (0.5, 1.0), (2.0, 1.0), (1.0, 0.6), (2.0, 0.8), (0.7, 0.95)],
)
def test_sampled_frequencies_follow_temperature_and_top_p(temperature: float, top_p: float) -> None:
    params = SamplingParams(
        temperature=temperature, top_p=top_p, presence_penalty=0.0, frequency_penalty=0.0
    )
    rng = np.random.default_rng(0)  # a fixed seed: the same draws on every run
    n = 20_000
    got = np.bincount([sample(LOGITS, params, rng) for _ in range(n)], minlength=LOGITS.size) / n
    want = _expected(temperature, top_p)
    assert np.all(got[want == 0] == 0), got  # cut tokens are never drawn
    # within 5 standard errors of each expected frequency
    assert np.all(np.abs(got - want) <= 5 * np.sqrt(want * (1 - want) / n) + 1e-9), (got, want)


def test_presets_include_the_old_apps_roleplay_values() -> None:
    rp = PRESETS["roleplay"]
    assert (rp.top_p, rp.top_k, rp.temperature) == (0.6, 0, 2.0)
    assert (rp.presence_penalty, rp.frequency_penalty) == (0.2, 0.2)


def test_params_from_stale_dict_and_clamped() -> None:
    p = SamplingParams.from_dict({"temperature": 9, "top_p": 2, "unknown": 1, "max_tokens": 0})
    v = p.validated()
    assert (v.temperature, v.top_p, v.max_tokens) == (5.0, 1.0, 1)


def _sorted_threshold(p: np.ndarray, top_p: float) -> float:
    """The nucleus threshold by a sort of the whole vocabulary (as it was computed before)."""
    asc = np.sort(p)
    return float(asc[first_reaching(asc, float(asc.sum(dtype=np.float64)) * (1.0 - top_p))])


@pytest.mark.parametrize("scale", [0.5, 2.0, 8.0, 20.0])  # flat (random weights) to peaked
@pytest.mark.parametrize("top_p", [0.0, 0.05, 0.3, 0.9, 0.999])
def test_nucleus_sorting_only_candidates_equals_sorting_everything(
    scale: float, top_p: float
) -> None:
    rng = np.random.default_rng(int(scale * 1000 + top_p * 100))
    for _ in range(20):
        x = rng.standard_normal(65536) * scale
        p = np.exp(x - x.max()).astype(np.float32)
        p /= p.sum()
        assert nucleus_threshold(p, top_p) == _sorted_threshold(p, top_p)


def test_nucleus_bracket_that_misses_falls_back_to_the_full_sort() -> None:
    # a flat distribution but for one token in 64, none of which the stride sample sees: the
    # bracket guessed from the sample misses, and the full sort decides
    p = np.full(65536, 1.0, np.float32)
    p[1::64] = 50.0
    p /= p.sum()
    missed = 0
    for top_p in (0.3, 0.6, 0.9, 0.99):
        cut = _bracketed(p, float(p.sum(dtype=np.float64)) * (1.0 - top_p))
        missed += cut is None
        assert cut in (None, _sorted_threshold(p, top_p))
        assert nucleus_threshold(p, top_p) == _sorted_threshold(p, top_p)
    assert missed >= 2


def test_nucleus_bracket_that_hits_is_the_full_sorts_crossing() -> None:
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(60):
        x = rng.standard_normal(65536) * rng.uniform(0.2, 1.5)
        p = np.exp(x - x.max()).astype(np.float32)
        p /= p.sum()
        top_p = float(rng.uniform(0.05, 0.99))
        cut = _bracketed(p, float(p.sum(dtype=np.float64)) * (1.0 - top_p))
        if cut is not None:
            hits += 1
            assert cut == _sorted_threshold(p, top_p)
    assert hits >= 50  # on flat distributions the bracket is what runs, not the sort


def test_nucleus_when_the_stride_sample_misjudges_the_candidates() -> None:
    # the stride sample sees only the large values (1 in 64): it judges that far more than a
    # quarter lie above every cut, and all are kept; the result is still the full sort's
    p = np.full(65536, 1e-4, np.float32)
    p[::64] = 1.0
    p /= p.sum()
    for top_p in (0.1, 0.5, 0.9, 0.999):
        assert nucleus_threshold(p, top_p) == _sorted_threshold(p, top_p)


# ---------------------------------------------------------------------------- DRY
def _dry_reference(
    ctx: list[int], breaks: np.ndarray, allowed: int, multiplier: float, base: float
) -> dict[int, float]:
    """DRY by its definition, searched by brute force: for every earlier position j, the
    longest run of tokens ending at j that equals the run ending the context (stopping at a
    breaker); if it is at least `allowed` long, the token after j (unless a breaker) loses
    multiplier * base ** (longest - allowed)."""
    n = len(ctx)
    last_break = max((i for i, t in enumerate(ctx) if breaks[t]), default=-1)
    longest: dict[int, int] = {}
    for j in range(n - 1):
        k = 0
        while k < n - 1 - last_break and j - k >= 0 and ctx[j - k] == ctx[n - 1 - k]:
            k += 1
        nxt = ctx[j + 1]
        if k >= allowed and not breaks[nxt]:
            longest[nxt] = max(longest.get(nxt, 0), k)
    return {t: multiplier * base ** (k - allowed) for t, k in longest.items()}


@settings(max_examples=300, deadline=None)
@given(
    vocab=st.integers(2, 6),
    tokens=st.lists(st.integers(0, 5), max_size=60),
    split=st.integers(0, 60),
    allowed=st.integers(1, 4),
    window=st.integers(2, 40),
    breaker=st.booleans(),
)
def test_dry_penalises_exactly_what_the_definition_finds(
    vocab: int, tokens: list[int], split: int, allowed: int, window: int, breaker: bool
) -> None:
    tokens = [t % vocab for t in tokens]
    breaks = np.zeros(vocab, dtype=bool)
    breaks[0] = breaker
    params = SamplingParams(
        dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=allowed, dry_range=window
    )
    dry = Dry(tokens[:split], params, breaks)  # the chat's recent tokens
    seen = tokens[:split][-window:]
    for t in tokens[split:]:  # then the reply, token by token
        dry.push(t)
        seen.append(t)
        ids, amounts = dry.penalties()
        got = dict(zip(ids.tolist(), amounts.tolist(), strict=True))
        # the context DRY compares: at least its window of the newest tokens
        ctx = seen[-dry._n :]
        assert len(ctx) >= min(len(seen), window)
        want = _dry_reference(ctx, breaks, allowed, 0.8, 1.75)
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k]) for k in got)


def test_dry_penalty_grows_with_the_repeat_and_stops_at_breakers() -> None:
    a, b, c, d, e, nl = 1, 2, 3, 4, 5, 9
    breaks = np.zeros(10, dtype=bool)
    breaks[nl] = True
    params = SamplingParams(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    # "a b c d ... a b c": d would make the repeat of "a b c" (3 tokens) longer
    dry = Dry([a, b, c, d, e, a, b, c], params, breaks)
    ids, amounts = dry.penalties()
    assert ids.tolist() == [d] and amounts[0] == pytest.approx(0.8 * 1.75 ** (3 - 2))
    dry.push(d)  # it was said anyway: now "e" would extend a repeat of 4
    ids, amounts = dry.penalties()
    assert ids.tolist() == [e] and amounts[0] == pytest.approx(0.8 * 1.75**2)
    # a repeat shorter than the allowed length is free
    assert Dry([a, b, c, e, c], params, breaks).penalties()[0].size == 0
    # a breaker ends the match: "a nl b c ... nl b c" matches only "b c" after the breaker
    dry = Dry([a, nl, b, c, d, a, nl, b, c], params, breaks)
    ids, amounts = dry.penalties()
    assert ids.tolist() == [d] and amounts[0] == pytest.approx(0.8)
    # and a breaker token itself is never penalised: "b c nl ... b c" leaves nl free
    assert Dry([b, c, nl, a, b, c], params, breaks).penalties()[0].size == 0


def test_dry_steers_sampling_away_from_a_verbatim_repeat() -> None:
    line = [5, 6, 7, 8, 9, 10, 11, 12]  # an earlier line, then its first half again
    logits = np.zeros(20, np.float32)
    logits[9] = 2.0  # the model would go on copying: token 9 is its favourite
    breaks = np.zeros(20, dtype=bool)
    params = SamplingParams(temperature=0.0, dry_multiplier=0.8, dry_allowed_length=2)
    off = Penalties(20, 1.0)
    assert sample(logits, params, np.random.default_rng(0), off) == 9
    context = [*line, 1, 2, *line[:4]]  # "... 5 6 7 8": 9 would extend a repeat of 4
    on = Penalties(20, 1.0, Dry(context, params, breaks))
    assert sample(logits, params, np.random.default_rng(0), on) != 9  # 0.8 * 1.75**2 = 2.45
    # a huge repeat is ruled out whatever the model wants, without overflowing to nan
    long = list(range(1, 19)) * 3
    dry = Dry(long, SamplingParams(dry_multiplier=100, dry_base=10), np.zeros(20, dtype=bool))
    x = np.full(20, 50.0, np.float32)
    dry.apply(x)
    assert np.isfinite(x).all() and x[long[len(long) % 18]] < -1e20


def test_breaker_mask_marks_tokens_containing_a_breaker() -> None:
    pieces = [b"Hello", b"\n", b" said:", b"\xe4\xbd", b'"Hi', b"**", b"ok"]
    mask = breaker_mask(DRY_BREAKERS, len(pieces), lambda t: pieces[t])
    assert mask.tolist() == [False, True, True, False, True, True, False]
    assert not breaker_mask((), len(pieces), lambda t: pieces[t]).any()


def test_dry_settings_from_a_saved_dict_are_checked() -> None:
    saved = {"dry_multiplier": 500, "dry_base": 0.5, "dry_allowed_length": 0}
    saved["dry_sequence_breakers"] = ["\n", "", "\n", "x" * 100, 7, "END"]  # as JSON gives it
    v = SamplingParams.from_dict(saved).validated()
    assert (v.dry_multiplier, v.dry_base, v.dry_allowed_length) == (100.0, 1.0, 1)
    assert v.dry_sequence_breakers == ("\n", "END")
    assert SamplingParams().dry_multiplier == 0.0  # off unless a preset or the user sets it
    assert PRESETS["roleplay"].dry_multiplier == 0.8 and PRESETS["greedy"].dry_multiplier == 0
