"""Aggregation, policy losses, KL and entropy: loop references, known answers, mechanisms."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rlnb.rl.advantages
import rlnb.rl.aggregation
import rlnb.rl.kl
import rlnb.rl.losses
import rlnb.rl.registry
from rlnb.rl import (
    AGG_MODES,
    agg_loss,
    clip_cov,
    compute_policy_loss,
    entropy_bonus,
    entropy_from_logits,
    kl_cov,
    kl_penalty,
    masked_mean,
    ppo_clip,
    vanilla_pg,
)

# --- plain-loop references (Python floats) --------------------------------------------


def agg_loop(loss, mask, mode, max_len=None):
    """Each mode as its library writes it (one process): verl's names, TRL's loss_type."""
    n, t = len(loss), len(loss[0])
    tok = [[l for l, m in zip(lr, mr) if m] for lr, mr in zip(loss, mask)]
    rows = [r for r in tok if r]  # verl's seq-mean-* leave empty rows out
    if mode in ("token-mean", "bnpo", "dapo"):
        count = sum(len(r) for r in tok)
        return sum(sum(r) for r in tok) / count if count else 0.0
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows) if rows else 0.0
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in rows) / len(rows) if rows else 0.0
    if mode == "grpo":
        return sum(sum(r) / max(len(r), 1) for r in tok) / n
    if mode == "seq-mean-token-sum-norm":
        return sum(sum(r) for r in tok) / (max_len or t)
    assert mode == "dr_grpo"
    return sum(sum(r) for r in tok) / (n * (max_len or t))


def ppo_token_loop(lp, old, a, eps_low, eps_high, delta=None):
    r = math.exp(lp - old)
    loss = max(-a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high))
    if delta is not None and a < 0:
        loss = min(loss, -a * delta)
    return loss


def cov_loop(adv, logp, mask):
    """cov per (i, t) for valid tokens, means over the valid tokens."""
    valid = [(i, t) for i, row in enumerate(mask) for t, m in enumerate(row) if m]
    if not valid:
        return {}
    mean_a = sum(adv[i][t] for i, t in valid) / len(valid)
    mean_lp = sum(logp[i][t] for i, t in valid) / len(valid)
    return {(i, t): (adv[i][t] - mean_a) * (logp[i][t] - mean_lp) for i, t in valid}


def make_batch(n, t, seed, spread=0.3, adv_per_token=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=gen, dtype=dtype) * 4  # (N, T)
    logp = (old + spread * torch.randn(n, t, generator=gen, dtype=dtype)).clamp(max=0)
    adv_shape = (n, t) if adv_per_token else (n,)
    adv = torch.randn(adv_shape, generator=gen, dtype=dtype) * 2
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    lengths[0] = 0  # an all-zero row
    lengths[-1] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return logp, old, adv, mask


def full_adv(adv, t):
    return adv[:, None].expand(-1, t) if adv.dim() == 1 else adv


# --- aggregation ----------------------------------------------------------------------


def test_agg_modes_hand_computed():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    want = {
        "token-mean": 8 / 5, "bnpo": 8 / 5, "dapo": 8 / 5,
        "seq-mean-token-mean": (1 + 4) / 2, "grpo": (1 + 4) / 2,
        "seq-mean-token-sum": (4 + 4) / 2,
        "seq-mean-token-sum-norm": 8 / 4,  # verl: by T alone
        "dr_grpo": 8 / (2 * 4),  # TRL: by N * max_completion_length
    }
    assert set(want) == set(AGG_MODES)
    for mode, value in want.items():
        assert agg_loss(loss, mask, mode).item() == pytest.approx(value)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", max_len=16).item() == 8 / 16
    assert agg_loss(loss, mask, "dr_grpo", max_len=16).item() == 8 / 32
    # An empty sequence: TRL's grpo counts it as 0 in the mean over N, verl leaves it out.
    loss = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    want = {
        "token-mean": 1.5, "bnpo": 1.5, "dapo": 1.5,
        "seq-mean-token-mean": 1.5, "grpo": 0.75,
        "seq-mean-token-sum": 3.0,
        "seq-mean-token-sum-norm": 1.5, "dr_grpo": 0.75,
    }
    for mode, value in want.items():
        assert agg_loss(loss, mask, mode).item() == pytest.approx(value)
    for mode in AGG_MODES:
        assert agg_loss(loss, torch.zeros(2, 2), mode).item() == 0.0


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 9), (16, 4)])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_matches_loop(shape, mode):
    gen = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    for _ in range(3):
        loss = torch.randn(shape, generator=gen, dtype=torch.float64)
        mask = (torch.rand(shape, generator=gen) > 0.4).long()
        mask[0] = 0
        for max_len in (None, shape[1] + 3):
            got = agg_loss(loss, mask, mode, max_len=max_len)
            ref = agg_loop(loss.tolist(), mask.tolist(), mode, max_len)
            assert got.item() == pytest.approx(ref, abs=1e-12)


def test_agg_ignores_garbage_in_padding():
    loss = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 0]])
    for mode in AGG_MODES:
        out = agg_loss(loss, mask, mode)
        (grad,) = torch.autograd.grad(out, loss)
        assert torch.isfinite(out) and torch.isfinite(grad).all()
        assert grad[0, 1] == 0 and grad[1, 1] == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_agg_invariant_to_padding_columns(n, t, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(n, t, generator=gen, dtype=torch.float64)
    mask = (torch.rand(n, t, generator=gen) > 0.3).long()
    padded_loss = torch.cat(
        [loss, 1e6 * torch.randn(n, extra, generator=gen, dtype=torch.float64)], dim=1
    )
    padded_mask = torch.cat([mask, torch.zeros(n, extra, dtype=torch.long)], dim=1)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "grpo", "bnpo",
                 "dapo"):
        assert torch.allclose(agg_loss(loss, mask, mode), agg_loss(padded_loss, padded_mask, mode))
    # The Dr.GRPO modes divide by a constant: padding changes it unless max_len is fixed.
    for mode in ("seq-mean-token-sum-norm", "dr_grpo"):
        assert torch.allclose(
            agg_loss(loss, mask, mode, max_len=t + extra), agg_loss(padded_loss, padded_mask, mode)
        )


def test_agg_errors_and_masked_mean():
    with pytest.raises(
        ValueError, match="unknown aggregation mode 'mean'; valid: " + ", ".join(sorted(AGG_MODES))
    ):
        agg_loss(torch.zeros(2, 2), torch.ones(2, 2), "mean")
    with pytest.raises(ValueError, match=r"must both be \(N, T\)"):
        agg_loss(torch.zeros(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"max_len must be > 0 \(generation budget in tokens"):
        agg_loss(torch.zeros(2, 2), torch.ones(2, 2), "seq-mean-token-sum-norm", max_len=0)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m).item() == 1.5
    assert torch.equal(masked_mean(x, m, dim=1), torch.tensor([1.5, 0.0]))
    assert torch.equal(masked_mean(x, m.bool(), dim=0), torch.tensor([1.0, 2.0, 0.0]))


# --- vanilla_pg and ppo_clip ----------------------------------------------------------


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("adv_per_token", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"epsilon_high": 0.28},
        {"epsilon": 0.1, "delta": 2.0},
        {"epsilon": 0.3, "epsilon_high": 0.5, "delta": 1.4},
    ],
)
def test_ppo_clip_matches_loop(mode, adv_per_token, options):
    eps = options.get("epsilon", 0.2)
    eps_high = options.get("epsilon_high", eps)
    delta = options.get("delta")
    for seed, (n, t) in enumerate([(1, 1), (4, 6), (8, 3)]):
        logp, old, adv, mask = make_batch(n, t, seed, spread=0.5, adv_per_token=adv_per_token)
        loss, metrics = ppo_clip(logp, old, adv, mask, agg=mode, **options)
        a = full_adv(adv, t).tolist()
        lp, ol, m = logp.tolist(), old.tolist(), mask.tolist()
        tok = [
            [ppo_token_loop(lp[i][j], ol[i][j], a[i][j], eps, eps_high, delta) for j in range(t)]
            for i in range(n)
        ]
        assert loss.item() == pytest.approx(agg_loop(tok, m, mode), abs=1e-12)
        valid = [(i, j) for i in range(n) for j in range(t) if m[i][j]]
        ratio = {(i, j): math.exp(lp[i][j] - ol[i][j]) for i, j in valid}
        low = [a[i][j] < 0 and ratio[i, j] < 1 - eps for i, j in valid]
        high = [a[i][j] > 0 and ratio[i, j] > 1 + eps_high for i, j in valid]
        frac = (lambda flags: sum(flags) / len(flags)) if valid else (lambda flags: 0.0)
        assert metrics["clip_ratio/low_mean"] == pytest.approx(frac(low))
        assert metrics["clip_ratio/high_mean"] == pytest.approx(frac(high))
        assert metrics["clip_ratio/region_mean"] == pytest.approx(
            frac([x or y for x, y in zip(low, high)])
        )
        assert metrics["ratio_mean"] == pytest.approx(frac(list(ratio.values())))
        assert metrics["approx_kl"] == pytest.approx(
            frac([0.5 * (lp[i][j] - ol[i][j]) ** 2 for i, j in valid])
        )
        assert metrics["pg_loss"] == pytest.approx(loss.item())


@pytest.mark.parametrize("mode", AGG_MODES)
def test_vanilla_pg_matches_loop(mode):
    for seed, (n, t) in enumerate([(1, 1), (3, 5), (7, 4)]):
        logp, old, adv, mask = make_batch(n, t, seed, spread=1.0)
        loss, _ = vanilla_pg(logp, old, adv, mask, agg=mode)
        a, lp, ol = full_adv(adv, t).tolist(), logp.tolist(), old.tolist()
        tok = [[-a[i][j] * math.exp(lp[i][j] - ol[i][j]) for j in range(t)] for i in range(n)]
        assert loss.item() == pytest.approx(agg_loop(tok, mask.tolist(), mode), abs=1e-12)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_on_policy_gradient_is_vanilla_policy_gradient(mode):
    _, _, adv, mask = make_batch(6, 5, seed=3)
    logits = torch.randn(6, 5, 4, dtype=torch.float64, requires_grad=True)

    def token_logp():
        return torch.log_softmax(logits, -1)[..., 0]  # (N, T) log-prob of token 0

    grads = {}
    for name, fn in [("vanilla", vanilla_pg), ("ppo", ppo_clip), ("ppo_dapo", ppo_clip)]:
        kw = {"epsilon_high": 0.28, "delta": 3.0} if name == "ppo_dapo" else {}
        logp = token_logp()
        loss, metrics = fn(logp, logp.detach(), adv, mask, agg=mode, **kw)
        grads[name] = torch.autograd.grad(loss, logits)[0]
        assert metrics["ratio_mean"] == pytest.approx(1.0 if mask.any() else 0.0)
    # REINFORCE written out: -A * log pi, aggregated the same way.
    reinforce = agg_loss(-full_adv(adv, 5) * token_logp(), mask, mode)
    want = torch.autograd.grad(reinforce, logits)[0]
    for g in grads.values():
        assert torch.allclose(g, want)
    # Passing old_logp = logp without detaching still gives that gradient (it is detached).
    logp = token_logp()
    loss, _ = ppo_clip(logp, logp, adv, mask, agg=mode)
    assert torch.allclose(torch.autograd.grad(loss, logits)[0], want)


def test_clip_metrics_hand_built():
    #        t0    t1    t2    t3    t4    t5    t6 (masked)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]])
    ratio = torch.tensor([[1.5, 1.1, 0.5, 0.9, 0.7, 1.5, 2.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    old = torch.full((1, 7), -2.0)
    logp = old + ratio.log()
    loss, m = ppo_clip(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.28)
    # t0 clipped high (A>0, r>1.28); t2 clipped low (A<0, r<0.8); t4, t5 unclipped.
    assert m["clip_ratio/high_mean"] == pytest.approx(1 / 6)
    assert m["clip_ratio/low_mean"] == pytest.approx(1 / 6)
    assert m["clip_ratio/region_mean"] == pytest.approx(2 / 6)
    assert m["clip_ratio/dual_mean"] == 0.0
    # per token: -1.28, -1.1, 0.8, 0.9, -0.7, 1.5
    assert loss.item() == pytest.approx((-1.28 - 1.1 + 0.8 + 0.9 - 0.7 + 1.5) / 6)
    loss, m = ppo_clip(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.28, delta=1.4)
    assert m["clip_ratio/dual_mean"] == pytest.approx(1 / 6)  # t5: A<0, r=1.5 > 1.4
    assert loss.item() == pytest.approx((-1.28 - 1.1 + 0.8 + 0.9 - 0.7 + 1.4) / 6)


def surrogate_and_grad(p, old_p, adv, **kw):
    logp = torch.tensor([[math.log(p)]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[math.log(old_p)]], dtype=torch.float64)
    loss, _ = ppo_clip(logp, old, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    return -loss.item(), grad.item()


def test_clip_higher_one_step_growth_bound():
    # Card 4: from pi_old = 0.01 the objective stops rewarding growth at 0.0128
    # (epsilon_high = 0.28) instead of 0.012 (symmetric epsilon = 0.2).
    for eps_high, bound in [(0.28, 0.0128), (None, 0.012)]:
        kw = {"epsilon": 0.2, "epsilon_high": eps_high}
        below, g_below = surrogate_and_grad(bound * 0.999, 0.01, 1.0, **kw)
        at, _ = surrogate_and_grad(bound, 0.01, 1.0, **kw)
        above, g_above = surrogate_and_grad(bound * 1.001, 0.01, 1.0, **kw)
        far, _ = surrogate_and_grad(0.05, 0.01, 1.0, **kw)
        assert g_below < 0 and g_above == 0.0  # loss gradient: pushes up until the bound
        assert below < at == pytest.approx(above) == pytest.approx(far)
        assert at == pytest.approx(bound / 0.01)
    # So one exact maximisation step of the clipped objective lands on 0.0128, not above.
    grid = torch.linspace(0.0101, 0.03, 2000).tolist()
    objective = [surrogate_and_grad(p, 0.01, 1.0, epsilon_high=0.28)[0] for p in grid[::20]]
    first_max = grid[::20][objective.index(max(objective))]
    assert 0.0128 <= first_max < 0.0128 + 20 * (grid[1] - grid[0]) + 1e-12


def test_dual_clip_caps_negative_advantage_loss():
    value, grad = surrogate_and_grad(0.5, 0.05, -2.0)  # ratio 10, A < 0
    assert -value == pytest.approx(20.0) and grad != 0.0
    value, grad = surrogate_and_grad(0.5, 0.05, -2.0, delta=3.0)
    assert -value == pytest.approx(6.0) and grad == 0.0  # capped at |A| * delta
    value, grad = surrogate_and_grad(0.5, 0.05, 2.0, delta=3.0)  # A > 0: untouched
    assert value == pytest.approx(2.0 * 1.2)
    value, _ = surrogate_and_grad(0.11, 0.05, -2.0, delta=3.0)  # ratio 2.2 < delta: untouched
    assert -value == pytest.approx(4.4)
    for delta in (1.2, 1.0, 0.5):
        with pytest.raises(ValueError, match="delta"):
            surrogate_and_grad(0.5, 0.05, -2.0, delta=delta)


def test_garbage_in_padding_stays_out():
    logp, old, adv, mask = make_batch(4, 5, seed=9)
    logp = logp.clone().requires_grad_(True)
    garbage_old = torch.where(mask.bool(), old, torch.full_like(old, -80.0))
    for name in ("vanilla_pg", "ppo_clip", "clip_cov", "kl_cov"):
        garbage_logp = torch.where(mask.bool(), logp, torch.full_like(logp, 80.0))
        clean, _ = compute_policy_loss(name, logp, old, adv, mask)
        dirty, metrics = compute_policy_loss(name, garbage_logp, garbage_old, adv, mask)
        (grad,) = torch.autograd.grad(dirty, logp)
        assert torch.allclose(clean, dirty) and torch.isfinite(grad).all(), name
        assert all(math.isfinite(v) for v in metrics.values()), name


# --- clip_cov and kl_cov --------------------------------------------------------------


def cov_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    n, t = 8, 16
    old = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 5
    logp = (old + 0.2 * torch.randn(n, t, generator=gen, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0] = 0
    mask[1, 10:] = 0
    return logp, old, adv, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_cov_detaches_a_random_subset_of_candidates(seed):
    logp, old, adv, mask = cov_batch(seed)
    kw = {"clip_cov_ratio": 0.05, "generator": torch.Generator().manual_seed(seed)}
    loss, metrics = clip_cov(logp, old, adv, mask, **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    ppo_loss, ppo_metrics = ppo_clip(logp, old, adv, mask)
    (ppo_grad,) = torch.autograd.grad(ppo_loss, logp)

    n, t = mask.shape
    a, lp, ol, m = full_adv(adv, t).tolist(), logp.tolist(), old.tolist(), mask.tolist()
    cov = cov_loop(a, lp, m)
    clipped = {
        (i, j)
        for (i, j) in cov
        if (a[i][j] < 0 and math.exp(lp[i][j] - ol[i][j]) < 0.8)
        or (a[i][j] > 0 and math.exp(lp[i][j] - ol[i][j]) > 1.2)
    }
    candidates = {k for k, c in cov.items() if 1.0 < c < 5.0 and k not in clipped}
    n_valid = len(cov)
    want = min(max(int(0.05 * n_valid), 1), len(candidates))
    assert want >= 2  # the batch is built so that the test means something

    detached = {(i, j) for (i, j) in cov if grad[i, j] == 0 and ppo_grad[i, j] != 0}
    kept = set(cov) - detached
    assert len(detached) == want and detached <= candidates
    for i, j in kept:
        assert grad[i, j].item() == pytest.approx(ppo_grad[i, j].item(), abs=1e-15)
    assert metrics["clip_cov/frac_detached"] == pytest.approx(want / n_valid)
    assert metrics["clip_ratio/region_mean"] == ppo_metrics["clip_ratio/region_mean"]
    # The loss is the PPO loss with the detached tokens' terms set to 0 (token-mean).
    tok = [
        [
            0.0 if (i, j) in detached else ppo_token_loop(lp[i][j], ol[i][j], a[i][j], 0.2, 0.2)
            for j in range(t)
        ]
        for i in range(n)
    ]
    assert loss.item() == pytest.approx(agg_loop(tok, m, "token-mean"), abs=1e-12)

    # Deterministic for a seeded generator, and the draw depends on the seed.
    again, _ = clip_cov(
        logp, old, adv, mask, clip_cov_ratio=0.05, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(loss, again)
    draws = {
        clip_cov(
            logp, old, adv, mask, clip_cov_ratio=0.05, generator=torch.Generator().manual_seed(s)
        )[0].item()
        for s in range(8)
    }
    assert len(draws) > 1


def test_clip_cov_defaults_and_no_candidates():
    logp, old, adv, mask = cov_batch(4)
    _, metrics = clip_cov(logp, old, adv, mask)  # 2e-4 * 98 tokens rounds up to 1 token
    assert metrics["clip_cov/frac_detached"] == pytest.approx(1 / int(mask.sum()))
    loss, metrics = clip_cov(logp, old, adv, mask, clip_cov_lb=1e3, clip_cov_ub=1e4)
    assert metrics["clip_cov/frac_detached"] == 0.0
    assert torch.allclose(loss, ppo_clip(logp, old, adv, mask)[0])
    # Tokens PPO already clips are never candidates: here every token is clipped.
    moved_old = logp.detach() - torch.where(adv > 0, 0.7, -0.7)[:, None]  # ratio 2.0 or 0.5
    loss, metrics = clip_cov(logp, moved_old, adv, mask, clip_cov_ratio=0.5)
    assert metrics["clip_ratio/region_mean"] == 1.0
    assert metrics["clip_cov/frac_detached"] == 0.0
    assert torch.allclose(loss, ppo_clip(logp, moved_old, adv, mask)[0])
    loss, metrics = clip_cov(logp, old, adv, torch.zeros_like(mask))
    assert loss.item() == 0.0 and metrics["clip_cov/frac_detached"] == 0.0


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("ratio,coef", [(2e-3, 1.0), (0.1, 0.5), (0.5, 2.0)])
def test_kl_cov_matches_loop(mode, ratio, coef):
    for seed in range(3):
        logp, old, adv, mask = cov_batch(seed)
        loss, metrics = kl_cov(logp, old, adv, mask, agg=mode, kl_cov_ratio=ratio, kl_coef=coef)
        n, t = mask.shape
        a, lp, ol, m = full_adv(adv, t).tolist(), logp.tolist(), old.tolist(), mask.tolist()
        cov = cov_loop(a, lp, m)
        k = max(1, int(len(cov) * ratio))
        top = set(sorted(cov, key=cov.get, reverse=True)[:k])
        tok = [
            [
                -a[i][j] * math.exp(lp[i][j] - ol[i][j])
                + (coef * abs(lp[i][j] - ol[i][j]) if (i, j) in top else 0.0)
                for j in range(t)
            ]
            for i in range(n)
        ]
        assert loss.item() == pytest.approx(agg_loop(tok, m, mode), abs=1e-12)
        assert metrics["kl_cov/frac_penalized"] == pytest.approx(k / len(cov))
        # The other tokens get the plain, unclipped policy gradient.
        (grad,) = torch.autograd.grad(loss, logp)
        (vgrad,) = torch.autograd.grad(vanilla_pg(logp, old, adv, mask, agg=mode)[0], logp)
        differs = {(i, j) for (i, j) in cov if abs(grad[i, j] - vgrad[i, j]) > 1e-12}
        assert differs == top


def test_kl_cov_empty_mask():
    logp, old, adv, mask = cov_batch(0)
    loss, metrics = kl_cov(logp, old, adv, torch.zeros_like(mask))
    assert loss.item() == 0.0 and metrics["kl_cov/frac_penalized"] == 0.0


# --- options and errors ---------------------------------------------------------------


def test_invalid_options_raise():
    logp, old, adv, mask = make_batch(3, 4, seed=0)
    for name in ("vanilla_pg", "ppo_clip", "clip_cov", "kl_cov"):
        with pytest.raises(ValueError, match="unknown aggregation mode 'mean'"):
            compute_policy_loss(name, logp, old, adv, mask, agg="mean")
        with pytest.raises(ValueError, match="must be"):
            compute_policy_loss(name, logp, old, adv[:2], mask)
        with pytest.raises(ValueError, match=r"must all be \(N, T\)"):
            compute_policy_loss(name, logp, old[:, :3], adv, mask)
    for kw in ({"epsilon": 0.0}, {"epsilon": -0.1}, {"epsilon_high": 0.0}):
        for fn in (ppo_clip, clip_cov):
            with pytest.raises(ValueError, match=r"epsilon(_high)? must (lie in \(0, 1\)|be > 0) \(the ratio is kept in"):
                fn(logp, old, adv, mask, **kw)
    with pytest.raises(ValueError, match="clip_cov_ratio"):
        clip_cov(logp, old, adv, mask, clip_cov_ratio=0.0)
    with pytest.raises(ValueError, match="clip_cov_lb < clip_cov_ub"):
        clip_cov(logp, old, adv, mask, clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        kl_cov(logp, old, adv, mask, kl_cov_ratio=0.0)
    with pytest.raises(
        ValueError,
        match=r"takes no option\(s\) \['epsilon'\]; its options: "
        r"agg, kl_coef, kl_cov_ratio, max_len",
    ):
        compute_policy_loss("kl_cov", logp, old, adv, mask, epsilon=0.2)
    with pytest.raises(ValueError, match="unknown policy loss 'grpo'"):
        compute_policy_loss("grpo", logp, old, adv, mask)


def test_advantage_broadcast_equals_per_token():
    logp, old, adv, mask = make_batch(5, 6, seed=1, spread=0.5)
    for name in ("vanilla_pg", "ppo_clip", "clip_cov", "kl_cov"):
        kw = {"generator": torch.Generator().manual_seed(0)} if name == "clip_cov" else {}
        a, _ = compute_policy_loss(name, logp, old, adv, mask, **kw)
        kw = {"generator": torch.Generator().manual_seed(0)} if name == "clip_cov" else {}
        b, _ = compute_policy_loss(name, logp, old, adv[:, None].expand(5, 6), mask, **kw)
        assert torch.equal(a, b), name


# --- KL and entropy -------------------------------------------------------------------


def test_kl_penalty_matches_loop_and_errors():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    ref = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    loops = {"k1": lambda x: -x, "k2": lambda x: 0.5 * x * x, "k3": lambda x: math.exp(x) - x - 1}
    for name, f in loops.items():
        got = kl_penalty(logp, ref, name)
        want = [[f(r - lp) for lp, r in zip(lr, rr)] for lr, rr in zip(logp.tolist(), ref.tolist())]
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float64))
        assert torch.equal(kl_penalty(logp, logp, name), torch.zeros(4, 5, dtype=torch.float64))
    assert (kl_penalty(logp, ref, "k2") >= 0).all() and (kl_penalty(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; valid: k1, k2, k3"):
        kl_penalty(logp, ref, "k4")
    with pytest.raises(ValueError, match="differ"):
        kl_penalty(logp, ref[:, :2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_estimator_gradients_footgun(seed):
    """Exact expectation over a categorical pi: sum_a pi(a) * grad k(a), the gradient
    flowing through log pi only, compared with autograd of the analytic KLs."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(6, generator=gen, dtype=torch.float64), 0)

    def expected_grad(estimator):
        logp = torch.log_softmax(theta, 0)
        weights = logp.exp().detach()  # samples come from pi; no gradient through sampling
        k = kl_penalty(logp[None, :], ref_logp[None, :], estimator)[0]
        return torch.autograd.grad((weights * k).sum(), theta)[0]

    def analytic_grad(direction):
        logp = torch.log_softmax(theta, 0)
        if direction == "reverse":  # KL(pi || ref)
            kl = (logp.exp() * (logp - ref_logp)).sum()
        else:  # KL(ref || pi)
            kl = (ref_logp.exp() * (ref_logp - logp)).sum()
        return torch.autograd.grad(kl, theta)[0]

    reverse, forward = analytic_grad("reverse"), analytic_grad("forward")
    assert not torch.allclose(reverse, forward, atol=1e-3)  # the claims can be told apart
    assert torch.allclose(expected_grad("k1"), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(expected_grad("k2"), reverse, atol=1e-12)
    assert torch.allclose(expected_grad("k3"), forward, atol=1e-12)
    # As *values*, k1 and k3 are unbiased estimates of KL(pi || ref).
    logp = torch.log_softmax(theta, 0).detach()
    kl = (logp.exp() * (logp - ref_logp)).sum()
    for estimator in ("k1", "k3"):
        value = (logp.exp() * kl_penalty(logp[None], ref_logp[None], estimator)[0]).sum()
        assert value.item() == pytest.approx(kl.item(), abs=1e-12)


def entropy_loop(row):
    finite = [z for z in row if z != float("-inf")]
    top = max(finite)
    log_z = top + math.log(sum(math.exp(z - top) for z in finite))
    return -sum(math.exp(z - log_z) * (z - log_z) for z in finite)


def test_entropy_from_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64) * 3
    logits[0, 0, :3] = float("-inf")
    logits[1, 2, 1:] = float("-inf")  # one allowed token: entropy 0
    logits[2, 3] = torch.tensor([1e4, -1e4, 0.0, 1e4, 5.0, -3.0, 2.0])
    logits.requires_grad_(True)
    h = entropy_from_logits(logits)
    assert h.shape == (3, 4)
    want = [[entropy_loop(row) for row in mat] for mat in logits.tolist()]
    assert torch.allclose(h, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert h[1, 2].item() == 0.0 and h[2, 3].item() == pytest.approx(math.log(2))
    (grad,) = torch.autograd.grad(h.sum(), logits)
    assert torch.isfinite(grad).all()
    finite = logits.detach()[1:2, :2]
    cat = torch.distributions.Categorical(logits=finite)
    assert torch.allclose(entropy_from_logits(finite), cat.entropy())
    assert entropy_from_logits(torch.zeros(5)).item() == pytest.approx(math.log(5))


def test_entropy_bonus_is_agg_of_entropy():
    gen = torch.Generator().manual_seed(0)
    ent = torch.rand(4, 6, generator=gen)
    mask = (torch.rand(4, 6, generator=gen) > 0.3).long()
    for mode in AGG_MODES:
        assert torch.equal(entropy_bonus(ent, mask, mode), agg_loss(ent, mask, mode))


# --- the docstring examples run -------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [rlnb.rl.registry, rlnb.rl.aggregation, rlnb.rl.advantages, rlnb.rl.losses, rlnb.rl.kl],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
