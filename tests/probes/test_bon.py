"""Known answers of the best-of-n probes (card 11) and the over-optimisation toy (card 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlnb.probes.bon import (
    best_of_n_curve,
    best_of_n_kl,
    best_of_n_probs,
    ensemble_reward,
    fit_overoptimisation,
    goodhart_rewards,
    kl_bound,
    kl_divergence,
    overoptimisation_curve,
    tilt,
    tilt_curve,
    tilt_kl,
    tilt_with_kl,
)


def _random_case(seed: int, size: int, ties: bool = False):
    g = np.random.default_rng(seed)
    p = g.dirichlet(np.ones(size))
    r = g.integers(0, max(2, size // 3), size).astype(float) if ties else g.standard_normal(size)
    return p, r


def _monte_carlo_bon(p, r, n, draws, seed):
    """Best of n by sampling: argmax over the n draws, the first maximum winning."""
    g = np.random.default_rng(seed)
    y = g.choice(p.size, size=(draws, n), p=p)  # (draws, n)
    best = y[np.arange(draws), np.argmax(r[y], axis=1)]
    return np.bincount(best, minlength=p.size) / draws


# --- best-of-n distribution -------------------------------------------------------------


@pytest.mark.parametrize("ties", ["split", "index"])
@pytest.mark.parametrize("seed", range(4))
def test_n_equal_one_is_the_base_policy(seed, ties):
    p, r = _random_case(seed, 30, ties=seed % 2 == 1)
    np.testing.assert_allclose(best_of_n_probs(p, r, 1, ties=ties), p, atol=1e-12)
    assert best_of_n_kl(p, r, 1, ties=ties) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("ties", ["split", "index"])
@pytest.mark.parametrize("n", [1, 2, 5, 64, 10_000])
def test_best_of_n_is_a_distribution(n, ties):
    p, r = _random_case(n, 50, ties=True)
    q = best_of_n_probs(p, r, n, ties=ties)
    assert q.min() >= 0 and q.sum() == pytest.approx(1.0, abs=1e-10)


def test_matches_the_closed_form_for_distinct_rewards():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    r = np.array([3.0, 0.0, 2.0, 1.0])  # order by reward: y1 < y3 < y2 < y0
    F = {1: 0.2, 3: 0.6, 2: 0.9, 0: 1.0}
    F_prev = {1: 0.0, 3: 0.2, 2: 0.6, 0: 0.9}
    n = 3
    expected = [F[y] ** n - F_prev[y] ** n for y in range(4)]
    np.testing.assert_allclose(best_of_n_probs(p, r, n), expected, atol=1e-14)


@pytest.mark.parametrize("ties", [False, True])
def test_split_ties_match_sampling_with_argmax(ties):
    """The default tie rule is what max(samples, key=reward) does."""
    p, r = _random_case(7, 12, ties=ties)
    q = best_of_n_probs(p, r, 4)
    mc = _monte_carlo_bon(p, r, 4, draws=200_000, seed=1)
    np.testing.assert_allclose(mc, q, atol=4e-3)


def test_tie_rules_agree_on_the_class_and_index_favours_the_last():
    p = np.array([0.2, 0.3, 0.5])
    r = np.array([1.0, 1.0, 0.0])
    split = best_of_n_probs(p, r, 3, ties="split")
    index = best_of_n_probs(p, r, 3, ties="index")
    assert split[:2].sum() == pytest.approx(index[:2].sum())  # same mass on the tied class
    assert split[0] / split[1] == pytest.approx(0.2 / 0.3)  # split: in proportion to p
    assert index[1] > split[1]  # index: the later index wins ties
    assert best_of_n_kl(p, r, 3, ties="index") > best_of_n_kl(p, r, 3, ties="split")
    # the reward is the same either way
    assert split @ r == pytest.approx(index @ r)


def test_large_n_is_stable_and_reaches_the_best_output():
    p = np.full(50_000, 1 / 50_000)
    r = np.random.default_rng(0).standard_normal(p.size)
    q = best_of_n_probs(p, r, 10_000_000)
    assert np.all(np.isfinite(q)) and q.sum() == pytest.approx(1.0, abs=1e-9)
    # P(best of n is the top output) = 1 - (1 - 1/Y)^n
    assert q[np.argmax(r)] == pytest.approx(-np.expm1(10_000_000 * np.log1p(-1 / 50_000)))


# --- the KL bound (card 11) ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", ["split", "index"])
def test_kl_never_exceeds_the_bound(seed, ties):
    p, r = _random_case(seed, [3, 10, 40, 200, 1000, 5][seed], ties=seed % 2 == 0)
    for n in [1, 2, 3, 8, 64, 512, 4096]:
        assert best_of_n_kl(p, r, n, ties=ties) <= kl_bound(n) + 1e-12


def test_bound_nearly_reached_for_a_large_uniform_space():
    p = np.full(1000, 1e-3)
    r = np.random.default_rng(0).standard_normal(1000)
    for n in [2, 4, 8, 16, 32, 64]:
        gap = kl_bound(n) - best_of_n_kl(p, r, n)
        assert 0 <= gap < 0.01, (n, gap)


def test_bound_is_loose_for_a_small_space():
    p = np.full(10, 0.1)
    r = np.arange(10.0)
    kl = best_of_n_kl(p, r, 64)
    assert kl == pytest.approx(2.29, abs=0.01) and kl_bound(64) == pytest.approx(3.17, abs=0.01)
    assert kl < np.log(10)


def test_kl_bound_values_and_errors():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(np.log(2) - 0.5)
    np.testing.assert_allclose(kl_bound(np.array([1, 4])), [0.0, np.log(4) - 0.75])
    with pytest.raises(ValueError, match="n must be >= 1"):
        kl_bound(0)


# --- the exponential tilt -------------------------------------------------------------------


def test_tilt_limits_and_closed_form():
    p, r = _random_case(3, 20)
    np.testing.assert_allclose(tilt(p, r, np.inf), p)
    np.testing.assert_allclose(tilt(p, r, 1e6), p, atol=1e-5)
    assert tilt(p, r, 1e-6)[np.argmax(r)] == pytest.approx(1.0)
    q = tilt(p, r, 0.7)
    expected = p * np.exp(r / 0.7)
    np.testing.assert_allclose(q, expected / expected.sum(), rtol=1e-12)


def test_tilt_maximises_reward_minus_beta_kl():
    p, r = _random_case(4, 15)
    beta = 0.5
    best = tilt(p, r, beta)
    objective = lambda q: q @ r - beta * kl_divergence(q, p)  # noqa: E731
    g = np.random.default_rng(0)
    for _ in range(200):
        other = g.dirichlet(np.ones(p.size))
        assert objective(other) <= objective(best) + 1e-12
        mixed = 0.9 * best + 0.1 * other
        assert objective(mixed) <= objective(best) + 1e-12


def test_tilt_with_kl_hits_the_target():
    p, r = _random_case(5, 100)
    for kl in [1e-4, 0.1, 1.0, 2.5]:
        q, beta = tilt_with_kl(p, r, kl)
        assert kl_divergence(q, p) == pytest.approx(kl, abs=1e-8)
        assert tilt_kl(p, r, beta) == pytest.approx(kl, abs=1e-8)
    q0, beta0 = tilt_with_kl(p, r, 0.0)
    assert beta0 == np.inf and np.allclose(q0, p)
    kl_max = -np.log(p[np.argmax(r)])
    with pytest.raises(ValueError, match="must be below"):
        tilt_with_kl(p, r, kl_max + 0.1)


def test_bon_reward_is_close_to_the_tilt_at_equal_kl_and_closes_in():
    """Card 11: at equal KL, BoN gains 0.9-1 of the tilt's reward, more as n grows."""
    p = np.full(50_000, 1 / 50_000)
    r = np.random.default_rng(0).standard_normal(p.size)
    base = p @ r
    ratios = []
    for n in [2, 4, 16, 64, 256, 1024]:
        q = best_of_n_probs(p, r, n)
        qt, _ = tilt_with_kl(p, r, kl_divergence(q, p))
        ratios.append((q @ r - base) / (qt @ r - base))
    assert all(0.9 <= x <= 1.0 for x in ratios), ratios
    assert all(b > a for a, b in zip(ratios, ratios[1:])), ratios


