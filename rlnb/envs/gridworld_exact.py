"""The exact answers of a gridworld: the explicit time-indexed MDP of each map, and the
values, success probabilities and effective horizons that follow from it, with the views
that put time-indexed tables back on states and on the map.

:class:`GridworldExact` holds them as methods of :class:`~rlnb.envs.gridworld.Gridworld`
(its base class): it reads the maps' tables and :meth:`~rlnb.envs.gridworld.Gridworld.move`,
the deterministic part of a step, which the sampled dynamics share.
"""

from __future__ import annotations

from typing import Any

import torch

from rlnb.checks import check_index, check_probs, check_size
from rlnb.envs.gridworld_rules import NONE
from rlnb.mdp.horizon import EffectiveHorizon, FiniteMDP, effective_horizon, value_iteration


class GridworldExact:
    """Exact answers of :class:`~rlnb.envs.gridworld.Gridworld` (a base class of it, not
    used alone)."""

    def mdp(self, prompt: int = 0, reward: str = "return") -> FiniteMDP:
        """The explicit time-indexed MDP of one map over its ``C`` core states.

        Args:
            prompt: which map.
            reward: ``"return"`` (the sandbox's reward) or ``"success"`` (1 for entering
                any goal or decoy: its value is the probability of success).

        Returns:
            :class:`rlnb.mdp.horizon.FiniteMDP` with ``transitions (C, 4, C)``,
            ``rewards (T, C, 4)`` and ``initial (C,)``. Core state ``c`` at step ``t`` is
            global state ``prompt * states_per_prompt + t * C + c``. Built once per map and
            cached (treat it as read-only).
        """
        if reward not in ("return", "success"):
            raise ValueError(f"reward must be 'return' or 'success', got {reward!r}")
        check_index(torch.tensor([prompt]), self.num_prompts, "prompt", "map index")
        cache = self.__dict__.setdefault("_mdp_cache", {})
        if (prompt, reward) not in cache:  # the map never changes: build each MDP once
            cache[(prompt, reward)] = self._build_mdp(prompt, reward)
        return cache[(prompt, reward)]

    def _build_mdp(self, prompt: int, reward: str) -> FiniteMDP:
        C, A = self.core_states, 4
        check_size(C * A * C, "the map's explicit MDP (dense transitions)",
                   f"core_states * 4 * core_states = {C} * 4 * {C}",
                   "use a smaller map (core states = cells x key states x previous actions; "
                   "sticky actions multiply them by 5)")
        core = torch.arange(C).repeat_interleave(A)  # (C*A,)
        act = torch.arange(A).repeat(C)
        prev = core % self.num_prev
        key = (core // self.num_prev) % self.num_key_states
        cell = core // (self.num_prev * self.num_key_states)
        p = torch.full_like(core, prompt)
        has_prev = (prev != NONE) if self.num_prev > 1 else torch.zeros_like(core, dtype=torch.bool)
        P = torch.zeros(C * A, C, dtype=torch.float64)
        R0 = torch.zeros(C * A, dtype=torch.float64)
        f64 = torch.float64
        branches = (  # (probability that this action is executed, executed action)
            (torch.where(has_prev, 1 - self.sticky, 1.0).to(f64), act),
            (torch.where(has_prev, self.sticky, 0.0).to(f64), torch.where(has_prev, prev, act)),
        )
        for p_exec, executed in branches:
            for turn, p_turn in ((0, 1 - self.slip), (1, self.slip / 2), (3, self.slip / 2)):
                prob = p_exec * p_turn  # exactly 0 for branches that cannot happen
                nc, nk, npv, value = self.move(p, cell, key, prev, executed, (executed + turn) % 4)
                nxt = (nc * self.num_key_states + nk) * self.num_prev + npv
                P.index_put_((torch.arange(C * A), nxt), prob, accumulate=True)
                R0 += prob * ((value > 0).double() if reward == "success" else value)
        t = torch.arange(self.horizon, dtype=torch.long)
        factor = self.time_factor(t) if reward == "return" else torch.ones(self.horizon, dtype=torch.float64)
        R = factor[:, None, None] * R0.reshape(C, A)[None]
        init = torch.zeros(C, dtype=torch.float64)
        init[int(self.decode(self.initial_states(torch.tensor([prompt])))["core"])] = 1.0
        # An episode earns at most one goal's value: with no time penalty the possible
        # returns are 0 and the values of this map's goals (exact GORP analysis for 0/1).
        HW = self.height * self.width
        values = self.goal_values[prompt * HW:(prompt + 1) * HW]
        returns = ((0.0, 1.0) if reward == "success" else
                   (0.0, *values[values > 0].tolist()) if self.time_penalty == 0 else None)
        return FiniteMDP(P.reshape(C, A, C), R, init, returns=returns)

    def policy_table(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """A tabular policy's probabilities ``(num_states, 4)`` (``TabularPolicy.probs()``,
        ``MLPPolicy.probs(env)``) as ``(num_prompts, T, C, 4)`` float64 (decision layers)."""
        pi = self.action_probs(torch.as_tensor(policy_probs))  # (P, spp, A)
        check_probs(pi)
        T, C = self.horizon, self.core_states
        return pi[:, : T * C].reshape(self.num_prompts, T, C, 4).double()

    def _per_prompt(self, fn, policy_probs=None, reward="return") -> torch.Tensor:
        table = None if policy_probs is None else self.policy_table(policy_probs)
        out = [fn(self.mdp(p, reward), None if table is None else table[p])
               for p in range(self.num_prompts)]
        return torch.tensor(out, dtype=torch.float64)

    def expected_return(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Exact expected return of a tabular policy per map, ``(num_prompts,)``."""
        from rlnb.mdp.horizon import expected_return
        return self._per_prompt(expected_return, policy_probs)

    def success_probability(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Exact probability of entering a goal or decoy per map, ``(num_prompts,)``."""
        from rlnb.mdp.horizon import expected_return
        return self._per_prompt(expected_return, policy_probs, reward="success")

    def optimal_value(self) -> torch.Tensor:
        """``V*`` of the start state per map, ``(num_prompts,)``."""
        return self._per_prompt(lambda m, _: float(m.initial @ value_iteration(m)[1][0]))

    def random_value(self) -> torch.Tensor:
        """Expected return of the uniform random policy per map, ``(num_prompts,)``."""
        from rlnb.mdp.horizon import expected_return
        return self._per_prompt(lambda m, _: expected_return(m, torch.full((m.num_states, 4), 0.25)))

    def effective_horizon(self, prompt: int = 0, method: str = "bound", **kwargs: Any) -> EffectiveHorizon:
        """The effective horizon of one map. ``method="bound"``: card 9's closed form
        (:func:`rlnb.mdp.horizon.effective_horizon`); ``"gorp"``: the paper's definition,
        how many rollouts GORP needs (:func:`rlnb.mdp.gorp_horizon.gorp_effective_horizon`,
        exact here when the map has no time penalty and no decoy)."""
        if method == "bound":
            return effective_horizon(self.mdp(prompt), **kwargs)
        if method == "gorp":
            from rlnb.mdp.gorp_horizon import gorp_effective_horizon
            return gorp_effective_horizon(self.mdp(prompt), **kwargs)
        raise ValueError(f"method must be 'bound' (card 9's formula) or 'gorp' (the definition), got {method!r}")

    def table_to_states(self, x: torch.Tensor, prompt: int = 0) -> torch.Tensor:
        """Scatter a time-indexed ``(T, C, ...)`` tensor of one map into global state order
        ``(num_states, ...)`` (zeros elsewhere), e.g. to initialise a TabularPolicy."""
        T, C = self.horizon, self.core_states
        out = torch.zeros((self.num_states,) + tuple(x.shape[2:]), dtype=x.dtype)
        start = prompt * self.states_per_prompt
        out[start : start + T * C] = x.reshape((T * C,) + tuple(x.shape[2:]))
        return out

    def cell_cores(self, key: int = 0, prev: int | None = None) -> torch.Tensor:
        """Core index of every cell, ``(height, width)`` long, for a fixed key bit and
        previous action (``None``: none yet, the value at t = 0)."""
        rows = torch.arange(self.height)[:, None].expand(self.height, self.width)
        cols = torch.arange(self.width)[None, :].expand(self.height, self.width)
        return self.encode(0, 0, rows, cols, key, prev)

    def grid_view(self, x: torch.Tensor, t: int = 0, key: int = 0, prev: int | None = None) -> torch.Tensor:
        """Pick one time step of a ``(T, C, ...)`` tensor (V, Q, greedy actions) as a map
        ``(height, width, ...)``: each cell's value with the given key bit and previous action.
        The default ``prev=None`` shows "as if the episode started in this cell"."""
        return x[t][self.cell_cores(key, prev)]

