"""Preference games: the LP minimax winner, exploitability, Nash-MD's last iterate."""

from __future__ import annotations

import doctest

import pytest
import torch

import rlnb.algos.nash
from rlnb.algos import exploitability, minimax_winner, nash_md


def cyclic_game(seed: int, k: int = 7) -> torch.Tensor:
    """Card 19's shape (:meth:`rlnb.envs.PreferenceGame.cyclic`)."""
    from rlnb.envs import PreferenceGame

    return PreferenceGame.cyclic(k, seed).preference


@pytest.mark.parametrize("seed", range(5))
def test_minimax_winner_is_unexploitable_and_supported_on_the_cycle(seed):
    P = cyclic_game(seed)
    pi = minimax_winner(P)
    assert abs(exploitability(pi, P)) < 1e-7
    assert pi[3:].sum() < 1e-7 and pi.sum().item() == pytest.approx(1.0)
    # any other policy is exploitable: the uniform one and a pure cycle member
    assert exploitability(torch.full((7,), 1 / 7, dtype=torch.float64), P) > 0.1
    assert exploitability(torch.eye(7, dtype=torch.float64)[0], P) > 0.1


@pytest.mark.parametrize("seed", range(5))
def test_nash_md_last_iterate_approaches_the_winner(seed):
    P = cyclic_game(seed)
    pi = nash_md(P, beta=0.02, eta=0.1, steps=3000)
    assert exploitability(pi, P) <= 0.02  # card 19's criterion, last iterate
    assert exploitability(nash_md(P, beta=0.02, eta=0.1, steps=0), P) > 0.1  # it had work to do


def test_transitive_game_winner_is_the_condorcet_winner():
    P = torch.tensor([[0.5, 0.7, 0.9], [0.3, 0.5, 0.6], [0.1, 0.4, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(minimax_winner(P), torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               atol=1e-9, rtol=0)


def test_errors():
    with pytest.raises(ValueError, match="must be 1"):
        minimax_winner(torch.tensor([[0.5, 0.9], [0.9, 0.5]]))
    with pytest.raises(ValueError, match="\\(K, K\\)"):
        exploitability(torch.ones(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="eta \\* beta < 1"):
        nash_md(cyclic_game(0), beta=2.0, eta=1.0)


def test_doctests():
    assert doctest.testmod(rlnb.algos.nash).failed == 0


@pytest.mark.parametrize("seed", range(5))
def test_spo_average_iterate_converges_last_iterate_cycles(seed):
    from rlnb.algos import spo_hedge

    P = cyclic_game(seed)
    last, average = spo_hedge(P, eta=1.0, steps=3000)
    assert exploitability(average, P) <= 0.02  # card 19: SPO's average iterate
    assert exploitability(last, P) > 0.05  # its last iterate keeps cycling (card: 0.181)


def test_sampled_spo_with_win_rate_rewards_approaches_the_winner():
    """REINFORCE on a softmax over the 7 outputs, reward = win rate within a group of 8
    (rlnb.rl.win_rate_rewards), averaged iterate: card 19's sampled SPO (<= 0.12)."""
    from rlnb.rl import win_rate_rewards

    P = cyclic_game(0)
    g = torch.Generator().manual_seed(0)
    logits = torch.zeros(7, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    total = torch.zeros(7, dtype=torch.float64)
    steps, prompts, group = 1500, 8, 8
    for _ in range(steps):
        probs = torch.softmax(logits, 0)
        ys = torch.multinomial(probs.detach().expand(prompts, 7), group, replacement=True,
                               generator=g).reshape(-1)
        r = win_rate_rewards(ys, group, P).to(torch.float64)
        adv = r - r.view(-1, group).mean(1, keepdim=True).expand(-1, group).reshape(-1)
        loss = -(adv * torch.log(probs[ys])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += torch.softmax(logits.detach(), 0)
    assert exploitability(total / steps, P) <= 0.12


def test_win_rate_rewards_exclude_the_sample_itself():
    from rlnb.rl import win_rate_rewards

    P = torch.tensor([[0.5, 0.8], [0.2, 0.5]])
    torch.testing.assert_close(win_rate_rewards(torch.tensor([0, 1, 1, 1]), 2, P),
                               torch.tensor([0.8, 0.2, 0.5, 0.5]))
    with pytest.raises(ValueError, match="needs opponents"):
        win_rate_rewards(torch.tensor([0, 1]), 1, P)
    with pytest.raises(ValueError, match="in \\[0, 2\\)"):
        win_rate_rewards(torch.tensor([0, 2]), 2, P)


@pytest.mark.parametrize("seed", range(5))
def test_bradley_terry_plus_kl_rl_is_exploitable(seed):
    """Card 19: a BT model fitted on 5000 uniform pairs, then the KL-regularised optimum
    (beta 0.05, exactly pi ∝ mu exp(r / beta)) puts its mass on the BT argmax, and the
    cycle exploits it: exploitability >= 0.10, mass on the argmax >= 0.7."""
    from rlnb.algos import fit_bradley_terry, sample_preferences

    P = cyclic_game(seed)
    chosen, rejected = sample_preferences(P, 5000, torch.Generator().manual_seed(seed))
    scores = fit_bradley_terry(chosen, rejected, 7)
    pi = torch.softmax(scores / 0.05, 0)  # uniform reference
    assert pi.max() >= 0.7 and int(pi.argmax()) < 3  # one member of the cycle
    assert exploitability(pi, P) >= 0.10
    # the fit is a good BT model: it ranks the cycle above the dominated outputs
    assert scores[:3].min() > scores[3:].max()


@pytest.mark.parametrize("seed", range(5))
def test_self_play_against_a_fixed_uniform_opponent_does_not_pass(seed):
    """Card 19's control: Hedge against a *fixed* uniform opponent converges to the best
    response to uniform, a pure output, which the cycle exploits (card: 0.08-0.24)."""
    P = cyclic_game(seed)
    uniform = torch.full((7,), 1 / 7, dtype=torch.float64)
    pi = uniform.clone()
    for _ in range(3000):
        pi = torch.softmax(pi.log() + 1.0 * (P @ uniform), 0)
    assert exploitability(pi, P) > 0.02  # fails the criterion SPO's self-play meets
