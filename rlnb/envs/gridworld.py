"""Gridworlds from ASCII layouts: slippery, sticky, finite-horizon, batched in torch, with
exact answers (card 9, the effective horizon of Laidlaw et al.).

Dynamics, one step (the order matters for the random draws)::

    u_sticky, u_slip ~ U(0, 1)                          # two draws per env per step
    executed = previous action if (t > 0 and u_sticky < sticky) else chosen action
    direction = executed, or turned right (u_slip < slip/2) or left (u_slip < slip)
    move one cell in `direction` unless a wall, a closed door or the edge is in the way
    entering K picks up the key; entering G, g or L ends the episode

Sticky actions are the paper's stochasticity (Machado et al.'s ALE protocol, p = 0.25):
with probability ``sticky`` the *previous executed* action is repeated, never at t = 0.
Slip turns the move sideways (FrozenLake style). Actions: ``0 up, 1 right, 2 down, 3 left``.

Reward: entering a goal pays ``value * (1 - time_penalty * steps / horizon)`` where
``steps`` counts actions taken so far including this one, and ``value`` is 1 for ``G`` and
``decoy_reward`` for ``g``. Lava and running out of time pay 0. The default
``time_penalty = 0`` gives the 0/1 verifiable reward of the other rlnb sandboxes (the
return is then the probability of success); MiniGrid's convention is ``time_penalty =
0.9``, where a faster path is worth more.

State layout (every policy in rlnb sees one integer per state)::

    state = prompt * states_per_prompt + t * C + core          t = 0..horizon
    core  = (cell * K + has_key) * Pv + prev                   cell = row * width + col

with ``K = 2`` if a layout has a key (else 1) and ``Pv = 5`` (previous action 0..3, 4 = none
yet) if ``sticky > 0`` (else 1). The time step is part of the state: with a finite
horizon the optimal action depends on the steps left, and the exact analysis
(:mod:`rlnb.mdp.horizon`) is over the same time-indexed states. ``states_per_prompt =
(horizon + 1) * C``: the last layer holds the states after the final action, which are
terminal and never acted from.

Footgun: a policy's rollout records the state *before* each action, so the outcome of the
last action is not in ``rollout.states``. :meth:`Gridworld.reward_rollout` reads a finished
episode's reward from the first terminal state it recorded, and otherwise simulates the
last transition with the generator (exact in distribution, not a replay).

The exact answers (:meth:`Gridworld.mdp` and what follows from it) live in
:mod:`rlnb.envs.gridworld_exact`, the action names and the plain-Python oracle
:func:`reference_step` in :mod:`rlnb.envs.gridworld_rules`; both are importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from rlnb.checks import check_index, check_int, check_number
from rlnb.envs.base import Sandbox
from rlnb.envs.gridworld_exact import GridworldExact
from rlnb.envs.gridworld_rules import ACTIONS, ARROWS, COL_STEP, NONE, ROW_STEP, reference_step
from rlnb.envs.layouts import (
    TERMINAL_CHARS,
    layout_horizon,
    named_layout,
    parse_layout,
    random_layout,
    shortest_distance,
)

__all__ = ["ACTIONS", "ARROWS", "NONE", "STEP_TABLE_LIMIT", "Gridworld", "effective_horizon_table",
           "reference_step"]

#: Largest ``num_states * 16`` for which a Gridworld steps by lookups in a precomputed table
#: (:meth:`Gridworld._step_table`); larger maps compute each step.
STEP_TABLE_LIMIT = 1 << 23


def _check_probability(name: str, value: float, meaning: str) -> float:
    return check_number(value, name, 0, 1, meaning=meaning)


class Gridworld(GridworldExact, Sandbox):
    """One or more same-sized gridworld maps (one per prompt), batched in torch.

    Args:
        layouts: one layout string, or a list of layout strings of the same size (one
            prompt each). Characters in :data:`rlnb.envs.layouts.CHARACTERS`.
        horizon: ``T``, actions per episode (>= 1, and >= the shortest path to a goal).
        slip: probability that a move goes sideways (half to each side), in [0, 1].
        sticky: probability that the previous action is repeated instead, in [0, 1]
            (the paper uses 0.25).
        time_penalty: reaching a goal after ``n`` of ``T`` steps pays
            ``1 - time_penalty * n / T``; 0 (default) gives binary rewards, MiniGrid uses
            0.9. In [0, 1).
        decoy_reward: value of a decoy goal ``g`` (G is worth 1), in [0, 1].

    Sandbox layout: ``num_actions == 4`` (up, right, down, left), ``horizon == T``,
    ``states_per_prompt == (T + 1) * C`` (see the module docstring).

    >>> env = Gridworld("S.G", horizon=3)
    >>> s = env.reset(3)
    >>> s, r, done = env.step(s, torch.tensor([1, 1, 3]))     # right, right, left (a bump)
    >>> env.decode(s)["col"].tolist(), done.tolist()
    ([1, 1, 0], [False, False, False])
    >>> float(env.optimal_value()[0])
    1.0
    >>> slow = Gridworld("S.G", horizon=3, time_penalty=0.9)   # MiniGrid's reward
    >>> round(float(slow.optimal_value()[0]), 3)              # 1 - 0.9 * 2 / 3
    0.4
    """

    reward_name = "return"

    def __init__(
        self,
        layouts: str | Sequence[str],
        horizon: int,
        slip: float = 0.0,
        sticky: float = 0.0,
        time_penalty: float = 0.0,
        decoy_reward: float = 0.5,
    ) -> None:
        horizon = check_int(horizon, "horizon", 1, meaning="actions per episode")
        self.slip = _check_probability("slip", slip, "probability that a move goes sideways")
        self.sticky = _check_probability(
            "sticky", sticky, "probability that the previous action is repeated")
        self.decoy_reward = _check_probability("decoy_reward", decoy_reward,
                                               "value of a decoy goal 'g'; G is worth 1")
        self.time_penalty = check_number(
            time_penalty, "time_penalty", 0, 1, high_open=True,
            meaning="reward 1 - time_penalty * steps / horizon")
        single = isinstance(layouts, str)
        if not single and (not isinstance(layouts, (list, tuple))
                           or not all(isinstance(x, str) for x in layouts)):
            raise TypeError(
                f"layouts must be a layout string or a list of layout strings (one per "
                f"prompt), got {type(layouts).__name__} {layouts!r}"[:200]
            )
        raw = [layouts] if single else list(layouts)
        if not raw:
            raise ValueError("layouts is empty: pass one layout string or a list of them")
        self.layouts: list[list[str]] = []
        for i, text in enumerate(raw):
            where = "" if single else f"layout {i}, "
            rows = parse_layout(text, where=where)
            if self.layouts and (len(rows), len(rows[0])) != (self.height, self.width):
                raise ValueError(
                    f"layout {i} is {len(rows)}x{len(rows[0])} but layout 0 is "
                    f"{self.height}x{self.width}: all layouts of one Gridworld have the same size"
                )
            dist = shortest_distance(rows, where=where)
            if dist > horizon:
                raise ValueError(
                    f"{where}the nearest goal is {dist} steps from the start but horizon is "
                    f"{horizon}: no episode can reach it; use horizon >= {dist}"
                )
            self.layouts.append(rows)
            self.height, self.width = len(rows), len(rows[0])
        self.horizon = int(horizon)
        self.num_prompts = len(self.layouts)
        self.num_actions = 4
        self.num_cells = self.height * self.width
        self.num_key_states = 2 if any("K" in "".join(r) for r in self.layouts) else 1
        self.num_prev = 5 if self.sticky > 0 else 1
        self.core_states = self.num_cells * self.num_key_states * self.num_prev
        self.states_per_prompt = (self.horizon + 1) * self.core_states
        self._build_tables()

    def _build_tables(self) -> None:
        P, H, W, HW = self.num_prompts, self.height, self.width, self.num_cells
        char = [[ch for row in rows for ch in row] for rows in self.layouts]  # (P, HW)
        target = torch.empty(P, HW, 4, dtype=torch.long)
        for p in range(P):
            for cell in range(HW):
                r, c = divmod(cell, W)
                for d in range(4):
                    nr, nc = r + ROW_STEP[d], c + COL_STEP[d]
                    ok = 0 <= nr < H and 0 <= nc < W and char[p][nr * W + nc] != "#"
                    target[p, cell, d] = nr * W + nc if ok else cell
        self._target = target.reshape(-1)  # flat (P * HW * 4,)
        self._door = torch.tensor([[x == "D" for x in row] for row in char]).reshape(-1)
        self._keycell = torch.tensor([[x == "K" for x in row] for row in char]).reshape(-1)
        self._terminal = torch.tensor([[x in TERMINAL_CHARS for x in row] for row in char]).reshape(-1)
        # Value of entering each cell (1 for G, decoy_reward for g), flat (P * HW,) float64.
        self.goal_values = torch.tensor(
            [[1.0 if x == "G" else self.decoy_reward if x == "g" else 0.0 for x in row]
             for row in char], dtype=torch.float64).reshape(-1)
        self._start = torch.tensor([row.index("S") for row in char])  # (P,) cell

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, horizon: int | None = None, **kwargs: Any) -> Gridworld:
        """A named map of :data:`rlnb.envs.layouts.LAYOUTS` with its default horizon.

        >>> Gridworld.from_name("lock8", sticky=0.25).horizon
        8
        """
        return cls(named_layout(name), horizon or layout_horizon(name), **kwargs)

    @classmethod
    def random(
        cls,
        height: int = 5,
        width: int = 5,
        num_prompts: int = 1,
        horizon: int | None = None,
        *,
        wall_density: float = 0.2,
        lava_density: float = 0.05,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Gridworld:
        """``num_prompts`` random maps (:func:`rlnb.envs.layouts.random_layout`). The layouts
        are stored in the config, so a saved run rebuilds the same maps. Default horizon:
        ``max(2 * (height + width - 2), longest shortest path + 2)``."""
        num_prompts = check_int(num_prompts, "num_prompts", 1)
        layouts = [random_layout(height, width, wall_density=wall_density,
                                 lava_density=lava_density, generator=generator)
                   for _ in range(num_prompts)]
        if horizon is None:
            longest = max(shortest_distance(parse_layout(x)) for x in layouts)
            horizon = max(2 * (height + width - 2), longest + 2)
        return cls(layouts, horizon, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {
            "layouts": ["\n".join(rows) for rows in self.layouts],
            "horizon": self.horizon,
            "slip": self.slip,
            "sticky": self.sticky,
            "time_penalty": self.time_penalty,
            "decoy_reward": self.decoy_reward,
        }

    def __repr__(self) -> str:
        return (f"Gridworld(num_prompts={self.num_prompts}, size={self.height}x{self.width}, "
                f"horizon={self.horizon}, slip={self.slip}, sticky={self.sticky})")

    def layout(self, prompt: int = 0) -> str:
        """The layout of one prompt as a string."""
        return "\n".join(self.layouts[prompt])

    # --- state encoding -------------------------------------------------------------
    def encode(self, prompt, t, row, col, key=0, prev=None) -> torch.Tensor:
        """Global state index from its parts (tensors or ints, broadcast). ``prev=None``
        means "no previous action" (the value at t = 0)."""
        if prev is None:
            prev = NONE if self.num_prev > 1 else 0
        prompt, t, row, col, key, prev = (torch.as_tensor(x) for x in (prompt, t, row, col, key, prev))
        if self.num_prev == 1:
            prev = torch.zeros_like(prev)
        core = ((row * self.width + col) * self.num_key_states + key) * self.num_prev + prev
        return prompt * self.states_per_prompt + t * self.core_states + core

    def decode(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parts of each global state: ``prompt, t, row, col, key, prev, cell, core``, each
        like ``states``. ``prev == 4`` means none yet (only with sticky actions)."""
        states = torch.as_tensor(states)
        prompt, local = states // self.states_per_prompt, states % self.states_per_prompt
        t, core = local // self.core_states, local % self.core_states
        prev = core % self.num_prev
        rest = core // self.num_prev
        key, cell = rest % self.num_key_states, rest // self.num_key_states
        return {"prompt": prompt, "t": t, "row": cell // self.width, "col": cell % self.width,
                "key": key, "prev": prev, "cell": cell, "core": core}

    def initial_states(self, prompts: torch.Tensor) -> torch.Tensor:
        prompts = torch.as_tensor(prompts, dtype=torch.long)
        check_index(prompts, self.num_prompts, "prompts", "map index")
        start = self._start[prompts]
        return self.encode(prompts, 0, start // self.width, start % self.width)

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """``(N,) -> (N,) bool``: on a goal, decoy or lava cell, or past the last action."""
        table = self._step_table()
        if table is not None:
            return table["terminal"][states]
        return self._is_terminal(states)

    def _is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        d = self.decode(states)
        return self._terminal[d["prompt"] * self.num_cells + d["cell"]] | (d["t"] >= self.horizon)

    # --- dynamics -------------------------------------------------------------------
    def move(self, prompt, cell, key, prev, executed, direction):
        """Deterministic part of a step, batched: ``(cell, key, prev)`` after executing
        ``executed`` with the body moving in ``direction``; terminal cells absorb. Also
        returns the value of the cell entered (0 unless a goal is entered now). Shared by the
        sampled dynamics (:meth:`step`) and the explicit MDP (:meth:`mdp`)."""
        flat = prompt * self.num_cells
        term = self._terminal[flat + cell]
        tgt = self._target[(flat + cell) * 4 + direction]
        blocked = self._door[flat + tgt] & (key == 0)
        new_cell = torch.where(blocked | term, cell, tgt)
        new_key = torch.where(term, key, key | self._keycell[flat + new_cell].long()) \
            if self.num_key_states > 1 else key
        new_prev = torch.where(term, prev, executed) if self.num_prev > 1 else prev
        value = torch.where(term, torch.zeros((), dtype=torch.float64), self.goal_values[flat + new_cell])
        return new_cell, new_key, new_prev, value

    def time_factor(self, t: torch.Tensor) -> torch.Tensor:
        """Reward multiplier of a goal entered by the action taken at step ``t``."""
        return 1.0 - self.time_penalty * (t + 1).double() / self.horizon

    def _transition(self, states, actions, u):
        """``(next state, reward float64, done)`` of every env, from the uniforms ``u (2, N)``."""
        table = self._step_table()
        prev = table["prev"][states] if table is not None else self.decode(states)["prev"]
        if self.num_prev > 1:
            stick = (prev != NONE) & (u[0] < self.sticky)
            executed = torch.where(stick, prev, actions)
        else:
            executed = actions
        if self.slip > 0:
            direction = torch.where(u[1] < self.slip / 2, (executed + 1) % 4,
                                    torch.where(u[1] < self.slip, (executed + 3) % 4, executed))
        else:
            direction = executed
        if table is None:
            return self._apply(states, executed, direction)
        at = (states * 4 + executed) * 4 + direction
        return table["next"][at], table["reward"][at], table["done"][at]

    def _apply(self, states, executed, direction):
        """``(next state, reward float64, done)`` of executing ``executed`` with the body
        moving in ``direction`` from ``states`` (all ``(N,)``): the step without its draws."""
        d = self.decode(states)
        cell, key, prev, value = self.move(d["prompt"], d["cell"], d["key"], d["prev"],
                                            executed, direction)
        core = (cell * self.num_key_states + key) * self.num_prev + prev
        t = d["t"]
        nxt = d["prompt"] * self.states_per_prompt + (t + 1) * self.core_states + core
        reward = value * self.time_factor(t)
        done = self._terminal[d["prompt"] * self.num_cells + cell] | (t + 1 >= self.horizon)
        over = t >= self.horizon  # past the last action: nothing moves
        if bool(over.any()):
            nxt = torch.where(over, states, nxt)
            reward = torch.where(over, torch.zeros_like(reward), reward)
        return nxt, reward, done

    def _step_table(self) -> dict[str, torch.Tensor] | None:
        """Every state's step, computed once by :meth:`_apply` for each (executed action,
        direction) pair: ``next``, ``reward``, ``done`` flat ``(num_states * 16,)`` at
        ``(state * 4 + executed) * 4 + direction``, and per state its previous action and
        whether it is terminal. A batched step is then a few lookups instead of the decode
        and moves (bitwise the same values). None for maps over :data:`STEP_TABLE_LIMIT`
        entries, which step by :meth:`_apply` directly."""
        table = self.__dict__.get("_table", False)
        if table is not False:
            return table
        n = self.num_states
        if n * 16 > STEP_TABLE_LIMIT:
            self._table = None
            return None
        states = torch.arange(n)
        pairs = torch.arange(16)
        nxt, reward, done = self._apply(states.repeat_interleave(16), (pairs // 4).repeat(n),
                                        (pairs % 4).repeat(n))
        self._table = {"next": nxt, "reward": reward, "done": done,
                       "prev": self.decode(states)["prev"], "terminal": self._is_terminal(states)}
        return self._table

    def _draws(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(2, n, generator=generator, dtype=torch.float64)

    def reset(
        self, batch: int, generator: torch.Generator | None = None, prompts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``batch`` initial states ``(B,)`` long. Prompts are drawn uniformly with
        ``generator`` unless given (always prompt 0 for a single map)."""
        if prompts is None:
            prompts = (torch.zeros(batch, dtype=torch.long) if self.num_prompts == 1 else
                       torch.randint(self.num_prompts, (batch,), generator=generator))
        return self.initial_states(prompts)

    def step(
        self, states: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """gymnax-style batched step: ``(B,), (B,) -> (next (B,), reward (B,) float,
        done (B,) bool)``. Draws ``2 * B`` uniforms from ``generator``. Stepping a state
        that is already done returns it unchanged with reward 0 (but ``t`` advances until
        ``horizon``).

        >>> env = Gridworld.from_name("open5")
        >>> s = env.reset(4096)
        >>> s, r, done = env.step(s, torch.randint(4, (4096,)))
        """
        actions = torch.as_tensor(actions, dtype=torch.long)
        if actions.shape != states.shape:
            raise ValueError(f"actions {tuple(actions.shape)} and states {tuple(states.shape)} "
                             "must have the same shape (B,)")
        check_index(actions, 4, "actions", "0 up, 1 right, 2 down, 3 left")
        nxt, reward, done = self._transition(states, actions, self._draws(states.numel(), generator))
        return nxt, reward.to(torch.get_default_dtype()), done

    def next_states(
        self, states: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sandbox protocol: the next state only (draws from ``generator`` like :meth:`step`)."""
        return self.step(states, actions, generator)[0]

    # --- episodes -----------------------------------------------------------------
    def reward_rollout(self, rollout: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return of each episode of a tabular/MLP policy's rollout, ``(N,)`` float.

        ``rollout.states (N, T)`` are the states *before* each action. If one of them is
        terminal, the goal (or lava) entered and the step it was entered at are read from
        the first terminal one. Otherwise the episode's outcome hinges on the last action,
        whose transition is simulated here with ``generator`` (2 draws per episode)."""
        S, A = rollout.states, rollout.actions
        if S is None:
            raise ValueError("Gridworld.reward_rollout needs rollout.states (sample with a "
                             "TabularPolicy or MLPPolicy)")
        d = self.decode(S)
        flat = d["prompt"] * self.num_cells + d["cell"]  # (N, T)
        term = self._terminal[flat]
        first = term.double().argmax(1)  # first terminal index (0 if none)
        ended = term.any(1)
        rows = torch.arange(S.shape[0])
        value = self.goal_values[flat[rows, first]]
        earlier = value * (1.0 - self.time_penalty * first.double() / self.horizon)
        _, last, _ = self._transition(S[:, -1], A[:, -1], self._draws(S.shape[0], generator))
        return torch.where(ended, earlier, last).to(torch.get_default_dtype())

    def reward(
        self, prompts: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return of playing ``actions (N, T)`` open loop from each prompt's start, simulated
        with ``generator`` ``(N,)``. With slip or sticky actions this is a *fresh* episode,
        not the one a rollout saw: the trainer uses :meth:`reward_rollout`."""
        actions = torch.as_tensor(actions, dtype=torch.long)
        if actions.ndim != 2 or actions.shape[1] != self.horizon:
            raise ValueError(f"actions must have shape (N, horizon) = (N, {self.horizon}), "
                             f"got {tuple(actions.shape)}")
        s = self.initial_states(prompts)
        total = torch.zeros(s.shape[0])
        for t in range(self.horizon):
            s, r, _ = self.step(s, actions[:, t], generator)
            total += r
        return total

    # --- features -------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """One-hots of prompt (if several), row, column, time step, key bit, previous action."""
        return ((self.num_prompts if self.num_prompts > 1 else 0) + self.height + self.width
                + self.horizon + 1 + (1 if self.num_key_states > 1 else 0)
                + (self.num_prev if self.num_prev > 1 else 0))

    def state_features(self, states: torch.Tensor) -> torch.Tensor:
        """Factored features ``(N, feature_dim)`` for MLP policies and fitted Q: one-hot
        prompt (several maps only), row, column and t, the key bit, one-hot previous action
        (sticky only). A network can share what it learns across time steps; a table cannot."""
        F = torch.nn.functional
        d = self.decode(states)
        parts = []
        if self.num_prompts > 1:
            parts.append(F.one_hot(d["prompt"], self.num_prompts))
        parts += [F.one_hot(d["row"], self.height), F.one_hot(d["col"], self.width),
                  F.one_hot(d["t"].clamp(max=self.horizon), self.horizon + 1)]
        if self.num_key_states > 1:
            parts.append(d["key"][..., None])
        if self.num_prev > 1:
            parts.append(F.one_hot(d["prev"], self.num_prev))
        return torch.cat(parts, dim=-1).float()


def effective_horizon_table(names: Sequence[str] | None = None, gorp: bool = False,
                            **env_kwargs: Any) -> pd.DataFrame:
    """Exact analysis of named maps, one row each: ``map, T, H, k`` (attaining ``H``, card
    9's formula), ``min_k`` (smallest k-QVI-solvable k), ``v_star``, ``v_rand``, ``states``;
    with ``gorp=True`` also ``H_gorp, k_gorp`` (the definition: rollouts GORP needs, ties
    broken at random). ``env_kwargs`` go to :meth:`Gridworld.from_name` (slip, sticky, ...).

    >>> effective_horizon_table(["lock4", "open3"])[["map", "T", "H", "min_k"]]
         map  T    H  min_k
    0  lock4  4  4.0      1
    1  open3  6  4.0      1
    """
    from rlnb.envs.layouts import LAYOUTS

    rows = []
    for name in names if names is not None else LAYOUTS:
        env = Gridworld.from_name(name, **env_kwargs)
        eh = env.effective_horizon()
        row = {"map": name, "T": env.horizon, "H": eh.value, "k": eh.k, "min_k": eh.min_k,
               "v_star": float(env.optimal_value()[0]),
               "v_rand": float(env.random_value()[0]), "states": env.num_states}
        if gorp:
            eg = env.effective_horizon(method="gorp")
            row.update(H_gorp=eg.value, k_gorp=eg.k)
        rows.append(row)
    return pd.DataFrame(rows)

