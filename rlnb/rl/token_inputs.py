"""Per-token tensors a policy loss may ask for beyond log-probs, and how the Trainer makes them.

Most losses take ``(logp, old_logp, advantages, mask)``. A few need more per token: the
full-distribution entropy (STEER), the old policy's min-p proxy probability of the token
(Lp-Reg), the vocabulary mean of the log-probs at every position (ROVER's next-state
backup). A loss *declares* what it needs by naming it as a keyword argument; the Trainer
calls :func:`token_inputs` once per update and passes exactly what the loss declared, so a
config only says ``policy_loss="steer"`` and a new loss needs no trainer change.

============================  =========  ==================================================
name                          shape      what it is
============================  =========  ==================================================
``entropy``                   ``(N, T)`` H of the current policy at each token (detached)
``proxy_logp``                ``(N, T)`` log pi_proxy(token): pi_old after min-p filtering
                                         (:func:`rlnb.rl.entropy_losses.min_p_proxy_logp`)
``logp_vocab_mean``           ``(N, T)`` mean over the vocabulary of log pi_theta (no grad)
``old_logp_vocab_mean``       ``(N, T)`` the same for pi_old
============================  =========  ==================================================

The ``old`` quantities are computed on the first call for a batch and kept in
``batch.extra``: the Trainer makes that call before the batch's first update, while the
weights are still pi_old's, so later PPO epochs of the batch compare to pi_old. The full
logits come from the policy's ``state_logits`` (tabular, MLP) or ``completion_logits``
(language models), in one forward pass without gradients, and only when a declared input
needs them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rlnb.rl.entropy_losses import min_p_proxy_logp
from rlnb.rl.rover_loss import vocab_mean_logp

__all__ = ["TOKEN_INPUTS", "full_logits", "token_inputs"]

#: The per-token inputs a policy loss may declare, and what each is.
TOKEN_INPUTS: dict[str, str] = {
    "entropy": "the current policy's entropy at each token",
    "proxy_logp": "log-prob of each token under pi_old after min-p filtering (Lp-Reg)",
    "logp_vocab_mean": "vocabulary mean of the current policy's log-probs (ROVER)",
    "old_logp_vocab_mean": "vocabulary mean of pi_old's log-probs (ROVER)",
}

_NEED_LOGITS = ("proxy_logp", "logp_vocab_mean", "old_logp_vocab_mean")


def full_logits(policy: Any, batch: Any, *, needed_by: str = "this policy loss") -> Tensor:
    """``(N, T, V)`` logits at every scored position of ``batch``: a tabular/MLP policy's
    ``state_logits``, or a language model's ``completion_logits``."""
    if hasattr(policy, "state_logits") and batch.states is not None:
        return policy.state_logits(batch.states, batch.extra.get("features"))
    if hasattr(policy, "completion_logits"):
        return policy.completion_logits(batch)
    raise TypeError(
        f"{type(policy).__name__} exposes no full next-token logits (state_logits or "
        f"completion_logits), which {needed_by} needs; use another policy_loss, or give the "
        "policy one of these methods")


def token_inputs(
    loss_fn: Callable[..., Any], policy: Any, batch: Any, entropy: Tensor, *,
    temperature: float = 1.0, min_p: float = 0.02,
) -> dict[str, Tensor]:
    """The inputs of :data:`TOKEN_INPUTS` that ``loss_fn`` declares, for ``batch``
    (``{}`` for a loss that declares none).

    Args:
        loss_fn: the policy loss; its keyword parameters say what it needs.
        policy: the policy being trained (for its full logits).
        batch: the rollout (or micro-batch) the loss is computed on.
        entropy: ``(N, T)`` the entropy ``policy.log_probs`` returned with the log-probs.
        temperature: the logits are divided by it, as the log-probs were.
        min_p: Lp-Reg's min-p cut (keep tokens with pi >= min_p * max pi).
    """
    params = inspect.signature(loss_fn).parameters
    wanted = [name for name in TOKEN_INPUTS if name in params]
    out: dict[str, Tensor] = {}
    if "entropy" in wanted:
        out["entropy"] = entropy.detach()
    if not any(name in wanted for name in _NEED_LOGITS):
        return out
    need_now = "logp_vocab_mean" in wanted or "old_logp_vocab_mean" in wanted or (
        "proxy_logp" in wanted and "proxy_logp" not in batch.extra)
    logits = None
    if need_now:
        with torch.no_grad():
            logits = full_logits(policy, batch, needed_by=loss_fn.__name__) / temperature
    if "proxy_logp" in wanted:
        if "proxy_logp" not in batch.extra:
            batch.extra["proxy_logp"] = min_p_proxy_logp(logits, batch.actions, min_p)
        out["proxy_logp"] = batch.extra["proxy_logp"].to(entropy.device)
    if "logp_vocab_mean" in wanted or "old_logp_vocab_mean" in wanted:
        current = vocab_mean_logp(logits)  # (N, T)
        old = batch.extra.setdefault("old_logp_vocab_mean", current)
        if "logp_vocab_mean" in wanted:
            out["logp_vocab_mean"] = current
        if "old_logp_vocab_mean" in wanted:
            out["old_logp_vocab_mean"] = old.to(current.device)
    return out
