"""Card 6's module: exact expected gradients of PSR, NSR and W-REINFORCE, and the checks."""

from __future__ import annotations

import pytest
import torch

from analysis import psr_nsr as m
from rlnb.envs import StrategyBandit


def _problem(seed: int = 0):
    env = StrategyBandit.from_card(num_problems=12, num_strategies=7,
                                   generator=torch.Generator().manual_seed(seed))
    logits = torch.randn(7, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return env.solve_matrix, logits


def test_exact_gradient_closed_form_and_psr_equals_nsr():
    M, logits = _problem()
    pi = torch.softmax(logits, -1)
    rbar = M.double().mean(0)  # mean over problems of r_is
    want = pi * rbar - pi * (pi @ rbar)  # sum_s pi_s A_s (e_s - pi) with A = r
    g_psr = m.exact_gradient(logits, M, "psr")
    torch.testing.assert_close(g_psr, want, atol=1e-14, rtol=0)
    torch.testing.assert_close(m.exact_gradient(logits, M, "nsr"), g_psr, atol=1e-14, rtol=0)
    # W-REINFORCE = (1 + lambda) r - 1: its exact gradient is (1 + lambda) times PSR's
    torch.testing.assert_close(m.exact_gradient(logits, M, "w_reinforce"),
                               (1 + m.LAMBDA) * g_psr, atol=1e-14, rtol=0)


def test_exact_gradient_is_the_mean_of_sampled_score_terms():
    M, logits = _problem(3)
    pi = torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    i = torch.randint(M.shape[0], (n,), generator=g)
    s = torch.multinomial(pi, n, replacement=True, generator=g)
    A = M.double()[i, s] - 1.0  # NSR
    score = torch.nn.functional.one_hot(s, 7).double() - pi  # grad log pi(s)
    terms = A[:, None] * score
    mc, se = terms.mean(0), terms.std(0) / n**0.5
    exact = m.exact_gradient(logits, M, "nsr")
    assert ((mc - exact).abs() <= 4 * se + 1e-12).all()


def test_exact_sgd_moves_the_policy_and_is_the_same_for_psr_and_nsr():
    M, logits = _problem(1)
    p_psr = m.exact_sgd(logits, M, "psr", steps=20)
    p_nsr = m.exact_sgd(logits, M, "nsr", steps=20)
    torch.testing.assert_close(p_psr, p_nsr, atol=1e-12, rtol=0)
    assert (p_psr - torch.softmax(logits, -1)).abs().max() > 1e-3


def test_exact_gradient_rejects_bad_input():
    M, logits = _problem()
    with pytest.raises(ValueError, match="advantage must be one of"):
        m.exact_gradient(logits, M, "grpo")
    with pytest.raises(ValueError, match="solve_matrix must be"):
        m.exact_gradient(logits[:5], M, "psr")


def _seed(h, p1, p256, sgd_gap=0.0):
    ks = m.KS

    def curve(first, last):
        return [first] + [0.5] * (len(ks) - 2) + [last]
    adam = {name: {"pass_at_k": curve(p1[j], p256[j]), "entropy": h[j]}
            for j, name in enumerate(m.RUNS)}
    sgd = {"psr": {"pass_at_k": curve(0.4, 0.8)},
           "nsr": {"pass_at_k": curve(0.4 + sgd_gap, 0.8)}}
    return {"adam": adam, "sgd": sgd, "exact_sgd": sgd,
            "exact_gradient": [{"psr_vs_nsr": 1e-17}]}


def test_checks_take_the_worst_seed_and_between_is_two_sided():
    good = _seed(h=(2.0, 2.9, 2.8), p1=(0.35, 0.27, 0.28), p256=(0.98, 0.99, 0.99))
    outside = _seed(h=(2.0, 2.9, 2.95), p1=(0.35, 0.27, 0.28), p256=(0.98, 0.99, 0.99),
                    sgd_gap=0.03)
    results = {"ks": m.KS, "seeds": [good, outside]}
    checks = m.checks(results)
    assert all(c.passed for c in m.checks({"ks": m.KS, "seeds": [good]}))
    between = next(c for c in checks if "between" in c.name)
    assert between.value == pytest.approx(-0.05) and not between.passed
    sampled = next(c for c in checks if c.name.startswith("sampled SGD"))
    assert sampled.value == pytest.approx(0.03) and not sampled.required
    h_gap = next(c for c in checks if c.name.startswith("Adam: H(NSR)"))
    assert h_gap.value == pytest.approx(0.9) and h_gap.passed
