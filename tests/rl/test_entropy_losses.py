"""STEER and Lp-Reg against plain per-token Python loops; the min-p proxy; the Trainer path."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import rlnb.rl.entropy_losses
from rlnb.rl import compute_policy_loss, lp_reg, min_p_proxy_logp, steer
from rlnb.rl.entropy_losses import low_var_kl, steer_weights


def ppo_token(lp, old, a, eps_low=0.2, eps_high=0.2, delta=None):
    r = math.exp(lp - old)
    loss = max(-a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high))
    if delta is not None and a < 0:
        loss = min(loss, -a * delta)
    return loss


def batch(seed, n=6, t=5):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(n, t, 4, generator=g), -1)[..., 0]
    old = logp + 0.3 * torch.randn(n, t, generator=g)
    old = old.clamp(max=-1e-3)
    adv = torch.randn(n, generator=g)
    mask = torch.rand(n, t, generator=g) > 0.25
    mask[0, 0] = True
    entropy = torch.rand(n, t, generator=g) * math.log(4)
    return logp, old, adv, mask, entropy


def steer_loop(logp, old, adv, mask, entropy, weighting, k, delta=None):
    n, t = len(logp), len(logp[0])
    omegas = {}
    for i in range(n):
        for j in range(t):
            if mask[i][j]:
                p = min(max(math.exp(logp[i][j]), 1e-8), 1 - 1e-8)
                po = max(math.exp(old[i][j]), 1e-8)
                omegas[i, j] = adv[i] / po * p * (1 - p) * (math.log(p) + entropy[i][j])
    mags = {key: abs(v) for key, v in omegas.items()}
    lo, hi = min(mags.values()), max(mags.values())
    total, count = 0.0, 0
    for (i, j), m in mags.items():
        if weighting == "exp":
            w = math.exp(-k * m)
        else:
            w = 1.0 if hi == lo else min(max(1.2 - (m - lo) * 0.4 / (hi - lo), 0.8), 1.2)
        total += w * ppo_token(logp[i][j], old[i][j], adv[i], delta=delta)
        count += 1
    return total / count


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("weighting,k,delta", [("exp", 1.0, None), ("exp", 0.3, 3.0),
                                               ("linear", 1.0, None)])
def test_steer_matches_a_loop(seed, weighting, k, delta):
    logp, old, adv, mask, entropy = [x.double() if x.is_floating_point() else x for x in batch(seed)]
    loss, m = steer(logp, old, adv, mask, entropy=entropy, steer_weighting=weighting,
                    steer_k=k, delta=delta)
    ref = steer_loop(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), entropy.tolist(),
                     weighting, k, delta)
    assert loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert 0 < m["steer/weight_mean"] <= 1.2


def test_steer_gradient_is_weighted_ppo():
    logp, old, adv, mask, entropy = batch(7)
    lp = logp.clone().requires_grad_(True)
    loss, _ = steer(lp, old, adv, mask, entropy=entropy, steer_k=0.0)  # k = 0: every weight 1
    loss.backward()
    lp2 = logp.clone().requires_grad_(True)
    ref, _ = compute_policy_loss("ppo_clip", lp2, old, adv, mask)
    ref.backward()
    torch.testing.assert_close(lp.grad, lp2.grad)


def test_steer_needs_entropy():
    logp, old, adv, mask, _ = batch(0)
    with pytest.raises(ValueError, match="entropy"):
        steer(logp, old, adv, mask)
    with pytest.raises(ValueError, match="steer_weighting"):
        steer_weights(torch.zeros(1, 1), torch.ones(1, 1), weighting="tanh")


def proxy_loop(logits, action, min_p):
    probs = [math.exp(x) for x in logits]
    z = sum(probs)
    probs = [p / z for p in probs]
    top = max(probs)
    kept = [p if p >= min_p * top else 0.0 for p in probs]
    return math.log(kept[action] / sum(kept)) if kept[action] > 0 else -math.inf


def test_min_p_proxy_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 6, (4, 3), generator=g)
    got = min_p_proxy_logp(logits, actions, 0.05)
    for i in range(4):
        for j in range(3):
            ref = proxy_loop(logits[i, j].tolist(), int(actions[i, j]), 0.05)
            if math.isinf(ref):
                assert got[i, j] == -math.inf
            else:
                assert float(got[i, j]) == pytest.approx(ref, rel=1e-5)


def lp_reg_loop(logp, old, adv, mask, proxy, fraction, coef):
    n, t = len(logp), len(logp[0])
    neg = [(i, j) for i in range(n) for j in range(t) if mask[i][j] and adv[i] < 0]
    k = max(1, int(len(neg) * fraction)) if neg else 0
    chosen = set(sorted(neg, key=lambda ij: logp[ij[0]][ij[1]])[:k])
    total, count = 0.0, 0
    for i in range(n):
        for j in range(t):
            if not mask[i][j]:
                continue
            count += 1
            if (i, j) in chosen and logp[i][j] < proxy[i][j]:
                d = max(min(proxy[i][j] - logp[i][j], 20.0), -20.0)
                kl = max(min(math.exp(d) - d - 1, 10.0), -10.0)
                total += -adv[i] * math.exp(logp[i][j] - old[i][j]) + coef * kl
            else:
                total += ppo_token(logp[i][j], old[i][j], adv[i])
    return total / count


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction,coef", [(0.01, 1.0), (0.3, 0.5), (1.0, 2.0)])
def test_lp_reg_matches_a_loop(seed, fraction, coef):
    logp, old, adv, mask, _ = [x.double() if x.is_floating_point() else x for x in batch(seed)]
    g = torch.Generator().manual_seed(100 + seed)
    proxy = logp + 0.5 * torch.randn(logp.shape, generator=g, dtype=torch.float64)
    proxy[1, 1] = -math.inf  # a token min-p filtered out never qualifies
    loss, m = lp_reg(logp, old, adv, mask, proxy_logp=proxy, lp_reg_fraction=fraction,
                     lp_reg_coef=coef)
    ref = lp_reg_loop(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(),
                      proxy.tolist(), fraction, coef)
    assert loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert math.isfinite(m["lp_reg/kl_mean"])


def test_lp_reg_pulls_a_rare_token_up_towards_the_proxy():
    logp = torch.log(torch.tensor([[0.01, 0.5]])).requires_grad_(True)
    proxy = torch.log(torch.tensor([[0.05, 0.5]]))
    loss, m = lp_reg(logp, logp.detach(), torch.tensor([-1.0]), torch.ones(1, 2, dtype=torch.bool),
                     proxy_logp=proxy, lp_reg_fraction=0.5, lp_reg_coef=10.0)
    loss.backward()
    assert m["lp_reg/frac_regularized"] == 0.5
    assert logp.grad[0, 0] < 0  # descent raises the rare token's log-prob despite A < 0


def test_low_var_kl_is_zero_at_equality_and_positive_elsewhere():
    x = torch.linspace(-5, 0, 11)
    assert torch.all(low_var_kl(x, x) == 0)
    assert torch.all(low_var_kl(x, x - 0.3) > 0)


@pytest.mark.parametrize("loss_name", ["steer", "lp_reg"])
def test_trainer_runs_both_losses_on_the_tree(loss_name):
    from rlnb.envs import TreeMDP
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    env = TreeMDP.random(generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=3, num_prompts_per_step=4, num_generations=8,
                      policy_loss=loss_name, num_iterations=2, progress_bar=False,
                      lp_reg_fraction=0.5)
    df = Trainer(TabularPolicy.for_env(env), env, cfg).train()
    key = "steer/weight_mean" if loss_name == "steer" else "lp_reg/frac_regularized"
    assert key in df and df[key].notna().all()


def test_doctests():
    assert doctest.testmod(rlnb.rl.entropy_losses).failed == 0
