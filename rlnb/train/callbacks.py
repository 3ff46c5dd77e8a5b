"""Ready-made training callbacks. A callback is ``f(trainer, metrics) -> dict | None``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def policy_table(policy: Any, env: Any) -> torch.Tensor:
    """The probability table of a tabular or MLP policy over ``env``'s states."""
    try:
        return policy.probs()
    except TypeError:  # MLPPolicy.probs needs the sandbox to enumerate its states
        return policy.probs(env)


class ExactSuccess:
    """Log exact pass@k of a tabular/MLP policy on a sandbox with exact answers.

    Adds ``exact/pass@k`` for each k (mean over prompts of ``1 - (1 - p_i)^k`` with
    ``p_i`` the sandbox's exact per-prompt success probability) and
    ``exact/policy_entropy`` (mean entropy of the policy's rows, in nats).

    Args:
        ks: the k values to log.
        every: log every this many steps (and always at the first step).
    """

    def __init__(self, ks: Sequence[int] = (1,), every: int = 1) -> None:
        if any(int(k) < 1 for k in ks):
            raise ValueError(f"every k must be >= 1, got {list(ks)}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.ks, self.every = [int(k) for k in ks], every

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> dict[str, float] | None:
        if trainer.step % self.every and trainer.step != 1:
            return None
        probs = policy_table(trainer.policy, trainer.env)
        p = trainer.env.success_probability(probs).double().clamp(0, 1)  # (P,)
        out = {
            f"exact/pass@{k}": float((-torch.expm1(k * torch.log1p(-p))).mean()) for k in self.ks
        }
        logp = torch.log(probs.clamp_min(1e-300))
        out["exact/policy_entropy"] = float(-(probs * logp).sum(-1).mean())
        return out
