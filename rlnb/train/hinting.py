"""The training rollout of a :class:`~rlnb.envs.HintedTask`: the first ``h`` steps of a
reference solution given, the rest sampled, only the sampled steps trained.

The Trainer samples through :func:`hinted_rollout` whenever its sandbox is a
``HintedTask`` (SEELE, card 21; the schedules are :mod:`rlnb.envs.hints`'):

* a **discrete sandbox** (the tree MDP): row ``i`` of problem ``p`` is forced along
  ``p``'s reference path for its first ``h_p`` actions and sampled from there on, built on
  :func:`rlnb.train.branching.stepwise_rollout` with the reference path as the prefix;
  the forced positions are taken out of ``mask``, so they get no gradient, no entropy and
  no length in the logs (``completions/mean_length`` counts the policy's own actions);
* a **text task**: the policy's own sampler reads each prompt with its hint appended
  (the hint is prompt, never trained); the task scores ``hint + completion``.

Either way the rollout carries ``extra["hint_length"]`` ``(N,)`` long, which
:meth:`HintedTask.reward_rollout` reads to score the row and to move an adaptive schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlnb.envs.hints import HintedTask
from rlnb.policies.base import Policy, Rollout
from rlnb.train.branching import stepwise_rollout

__all__ = ["hinted_rollout", "is_hinted"]


def is_hinted(env: Any) -> bool:
    """Whether the Trainer should sample ``env`` through :func:`hinted_rollout`."""
    return isinstance(env, HintedTask)


class _PromptsWithHints:
    """A text task seen with hints: ``prompt(i)`` is the prompt and ``h[i]`` characters of
    its reference solution. Everything else is the task's."""

    def __init__(self, env: HintedTask, lengths: dict[int, int]) -> None:
        self._env, self._lengths = env, lengths

    def prompt(self, i: int) -> str:
        return self._env.hinted_prompt(i, self._lengths[int(i)])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _forced_prefix(env: HintedTask, rows: torch.Tensor, policy: Policy) -> Rollout:
    """The reference path of each row's problem as a rollout (states, actions; log-probs
    0, never read at forced positions), the prefix :func:`stepwise_rollout` keeps."""
    actions = env.solutions[rows]  # (N, T)
    N, T = actions.shape
    s = env.initial_states(rows)
    states = [s]
    for t in range(T - 1):
        s = env.next_states(s, actions[:, t])
        states.append(s)
    states_t = torch.stack(states, dim=1)  # (N, T)
    extra = {}
    if getattr(policy, "feature_dim", None) is not None:  # an MLP policy reads features
        extra["features"] = env.state_features(states_t.reshape(-1)).reshape(N, T, -1)
    return Rollout(prompts=rows, actions=actions, mask=torch.ones(N, T, dtype=torch.bool),
                   logp=torch.zeros(N, T), group_size=1, states=states_t, extra=extra)


def hinted_rollout(
    sample: Callable[..., Rollout],
    policy: Policy,
    env: HintedTask,
    prompts: torch.Tensor,
    n: int,
    *,
    step: int,
    max_steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    temperature_schedule: Any = None,
    cure_branches: int = 0,
) -> Rollout:
    """``n`` hinted completions of each problem ``prompts (P,)`` at training step ``step``
    (0-based) of ``max_steps``, rows grouped as ``policy.rollout`` groups them.

    ``sample``: the policy's sampler for text tasks (the Trainer passes
    ``policy.training_rollout``); a discrete sandbox is sampled position by position.
    ``temperature_schedule`` and ``cure_branches`` are the Trainer's other rollout
    sources, which do not combine with hints (an error says so).

    >>> from rlnb.envs import HintedTask, TreeMDP
    >>> from rlnb.policies import TabularPolicy
    >>> tree = TreeMDP.random(num_prompts=2, depth=3, generator=torch.Generator().manual_seed(0))
    >>> env = HintedTask(tree, "fixed", h0=2)
    >>> pi = TabularPolicy.for_env(env)
    >>> r = hinted_rollout(pi.rollout, pi, env, torch.arange(2), 3, step=0, max_steps=1,
    ...                    generator=torch.Generator().manual_seed(0))
    >>> r.mask[0].tolist(), r.extra["hint_length"].tolist()
    ([False, False, True], [2, 2, 2, 2, 2, 2])
    """
    if not isinstance(env, HintedTask):
        raise TypeError(f"hinted_rollout samples a HintedTask, got {type(env).__name__}")
    if temperature_schedule is not None or cure_branches:
        raise ValueError(
            "hints do not combine with temperature_schedule or cure_branches (each is its own "
            "rollout source); leave those options off, or train the plain task")
    if env.stateful and env.steps_observed != step:
        raise ValueError(
            f"the adaptive hint schedule has seen {env.steps_observed} training step(s) but this "
            f"is step {step}: its per-problem hint lengths are not saved in checkpoints, so a "
            "resumed run (or a task reused by another run) would hint from the wrong lengths. "
            "Restore them with env.load_hint_state(...) before resuming, start a new run on a "
            "fresh HintedTask (or env.reset()), or use a fixed or linear schedule, which resume")
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    h = env.hint_lengths(prompts, step, max_steps)  # (P,)
    h_rows = h.repeat_interleave(n)  # (N,)
    if env.text:
        view = _PromptsWithHints(env, dict(zip(prompts.tolist(), h.tolist())))
        rollout = sample(view, prompts, n, temperature=temperature, generator=generator)
    else:
        rows = prompts.repeat_interleave(n)
        rollout = stepwise_rollout(policy, env, prompts, n, temperatures=temperature,
                                   generator=generator, prefix=_forced_prefix(env, rows, policy),
                                   depth=h_rows)
        forced = torch.arange(env.horizon)[None, :] < h_rows[:, None]  # (N, T)
        rollout.mask = rollout.mask & ~forced
        rollout.logp = torch.where(forced, torch.zeros_like(rollout.logp), rollout.logp)
    rollout.extra["hint_length"] = h_rows
    return rollout
