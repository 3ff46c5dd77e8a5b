"""Noisy verifiers: a sandbox wrapper that flips binary rewards, and the corrections for it.

Cai et al. (arXiv:2510.00915, card 15) model an imperfect verifier as a reward channel with
two rates: the *false-positive* rate ``rho0 = P(R~ = 1 | R = 0)`` (a wrong answer accepted)
and the *false-negative* rate ``rho1 = P(R~ = 0 | R = 1)`` (a right answer rejected). Then

    E[R~ | R] = rho0 + (1 - rho0 - rho1) R,

so the channel is informative only while ``rho0 + rho1 < 1`` (at ``rho0 + rho1 = 1`` the
verdict is independent of the answer; above it the verifier is anti-correlated).

Two corrections turn the observed verdict ``R~`` into the number the trainer sees, each a
registered reward transform ``fn(observed (N,), rho0, rho1) -> (N,)``:

- ``"backward"``: ``R^ = (R~ - rho0) / (1 - rho0 - rho1)``, an unbiased surrogate,
  ``E[R^ | R] = R`` for each true ``R`` (so the policy gradient is unbiased).
- ``"forward"``: score-function weights ``w1 = rho1`` where ``R~ = 1`` and ``w0 = rho1 - 1``
  where ``R~ = 0``, i.e. ``w = R~ + rho1 - 1``. Then ``E[w | R] = (1 - rho0 - rho1)(R - 1)``
  and, because ``E_pi[grad log pi] = 0``, ``E[w grad log pi] = (1 - rho0 - rho1) x`` the
  clean gradient: the clean direction, using only ``rho1``.
- ``"none"``: ``R~`` itself.

Footgun (the card's caveat): all three are *affine* maps of ``R~``, and with constant rates
the uncorrected ``E[R~ grad log pi]`` is already ``(1 - rho0 - rho1) x`` the clean gradient.
A group-mean baseline removes the forward correction's shift, and GRPO's division by the
group std also removes the backward correction's scale: under ``scale_rewards="group"`` the
backward-corrected advantages equal the uncorrected ones (up to ``std_eps``). The
corrections change the update only where the scale survives (``scale_rewards="none"``,
REINFORCE, RLOO, plain SGD).

:class:`NoisyVerifier` is itself a :class:`~rlnb.envs.base.Sandbox`, so the
:class:`~rlnb.train.Trainer` trains on it unchanged. Its flips are drawn from the explicit
``torch.Generator`` the trainer passes to ``reward_rollout``.

>>> import torch
>>> from rlnb.envs import StrategyBandit
>>> clean = StrategyBandit(solve_matrix=torch.tensor([[1., 0.], [0., 1.]]))
>>> noisy = NoisyVerifier(clean, false_positive_rate=0.0, false_negative_rate=0.5)
>>> g = torch.Generator().manual_seed(0)
>>> noisy.reward(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]), g)  # true: 1 1 0 0
tensor([1., 1., 0., 0.])
>>> backward_correction(torch.tensor([0., 1.]), 0.1, 0.3)
tensor([-0.1667,  1.5000])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlnb.checks import check_number
from rlnb.envs.base import Sandbox, SandboxWrapper
from rlnb.registry import Registry

__all__ = [
    "REWARD_CORRECTIONS",
    "NoisyVerifier",
    "backward_correction",
    "check_noise_rates",
    "expected_observed_reward",
    "flip_rewards",
    "forward_correction",
    "no_correction",
    "register_reward_correction",
]

REWARD_CORRECTIONS = Registry("reward correction")
"""Name -> ``fn(observed (N,), false_positive_rate, false_negative_rate) -> (N,)``."""


def register_reward_correction(name: str):
    """Decorator: register ``fn(observed, false_positive_rate, false_negative_rate) -> (N,)``
    under ``name``, usable as ``NoisyVerifier(..., correction=name)``. The function must be
    affine in ``observed`` for :meth:`NoisyVerifier.expected_reward` to stay exact."""
    return REWARD_CORRECTIONS.register(name)


# --- the noise model ---------------------------------------------------------------------
def check_noise_rates(false_positive_rate: Any, false_negative_rate: Any) -> tuple[float, float]:
    """``(rho0, rho1)`` as floats after checking each lies in [0, 1) and ``rho0 + rho1 < 1``.

    >>> check_noise_rates(0.1, 0.4)
    (0.1, 0.4)
    >>> check_noise_rates(0.5, 0.5)
    Traceback (most recent call last):
    ...
    ValueError: false_positive_rate + false_negative_rate must be < 1, got 0.5 + 0.5 = 1: at 1 the verifier's verdict is independent of the answer (nothing to learn from) and above 1 it is anti-correlated; the corrections divide by 1 - rho0 - rho1. Lower the rates (or swap the verifier's verdict if both are above 0.5)
    """
    rho0 = check_number(false_positive_rate, "false_positive_rate", 0, 1, high_open=True,
                        meaning="P(verifier accepts | answer wrong)")
    rho1 = check_number(false_negative_rate, "false_negative_rate", 0, 1, high_open=True,
                        meaning="P(verifier rejects | answer right)")
    if not rho0 + rho1 < 1:
        raise ValueError(
            f"false_positive_rate + false_negative_rate must be < 1, got {rho0:g} + {rho1:g} = "
            f"{rho0 + rho1:g}: at 1 the verifier's verdict is independent of the answer "
            "(nothing to learn from) and above 1 it is anti-correlated; the corrections divide "
            "by 1 - rho0 - rho1. Lower the rates (or swap the verifier's verdict if both are "
            "above 0.5)"
        )
    return rho0, rho1


def _check_binary(rewards: Tensor, what: str) -> None:
    bad = ~((rewards == 0) | (rewards == 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{what} must be binary (0 or 1) for a noisy verifier: the noise model flips a "
            f"verdict, but entry {i} is {rewards[i].item()!r}; wrap a sandbox whose reward "
            "is a 0/1 verdict (StrategyBandit, TreeMDP, a Bernoulli Bandit)"
        )


def flip_rewards(clean: Tensor, false_positive_rate: float, false_negative_rate: float,
                 generator: torch.Generator | None) -> Tensor:
    """The verifier's verdicts ``R~`` for true verdicts ``clean`` ``(N,)`` in {0, 1}: each 0
    becomes 1 with probability ``false_positive_rate``, each 1 becomes 0 with probability
    ``false_negative_rate``, independently, from ``generator`` (one uniform per entry, so
    the stream consumed does not depend on the verdicts). Same shape and dtype.

    >>> flip_rewards(torch.ones(4), 0.0, 0.0, torch.Generator().manual_seed(0))
    tensor([1., 1., 1., 1.])
    """
    rho0, rho1 = check_noise_rates(false_positive_rate, false_negative_rate)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    clean = torch.as_tensor(clean)
    _check_binary(clean, "the clean rewards")
    u = torch.rand(clean.shape, generator=generator, dtype=torch.float64)  # (N,)
    flip = torch.where(clean > 0.5, u < rho1, u < rho0)
    return torch.where(flip, 1 - clean, clean)


# --- the corrections: affine maps of the observed verdict -------------------------------
@register_reward_correction("none")
def no_correction(observed: Tensor, false_positive_rate: float,
                  false_negative_rate: float) -> Tensor:
    """``R~`` unchanged (the uncorrected baseline).

    >>> no_correction(torch.tensor([0., 1.]), 0.1, 0.3)
    tensor([0., 1.])
    """
    return observed.clone()


@register_reward_correction("backward")
def backward_correction(observed: Tensor, false_positive_rate: float,
                        false_negative_rate: float) -> Tensor:
    """Cai et al.'s backward correction ``R^ = (R~ - rho0) / (1 - rho0 - rho1)``: unbiased,
    ``E[R^ | R] = R`` for ``R`` in {0, 1}. Its values leave [0, 1] (a rejected answer scores
    ``-rho0 / (1 - rho0 - rho1)``), and its variance grows as ``rho0 + rho1 -> 1``.

    >>> backward_correction(torch.tensor([0., 1.]), 0.0, 0.5)
    tensor([0., 2.])
    """
    rho0, rho1 = check_noise_rates(false_positive_rate, false_negative_rate)
    return (observed - rho0) / (1.0 - rho0 - rho1)


@register_reward_correction("forward")
def forward_correction(observed: Tensor, false_positive_rate: float,
                       false_negative_rate: float) -> Tensor:
    """Cai et al.'s forward correction as a reward: the score-function weight ``w1 = rho1``
    where ``R~ = 1`` and ``w0 = rho1 - 1`` where ``R~ = 0``, i.e. ``R~ + rho1 - 1``. Uses
    only ``rho1`` (``false_positive_rate`` is validated, not used):
    ``E[w | R] = (1 - rho0 - rho1)(R - 1)``, so ``E[w grad log pi]`` is ``(1 - rho0 - rho1)``
    times the clean gradient. Footgun: it is ``R~`` shifted by a constant, which any
    baseline (a group mean) removes.

    >>> forward_correction(torch.tensor([0., 1.]), 0.0, 0.4)
    tensor([-0.6000,  0.4000])
    """
    _, rho1 = check_noise_rates(false_positive_rate, false_negative_rate)
    return observed + (rho1 - 1.0)


def expected_observed_reward(clean: Tensor, false_positive_rate: float,
                             false_negative_rate: float, correction: str = "none") -> Tensor:
    """Exact ``E[t(R~) | clean]`` for the correction ``t``: ``clean`` may be a 0/1 verdict
    or the probability of a 1 (an expected clean reward in [0, 1]); the corrections are
    affine, so this is ``t(rho0 + (1 - rho0 - rho1) clean)``.

    >>> expected_observed_reward(torch.tensor([0., 1.]), 0.1, 0.3, "backward")
    tensor([0., 1.])
    """
    rho0, rho1 = check_noise_rates(false_positive_rate, false_negative_rate)
    clean = torch.as_tensor(clean)
    return REWARD_CORRECTIONS[correction](rho0 + (1.0 - rho0 - rho1) * clean, rho0, rho1)


# --- the wrapper ---------------------------------------------------------------------------
class NoisyVerifier(SandboxWrapper):
    """``env`` with its 0/1 reward read through a noisy verifier, then corrected.

    Args:
        env: a discrete rlnb sandbox whose reward is a 0/1 verdict (StrategyBandit,
            TreeMDP, a Bernoulli Bandit, ...). Prompts, actions, transitions and state
            features are ``env``'s.
        false_positive_rate: ``rho0 = P(R~ = 1 | R = 0)``, in [0, 1).
        false_negative_rate: ``rho1 = P(R~ = 0 | R = 1)``, in [0, 1); ``rho0 + rho1 < 1``.
        correction: name in :data:`REWARD_CORRECTIONS` applied to the verdict before the
            trainer sees it: ``"none"``, ``"backward"`` or ``"forward"``. The correction
            uses the true rates (the paper's known-rate setting).

    ``reward`` / ``reward_rollout`` draw the flips from the ``generator`` they are given
    and refuse ``None``: an unseeded flip would make a run unrepeatable. ``expected_reward``
    is exact (mean over the flips). ``success_probability`` is the *clean* env's: it is
    what the policy is judged on, since the verifier's noise does not change which answers
    are right; the clean sandbox is ``self.env`` (e.g. ``noisy.env.pass_at_k_exact``).

    >>> from rlnb.envs import StrategyBandit
    >>> env = NoisyVerifier(StrategyBandit(solve_matrix=torch.tensor([[1., 0.]])), 0.2, 0.3,
    ...                     correction="backward")
    >>> env.expected_reward(torch.tensor([0, 0]), torch.tensor([0, 1]))
    tensor([1., 0.])
    """

    def __init__(self, env: Sandbox, false_positive_rate: float = 0.0,
                 false_negative_rate: float = 0.0, correction: str = "none") -> None:
        from rlnb.envs.text import TextTask

        if isinstance(env, TextTask) or not isinstance(env, Sandbox):
            raise TypeError(
                f"env must be a discrete rlnb sandbox (StrategyBandit, TreeMDP, Bandit, ...), "
                f"got {type(env).__name__}; text tasks are not supported by NoisyVerifier: "
                "flip their rewards in the task's reward function instead")
        self.rho0, self.rho1 = check_noise_rates(false_positive_rate, false_negative_rate)
        REWARD_CORRECTIONS[correction]  # unknown names raise, listing the valid ones
        super().__init__(env)
        self.correction = correction
        self.reward_name = f"{env.reward_name} (noisy verifier, {correction} correction)"

    @property
    def false_positive_rate(self) -> float:
        return self.rho0

    @property
    def false_negative_rate(self) -> float:
        return self.rho1

    # --- serialization: the wrapped sandbox's spec nested in ours ------------------------
    def get_config(self) -> dict[str, Any]:
        return {"false_positive_rate": self.rho0, "false_negative_rate": self.rho1,
                "correction": self.correction}

    def __repr__(self) -> str:
        return (f"NoisyVerifier({self.env!r}, false_positive_rate={self.rho0:g}, "
                f"false_negative_rate={self.rho1:g}, correction={self.correction!r})")

    # --- the noisy, corrected reward ----------------------------------------------------
    def observe(self, clean: Tensor, generator: torch.Generator | None) -> Tensor:
        """What the trainer sees for true verdicts ``clean`` ``(N,)``: flipped by the
        verifier (from ``generator``), then corrected."""
        if generator is None:
            raise ValueError(
                "NoisyVerifier flips rewards at random and needs an explicit torch.Generator "
                "(the Trainer passes its own); call reward(prompts, actions, generator) with "
                "generator=torch.Generator().manual_seed(seed), or expected_reward for the "
                "exact mean")
        observed = flip_rewards(clean, self.rho0, self.rho1, generator)
        return REWARD_CORRECTIONS[self.correction](observed, self.rho0, self.rho1)

    def reward(self, prompts: Tensor, actions: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
        """The wrapped sandbox's verdict, flipped and corrected: ``(N,) float``."""
        return self.observe(self.env.reward(prompts, actions, generator), generator)

    def reward_rollout(self, rollout: Any, generator: torch.Generator | None = None) -> Tensor:
        return self.observe(self.env.reward_rollout(rollout, generator), generator)

    def expected_reward(self, prompts: Tensor, actions: Tensor) -> Tensor:
        """Exact mean over the verifier's flips (and ``env``'s own noise) of ``reward``."""
        return expected_observed_reward(self.env.expected_reward(prompts, actions),
                                        self.rho0, self.rho1, self.correction)
