"""Preference objectives on pairs: DPO (sigmoid), IPO, hinge, and the Bradley–Terry loss.

A preference loss takes the log-probabilities of a *chosen* and a *rejected* completion of
the same prompt under the policy and under a frozen reference, one value per pair, and
returns ``(loss, metrics)`` like the policy losses. The names and the metrics are TRL's
(``DPOConfig.loss_type``; ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
``rewards/margins``), so a run compares with a TRL ``DPOTrainer`` run line by line::

    loss, metrics = compute_preference_loss("sigmoid", pi_c, pi_r, ref_c, ref_r, beta=0.1)

With ``h = beta * ((pi_c - ref_c) - (pi_r - ref_r))`` (the implicit reward margin):

- ``sigmoid`` (DPO, Rafailov et al. 2023, arXiv:2305.18290): ``-log sigmoid(h)``, with
  optional label smoothing ``eps`` (cDPO): ``-(1 - eps) log sigmoid(h) - eps log sigmoid(-h)``.
- ``ipo`` (Azar et al. 2023, arXiv:2310.12036): ``(h / beta - 1 / (2 beta))^2``, the squared
  distance of the log-ratio margin from ``1 / (2 beta)``. TRL feeds IPO the *length-averaged*
  sequence log-probabilities; :func:`sequence_logps` with ``average=True`` gives them.
- ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 - h)``.

:func:`bradley_terry_loss` is the reward-model loss ``-log sigmoid(r_c - r_r)`` for scores
of a reward model (tabular or a head on an LM).

Pure tensor functions: nothing here samples, trains or knows a sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlnb.registry import Registry
from rlnb.rl.aggregation import _masked

__all__ = [
    "PREFERENCE_LOSSES",
    "bradley_terry_loss",
    "compute_preference_loss",
    "dpo_hinge",
    "dpo_sigmoid",
    "ipo",
    "sequence_logps",
]

#: ``name -> loss(h_logratio, beta, **options) -> per-pair losses``; TRL's loss_type names.
PREFERENCE_LOSSES = Registry("preference loss")


def sequence_logps(token_logp: Tensor, mask: Tensor, *, average: bool = False) -> Tensor:
    """One log-probability per completion from per-token ones ``(N, T)`` under ``mask``:
    the sum (DPO), or the mean over the completion's tokens (``average=True``, IPO as TRL
    computes it). Padding may hold any value, even inf: it never reaches the result."""
    if token_logp.shape != mask.shape:
        raise ValueError(f"token_logp {tuple(token_logp.shape)} and mask {tuple(mask.shape)} "
                         "must have one shape (completions x tokens)")
    total = _masked(token_logp, mask).sum(-1)
    if not average:
        return total
    n = mask.to(token_logp.dtype).sum(-1)
    if bool((n == 0).any()):
        raise ValueError("a completion has no valid token: its mean log-probability is undefined")
    return total / n


@PREFERENCE_LOSSES.register("sigmoid")
def dpo_sigmoid(logratio: Tensor, beta: float, *, label_smoothing: float = 0.0) -> Tensor:
    """DPO: ``-(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)`` per pair, with
    ``d`` the margin of log-ratios and ``eps`` the label smoothing (0: plain DPO)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = beta * logratio
    return -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


@PREFERENCE_LOSSES.register("ipo")
def ipo(logratio: Tensor, beta: float) -> Tensor:
    """IPO: ``(d - 1 / (2 beta))^2`` per pair (``beta`` is IPO's tau)."""
    return (logratio - 1.0 / (2.0 * beta)) ** 2


@PREFERENCE_LOSSES.register("hinge")
def dpo_hinge(logratio: Tensor, beta: float) -> Tensor:
    """SLiC's hinge: ``max(0, 1 - beta d)`` per pair."""
    return torch.relu(1.0 - beta * logratio)


def compute_preference_loss(
    name: str,
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float = 0.1,
    weights: Tensor | None = None,
    **options: Any,
) -> tuple[Tensor, dict[str, float]]:
    """The mean preference loss ``name`` over pairs, and TRL's metrics.

    Args:
        name: a :data:`PREFERENCE_LOSSES` name (``sigmoid``, ``ipo``, ``hinge``).
        policy_chosen, policy_rejected: ``(P,)`` sequence log-probabilities under the
            policy (with gradients).
        ref_chosen, ref_rejected: ``(P,)`` the same under the frozen reference.
        beta: the KL strength (DPO's beta, IPO's tau); > 0.
        weights: optional ``(P,)`` non-negative per-pair weights (a weighted mean).
        options: the loss's own keyword options (``label_smoothing`` for ``sigmoid``).

    Returns:
        ``(loss, metrics)``; metrics ``rewards/chosen`` and ``rewards/rejected`` (the mean
        implicit rewards ``beta (pi - ref)``), ``rewards/margins``, ``rewards/accuracies``
        (share of pairs whose chosen reward is higher), ``logps/chosen``, ``logps/rejected``.
    """
    fn: Callable[..., Tensor] = PREFERENCE_LOSSES[name]
    tensors = {"policy_chosen": policy_chosen, "policy_rejected": policy_rejected,
               "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"the four log-probability tensors must be one (pairs,) shape, got {shapes}")
    if policy_chosen.numel() == 0:
        raise ValueError("no pairs: a preference loss needs at least one (chosen, rejected) pair")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_reward = policy_chosen - ref_chosen.detach()
    rejected_reward = policy_rejected - ref_rejected.detach()
    per_pair = fn(chosen_reward - rejected_reward, beta, **options)
    if weights is None:
        loss = per_pair.mean()
    else:
        if weights.shape != per_pair.shape or bool((weights < 0).any()):
            raise ValueError(f"weights must be non-negative and of shape {tuple(per_pair.shape)}")
        loss = (per_pair * weights).sum() / weights.sum().clamp_min(1e-12)
    with torch.no_grad():
        rc, rr = beta * chosen_reward, beta * rejected_reward
        metrics = {
            "rewards/chosen": rc.mean().item(),
            "rewards/rejected": rr.mean().item(),
            "rewards/margins": (rc - rr).mean().item(),
            "rewards/accuracies": (rc > rr).to(rc.dtype).mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }
    return loss, metrics


def bradley_terry_loss(score_chosen: Tensor, score_rejected: Tensor, *,
                       reduction: str = "mean") -> Tensor:
    """The Bradley–Terry reward-model loss ``mean(-log sigmoid(s_c - s_r))``: fitted to
    pairwise preferences, ``sigmoid(s_a - s_b)`` is the model's P(a preferred to b).
    ``reduction="none"`` returns the per-pair losses (to weight them)."""
    if score_chosen.shape != score_rejected.shape:
        raise ValueError(f"score_chosen {tuple(score_chosen.shape)} and score_rejected "
                         f"{tuple(score_rejected.shape)} must have one shape")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    per_pair = -F.logsigmoid(score_chosen - score_rejected)
    return per_pair.mean() if reduction == "mean" else per_pair