# --- Goodhart (card 12) ----------------------------------------------------------------------


NS = [2**i for i in range(15)]  # 1 .. 16384


def test_gold_reward_peaks_then_falls():
    df = overoptimisation_curve(NS, generator=np.random.default_rng(0))
    peak = df.loc[df.gold.idxmax()]
    assert 4 <= peak.n <= 256
    assert df.set_index("n").gold[4096] < 0.5 * peak.gold
    assert df.proxy.is_monotonic_increasing  # the proxy never stops climbing
    small = df[df.n <= 4096]  # 50k outputs: the bound is reached to 3 decimals up to n = 4096
    np.testing.assert_allclose(small.kl, small.kl_bound, atol=1e-3)
    assert list(df.columns) == ["n", "kl", "d", "kl_bound", "proxy", "gold", "proxies", "ensemble"]


def test_worst_case_ensemble_resists_overoptimisation():
    single = overoptimisation_curve(NS, generator=np.random.default_rng(0)).set_index("n")
    wco = overoptimisation_curve(NS, generator=np.random.default_rng(0), num_proxies=5,
                                 ensemble="min").set_index("n")
    assert wco.gold[4096] >= 2 * max(single.gold[4096], 0.1)
    assert wco.gold.is_monotonic_increasing
    assert set(wco.ensemble) == {"min"} and set(single.ensemble) == {"single"}


