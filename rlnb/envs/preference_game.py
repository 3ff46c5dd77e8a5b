"""A preference game as a sandbox: one prompt, ``K`` outputs, rewarded by win rate.

Self-play preference optimisation (SPO, Swamy et al. arXiv:2401.04056; card 19) needs no
reward model: each sampled output is scored by its expected win rate against the *other*
outputs of its group under a preference matrix ``P`` (``P[y, y'] = P(y preferred to y')``),
which may be intransitive. :class:`PreferenceGame` makes that a sandbox of the one Trainer,
so sampled SPO is a ``TrainConfig`` (a tabular softmax over the ``K`` outputs, group
advantages, a policy-gradient loss) and not a hand-written loop.

The reward of a sample depends on the rest of its group, so the game is scored through
:meth:`PreferenceGame.reward_rollout` (the Trainer's call, groups of ``rollout.group_size``);
:meth:`PreferenceGame.reward` scores a batch of actions as one group.

>>> rps = torch.tensor([[.5, 1., 0.], [0., .5, 1.], [1., 0., .5]])
>>> game = PreferenceGame(rps)
>>> game.reward(torch.zeros(3, dtype=torch.long), torch.tensor([[0], [1], [2]]))
tensor([0.5000, 0.5000, 0.5000])
>>> round(game.exploitability(torch.tensor([1.0, 0.0, 0.0])), 3)  # paper beats rock
0.5
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlnb.checks import one_step_actions
from rlnb.envs.base import Sandbox
from rlnb.mdp.preference import check_preference_matrix, exploitability, win_rate_rewards

__all__ = ["PreferenceGame"]


class PreferenceGame(Sandbox):
    """One prompt whose ``K`` answers are judged against each other by ``preference``.

    Args:
        preference: the ``(K, K)`` matrix ``P[y, y'] = P(y is preferred to y')``, with
            ``P + P.T = 1`` (checked by :func:`rlnb.mdp.preference.check_preference_matrix`).

    Sandbox layout: ``num_prompts == 1``, ``num_actions == K``, ``horizon == 1``,
    ``states_per_prompt == 1``.
    """

    reward_name = "win rate"

    def __init__(self, preference: torch.Tensor) -> None:
        self.preference = check_preference_matrix(preference)  # float64 (K, K)
        self.num_prompts = 1
        self.num_actions = int(self.preference.shape[0])
        self.horizon = 1
        self.states_per_prompt = 1

    @classmethod
    def cyclic(cls, num_outputs: int = 7, seed: int = 0,
               margins: tuple[float, float, float] | None = None) -> PreferenceGame:
        """Card 19's game: a rock-paper-scissors cycle among outputs 0, 1, 2 (output ``i``
        beats ``i + 1 mod 3`` with margin U(0.15, 0.35)), each of the three beating every
        other output with probability U(0.6, 0.9), and the others U(0.3, 0.7) among
        themselves; drawn from ``numpy.random.default_rng(seed)``. No reward represents
        it, and its minimax winner is supported on the cycle.

        ``margins`` replaces the three cycle margins (each in [0, 0.5]; 0 is a tie) and
        keeps every other entry of the seed's game: the same draws are made either way.

        >>> PreferenceGame.cyclic(7, seed=0).preference.shape
        torch.Size([7, 7])
        """
        if not isinstance(num_outputs, int) or num_outputs < 3:
            raise ValueError(f"num_outputs must be an int >= 3 (a cycle of three and the rest), "
                             f"got {num_outputs!r}")
        if margins is not None:
            margins = np.asarray(margins, dtype=np.float64)
            if margins.shape != (3,) or not bool(((margins >= 0) & (margins <= 0.5)).all()):
                raise ValueError("margins must be three numbers in [0, 0.5] (how much output i "
                                 f"beats output i + 1 mod 3 above a tie), got {margins.tolist()!r}")
        rng = np.random.default_rng(seed)
        k = num_outputs
        P = np.full((k, k), 0.5)
        drawn = rng.uniform(0.15, 0.35, 3)
        margins = drawn if margins is None else margins
        for i in range(3):
            j = (i + 1) % 3
            P[i, j], P[j, i] = 0.5 + margins[i], 0.5 - margins[i]
            for d in range(3, k):
                q = rng.uniform(0.6, 0.9)
                P[i, d], P[d, i] = q, 1 - q
        for a in range(3, k):
            for b in range(a + 1, k):
                q = rng.uniform(0.3, 0.7)
                P[a, b], P[b, a] = q, 1 - q
        return cls(torch.tensor(P))

    def get_config(self) -> dict[str, Any]:
        return {}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {"preference": self.preference}

    def __repr__(self) -> str:
        return f"PreferenceGame(num_outputs={self.num_actions})"

    def reward(
        self, prompts: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Win rate of each of the ``N`` outputs against the other ``N - 1`` (the batch as
        one group; :func:`rlnb.rl.win_rate_rewards`). ``generator`` is unused: the win rate
        is the expectation under ``P``, not a sampled comparison."""
        actions = one_step_actions(prompts, actions, self.num_prompts, self.num_actions,
                                   prompt_meaning="prompt index (the game has one)",
                                   action_meaning="output index")
        return self._win_rates(actions, actions.numel())

    def reward_rollout(self, rollout: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """SPO's reward: each completion's win rate against the other completions of its
        group (``rollout.group_size``, at least 2)."""
        actions = one_step_actions(rollout.prompts, rollout.actions, self.num_prompts,
                                   self.num_actions, prompt_meaning="prompt index",
                                   action_meaning="output index")
        return self._win_rates(actions, rollout.group_size)

    def _win_rates(self, actions: torch.Tensor, group_size: int) -> torch.Tensor:
        if group_size < 2:
            raise ValueError("a PreferenceGame scores an output against the others of its "
                             f"group: use num_generations >= 2, got {group_size}")
        return win_rate_rewards(actions, group_size, self.preference)

    def expected_reward(self, prompts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.reward(prompts, actions)

    # --- exact answers --------------------------------------------------------------
    def exploitability(self, probs: torch.Tensor) -> float:
        """``max_y P(y beats pi) - 1/2`` of the policy ``probs`` ``(K,)`` or ``(1, K)``
        (:func:`rlnb.mdp.preference.exploitability`)."""
        return exploitability(torch.as_tensor(probs, dtype=torch.float64).reshape(-1), self.preference)

    def expected_return(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected win rate of ``pi`` against an independent sample of itself,
        ``pi^T P pi`` (always 1/2 by symmetry), ``(1,)``."""
        pi = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
        return (pi @ self.preference @ pi).reshape(1).to(torch.get_default_dtype())
