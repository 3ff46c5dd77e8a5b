"""Known-answer and property tests for the pass@k estimator (card 1)."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.envs.strategy_bandit import exact_pass_at_k as tensor_exact_pass_at_k
from rlnb.probes import default_ks, pass_at_k, pass_at_k_curve, pass_at_k_from_probs


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def lgamma_pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    log_ratio = (
        math.lgamma(n - c + 1) - math.lgamma(n - c - k + 1) - math.lgamma(n + 1) + math.lgamma(n - k + 1)
    )
    return -math.expm1(log_ratio)


# --- known answers -------------------------------------------------------------------


def test_matches_brute_force_for_all_small_cases():
    for n in range(1, 13):
        for k in range(1, n + 1):
            c = np.arange(n + 1)
            got = pass_at_k(n, c, k)  # vectorised over problems
            want = [brute_force_pass_at_k(n, int(ci), k) for ci in c]
            assert want == [exact_pass_at_k(n, int(ci), k) for ci in c]
            np.testing.assert_allclose(got, [float(w) for w in want], rtol=0, atol=1e-12)


def test_edges_are_exact():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(4096, 0, 4096) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0


def test_output_types_and_broadcasting():
    assert isinstance(pass_at_k(5, 2, 2), float)
    out = pass_at_k(np.array([4, 8, 16]), np.array([1, 1, 1]), 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_allclose(out, [1 - 3 / 6, 1 - 21 / 28, 1 - 105 / 120])
    # torch tensors and Python lists give the same answer as numpy arrays
    c = [0, 3, 7, 16]
    want = pass_at_k(16, np.array(c), 4)
    np.testing.assert_array_equal(pass_at_k(torch.tensor(16), torch.tensor(c), 4), want)
    np.testing.assert_array_equal(pass_at_k(16, torch.tensor(c), 4), want)
    np.testing.assert_array_equal(pass_at_k(16, c, np.int64(4)), want)
    # per-problem n
    np.testing.assert_allclose(pass_at_k([4, 8], [1, 2], 2), [0.5, 1 - 15 / 28])


def test_large_n_is_stable():
    n = 4096
    c = np.arange(n + 1)
    for k in (1, 2, 7, 64, 1000, 2048, 4095, 4096):
        got = pass_at_k(n, c, k)
        assert np.all(np.isfinite(got))
        assert np.all((got >= 0) & (got <= 1))
        want = np.array([lgamma_pass_at_k(n, int(ci), k) for ci in c])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        for ci in (0, 1, 2, 5, 100, 2000, n - k, n - k + 1, n):
            if 0 <= ci <= n:
                assert got[ci] == pytest.approx(float(exact_pass_at_k(n, ci, k)), abs=1e-12)
    # small probabilities keep relative precision: pass@1 with one hit in 4096 is 1/4096
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / 4096, rel=1e-12)


def test_unbiased_against_simulated_binomial_draws():
    rng = np.random.default_rng(0)
    problems, n = 20_000, 16
    for p, k in [(0.05, 1), (0.05, 8), (0.3, 4), (0.02, 16)]:
        c = rng.binomial(n, p, size=problems)
        est = pass_at_k(n, c, k)
        se = est.std(ddof=1) / math.sqrt(problems)
        truth = 1 - (1 - p) ** k
        assert abs(est.mean() - truth) <= 3 * se + 1e-12, (p, k, est.mean(), truth, se)


# --- properties ----------------------------------------------------------------------

cases = st.integers(1, 600).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
)


@settings(max_examples=200, deadline=None)
@given(cases)
def test_in_unit_interval_and_monotone(case):
    n, c, k = case
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= value - 1e-12  # more tries never hurt
    if c < n:
        assert pass_at_k(n, c + 1, k) >= value - 1e-12  # more correct samples never hurt
    if c > 0:
        assert value >= c / n - 1e-12  # pass@k >= pass@1 = c/n


# --- errors --------------------------------------------------------------------------


def test_error_messages():
    with pytest.raises(ValueError, match=r"^k \(5\) cannot exceed n \(4\): "):
        pass_at_k(4, 1, 5)
    with pytest.raises(
        ValueError,
        match=r"^c \(5\) cannot exceed n \(4\): c counts correct samples among the n drawn",
    ):
        pass_at_k(n=4, c=5, k=2)
    with pytest.raises(ValueError, match=r"first at index \(2\)"):
        pass_at_k(4, [0, 1, 5], 2)
    with pytest.raises(ValueError, match="must be >= 0"):
        pass_at_k(4, -1, 2)
    with pytest.raises(ValueError, match="must be >= 0"):
        pass_at_k(-4, 0, 1)
    with pytest.raises(ValueError, match="at least 1"):
        pass_at_k(4, 1, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(4, 1, 2.0)
    with pytest.raises(ValueError, match="whole numbers"):
        pass_at_k(4, 1.5, 2)


# --- exact probabilities -------------------------------------------------------------


def test_pass_at_k_from_probs():
    p = np.array([0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(pass_at_k_from_probs(p, 3, reduce="none"), 1 - (1 - p) ** 3)
    assert pass_at_k_from_probs(p, 3) == pytest.approx(np.mean(1 - (1 - p) ** 3))
    ks = np.array([1, 2, 8])
    grid = pass_at_k_from_probs(p, ks, reduce="none")
    assert grid.shape == (3, 4)
    np.testing.assert_allclose(grid, 1 - (1 - p[None]) ** ks[:, None])
    np.testing.assert_allclose(pass_at_k_from_probs(p, ks), grid.mean(1))
    np.testing.assert_allclose(pass_at_k_from_probs(torch.tensor(p), ks), grid.mean(1))
    # tiny p at large k: the naive form loses every digit, expm1/log1p keeps them
    assert pass_at_k_from_probs(1e-15, 1000) == pytest.approx(1e-12, rel=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pass_at_k_from_probs([1.5], 2)
    with pytest.raises(ValueError, match="reduce"):
        pass_at_k_from_probs([0.5], 2, reduce="sum")


def test_exact_pass_at_k_twins_keep_their_own_arithmetic():
    # Two exact pass@k from probabilities, kept apart: the core's (NumPy, float64,
    # -expm1(k log1p(-p))) and the sandboxes' tensor twin (the input's dtype, torch's
    # 1 - (1 - p)^k), whose float32 numbers the reproductions report. Each is pinned bit
    # for bit to its formula; they agree only to float32 rounding.
    g = torch.Generator().manual_seed(0)
    p32 = torch.cat([torch.rand(500, generator=g), torch.tensor([0.0, 1.0, 1e-7, 1 - 1e-7])])
    ks = [1, 2, 3, 16, 255, 256]
    k32 = torch.tensor(ks, dtype=torch.float32)
    twin = tensor_exact_pass_at_k(p32, ks, per_problem=True)
    assert twin.dtype == torch.float32
    assert torch.equal(twin, 1 - (1 - p32).clamp(0, 1)[None] ** k32[:, None])
    assert torch.equal(tensor_exact_pass_at_k(p32, ks), twin.mean(-1))
    p64 = p32.double().numpy()
    core = pass_at_k_from_probs(p64, ks, reduce="none")
    assert np.array_equal(core, -np.expm1(np.array(ks, float)[:, None] * np.log1p(-p64)[None]))
    np.testing.assert_allclose(twin[:, :500].double().numpy(), core[:, :500], rtol=0, atol=1e-6)
    # not bit for bit: merging them would change one side's numbers
    assert (np.float32(core) != twin.numpy()).any()
    # and at tiny p the float32 power form keeps few digits (1 - 1e-7 rounds), the core all
    assert core[-1, -2] == pytest.approx(256e-7, rel=1e-4)
    assert abs(float(twin[-1, -2]) / core[-1, -2] - 1) > 0.1


def test_estimator_mean_matches_exact_probability_formula():
    # E[pass_at_k(n, Binomial(n, p), k)] = 1 - (1 - p)^k exactly (unbiasedness, in closed form)
    n, p = 12, 0.23
    c = np.arange(n + 1)
    weights = np.array([math.comb(n, int(ci)) * p**ci * (1 - p) ** (n - ci) for ci in c])
    for k in range(1, n + 1):
        assert weights @ pass_at_k(n, c, k) == pytest.approx(pass_at_k_from_probs(p, k), abs=1e-12)


# --- curves --------------------------------------------------------------------------


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_curve_frame():
    counts = np.array([0, 1, 4, 8])
    df = pass_at_k_curve(counts, n=8)
    assert list(df.columns) == ["model", "k", "pass_at_k"]
    assert df["k"].tolist() == [1, 2, 4, 8]
    assert (df["model"] == "model").all()
    want = [pass_at_k(8, counts, k).mean() for k in (1, 2, 4, 8)]
    np.testing.assert_allclose(df["pass_at_k"], want)
    assert df["pass_at_k"].is_monotonic_increasing


def test_curve_several_models_and_bootstrap():
    rng = np.random.default_rng(1)
    counts = {"base": rng.binomial(64, 0.1, size=200), "rl": rng.binomial(64, 0.4, size=200)}
    df = pass_at_k_curve(counts, n=64, ks=[1, 8, 64], bootstrap=300, seed=3)
    assert list(df.columns) == ["model", "k", "pass_at_k", "lo", "hi"]
    assert df.groupby("model").size().to_dict() == {"base": 3, "rl": 3}
    assert (df["lo"] <= df["pass_at_k"] + 1e-12).all() and (df["pass_at_k"] <= df["hi"] + 1e-12).all()
    assert (df["hi"] - df["lo"]).loc[df["k"] == 1].gt(0).all()
    again = pass_at_k_curve(counts, n=64, ks=[1, 8, 64], bootstrap=300, seed=3)
    pd.testing.assert_frame_equal(df, again)  # the seed fixes the bootstrap
    per_model_n = pass_at_k_curve(counts, n={"base": 64, "rl": 64}, ks=[1])
    np.testing.assert_allclose(per_model_n["pass_at_k"], df.loc[df["k"] == 1, "pass_at_k"])
    with pytest.raises(ValueError, match="cannot exceed n"):
        pass_at_k_curve([1, 2], n=4, ks=[8])