def test_goodhart_rewards_draw_order_and_generators():
    gold1, prox1 = goodhart_rewards(100, generator=np.random.default_rng(3))
    gold5, prox5 = goodhart_rewards(100, generator=np.random.default_rng(3), num_proxies=5)
    np.testing.assert_array_equal(gold1, gold5)
    np.testing.assert_array_equal(prox1[0], prox5[0])  # proxy 0 is the single proxy
    assert prox5.shape == (5, 100)
    a = goodhart_rewards(10, generator=torch.Generator().manual_seed(0))
    b = goodhart_rewards(10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(TypeError, match="explicit generator"):
        goodhart_rewards(10, generator=0)


def test_fit_overoptimisation_recovers_known_coefficients():
    d = np.linspace(0.05, 3.0, 30)
    fit = fit_overoptimisation(d, d * (1.2 - 0.5 * d))
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((1.2, 0.5, 1.0))
    assert fit.peak_d == pytest.approx(1.2) and fit.peak_reward == pytest.approx(0.72)
    rl = fit_overoptimisation(d, d * (1.0 - 0.3 * np.log(d)), form="rl")
    assert (rl.alpha, rl.beta) == pytest.approx((1.0, 0.3))
    np.testing.assert_allclose(rl.predict(d), d * (1.0 - 0.3 * np.log(d)))


# --- errors ------------------------------------------------------------------------------------


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="must pair up"):
        best_of_n_probs([0.5, 0.5], [1.0], 2)
    with pytest.raises(ValueError, match="softmax"):
        best_of_n_probs([1.0, 2.0], [0.0, 1.0], 2)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        best_of_n_probs([0.5, 0.5], [0.0, 1.0], 0)
    with pytest.raises(ValueError, match="ties must be one of"):
        best_of_n_probs([0.5, 0.5], [0.0, 1.0], 2, ties="random")
    with pytest.raises(ValueError, match="beta must be > 0"):
        tilt([0.5, 0.5], [0.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        overoptimisation_curve([1], generator=np.random.default_rng(0), ensemble="max")
    with pytest.raises(ValueError, match="form must be"):
        fit_overoptimisation([1.0, 2.0], [1.0, 2.0], form="exp")


def test_doctests():
    import doctest

    import rlnb.probes.bon as module

    assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_rl_form_peak_and_tiny_beta_tilt():
    d = np.linspace(0.05, 5.0, 40)
    rl = fit_overoptimisation(d, d * (1.0 - 0.5 * np.log(d)), form="rl")
    assert rl.peak_d == pytest.approx(np.exp(1.0)) and rl.peak_reward == pytest.approx(0.5 * np.e)
    assert rl.peak_reward == pytest.approx(float(rl.predict(rl.peak_d)))
    rising = fit_overoptimisation(d, 2 * d + 0.1 * d**2)
    assert rising.beta < 0 and rising.peak_d == np.inf
    with np.errstate(all="raise"):  # no overflow warnings near beta = 0
        q = tilt([0.5, 0.5], [-1e300, 0.0], 1e-300)
    assert q.tolist() == [0.0, 1.0]


# --- curves over many n and beta, the ensemble, the KL solver -------------------------------


@pytest.mark.parametrize("ties", ["split", "index"])
def test_best_of_n_curve_matches_one_n_at_a_time(ties):
    p, r = _random_case(11, 40, ties=True)
    v = np.random.default_rng(1).standard_normal(40)
    ns = [1, 2, 5, 64, 4096]
    df = best_of_n_curve(p, r, ns, values={"gold": v}, ties=ties)
    assert list(df.columns) == ["n", "kl", "d", "kl_bound", "reward", "gold"]
    for row in df.itertuples():
        q = best_of_n_probs(p, r, row.n, ties=ties)
        assert row.kl == pytest.approx(kl_divergence(q, p), abs=1e-12)
        assert row.reward == pytest.approx(q @ r, abs=1e-12)
        assert row.gold == pytest.approx(q @ v, abs=1e-12)
        assert row.d == pytest.approx(np.sqrt(row.kl)) and row.kl_bound == kl_bound(row.n)


def test_tilt_curve_by_beta_and_by_kl():
    p, r = _random_case(12, 30)
    v = np.random.default_rng(2).standard_normal(30)
    by_beta = tilt_curve(p, r, betas=[0.3, 1.0, 5.0], values={"gold": v})
    for row in by_beta.itertuples():
        q = tilt(p, r, row.beta)
        assert row.kl == pytest.approx(kl_divergence(q, p), abs=1e-12)
        assert row.gold == pytest.approx(q @ v, abs=1e-12) and row.reward == pytest.approx(q @ r)
    by_kl = tilt_curve(p, r, kls=by_beta.kl.tolist(), values={"gold": v})
    np.testing.assert_allclose(by_kl.beta, by_beta.beta, rtol=1e-6)
    np.testing.assert_allclose(by_kl.gold, by_beta.gold, atol=1e-8)
    with pytest.raises(ValueError, match="exactly one of"):
        tilt_curve(p, r, betas=[1.0], kls=[0.1])
    with pytest.raises(ValueError, match="has 3 entries"):
        tilt_curve(p, r, betas=[1.0], values={"gold": [1.0, 2.0, 3.0]})
    with pytest.raises(TypeError, match="dict"):
        best_of_n_curve(p, r, [2], values=[v])


def _bisect_beta(p, r, kl, iters=200):
    """The plain reference: bisection on log(1 / beta) with the public tilt()."""
    lo, hi = -30.0, 30.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kl_divergence(tilt(p, r, float(np.exp(-mid))), p) < kl else (lo, mid)
    return float(np.exp(-0.5 * (lo + hi)))


@pytest.mark.parametrize("seed", range(3))
def test_tilt_with_kl_newton_matches_plain_bisection(seed):
    g = np.random.default_rng(seed)
    p = g.dirichlet(np.full(500, 0.5))
    r = g.standard_t(1.5, 500)  # heavy tails: a few outputs carry the tilt
    kl_max = -np.log(p[np.argmax(r)])
    for kl in [1e-3, 0.3, 0.5 * kl_max, 0.99 * kl_max]:
        _, beta = tilt_with_kl(p, r, kl)
        assert beta == pytest.approx(_bisect_beta(p, r, kl), rel=1e-6)


def test_tilt_gain_is_sqrt_2kl_for_gaussian_rewards():
    """Tilting N(0, 1) by exp(r / beta) gives N(1 / beta, 1): gain 1/beta, KL 1/(2 beta^2)."""
    p = np.full(200_000, 1 / 200_000)
    r = np.random.default_rng(0).standard_normal(p.size)
    for kl in [0.05, 0.2]:
        q, beta = tilt_with_kl(p, r, kl)
        assert q @ r - p @ r == pytest.approx(np.sqrt(2 * kl), rel=0.02)
        assert 1 / beta == pytest.approx(np.sqrt(2 * kl), rel=0.02)


def test_ensemble_reward_known_answers_and_errors():
    proxies = np.array([[1.0, 3.0, -1.0], [2.0, 0.0, -1.0]])
    np.testing.assert_array_equal(ensemble_reward(proxies), [1.0, 0.0, -1.0])  # WCO
    np.testing.assert_array_equal(ensemble_reward(proxies, "mean"), [1.5, 1.5, -1.0])
    np.testing.assert_allclose(ensemble_reward(proxies, "uwo", uwo_coef=2.0),
                               [1.5 - 2 * 0.25, 1.5 - 2 * 2.25, -1.0])
    with pytest.raises(ValueError, match="ensemble must be one of"):
        ensemble_reward(proxies, "max")
    with pytest.raises(ValueError, match=r"\(K, Y\)"):
        ensemble_reward([1.0, 2.0])


def test_overoptimisation_curve_is_best_of_n_curve_on_the_drawn_rewards():
    ns = [1, 4, 64]
    df = overoptimisation_curve(ns, generator=np.random.default_rng(5), num_outputs=2000,
                                num_proxies=3, ensemble="mean")
    gold, proxies = goodhart_rewards(2000, generator=np.random.default_rng(5), num_proxies=3)
    ref = best_of_n_curve(np.full(2000, 1 / 2000), proxies.mean(0), ns, values={"gold": gold})
    np.testing.assert_allclose(df.gold, ref.gold)
    np.testing.assert_allclose(df.proxy, ref.reward)
