"""KL penalties against a reference policy, and entropy.

The per-token KL terms are Schulman's estimators (http://joschu.net/blog/kl-approx.html)
of KL(pi || ref) from tokens sampled from pi. Which one you differentiate matters more
than which one you log: see ``kl_penalty``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.registry import unknown_name_error
from rlnb.rl.aggregation import agg_loss

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL estimate ``(N, T)`` from the sampled tokens' log-probs.

    With x = ref_logp - logp (the log ratio ref / pi at the sampled token):

      - ``k1`` = -x = logp - ref_logp: unbiased for KL(pi || ref), can be negative.
      - ``k2`` = x^2 / 2: biased, low variance, always >= 0.
      - ``k3`` = exp(x) - x - 1: unbiased for KL(pi || ref), always >= 0; TRL's (GRPO's)
        choice, verl's ``low_var_kl`` (verl also clamps it to [-10, 10]; this does not).

    The footgun: as a *loss* term differentiated through ``logp``, on tokens sampled from
    pi, the estimators do not give the gradient of the KL they estimate:

      - k1's gradient is 0 in expectation (E_pi[grad log pi] = 0): it does not regularise;
      - k2's gradient equals grad KL(pi || ref), the reverse KL (mode seeking);
      - k3's gradient equals grad KL(ref || pi), the *forward* KL (mass covering).

    ``tests/rl/test_losses.py`` checks the three statements by exact expectation on a
    small softmax. Add ``beta * agg_loss(kl_penalty(...), mask, mode)`` to the policy loss
    (aggregation is linear, so this equals TRL's per-token ``pg + beta * kl``).

    Args:
        logp: ``(N, T)`` log pi(token) under the policy being trained (with gradient).
        ref_logp: ``(N, T)`` log ref(token) under the frozen reference.
        estimator: "k1", "k2" or "k3".

    >>> kl_penalty(torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), "k3")
    tensor([[0.3679]])
    """
    if estimator not in KL_ESTIMATORS:
        raise unknown_name_error("KL estimator", estimator, KL_ESTIMATORS)
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ")
    x = ref_logp.detach() - logp  # (N, T) log(ref / pi)
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x**2
    return torch.exp(x) - x - 1


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``(...)`` of the categorical distributions with logits ``(..., V)``.

    H = -sum_a p(a) log p(a), computed from ``log_softmax`` (logsumexp), so huge logits do
    not overflow and ``-inf`` logits (masked-out tokens, top-k/top-p filtering) contribute
    exactly 0 with a finite gradient. A row whose logits are all ``-inf`` is undefined (nan).

    >>> entropy_from_logits(torch.tensor([[0., 0., float("-inf")], [1e4, 0., 0.]]))
    tensor([0.6931, 0.0000])
    """
    logp = torch.log_softmax(logits, dim=-1)  # (..., V)
    finite_logp = logp.masked_fill(torch.isneginf(logp), 0.0)  # 0 * -inf would be nan
    return (logp.exp() * -finite_logp).sum(dim=-1)


def entropy_bonus(
    entropy: Tensor, mask: Tensor, agg: str = "token-mean", *, max_len: int | None = None
) -> Tensor:
    """Aggregate per-token entropy ``(N, T)`` into a scalar with ``agg_loss``.

    The bonus is *subtracted*: ``loss = pg_loss - entropy_coef * entropy_bonus(...)``.
    Use the same ``agg`` as the policy loss so both terms weigh tokens alike.

    >>> entropy_bonus(torch.tensor([[1., 3.]]), torch.tensor([[1, 0]]))
    tensor(1.)
    """
    return agg_loss(entropy, mask, agg, max_len=max_len)
