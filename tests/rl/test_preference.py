"""Preference losses against plain loops over pairs (float64), TRL's metric names, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rlnb.rl.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    compute_preference_loss,
    sequence_logps,
)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _reference(name: str, pc, pr, rc, rr, beta: float, eps: float = 0.0) -> float:
    """The textbook per-pair formulas, one pair at a time, averaged."""
    total = 0.0
    for a, b, c, d in zip(pc, pr, rc, rr, strict=True):
        margin = (a - c) - (b - d)
        if name == "sigmoid":
            total += -(1 - eps) * _logsig(beta * margin) - eps * _logsig(-beta * margin)
        elif name == "ipo":
            total += (margin - 1 / (2 * beta)) ** 2
        elif name == "hinge":
            total += max(0.0, 1 - beta * margin)
    return total / len(pc)


def _pairs(seed: int, n: int = 17):
    g = torch.Generator().manual_seed(seed)
    return [(-5 * torch.rand(n, generator=g, dtype=torch.float64)) for _ in range(4)]


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_losses_match_a_plain_loop(name, beta):
    pc, pr, rc, rr = _pairs(int(beta * 100))
    loss, metrics = compute_preference_loss(name, pc, pr, rc, rr, beta=beta)
    want = _reference(name, pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta)
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    chosen = [beta * (a - c) for a, c in zip(pc.tolist(), rc.tolist(), strict=True)]
    rejected = [beta * (b - d) for b, d in zip(pr.tolist(), rr.tolist(), strict=True)]
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / len(chosen))
    assert metrics["rewards/margins"] == pytest.approx(
        sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(chosen))
    assert metrics["rewards/accuracies"] == pytest.approx(
        sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen))


def test_label_smoothing_is_cdpo():
    pc, pr, rc, rr = _pairs(3)
    loss, _ = compute_preference_loss("sigmoid", pc, pr, rc, rr, beta=0.2, label_smoothing=0.1)
    want = _reference("sigmoid", pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), 0.2, 0.1)
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_gradient_flows_to_the_policy_only():
    pc, pr, rc, rr = _pairs(4)
    pc, pr, rc, rr = (t.clone().requires_grad_(True) for t in (pc, pr, rc, rr))
    loss, _ = compute_preference_loss("sigmoid", pc, pr, rc, rr, beta=0.1)
    loss.backward()
    assert rc.grad is None and rr.grad is None
    # DPO raises the chosen and lowers the rejected log-probability
    assert bool((pc.grad < 0).all()) and bool((pr.grad > 0).all())
    # the per-pair gradient is -beta * sigmoid(-h) / P (the DPO weight)
    h = 0.1 * ((pc - rc) - (pr - rr)).detach()
    torch.testing.assert_close(pc.grad, -0.1 * torch.sigmoid(-h) / len(h))


def test_weights_give_a_weighted_mean():
    pc, pr, rc, rr = _pairs(5, n=4)
    w = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    loss, _ = compute_preference_loss("ipo", pc, pr, rc, rr, beta=0.5, weights=w)
    per = [(((a - c) - (b - d)) - 1.0) ** 2 for a, b, c, d in
           zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True)]
    assert loss.item() == pytest.approx(sum(p * x for p, x in zip(per, w.tolist(), strict=True)) / 4.0)


def test_sequence_logps_sum_and_mean_ignore_padding():
    lp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), float("nan")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(sequence_logps(lp, mask), torch.tensor([-3.0, -0.5]))
    torch.testing.assert_close(sequence_logps(lp, mask, average=True), torch.tensor([-1.5, -0.5]))
    with pytest.raises(ValueError, match="no valid token"):
        sequence_logps(lp, torch.tensor([[1, 1, 0], [0, 0, 0]]), average=True)


def test_bradley_terry_loss():
    sc, sr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    want = -(_logsig(2.0) + _logsig(-1.0)) / 2
    assert bradley_terry_loss(sc, sr).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        bradley_terry_loss(sc, torch.zeros(3))


def test_clear_errors():
    pc, pr, rc, rr = _pairs(6)
    with pytest.raises(ValueError, match="unknown preference loss 'dpo'"):
        compute_preference_loss("dpo", pc, pr, rc, rr)
    with pytest.raises(ValueError, match="one \\(pairs,\\) shape"):
        compute_preference_loss("sigmoid", pc, pr[:3], rc, rr)
    with pytest.raises(ValueError, match="beta must be > 0"):
        compute_preference_loss("sigmoid", pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        compute_preference_loss("sigmoid", pc, pr, rc, rr, label_smoothing=0.5)
    with pytest.raises(ValueError, match="no pairs"):
        e = torch.zeros(0)
        compute_preference_loss("sigmoid", e, e, e, e)
    assert sorted(PREFERENCE_LOSSES) == ["hinge", "ipo", "sigmoid"]
