"""The sampler: each knob does what it says, and seeds make replies reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from core.engine.sampler import (
    PRESETS,
    Penalties,
    SamplingParams,
    _bracketed,
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
