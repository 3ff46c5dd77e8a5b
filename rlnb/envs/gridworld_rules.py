"""The rules of a gridworld step in plain Python: action names, their moves, and
:func:`reference_step`, the obvious one-environment version of :meth:`Gridworld.step
<rlnb.envs.gridworld.Gridworld.step>`, kept as the test oracle and the benchmark baseline."""

from __future__ import annotations

from typing import Any

from rlnb.envs.layouts import TERMINAL_CHARS

#: Action names, in index order.
ACTIONS: tuple[str, ...] = ("up", "right", "down", "left")
#: One arrow per action, for plots.
ARROWS: tuple[str, ...] = ("↑", "→", "↓", "←")
#: Row and column change of each action's move.
ROW_STEP = (-1, 0, 1, 0)
COL_STEP = (0, 1, 0, -1)
NONE = 4  # "no previous action" (t = 0)


def reference_step(
    env: Any, state: int, action: int, u_sticky: float, u_slip: float
) -> tuple[int, float, bool]:
    """One step of one environment of ``env`` (a :class:`~rlnb.envs.gridworld.Gridworld`)
    in plain Python, read straight from the ASCII layout.

    Given the same two uniforms, it must agree exactly with :meth:`Gridworld.step` (which
    draws ``u = torch.rand(2, B)`` and uses ``u[0, i], u[1, i]`` for env ``i``).
    """
    spp, C, T = env.states_per_prompt, env.core_states, env.horizon
    prompt, local = divmod(state, spp)
    t, core = divmod(local, C)
    rest, prev = divmod(core, env.num_prev)
    cell, key = divmod(rest, env.num_key_states)
    rows = env.layouts[prompt]
    r, c = divmod(cell, env.width)
    if t >= T:
        return state, 0.0, True
    if rows[r][c] in TERMINAL_CHARS:  # absorbing
        nxt = state + C
        return nxt, 0.0, True
    executed = action
    if env.num_prev > 1 and prev != NONE and u_sticky < env.sticky:
        executed = prev
    direction = executed
    if u_slip < env.slip / 2:
        direction = (executed + 1) % 4
    elif u_slip < env.slip:
        direction = (executed + 3) % 4
    nr, nc = r + ROW_STEP[direction], c + COL_STEP[direction]
    if 0 <= nr < env.height and 0 <= nc < env.width and rows[nr][nc] != "#" and not (
        rows[nr][nc] == "D" and not key
    ):
        r, c = nr, nc
    if rows[r][c] == "K":
        key = 1
    if env.num_prev > 1:
        prev = executed
    ch = rows[r][c]
    value = 1.0 if ch == "G" else env.decoy_reward if ch == "g" else 0.0
    reward = value * (1.0 - env.time_penalty * (t + 1) / T)
    core = ((r * env.width + c) * env.num_key_states + key) * env.num_prev + prev
    nxt = prompt * spp + (t + 1) * C + core
    return nxt, reward, ch in TERMINAL_CHARS or t + 1 >= T
