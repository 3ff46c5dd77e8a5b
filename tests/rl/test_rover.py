"""ROVER (card 8): the loss against a plain loop of the official code, the batch-scaled reward,
the vocabulary-mean inputs, and short Trainer runs on a tabular tree and a tiny LM."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch

from rlnb.envs import TreeMDP, addition
from rlnb.policies import LMPolicy, TabularPolicy
from rlnb.rl import agg_weights, compute_advantages, compute_policy_loss
from rlnb.rl.rover_loss import rover, rover_reward, vocab_mean_logp
from rlnb.rl.token_inputs import token_inputs
from rlnb.train import TrainConfig, Trainer


def test_doctests():
    assert doctest.testmod(importlib.import_module("rlnb.rl.rover_loss")).failed == 0


# --- plain-loop references (Python floats), written from the official code --------------


def rover_loop(logp, old, adv, mask, cur_vm, old_vm, rho):
    """dp_actor.py: q = rho (logp - old); next_q[t] = rho (cur_q[t+1] - old_q[t+1]) mask[t+1],
    0 at the last column; loss = masked_mean((q - (adv + next_q))^2, mask)."""
    n, t = len(logp), len(logp[0])
    total, count = 0.0, 0
    for i in range(n):
        for j in range(t):
            if not mask[i][j]:
                continue
            nq = rho * (cur_vm[i][j + 1] - old_vm[i][j + 1]) * mask[i][j + 1] if j + 1 < t else 0.0
            q = rho * (logp[i][j] - old[i][j])
            total += (q - (adv[i] + nq)) ** 2
            count += 1
    return total / count


def rover_reward_loop(scores, correct_scale=5.0, wrong_scale=2.0):
    """core_algos.compute_rover_outcome_advantage, element by element."""
    bsz = len(scores)
    pos = sum(s > 0 for s in scores) / bsz
    nonpos = sum(s <= 0 for s in scores) / bsz
    return [correct_scale * (1 - pos) if s > 0 else -wrong_scale * (1 - nonpos) for s in scores]


def _batch(seed, n=5, t=6):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T) contiguous completions
    cur_vm = -2 + 0.5 * torch.randn(n, t, generator=g, dtype=torch.float64)
    old_vm = cur_vm + 0.2 * torch.randn(n, t, generator=g, dtype=torch.float64)
    cur_vm[~mask] = 1e6  # padding holds garbage: it must not reach the loss
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return logp, old, adv, mask, cur_vm, old_vm


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rho", [1.0, 0.3])
def test_loss_and_gradient_match_the_plain_loop(seed, rho):
    logp, old, adv, mask, cur_vm, old_vm = _batch(seed)
    lp = logp.clone().requires_grad_(True)
    loss, metrics = rover(lp, old, adv, mask, logp_vocab_mean=cur_vm,
                          old_logp_vocab_mean=old_vm, rho=rho)
    clean_vm = torch.where(mask, cur_vm, old_vm)  # what the loop sees: no garbage
    ref = rover_loop(logp.tolist(), old.tolist(), adv.tolist(), mask.int().tolist(),
                     clean_vm.tolist(), old_vm.tolist(), rho)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    loss.backward()
    # gradient of the loop, by central differences on each token's logp
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (4, 5), (3, 1)]:
        up, down = logp.clone(), logp.clone()
        up[i, j] += eps
        down[i, j] -= eps
        args = (old.tolist(), adv.tolist(), mask.int().tolist(), clean_vm.tolist(),
                old_vm.tolist(), rho)
        fd = (rover_loop(up.tolist(), *args) - rover_loop(down.tolist(), *args)) / (2 * eps)
        assert lp.grad[i, j].item() == pytest.approx(fd, abs=1e-7), (i, j)
    assert {"rover/q_mean", "rover/next_q_mean", "rover/target_mean", "approx_kl"} <= set(metrics)


def test_on_policy_gradient_is_reinforce_with_the_centred_reward():
    """pi_theta = pi_old: Q_hat = 0 and next_q = 0, so grad = -2 rho A grad log pi / tokens."""
    logp, _, adv, mask, cur_vm, _ = _batch(3)
    lp = logp.clone().requires_grad_(True)
    rho = 0.5
    loss, m = rover(lp, lp.detach(), adv, mask, logp_vocab_mean=cur_vm,
                    old_logp_vocab_mean=cur_vm, rho=rho)
    loss.backward()
    expected = torch.where(mask, -2 * rho * adv[:, None] / mask.sum(), torch.zeros_like(logp))
    torch.testing.assert_close(lp.grad, expected)
    assert m["rover/next_q_mean"] == 0.0


def test_micro_batch_shares_add_up_to_the_whole_batch():
    logp, old, adv, mask, cur_vm, old_vm = _batch(4, n=6)
    kw = {"rho": 0.7}
    whole, _ = rover(logp, old, adv, mask, logp_vocab_mean=cur_vm, old_logp_vocab_mean=old_vm, **kw)
    w = agg_weights(mask, "token-mean", dtype=logp.dtype)
    parts = sum(rover(logp[r], old[r], adv[r], mask[r], logp_vocab_mean=cur_vm[r],
                      old_logp_vocab_mean=old_vm[r], weights=w[r], **kw)[0]
                for r in (slice(0, 2), slice(2, 6)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-12)


def test_missing_vocab_means_and_bad_rho_are_explained():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="logp_vocab_mean"):
        compute_policy_loss("rover", x, x, torch.ones(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="rho"):
        rover(x, x, torch.ones(1), torch.ones(1, 2), logp_vocab_mean=x, old_logp_vocab_mean=x,
              rho=0.0)
    with pytest.raises(ValueError, match="shape"):
        rover(x, x, torch.ones(1), torch.ones(1, 2), logp_vocab_mean=torch.zeros(2, 2),
              old_logp_vocab_mean=x)


@pytest.mark.parametrize("scores", [[1, 0, 0, 0, 1, 1], [0, 0, 0, 0], [1, 1], [0.5, 0, -1, 2]])
def test_rover_reward_matches_the_official_loop(scores):
    r = torch.tensor(scores, dtype=torch.float64)
    got = compute_advantages(r, group_size=2, method="rover")
    assert got.tolist() == pytest.approx(rover_reward_loop(scores))
    assert rover_reward(r, 2, correct_scale=1.0, wrong_scale=1.0).tolist() == pytest.approx(
        rover_reward_loop(scores, 1.0, 1.0))


def test_vocab_mean_logp_is_the_mean_of_log_softmax():
    z = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(0)) * 5
    torch.testing.assert_close(vocab_mean_logp(z), torch.log_softmax(z, -1).mean(-1))
    assert vocab_mean_logp(torch.zeros(7)).item() == pytest.approx(-math.log(7))


# --- the inputs the Trainer gives, and short runs -----------------------------------------


def _tree(seed=0):
    return TreeMDP.random(num_prompts=4, depth=3, reward_fraction=0.1,
                          generator=torch.Generator().manual_seed(seed))


def test_token_inputs_keep_the_old_policy_and_follow_the_current_one():
    env = _tree()
    pi = TabularPolicy.for_env(env)
    batch = pi.rollout(env, torch.arange(4), 3, generator=torch.Generator().manual_seed(0))
    first = token_inputs(rover, pi, batch, torch.zeros(batch.actions.shape), temperature=1.0)
    assert torch.equal(first["logp_vocab_mean"], first["old_logp_vocab_mean"])
    torch.testing.assert_close(first["old_logp_vocab_mean"],
                               torch.full(batch.actions.shape, -math.log(4)))
    with torch.no_grad():
        pi.logits.add_(torch.randn(pi.logits.shape, generator=torch.Generator().manual_seed(1)))
    later = token_inputs(rover, pi, batch, torch.zeros(batch.actions.shape), temperature=1.0)
    assert torch.equal(later["old_logp_vocab_mean"], first["old_logp_vocab_mean"])  # pi_old kept
    expected = torch.log_softmax(pi.state_logits(batch.states, None), -1).mean(-1)
    torch.testing.assert_close(later["logp_vocab_mean"], expected)
    assert token_inputs(lambda logp, old_logp, advantages, mask: 0, pi, batch,
                        torch.zeros(batch.actions.shape)) == {}


def _changed(before, after):
    return max((a - b).abs().max().item() for a, b in zip(before, after))


def test_trainer_runs_rover_on_the_tabular_tree():
    env = _tree()
    pi = TabularPolicy.for_env(env)
    before = [p.detach().clone() for p in pi.parameters()]
    cfg = TrainConfig(seed=0, max_steps=10, num_prompts_per_step=4, num_generations=8,
                      advantage="rover", policy_loss="rover", num_iterations=2, rover_rho=0.5,
                      optimizer="adam", learning_rate=0.05, progress_bar=False)
    history = Trainer(pi, env, cfg).train()
    assert len(history) == 10 and history["loss"].notna().all()
    assert _changed(before, pi.parameters()) > 1e-3
    # the second epoch of each batch is off-policy: the next-state term is live
    assert (history["rover/next_q_mean"].abs() > 0).any()


def test_trainer_runs_rover_on_a_tiny_language_model(tiny_lm_dir):
    task = addition(16, digits=1, seed=0)
    model_dir = tiny_lm_dir(task.alphabet, "llama", n_layer=1, d_model=32, n_head=2,
                            n_kv_head=1)
    policy = LMPolicy(model_dir, max_new_tokens=3)
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = TrainConfig(seed=0, max_steps=10, num_prompts_per_step=4, num_generations=4,
                      advantage="grpo", policy_loss="rover", num_iterations=2,
                      optimizer="adamw", learning_rate=1e-3, progress_bar=False)
    history = Trainer(policy, task, cfg).train()
    assert len(history) == 10 and history["loss"].notna().all()
    assert _changed(before, policy.parameters()) > 1e-5
    assert (history["rover/next_q_mean"].abs() > 0).any()


def test_trainer_micro_batches_train_like_the_whole_batch():
    """Two PPO epochs (the second off-policy, so the vocabulary term is live), the batch at
    once vs in 4 micro-batches: the same weights up to float rounding."""
    weights = []
    for micro in ({}, {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4}):
        env = _tree()
        pi = TabularPolicy.for_env(env)
        cfg = TrainConfig(seed=0, max_steps=3, num_prompts_per_step=4, num_generations=8,
                          advantage="rover", policy_loss="rover", num_iterations=2,
                          optimizer="sgd", learning_rate=0.5, progress_bar=False, **micro)
        Trainer(pi, env, cfg).train()
        weights.append(pi.logits.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    assert (weights[0] != 0).any()
