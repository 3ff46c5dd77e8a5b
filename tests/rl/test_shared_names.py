"""A name shared with verl or TRL computes what that library computes.

The references below restate each library's formula in tensor form, as its code computes
it in one process: verl's ``agg_loss`` (``verl/trainer/ppo/core_algos.py``, dp_size 1, the
global batch sizes left to their defaults), TRL's ``GRPOTrainer`` loss for each
``loss_type``. They run on random masks with fully masked rows (what
``mask_truncated_completions`` leaves), where the two families differ."""

import pytest
import torch

from rlnb.rl import TRL_AGG_MODES, VERL_AGG_MODES, agg_loss, agg_weights, kl_penalty


def verl_agg(loss, mask, mode, loss_scale_factor=None):
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    row_tokens = mask.sum(-1)
    seq_mask = (row_tokens > 0).to(loss.dtype)  # fully masked rows left out
    if mode == "seq-mean-token-sum":
        return ((loss * mask).sum(-1) * seq_mask).sum() / seq_mask.sum()
    if mode == "seq-mean-token-mean":
        seq = (loss * mask).sum(-1) / (row_tokens + 1e-8)
        return (seq * seq_mask).sum() / seq_mask.sum()
    assert mode == "seq-mean-token-sum-norm"
    scale = mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
    return (loss * mask).sum(-1).sum() / scale


def trl_agg(loss, mask, loss_type, max_completion_length):
    mask = mask.to(loss.dtype)
    if loss_type == "grpo":
        return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type in ("bnpo", "dapo"):  # dapo: num_items_in_batch, one process
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)
    assert loss_type == "dr_grpo"
    return (loss * mask).sum() / (loss.size(0) * max_completion_length)


def _batches(dtype):
    gen = torch.Generator().manual_seed(0)
    for n, t in [(1, 1), (3, 5), (8, 16), (32, 7)]:
        for _ in range(5):
            loss = torch.randn(n, t, generator=gen, dtype=dtype)
            mask = torch.rand(n, t, generator=gen) > 0.5
            mask[0] = True  # at least one valid token (verl: 0/0 otherwise)
            if n > 1:
                mask[1:: 3] = False  # fully masked rows
            yield loss, mask


def _close(got, want):
    scale = max(1.0, float(want.abs()))
    assert abs(float(got) - float(want)) <= 1e-6 * scale, (float(got), float(want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", VERL_AGG_MODES)
def test_verl_names_compute_verls_values(mode, dtype):
    for loss, mask in _batches(dtype):
        _close(agg_loss(loss, mask, mode), verl_agg(loss, mask, mode))
        if mode == "seq-mean-token-sum-norm":
            _close(agg_loss(loss, mask, mode, max_len=64), verl_agg(loss, mask, mode, 64))
        # the micro-batch weights reproduce the same value
        _close((loss * mask * agg_weights(mask, mode, dtype=dtype)).sum(),
               verl_agg(loss, mask, mode))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", TRL_AGG_MODES)
def test_trl_loss_types_compute_trls_values(mode, dtype):
    for loss, mask in _batches(dtype):
        T = loss.shape[1]
        for budget in (T, 3 * T):
            _close(agg_loss(loss, mask, mode, max_len=budget), trl_agg(loss, mask, mode, budget))
            _close((loss * mask * agg_weights(mask, mode, max_len=budget, dtype=dtype)).sum(),
                   trl_agg(loss, mask, mode, budget))


def test_the_two_families_differ_where_the_docs_say():
    """Empty rows: verl's seq-mean-token-mean leaves them out, TRL's grpo counts them as 0;
    verl's seq-mean-token-sum-norm is N times TRL's dr_grpo."""
    loss = torch.tensor([[1.0, 3.0], [7.0, 7.0], [2.0, 2.0]])
    mask = torch.tensor([[1, 1], [0, 0], [1, 0]])
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 2) / 2)
    assert agg_loss(loss, mask, "grpo").item() == pytest.approx((2 + 0 + 2) / 3)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", max_len=4).item() == pytest.approx(
        3 * agg_loss(loss, mask, "dr_grpo", max_len=4).item())


def test_kl_estimators_are_verls_k1_k2_k3():
    """verl's ``kl`` / ``mse`` / ``low_var_kl`` (k3 clamped to [-10, 10] there: equal
    inside that range)."""
    gen = torch.Generator().manual_seed(1)
    logp, ref = -2 * torch.rand(200, generator=gen), -2 * torch.rand(200, generator=gen)
    x = ref - logp
    for name, want in [("k1", logp - ref), ("k2", 0.5 * (logp - ref) ** 2),
                       ("k3", (torch.exp(x) - x - 1).clamp(-10, 10))]:
        got = kl_penalty(logp, ref, name)
        assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max()), name
