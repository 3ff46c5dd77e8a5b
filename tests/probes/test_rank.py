"""Known answers and properties of effective rank and its dynamics (card 7)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.probes import ActivationCache, effective_rank, rank_by_layer, rank_dynamics
from rlnb.viz.probes import rank_trajectory


def orthonormal(rows: int, cols: int, seed: int, *, orthogonal_to_ones: bool = False) -> np.ndarray:
    """``(rows, cols)`` with orthonormal columns (optionally all orthogonal to 1)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, cols))
    if orthogonal_to_ones:
        a -= a.mean(axis=0)  # columns orthogonal to the ones vector, so centring is a no-op
    q, _ = np.linalg.qr(a)
    return q[:, :cols]


def matrix_with_singular_values(s: np.ndarray, T: int, d: int, seed: int, centred: bool) -> np.ndarray:
    U = orthonormal(T, len(s), seed, orthogonal_to_ones=centred)
    V = orthonormal(d, len(s), seed + 1)
    return U @ np.diag(s) @ V.T


# --- known answers -------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 3, 5, 8])
def test_r_equal_singular_values_give_r(r):
    for centred in (False, True):
        Z = matrix_with_singular_values(np.full(r, 2.5), T=12, d=10, seed=r, centred=centred)
        assert abs(effective_rank(Z, center=centred) - r) < 1e-6
    assert effective_rank(torch.eye(r), center=False) == pytest.approx(r, abs=1e-9)


def test_rank_one_gives_one_before_and_after_centring():
    u, v = torch.randn(20, 1, dtype=torch.float64), torch.randn(1, 7, dtype=torch.float64)
    Z = u @ v
    assert effective_rank(Z, center=False) == pytest.approx(1.0, abs=1e-12)
    assert effective_rank(Z) == pytest.approx(1.0, abs=1e-12)
    # rank 2 uncentred (offset + one direction) is rank 1 once centred: round-off stays out
    Z2 = (torch.ones(20, 1) @ torch.randn(1, 7) * 100 + torch.randn(20, 1) @ torch.randn(1, 7)).float()
    assert effective_rank(Z2) == pytest.approx(1.0, abs=1e-6)
    # a rank-1 product computed and stored in float32 (or float16) carries rounding only
    u32, v32 = torch.randn(50, 1), torch.randn(1, 40)
    assert effective_rank(u32 @ v32) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank((u32 @ v32).half(), center=False) < 1.01


def test_degenerate_inputs_are_stable_and_documented():
    # zero matrix, identical rows, a single token: exp(entropy of an empty spectrum) = 1
    assert effective_rank(torch.zeros(6, 4)) == 1.0
    assert effective_rank(torch.zeros(6, 4), center=False) == 1.0
    assert effective_rank(torch.full((9, 5), 3.7)) == 1.0
    assert effective_rank(torch.randn(1, 5)) == 1.0
    with pytest.raises(ValueError, match=r"Z of shape \(0, 3\) is empty"):  # no token at all
        effective_rank(np.zeros((0, 3)))


def test_known_spectrum_matches_formula():
    s = np.array([3.0, 2.0, 1.0])
    p = s / s.sum()
    want = math.exp(-(p * np.log(p)).sum())
    Z = matrix_with_singular_values(s, T=10, d=6, seed=0, centred=True)
    assert effective_rank(Z) == pytest.approx(want, rel=1e-9)


def test_centring_footgun_mean_vector_dominates():
    g = torch.Generator().manual_seed(0)
    Z = 100.0 + torch.randn(128, 16, generator=g)
    assert effective_rank(Z, center=False) < 1.5  # the offset swamps everything
    assert effective_rank(Z) > 12  # the noise is close to isotropic in 16 dims


