"""Env-steps per second: rlnb's batched torch Gridworld against MiniGrid on the same map.

    python benchmarks/gridworld_steps.py [--map four_rooms] [--envs 4096] [--seconds 2] [--threads 1]

Three rows, each stepping uniformly random actions and resetting finished episodes:

- ``rlnb Gridworld.step``: ``--envs`` environments as one (B,) state tensor (CPU torch, one
  thread by default like the other two rows: ops on 4096 integers run slower, not faster,
  when torch splits them across threads);
- ``minigrid``: the same layout built as a ``MiniGridEnv`` (walls, lava and goal in the same
  cells, an outer wall ring), one env stepped through Gymnasium's API, its default
  partial-view observation included, as a MiniGrid user would. MiniGrid's actions are turn
  left / turn right / forward, so its dynamics are the same map, not the same MDP. Skipped
  (with a note) if ``minigrid`` is not installed;
- ``python loop``: :func:`rlnb.envs.gridworld.reference_step`, the plain-Python oracle of the
  same dynamics, one env at a time.

The last line is ``speedup: <x>``: rlnb over MiniGrid, or over the Python loop when
MiniGrid is missing.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from rlnb.envs.gridworld import Gridworld, reference_step


def bench_rlnb(env: Gridworld, envs: int, seconds: float) -> float:
    g = torch.Generator().manual_seed(0)
    start = env.reset(envs)
    s = start.clone()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            a = torch.randint(4, (envs,), generator=g)
            s, _, done = env.step(s, a, g)
            s = torch.where(done, start, s)
        steps += 50 * envs
    return steps / (time.perf_counter() - t0)


def bench_python(env: Gridworld, seconds: float) -> float:
    rng = random.Random(0)
    start = int(env.reset(1)[0])
    s, steps, t0 = start, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            s, _, done = reference_step(env, s, rng.randrange(4), rng.random(), rng.random())
            if done:
                s = start
        steps += 1000
    return steps / (time.perf_counter() - t0)


def minigrid_env(rows: list[str], max_steps: int):
    """The layout as a MiniGrid env (None if minigrid is not installed)."""
    try:
        from minigrid.core.grid import Grid
        from minigrid.core.mission import MissionSpace
        from minigrid.core.world_object import Goal, Lava, Wall
        from minigrid.minigrid_env import MiniGridEnv
    except ImportError:
        return None

    class AsciiEnv(MiniGridEnv):
        def __init__(self) -> None:
            super().__init__(mission_space=MissionSpace(mission_func=lambda: "reach the goal"),
                             width=len(rows[0]) + 2, height=len(rows) + 2, max_steps=max_steps)

        def _gen_grid(self, width: int, height: int) -> None:
            self.grid = Grid(width, height)
            self.grid.wall_rect(0, 0, width, height)
            for r, row in enumerate(rows):
                for c, ch in enumerate(row):
                    obj = {"#": Wall, "L": Lava, "G": Goal}.get(ch)
                    if obj is not None:
                        self.grid.set(c + 1, r + 1, obj())
                    if ch == "S":
                        self.agent_pos, self.agent_dir = (c + 1, r + 1), 0
            self.mission = "reach the goal"

    return AsciiEnv()


def bench_minigrid(env, seconds: float) -> float:
    rng = random.Random(0)
    env.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            _, _, term, trunc, _ = env.step(rng.randrange(3))  # left, right, forward
            if term or trunc:
                env.reset()
        steps += 1000
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default="four_rooms", help="a named layout (rlnb.envs.layouts)")
    parser.add_argument("--envs", type=int, default=4096, help="parallel envs for rlnb")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for rlnb")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    env = Gridworld.from_name(args.map, sticky=0.25)
    rows: list[tuple[str, int, float]] = [
        (f"rlnb Gridworld.step (torch, threads={torch.get_num_threads()})", args.envs,
         bench_rlnb(env, args.envs, args.seconds)),
    ]
    mg = minigrid_env(env.layouts[0], env.horizon)
    if mg is not None:
        import minigrid

        rows.append((f"minigrid {minigrid.__version__} (gymnasium API)", 1,
                     bench_minigrid(mg, args.seconds)))
    rows.append(("python loop (reference_step, same dynamics)", 1, bench_python(env, args.seconds)))

    print(f"map {args.map!r} ({env.height}x{env.width}, horizon {env.horizon}, sticky 0.25)")
    print(f"{'implementation':<52} {'envs':>6} {'env-steps/s':>14}")
    for name, n, rate in rows:
        print(f"{name:<52} {n:>6} {rate:>14,.0f}")
    if mg is None:
        print("minigrid is not installed: comparing with the python loop")
    speedup = rows[0][2] / rows[1][2]
    print(f"speedup: {speedup:.0f}")
    return speedup


if __name__ == "__main__":
    main()
