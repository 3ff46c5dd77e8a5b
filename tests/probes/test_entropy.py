"""Known answers and properties of the entropy probes, and the covariance law (card 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.probes import (
    entropy_change_covariance,
    entropy_summary,
    fit_entropy_reward,
    forking_tokens,
    predicted_entropy_change,
    token_entropy,
)
from rlnb.probes.entropy import (
    covariance_identity_error,
    exact_entropy_change,
    policy_gradient_logit_step,
)
from rlnb.rl.kl import entropy_from_logits
from rlnb.viz.probes import entropy_heatstrip

# --- per-token entropy ---------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.integers(2, 300), st.floats(-50, 50))
def test_uniform_distribution_has_entropy_log_v(N, T, V, c):
    logits = torch.full((N, T, V), c)
    h = token_entropy(logits)
    assert h.shape == (N, T)
    torch.testing.assert_close(h, torch.full((N, T), math.log(V)), rtol=1e-5, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 50), st.floats(0.1, 5.0))
def test_entropy_is_between_zero_and_log_v_and_matches_the_formula(seed, V, temperature):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, V, generator=g, dtype=torch.float64) * 4
    h = token_entropy(logits, temperature=temperature)
    p = torch.softmax(logits / temperature, -1)
    torch.testing.assert_close(h, -(p * p.log()).sum(-1))
    assert (h >= -1e-12).all() and (h <= math.log(V) + 1e-9).all()


def test_token_entropy_known_answers_and_mask():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]],
                           [[0.0, 0.0, float("-inf"), float("-inf")], [5.0, 5.0, 5.0, 5.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    h = token_entropy(logits, mask)
    torch.testing.assert_close(h, torch.tensor([[math.log(4), 0.0], [math.log(2), 0.0]]))
    # bfloat16 logits are upcast: same answer to float32 precision
    h16 = token_entropy(torch.zeros(1, 1, 1000, dtype=torch.bfloat16))
    assert h16.dtype == torch.float32 and h16.item() == pytest.approx(math.log(1000), rel=1e-5)
    # a very high temperature flattens anything to log V
    assert token_entropy(torch.randn(1, 1, 7), temperature=1e6).item() == pytest.approx(math.log(7), rel=1e-5)


def test_token_entropy_errors():
    with pytest.raises(ValueError, match="shape of the values"):
        token_entropy(torch.zeros(2, 3, 4), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(2, 3, 4), temperature=0.0)
    with pytest.raises(ValueError, match="float tensor"):
        token_entropy(torch.zeros(2, 3, 4, dtype=torch.long))


# --- summaries -----------------------------------------------------------------------


def test_entropy_summary_known_answer_and_padding_ignored():
    h = torch.tensor([[0.0, 1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]]).bool()
    d = entropy_summary(h, mask, quantiles=(0.0, 0.5, 1.0), forking_threshold=2.5)
    assert d["tokens"] == 5 and d["mean"] == pytest.approx(2.0)
    assert d["seq_mean"] == pytest.approx((1.5 + 4.0) / 2)
    assert (d["q0"], d["q50"], d["q100"]) == (0.0, 2.0, 4.0)
    assert d["forking_share"] == pytest.approx(2 / 5) and d["forking_mean"] == pytest.approx(3.5)
    with pytest.raises(ValueError, match="selects no token"):
        entropy_summary(h, torch.zeros_like(mask))


@settings(max_examples=40, deadline=None)
@given(st.integers(10, 400), st.floats(0.05, 0.5), st.integers(0, 10_000))
def test_default_threshold_marks_the_top_fraction(n, top, seed):
    h = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).double()[None] / n
    d = entropy_summary(h, top_fraction=top)
    assert abs(d["forking_share"] - top) <= 1.0 / n + 1e-12
    fork = forking_tokens(h, top_fraction=top)
    assert fork.sum().item() / n == pytest.approx(d["forking_share"])
    assert (h[fork] > d["forking_threshold"]).all() and (h[~fork] <= d["forking_threshold"]).all()


def test_fixed_threshold_tracks_collapse_over_training():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(64, 32, generator=g) * 2
    thr = entropy_summary(base)["forking_threshold"]
    later = base * 0.3  # entropy collapsing
    assert entropy_summary(later)["forking_share"] == pytest.approx(0.2, abs=0.01)  # tautology
    assert entropy_summary(later, forking_threshold=thr)["forking_share"] == 0.0  # the real signal


# --- the covariance law (card 3) -------------------------------------------------------


def softmax_bandit(S: int = 1000, A: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(S, A, generator=g, dtype=torch.float64) * 1.5  # logits
    r = torch.rand(S, A, generator=g, dtype=torch.float64)  # rewards
    pi = torch.softmax(z, -1)
    adv = r - (pi * r).sum(-1, keepdim=True)  # A(s, a) = r - E_pi r
    return z, pi, adv


@pytest.mark.parametrize("step", ["natural", "vanilla"])
def test_first_order_prediction_matches_actual_entropy_change(step):
    z, pi, adv = softmax_bandit()
    eta = 1e-3
    dz = eta * adv if step == "natural" else eta * pi * adv  # vanilla PG: d/dz of E_pi r
    actual = entropy_from_logits(z + dz) - entropy_from_logits(z)  # (S,)
    pred = predicted_entropy_change(z, dz)
    rel = (actual - pred).norm() / pred.norm()
    assert rel < 0.01, f"relative error {rel:.2e}"
    assert torch.corrcoef(torch.stack([actual, pred]))[0, 1] > 0.999
    # the card's form: natural PG changes entropy by -eta * Cov(log pi, A)
    logp = torch.log_softmax(z, -1)
    w = adv if step == "natural" else pi * adv
    cov = (pi * (logp - (pi * logp).sum(-1, keepdim=True)) * (w - (pi * w).sum(-1, keepdim=True))).sum(-1)
    torch.testing.assert_close(pred, -eta * cov)


def test_prediction_error_shrinks_quadratically():
    z, _, adv = softmax_bandit(S=200, seed=1)
    errs = []
    for eta in (1e-2, 1e-3):
        actual = entropy_from_logits(z + eta * adv) - entropy_from_logits(z)
        errs.append((actual - predicted_entropy_change(z, eta * adv)).norm().item())
    assert errs[1] < errs[0] / 50  # O(eta^2): 100x smaller for a 10x smaller step


def test_rewarding_the_likely_action_lowers_entropy():
    z = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    dz = 1e-2 * torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # reward likely / unlikely
    pred = predicted_entropy_change(z, dz)
    assert pred[0] < 0 < pred[1]
    assert predicted_entropy_change(z[0], dz[0]).ndim == 0


def test_token_level_estimator_known_answer_and_masking():
    logp = torch.log(torch.tensor([[0.9, 0.5], [0.1, 0.5]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, False], [True, False]])
    r = entropy_change_covariance(logp, adv, mask)
    want = math.log(9) / 2
    torch.testing.assert_close(r.per_token, torch.tensor([[want, 0.0], [want, 0.0]]))
    assert r.covariance == pytest.approx(want) and r.total == pytest.approx(2 * want)
    # per-token advantages equal to the broadcast sequence advantage give the same answer
    r2 = entropy_change_covariance(logp, adv[:, None].expand(2, 2), mask)
    torch.testing.assert_close(r.per_token, r2.per_token)
    # padding values never enter
    junk = logp.clone()
    junk[:, 1] = -123.0
    assert entropy_change_covariance(junk, adv, mask).covariance == pytest.approx(want)


def test_token_level_estimator_is_unbiased_for_the_state_covariance():
    z, pi, adv = softmax_bandit(S=1, A=6, seed=3)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    a = torch.multinomial(pi[0], n, replacement=True, generator=g)  # tokens sampled from pi
    logp = torch.log_softmax(z[0], -1)[a].reshape(1000, 200)
    A = adv[0][a].reshape(1000, 200)
    est = entropy_change_covariance(logp, A)
    exact = -predicted_entropy_change(z, adv)[0].item()  # Cov_{a~pi}(log pi, A)
    se = est.per_token.std().item() / math.sqrt(n)
    assert abs(est.covariance - exact) < 4 * se + 1e-9
    assert est.total == pytest.approx(est.covariance * n)


def test_covariance_errors():
    with pytest.raises(ValueError, match="one value per completion"):
        entropy_change_covariance(torch.zeros(3, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="selects no token"):
        entropy_change_covariance(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="must match"):
        predicted_entropy_change(torch.zeros(3, 4), torch.zeros(3, 5))


# --- the entropy-reward law ------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.floats(0.01, 5.0), st.floats(-2.0, 3.0), st.integers(0, 10_000))
def test_fit_recovers_exact_coefficients(a, b, seed):
    H = np.sort(np.random.default_rng(seed).uniform(0.0, 2.0, size=12))
    if np.ptp(H) < 1e-3:
        return
    fit = fit_entropy_reward(H, -a * np.exp(H) + b)
    assert fit.a == pytest.approx(a, rel=1e-6, abs=1e-8)
    assert fit.b == pytest.approx(b, rel=1e-6, abs=1e-8)
    assert fit.ceiling == pytest.approx(b - a, rel=1e-6, abs=1e-8)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9) and fit.n == 12


def test_fit_with_noise_and_predict():
    rng = np.random.default_rng(0)
    H = np.linspace(1.3, 0.01, 80)  # entropy collapsing over training
    R = -0.5 * np.exp(H) + 1.5 + rng.normal(0, 0.02, size=H.size)
    fit = fit_entropy_reward(torch.tensor(H), torch.tensor(R))
    assert 0.9 < fit.r2 < 1.0
    assert fit.ceiling == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(fit.predict([0.0]), [fit.ceiling])


def test_fit_errors():
    with pytest.raises(ValueError, match="two distinct values"):
        fit_entropy_reward([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="pair up"):
        fit_entropy_reward([0.5, 0.4], [0.1])
    with pytest.raises(ValueError, match="finite"):
        fit_entropy_reward([0.5, float("nan")], [0.1, 0.2])


# --- figure --------------------------------------------------------------------------


def test_entropy_heatstrip_colours_valid_tokens_only():
    tokens = [list("12+3"), list("9=")]
    h = torch.tensor([[0.1, 1.2, 0.0, 2.0], [0.3, 0.7, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    fig = entropy_heatstrip(tokens, h, mask, row_labels=["r=1", "r=0"])
    hm = fig.data[0]
    assert hm.type == "heatmap" and hm.texttemplate == "%{text}"
    z = np.array(hm.z, dtype=float)
    assert np.isnan(z[1, 2:]).all() and z[0, 3] == pytest.approx(2.0)
    assert list(hm.text[1]) == ["9", "=", "", ""]
    with pytest.raises(ValueError, match="rows"):
        entropy_heatstrip(tokens[:1], h, mask)


# --- the exact one-step entropy change (card 3) -----------------------------------------

def _softmax_entropy_loop(z):
    m = max(z)
    e = [math.exp(x - m) for x in z]
    s = sum(e)
    return -sum(x / s * math.log(x / s) for x in e)


def test_exact_entropy_change_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z, dz = torch.randn(5, 4, generator=g), 0.1 * torch.randn(5, 4, generator=g)
    got = exact_entropy_change(z, dz)
    for s in range(5):
        zs, ds = z[s].double().tolist(), dz[s].double().tolist()
        ref = _softmax_entropy_loop([a + b for a, b in zip(zs, ds)]) - _softmax_entropy_loop(zs)
        assert float(got[s]) == pytest.approx(ref, rel=1e-10, abs=1e-14)


def test_vanilla_step_is_the_exact_logit_gradient_of_expected_reward():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    r = torch.rand(3, 5, generator=g, dtype=torch.float64)
    (torch.softmax(z, -1) * r).sum().backward()
    p = torch.softmax(z.detach(), -1)
    adv = r - (p * r).sum(-1, keepdim=True)
    torch.testing.assert_close(policy_gradient_logit_step(z.detach(), adv, 1.0, "vanilla"), z.grad)
    torch.testing.assert_close(policy_gradient_logit_step(z.detach(), adv, 0.5, "natural"), 0.5 * adv)


@pytest.mark.parametrize("kind", ["natural", "vanilla"])
def test_covariance_law_error_is_first_order_small(kind):
    g = torch.Generator().manual_seed(2)
    z = 2 * torch.randn(500, 8, generator=g, dtype=torch.float64)
    r = torch.rand(500, 8, generator=g, dtype=torch.float64)
    adv = r - (torch.softmax(z, -1) * r).sum(-1, keepdim=True)
    small, tiny = (covariance_identity_error(z, adv, eta, kind) for eta in (1e-3, 1e-4))
    assert small.relative_error < 1e-2 and small.correlation > 0.9999
    assert tiny.relative_error == pytest.approx(small.relative_error / 10, rel=0.05)  # O(eta)
    big = covariance_identity_error(z, adv, 1.0, kind)
    assert big.relative_error > 10 * small.relative_error  # a large step leaves the first order


def test_covariance_identity_errors():
    with pytest.raises(ValueError, match="kind"):
        policy_gradient_logit_step(torch.zeros(2), torch.zeros(2), 0.1, "mirror")
    with pytest.raises(ValueError, match="S, A"):
        covariance_identity_error(torch.zeros(3), torch.zeros(3), 1e-3)
