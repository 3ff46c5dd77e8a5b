"""Multi-armed bandits, batched over a leading env dimension.

A :class:`Bandit` holds ``E`` independent ``K``-armed bandits (gymnax style: the arm means
are *parameters*, there is no state, and ``reward`` is a pure function of its inputs and the
generator). Each instance is one prompt of the :class:`~rlnb.envs.base.Sandbox` protocol,
so a tabular policy with one row per prompt is ``E`` separate softmaxes, and a shared policy
is one softmax used on every instance.

Exact answers: the optimal arm and value, per-pull regret, the expected return of a policy
given as probabilities, and (for Bernoulli arms) its exact success probability. A 50-arm
bandit trained with exact policy gradient is the toy of card 10 (KL-regularised RL as
Bayesian inference).
"""

from __future__ import annotations

from typing import Any

import torch

from rlnb.checks import (
    as_tensor,
    check_index,
    check_int,
    check_number,
    check_probs,
    one_step_actions,
)
from rlnb.envs.base import Sandbox

KINDS = ("bernoulli", "gaussian")


class Bandit(Sandbox):
    """``E`` independent ``K``-armed bandits with Bernoulli or Gaussian rewards.

    Args:
        means: arm means, ``(K,)`` for one bandit or ``(E, K)`` for ``E`` instances (stored as
            ``(E, K)``). Bernoulli means must lie in [0, 1].
        kind: ``"bernoulli"`` (reward in {0, 1}) or ``"gaussian"`` (reward ~ N(mean, std^2)).
        std: Gaussian noise scale, a float or a tensor broadcastable to ``means``; default
            1.0. Only for Gaussian arms.

    Sandbox layout: ``num_prompts == E``, ``num_actions == K``, ``horizon == 1``,
    ``states_per_prompt == 1`` (state = instance index).

    >>> env = Bandit(means=torch.tensor([0.1, 0.8, 0.5]))
    >>> env.optimal_arm, env.optimal_value
    (tensor([1]), tensor([0.8000]))
    >>> env.expected_return(torch.tensor([0.5, 0.5, 0.0]))
    tensor([0.4500])
    >>> g = torch.Generator().manual_seed(0)
    >>> env.reward(torch.zeros(4, dtype=torch.long), torch.ones(4, 1, dtype=torch.long), g).shape
    torch.Size([4])
    """

    def __init__(
        self,
        means: torch.Tensor,
        kind: str = "bernoulli",
        std: float | torch.Tensor | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        means = as_tensor(means, "means", "a tensor of arm means, shape (K,) or (E, K)")
        if means.dtype == torch.bool or means.is_complex():
            raise TypeError(f"means must hold real arm means, got dtype {means.dtype}")
        if not torch.is_floating_point(means):
            means = means.to(torch.get_default_dtype())
        if means.ndim == 1:
            means = means.unsqueeze(0)
        if means.ndim != 2:
            raise ValueError(
                f"means must have shape (K,) or (E, K) = (num_envs, num_arms), got shape "
                f"{tuple(means.shape)}"
            )
        E, K = means.shape
        if K < 1:
            raise ValueError(f"num_arms (K) must be >= 1, got {K}")
        if E < 1:
            raise ValueError(f"num_envs (E) must be >= 1, got {E}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite, got inf or nan")
        if kind == "bernoulli":
            if std is not None:
                raise ValueError(
                    "std applies to Gaussian arms only; Bernoulli arms have variance "
                    "mean * (1 - mean). Drop std or use kind='gaussian'"
                )
            _check_unit_interval(means)
        self.means = means  # (E, K)
        self.kind = kind
        self._std_scalar: float | None = None
        self.std: torch.Tensor | None = None
        if kind == "gaussian":
            if std is None:
                std = 1.0
            if isinstance(std, (int, float)) and not isinstance(std, bool):
                self._std_scalar = float(std)
                std_t = torch.full_like(means, float(std))
            else:
                std_t = as_tensor(std, "std", "a float or a tensor of noise scales")
                if std_t.dtype == torch.bool or std_t.is_complex():
                    raise TypeError(f"std must hold real noise scales, got dtype {std_t.dtype}")
                std_t = std_t.to(dtype=means.dtype, device=means.device)
                try:
                    std_t = torch.broadcast_to(std_t, means.shape).contiguous()
                except RuntimeError as err:
                    raise ValueError(
                        f"std must be a float or broadcastable to means' shape {tuple(means.shape)}, "
                        f"got shape {tuple(std_t.shape)}"
                    ) from err
            if not torch.isfinite(std_t).all() or (std_t < 0).any():
                raise ValueError(f"std must be finite and >= 0, got min {std_t.min().item():.4g}")
            self.std = std_t  # (E, K)
        self.num_prompts = E
        self.num_actions = K
        self.horizon = 1
        self.states_per_prompt = 1

    # --- construction -------------------------------------------------------------
    @classmethod
    def random(
        cls,
        num_arms: int,
        num_envs: int = 1,
        kind: str = "bernoulli",
        generator: torch.Generator | None = None,
        std: float = 1.0,
    ) -> Bandit:
        """Random instances: Bernoulli means ~ U(0, 1), Gaussian means ~ N(0, 1) with noise
        ``std``. Means have shape ``(num_envs, num_arms)``.

        >>> Bandit.random(5, num_envs=3, generator=torch.Generator().manual_seed(0)).means.shape
        torch.Size([3, 5])
        """
        num_arms = check_int(num_arms, "num_arms (K)", 1)
        num_envs = check_int(num_envs, "num_envs (E)", 1)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        std = check_number(std, "std", 0, meaning="Gaussian noise scale")
        if kind == "bernoulli":
            return cls(means=torch.rand(num_envs, num_arms, generator=generator), kind=kind)
        return cls(means=torch.randn(num_envs, num_arms, generator=generator), kind=kind, std=std)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"kind": self.kind}
        if self._std_scalar is not None:
            config["std"] = self._std_scalar
        return config

    def get_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"means": self.means}
        if self.std is not None and self._std_scalar is None:
            tensors["std"] = self.std
        return tensors

    def __repr__(self) -> str:
        noise = f", std={self._std_scalar}" if self._std_scalar is not None else ""
        return (
            f"Bandit(num_envs={self.num_envs}, num_arms={self.num_arms}, kind={self.kind!r}{noise})"
        )

    @property
    def num_envs(self) -> int:
        """``E``, the number of independent instances (= ``num_prompts``)."""
        return self.num_prompts

    @property
    def num_arms(self) -> int:
        """``K`` (= ``num_actions``)."""
        return self.num_actions

    # --- episodes -----------------------------------------------------------------
    def _pulls(
        self, prompts: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        actions = one_step_actions(prompts, actions, self.num_prompts, self.num_actions,
                                   prompt_meaning="bandit instance index",
                                   action_meaning="arm index")
        return prompts, actions

    def reward(
        self,
        prompts: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sampled reward of pulling arm ``actions`` on instance ``prompts``.

        Args:
            prompts: ``(N,)`` instance index of each pull.
            actions: ``(N, 1)`` (the sandbox's ``(N, horizon)``) or ``(N,)`` arm indices.
            generator: source of the reward noise; the same seed gives the same rewards.
        Returns:
            ``(N,)`` float: Bernoulli draws in {0, 1}, or ``mean + std * N(0, 1)``. Row ``i``
            uses only its own instance's parameters and its own noise draw.
        """
        prompts, actions = self._pulls(prompts, actions)
        mu = self.means[prompts, actions]  # (N,)
        if self.kind == "bernoulli":
            u = torch.rand(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return (u < mu).to(mu.dtype)
        z = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + self.std[prompts, actions] * z

    def expected_reward(self, prompts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Arm means of the pulls, ``(N,)``; shapes as in :meth:`reward`."""
        prompts, actions = self._pulls(prompts, actions)
        return self.means[prompts, actions]

    # --- exact answers --------------------------------------------------------------
    @property
    def optimal_arm(self) -> torch.Tensor:
        """Best arm of each instance, ``(E,)`` long (first one on ties)."""
        return self.means.argmax(dim=1)

    @property
    def optimal_value(self) -> torch.Tensor:
        """Mean reward of the best arm of each instance, ``(E,)``."""
        return self.means.max(dim=1).values

    def regret(self, actions: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pull regret ``optimal_value[e] - means[e, a]`` (exact, no noise).

        Args:
            actions: arm indices ``(N, ...)``; row ``i`` belongs to instance ``prompts[i]``.
                E.g. ``(E, T)``: ``T`` pulls of each instance.
            prompts: ``(N,)`` instance of each row; default ``arange(E)`` (then ``N == E``).
        Returns:
            same shape as ``actions``; sum over the trailing dim for cumulative regret.
        """
        if prompts is None:
            if actions.shape[0] != self.num_prompts:
                raise ValueError(
                    f"actions has {actions.shape[0]} rows but the bandit has E = "
                    f"{self.num_prompts} instances; pass prompts (N,) naming each row's instance"
                )
            prompts = torch.arange(self.num_prompts, device=actions.device)
        check_index(prompts, self.num_prompts, "prompts", "bandit instance index")
        check_index(actions, self.num_actions, "actions", "arm index")
        e = prompts.reshape((-1,) + (1,) * (actions.ndim - 1)).expand_as(actions)
        return self.optimal_value[e] - self.means[e, actions]

    def _policy_rows(self, probs: torch.Tensor) -> torch.Tensor:
        """Policy probabilities ``(K,)``, ``(1, K)`` or ``(E, K)`` -> ``(E, K)``."""
        probs = torch.as_tensor(probs)
        if probs.ndim == 1:
            probs = probs.unsqueeze(0)
        rows = self.action_probs(probs)[:, 0, :]  # (E, K)
        check_probs(rows)
        return rows

    def expected_return(self, probs: torch.Tensor) -> torch.Tensor:
        """Exact expected reward ``sum_a pi(a) mu(a)`` of a policy, ``(E,)``.

        ``probs`` is ``(K,)`` (one policy for every instance) or ``(E, K)`` (one row per
        instance); rows must sum to 1.
        """
        rows = self._policy_rows(probs)
        return (rows * self.means.to(rows.dtype)).sum(-1)

    def success_probability(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Exact ``P(reward > 0)`` of one pull per instance, ``(E,)``.

        For Bernoulli arms this is the expected return (pass@1). For Gaussian arms it is
        ``sum_a pi(a) Phi(mu_a / std_a)`` (``std == 0`` counts ``mu > 0``).
        """
        rows = self._policy_rows(policy_probs)
        if self.kind == "bernoulli":
            return (rows * self.means.to(rows.dtype)).sum(-1)
        mu, std = self.means.to(rows.dtype), self.std.to(rows.dtype)
        safe = torch.where(std > 0, std, torch.ones_like(std))
        p = torch.where(std > 0, torch.special.ndtr(mu / safe), (mu > 0).to(rows.dtype))
        return (rows * p).sum(-1)


def _check_unit_interval(means: torch.Tensor) -> None:
    lo, flat = means.min(), means.argmin()
    hi, flat_hi = means.max(), means.argmax()
    K = means.shape[1]
    for value, idx in ((lo, flat), (hi, flat_hi)):
        if value < 0 or value > 1:
            e, k = divmod(int(idx), K)
            where = f"arm {k}" if means.shape[0] == 1 else f"env {e}, arm {k}"
            kind = "min" if value < 0 else "max"
            raise ValueError(
                f"means must lie in [0, 1] for Bernoulli arms; got {kind} {value.item():.4g} at "
                f"{where}. Use kind='gaussian' for unbounded rewards"
            )
