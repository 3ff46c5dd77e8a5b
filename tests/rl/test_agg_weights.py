"""agg_weights and the ``weights=`` of agg_loss and the policy losses: a batch's loss as
the sum of its micro-batches' shares, in every aggregation mode."""

from __future__ import annotations

import pytest
import torch

from rlnb.rl import AGG_MODES, agg_loss, agg_weights, ppo_clip, vanilla_pg


def _batch(seed: int, n: int = 6, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, generator=g, dtype=torch.float64)
    mask = torch.rand(n, t, generator=g) < 0.6
    mask[1] = False  # a row with no valid token
    mask[2] = True
    return x, mask


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("max_len", [None, 9])
@pytest.mark.parametrize("seed", range(3))
def test_weights_reproduce_agg_loss(mode, max_len, seed):
    x, mask = _batch(seed)
    if max_len is not None and mode not in ("seq-mean-token-sum-norm", "dr_grpo"):
        max_len = None  # the budget only matters to the constant normaliser
    w = agg_weights(mask, mode, max_len=max_len, dtype=torch.float64)  # (N, T)
    want = agg_loss(x, mask, mode, max_len=max_len)
    assert w.shape == x.shape and bool((w[~mask] == 0).all())
    assert float((x * mask * w).sum()) == pytest.approx(float(want), rel=1e-12, abs=1e-15)
    assert float(agg_loss(x, mask, mode, weights=w)) == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_shares_add_up_to_the_batch_and_own_weights_do_not(mode):
    x, mask = _batch(7)
    w = agg_weights(mask, mode, dtype=torch.float64)
    want = float(agg_loss(x, mask, mode))
    shares = [agg_loss(x[i:i + 2], mask[i:i + 2], mode, weights=w[i:i + 2]) for i in (0, 2, 4)]
    assert float(sum(shares)) == pytest.approx(want, rel=1e-12)
    own = sum(float(agg_loss(x[i:i + 2], mask[i:i + 2], mode)) for i in (0, 2, 4))
    if mode == "seq-mean-token-sum-norm":  # verl's: by T alone, additive over rows
        assert own == pytest.approx(want, rel=1e-12)
    else:
        assert own != pytest.approx(want, rel=1e-6)  # the footgun the weights prevent


def test_empty_mask_weights_are_zero_and_shape_errors_name_the_fix():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for mode in AGG_MODES:
        assert float(agg_weights(mask, mode).abs().sum()) == 0.0
    assert agg_weights(torch.ones(2, 2), "token-mean").dtype == torch.float32
    with pytest.raises(ValueError, match="rows of agg_weights"):
        agg_loss(torch.zeros(2, 3), torch.ones(2, 3), weights=torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"aggregation mode"):
        agg_weights(mask, "token-sum")
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        agg_weights(torch.ones(3), "token-mean")


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("loss_fn", [vanilla_pg, ppo_clip])
def test_policy_loss_shares_give_the_batch_loss_and_gradient(mode, loss_fn):
    x, mask = _batch(3)
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(x.shape, generator=g, dtype=torch.float64) * 3  # (N, T)
    adv = torch.randn(x.shape[0], generator=g, dtype=torch.float64)  # (N,)
    opts = {"epsilon": 0.1} if loss_fn is ppo_clip else {}

    logp = (old + 0.3 * x).requires_grad_()  # off-policy: ppo_clip clips some tokens
    whole, metrics = loss_fn(logp, old, adv, mask, agg=mode, **opts)
    whole.backward()
    if loss_fn is ppo_clip:
        assert metrics["clip_ratio/region_mean"] > 0
    want_grad, logp.grad = logp.grad.clone(), None

    w = agg_weights(mask, mode, dtype=torch.float64)
    total = 0.0
    for i in (0, 3):
        rows = slice(i, i + 3)
        part, m = loss_fn(logp[rows], old[rows], adv[rows], mask[rows], agg=mode,
                          weights=w[rows], **opts)
        part.backward()
        total += float(part.detach())
        assert m["pg_loss"] == pytest.approx(float(part.detach()))
    assert total == pytest.approx(float(whole.detach()), rel=1e-12, abs=1e-15)
    torch.testing.assert_close(logp.grad, want_grad, rtol=1e-12, atol=1e-15)