def test_batched_matches_one_by_one_and_keeps_the_input_kind():
    Z = torch.randn(3, 4, 10, 6)
    out = effective_rank(Z)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j].item() == pytest.approx(effective_rank(Z[i, j]), rel=1e-12)
    arr = effective_rank(Z.numpy())
    assert isinstance(arr, np.ndarray) and arr.shape == (3, 4)
    assert isinstance(effective_rank(Z[0, 0].numpy()), float)


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="tokens, hidden"):
        effective_rank(torch.randn(5))
    with pytest.raises(ValueError, match="nan or inf"):
        effective_rank(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="real numbers"):
        effective_rank(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="stride"):
        rank_dynamics(torch.randn(5, 3), stride=0)
    with pytest.raises(ValueError, match="one response"):
        rank_dynamics(torch.randn(2, 5, 3), stride=1)


# --- properties ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000), st.floats(0.1, 100.0))
def test_property_r_equal_singular_values(r, seed, scale):
    T, d = r + 3, r + 2
    Z = matrix_with_singular_values(np.full(r, scale), T, d, seed, centred=True)
    assert abs(effective_rank(Z) - r) < 1e-6


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 8), st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_property_bounds_and_invariances(T, d, seed, c):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(T, d))
    er = effective_rank(Z)
    assert 1.0 - 1e-9 <= er <= min(T - 1, d) + 1e-9  # centring removes one direction
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert effective_rank(Z @ Q) == pytest.approx(er, rel=1e-7)  # rotation
    assert effective_rank(c * Z) == pytest.approx(er, rel=1e-7)  # scale
    assert effective_rank(Z[rng.permutation(T)]) == pytest.approx(er, rel=1e-7)  # token order
    offset = rng.normal(size=(1, d)) * 10
    assert effective_rank(Z + offset) == pytest.approx(er, rel=1e-6)  # centring removes it


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 10.0), min_size=1, max_size=6), st.integers(0, 1000))
def test_property_matches_entropy_of_normalised_spectrum(s, seed):
    s = np.array(sorted(s, reverse=True))
    Z = matrix_with_singular_values(s, T=len(s) + 2, d=len(s) + 1, seed=seed, centred=False)
    p = s / s.sum()
    assert effective_rank(Z, center=False) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-7)


# --- dynamics ------------------------------------------------------------------------


def oracle_dynamics(Z, stride):
    """Card 7 written out with plain loops."""
    ts = [t for t in range(1, Z.shape[0] + 1) if t % stride == 0]
    er = [effective_rank(Z[:t]) for t in ts]
    delta = {j: er[j] - sum(er[:j]) / j for j in range(1, len(er))}
    era = {j: delta[j] - delta[j - 1] for j in range(2, len(er))}
    return ts, er, delta, era


def test_rank_dynamics_known_answer():
    dyn = rank_dynamics(torch.eye(4), stride=1, center=False)
    assert dyn.prefixes["t"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(dyn.prefixes["er"], [1, 2, 3, 4], atol=1e-12)
    np.testing.assert_allclose(dyn.prefixes["delta"], [np.nan, 1.0, 1.5, 2.0], atol=1e-12)
    np.testing.assert_allclose(dyn.prefixes["era"], [np.nan, np.nan, 0.5, 0.5], atol=1e-12)
    assert dyn.erv == pytest.approx(1.5) and dyn.era == pytest.approx(0.5) and dyn.er == pytest.approx(4)


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_rank_dynamics_matches_loop_oracle(stride):
    Z = torch.randn(23, 8, generator=torch.Generator().manual_seed(stride), dtype=torch.float64)
    dyn = rank_dynamics(Z, stride=stride)
    ts, er, delta, era = oracle_dynamics(Z, stride)
    assert dyn.prefixes["t"].tolist() == ts  # multiples of the stride only
    np.testing.assert_allclose(dyn.prefixes["er"], er, rtol=1e-12)
    np.testing.assert_allclose(dyn.prefixes["delta"].iloc[1:], list(delta.values()), rtol=1e-10)
    assert dyn.erv == pytest.approx(np.mean(list(delta.values())), rel=1e-10)
    assert dyn.era == pytest.approx(np.mean(list(era.values())), rel=1e-10)
    assert dyn.er == pytest.approx(effective_rank(Z), rel=1e-12)


def test_rank_dynamics_short_responses_give_nan():
    dyn = rank_dynamics(torch.randn(5, 3), stride=8)
    assert dyn.prefixes.empty and math.isnan(dyn.erv) and math.isnan(dyn.era)
    dyn = rank_dynamics(torch.randn(5, 3), stride=2)
    assert len(dyn.prefixes) == 2 and not math.isnan(dyn.erv) and math.isnan(dyn.era)


def test_rank_by_layer_uses_the_mask_per_response():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 10, 6, generator=g)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1, :5] = True
    mask[2, 4:9] = True
    h_padded = torch.where(mask[..., None], h, torch.full_like(h, 1e3))  # junk on padding
    cache = ActivationCache({"layers.0.resid_post": h_padded, "pooled": h[:, 0]}, mask)
    df = rank_by_layer(cache)
    assert list(df["name"].unique()) == ["layers.0.resid_post"]  # (N, d) entries skipped
    for i in range(3):
        assert df.loc[i, "er"] == pytest.approx(effective_rank(h[i][mask[i]]), rel=1e-12)
        assert df.loc[i, "tokens"] == int(mask[i].sum())
    df2 = rank_by_layer(cache, stride=2)
    assert {"erv", "era"} <= set(df2.columns)
    assert df2.loc[1, "erv"] == pytest.approx(rank_dynamics(h[1][mask[1]], 2).erv)


