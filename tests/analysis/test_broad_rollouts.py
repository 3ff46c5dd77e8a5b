"""Card 18's pieces: the mass-balance update against a first-principles loop, the trees."""

from __future__ import annotations

import pytest
import torch

import analysis.broad_rollouts as m


def one_update_loop(z: torch.Tensor, ys: list[int], centred: bool, lr: float = 1.0) -> float:
    """The correct mass after one SGD step on mean_i A_i log softmax(z)[y_i], by autograd."""
    z = z.clone().requires_grad_(True)
    adv = torch.tensor([1.0 if y < m.CORRECT_TOKENS else -1.0 for y in ys], dtype=torch.float64)
    if centred:
        adv = adv - adv.mean()
    objective = sum(a * torch.log_softmax(z, 0)[y] for a, y in zip(adv, ys)) / len(ys)
    objective.backward()
    with torch.no_grad():
        return float(torch.softmax(z + lr * z.grad, 0)[: m.CORRECT_TOKENS].sum())


def test_vectorised_update_equals_autograd():
    g = torch.Generator().manual_seed(5)
    for n, centred in ((4, False), (16, True), (4, True)):
        z = torch.randn(m.VOCAB, generator=g, dtype=torch.float64)
        pi = torch.softmax(z, 0)
        ys = torch.multinomial(pi, n, replacement=True, generator=g).tolist()
        adv = torch.tensor([1.0 if y < m.CORRECT_TOKENS else -1.0 for y in ys], dtype=torch.float64)
        if centred:
            adv = adv - adv.mean()
        counts = torch.zeros(m.VOCAB, dtype=torch.float64).index_add_(0, torch.tensor(ys), adv)
        grad = (counts - adv.sum() * pi) / n
        mine = float(torch.softmax(z + grad, 0)[: m.CORRECT_TOKENS].sum())
        assert mine == pytest.approx(one_update_loop(z, ys, centred), abs=1e-12)


def test_fall_probability_shrinks_with_n_and_is_zero_centred():
    p4 = m.mass_fall_probability(4, trials=4000, centred=False, seed=1)
    p256 = m.mass_fall_probability(256, trials=4000, centred=False, seed=1)
    assert p4 > 0.05 and p256 < 0.005
    assert m.mass_fall_probability(4, trials=4000, centred=True, seed=1) == 0.0


def test_trees_have_easy_and_hard_prompts():
    env = m.make_env(0)
    counts = env.leaf_rewards.sum(1)
    assert env.num_prompts == 16 and env.leaf_rewards.shape[1] == 4096
    assert counts[:8].tolist() == [41.0] * 8 and counts[8:].tolist() == [4.0] * 8
    out = m.tree_run(0, 4, 3)
    assert out["samples"] == 3 * 16 * 4 and 0 <= out["hard"] <= out["pass_at_1"] * 2