def test_rank_trajectory_figure():
    frames = [rank_dynamics(torch.randn(32, 8), stride=4).prefixes.assign(layer=name)
              for name in ("layers.0", "layers.1")]
    fig = rank_trajectory(pd.concat(frames))
    assert len(fig.data) == 6  # 3 metrics x 2 layers
    assert fig.layout.yaxis.title.text == "er"
    over_training = pd.DataFrame({"step": [0, 10, 20], "er": [5.0, 4.0, 3.5], "erv": [1.0, 0.8, 0.5]})
    fig = rank_trajectory(over_training)
    assert [t.x.tolist() for t in fig.data][0] == [0, 10, 20]


@pytest.mark.parametrize("seed", range(5))
def test_short_responses_couple_erv_to_er_by_algebra(seed):
    """With stride 1, ER_1 = ER_2 = 1 always (centred: a zero matrix, then rank 1), so a
    3-token response has ERV = (ER - 1) / 2 and a 4-token one (2 ER_3 + 3 ER - 5) / 9."""
    g = torch.Generator().manual_seed(seed)
    Z3 = torch.randn(3, 16, generator=g, dtype=torch.float64)
    dyn = rank_dynamics(Z3, stride=1)
    np.testing.assert_allclose(dyn.prefixes["er"].iloc[:2], [1.0, 1.0], atol=1e-12)
    assert dyn.erv == pytest.approx((dyn.er - 1) / 2, abs=1e-12)
    Z4 = torch.randn(4, 16, generator=g, dtype=torch.float64)
    dyn = rank_dynamics(Z4, stride=1)
    er3 = dyn.prefixes["er"].iloc[2]
    assert dyn.erv == pytest.approx((2 * er3 + 3 * dyn.er - 5) / 9, abs=1e-12)


@pytest.mark.parametrize("stride", [None, 1, 2])
def test_rank_by_layer_batched_equals_rank_dynamics_row_by_row(stride):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(9, 8, 5, generator=g)
    lengths = [0, 1, 2, 3, 3, 5, 8, 5, 4]
    mask = torch.zeros(9, 8, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 8 - n:] = True  # left padding, as a completion mask would be
    h = torch.where(mask[..., None], h, torch.full_like(h, float("nan")))  # junk on padding
    df = rank_by_layer({"h": h}, mask, stride=stride)
    assert df["row"].tolist() == list(range(9)) and df["tokens"].tolist() == lengths
    for i in range(9):
        z = h[i][mask[i]]
        if stride is None:
            want = effective_rank(z) if lengths[i] else 1.0
            assert df.loc[i, "er"] == pytest.approx(want, rel=1e-12)
            continue
        dyn = rank_dynamics(z, stride)
        for key in ("er", "erv", "era"):
            got, exp = df.loc[i, key], getattr(dyn, key)
            assert (math.isnan(got) and math.isnan(exp)) or got == pytest.approx(exp, rel=1e-10, abs=1e-12)
