"""Hint scaffolding: give the policy the first ``h`` steps of a reference solution.

SEELE (*Staying in the Sweet Spot*, card 21): RLVR learns little from a problem whose
rollouts all fail (or all succeed): every advantage in the group is 0. Appending the start
of a reference solution makes a hard problem easier; adapting its length ``h`` per problem
keeps each problem's rollout accuracy near the efficient middle. :class:`HintedTask` wraps
a sandbox with a hint schedule (:data:`HINT_SCHEDULES`):

============  ================================================================
schedule      hint length ``h`` at step ``s`` of a run of ``S`` steps
============  ================================================================
``fixed``     ``h0`` for every problem, every step
``linear``    ``h0 * (S - s) / S`` rounded half up: ``h0`` first, 0 for the last steps
``adaptive``  per problem; starts at ``h0`` and after every step in which the problem
              was sampled moves by 1 toward the ``target`` rollout accuracy (default
              0.5): down when the problem's mean reward was above it, up when below
============  ================================================================

Each problem's ``h`` is capped at its solution's length minus one, so at least one step
is always the policy's own.

What a hint is, per sandbox:

* **Tree MDP** (and any discrete sandbox given ``solutions``): the first ``h`` actions are
  forced along the problem's reference path (by default the path to its lowest-numbered
  rewarded leaf); the policy samples the rest; the reward scores the whole path. The
  forced positions are masked out of the loss. The rollout source that forces them is
  :func:`rlnb.train.hinting.hinted_rollout` (the Trainer uses it for a ``HintedTask``).
* **Text tasks**: the prompt gets the first ``h`` characters of the reference answer
  (``task.answer(i)``, or the ``solutions`` given) appended; the model generates the rest;
  ``score(prompt, hint + completion)`` is the reward. The hint is part of the prompt, which
  is never trained. A task whose reference answer does not score 1.0 (a tagged
  reasoning-gym task, a partial-credit verifier) is refused: pass ``solutions`` that do.

Outside the training rollout the wrapper is the plain task: ``prompt(i)`` has no hint and
a rollout without ``extra["hint_length"]`` is scored as hint-free, so evaluating a policy
on a ``HintedTask`` measures it without hints.

Footguns:

* ``h`` counts characters for text: a token of rlnb's character-level models, but with a
  subword tokenizer the hint's last characters may merge with the model's next token.
* The adaptive state (one ``h`` per problem) moves when :meth:`HintedTask.reward_rollout`
  scores a hinted training rollout, once per rollout. It is **not** in the run
  directory's checkpoints: resuming a run with an adaptive schedule would restart every
  problem at ``h0``, so :func:`rlnb.train.hinting.hinted_rollout` refuses a step whose
  number differs from the number of steps the state has seen (restore it first with
  :meth:`HintedTask.load_hint_state`). Fixed and linear schedules hold no state and resume.

>>> import torch
>>> from rlnb.envs import TreeMDP
>>> tree = TreeMDP.random(num_prompts=2, depth=3, reward_fraction=0.05,
...                       generator=torch.Generator().manual_seed(0))
>>> hinted = HintedTask(tree, "adaptive", h0=2)
>>> hinted.hint_lengths(torch.tensor([0, 1])).tolist()
[2, 2]
>>> hinted.solution(0).tolist(), bool(tree.reward(torch.tensor([0]), hinted.solution(0)[None]))
([1, 2, 2], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from rlnb.checks import check_int, check_number
from rlnb.envs.base import Sandbox, SandboxWrapper
from rlnb.envs.text import TextTask

__all__ = ["HINT_SCHEDULES", "HintedTask"]

#: The hint schedules by name, each with what it does.
HINT_SCHEDULES: dict[str, str] = {
    "fixed": "h0 for every problem, every step",
    "linear": "h0 decaying linearly to 0 over the run (h0 * (S - s) / S rounded half up at step s of S)",
    "adaptive": "per problem: starts at h0, moves by 1 toward the target rollout accuracy",
}


class HintedTask(SandboxWrapper):
    """``env`` with a hint schedule: the policy gets the first ``h`` steps of a reference
    solution (module docstring).

    Args:
        env: a :class:`~rlnb.envs.TreeMDP`, another discrete sandbox with ``solutions``,
            or a :class:`~rlnb.envs.TextTask`.
        schedule: ``"fixed"``, ``"linear"`` or ``"adaptive"`` (:data:`HINT_SCHEDULES`).
        h0: the hint length (fixed), at the start (linear), or every problem's start
            (adaptive); an int >= 0, capped per problem at its solution's length - 1.
        target: the adaptive schedule's target rollout accuracy, in (0, 1) (SEELE: the
            middle, 0.5). Ignored by the other schedules.
        solutions: the reference solutions, one per problem: ``(num_prompts, horizon)``
            actions of a discrete sandbox (each must earn reward, checked), or strings for
            a text task (each must score 1.0, checked). Default: a tree's path to its
            lowest-numbered rewarded leaf; a text task's reference answers. Other discrete
            sandboxes have no default.
    """

    def __init__(self, env: Sandbox, schedule: str = "adaptive", h0: int = 5, *,
                 target: float = 0.5, solutions: Any = None) -> None:
        if isinstance(env, HintedTask):
            raise TypeError("env is already a HintedTask; wrap the plain task once")
        if not isinstance(env, Sandbox):
            raise TypeError(f"env must be an rlnb sandbox (TreeMDP, a TextTask, ...), got "
                            f"{type(env).__name__}")
        if schedule not in HINT_SCHEDULES:
            raise ValueError(f"unknown hint schedule {schedule!r}; valid: "
                             f"{', '.join(HINT_SCHEDULES)} ({HINT_SCHEDULES})")
        self.schedule = schedule
        self.h0 = check_int(h0, "h0", 0, meaning="hint length in steps of the solution")
        self.target = check_number(target, "target", 0, 1, low_open=True, high_open=True,
                                   meaning="target rollout accuracy of the adaptive schedule")
        super().__init__(env)
        self.text = isinstance(env, TextTask)
        if self.text:
            self._solutions = self._text_solutions(env, solutions)
            lengths = [len(s) for s in self._solutions]
        else:
            self._solutions = self._action_solutions(env, solutions)
            lengths = [env.horizon] * env.num_prompts
        #: Longest hint of each problem, ``(num_prompts,)`` long: its solution's length - 1.
        self.max_hint = (torch.tensor(lengths, dtype=torch.long) - 1).clamp(min=0)
        self.reset()

    # --- reference solutions -------------------------------------------------------------
    @staticmethod
    def _text_solutions(task: TextTask, solutions: Any) -> list[str]:
        if solutions is None:
            refs, where = [task.answer(i) for i in range(task.num_prompts)], "reference answer"
        else:
            if isinstance(solutions, (str, bytes)) or not isinstance(solutions, Sequence) \
                    or len(solutions) != task.num_prompts \
                    or not all(isinstance(s, str) for s in solutions):
                raise ValueError(f"solutions for a text task must be {task.num_prompts} strings "
                                 f"(one completion per prompt), got {type(solutions).__name__}")
            refs, where = list(solutions), "solution given"
        for i, ref in enumerate(refs):
            value = task.score(task.prompt(i), ref)
            if value != 1.0:
                raise ValueError(
                    f"{task.task_name}'s {where} for prompt {i} ({task.prompt(i)!r} -> {ref!r}) "
                    f"scores {value!r}, not 1.0, so it cannot serve as a hint: a hint must be the "
                    "start of a correct completion. Pass solutions=[...] with completions that "
                    "score 1.0 (for a tagged reasoning-gym task: task.sft_completion(i))")
        return refs

    @staticmethod
    def _action_solutions(env: Sandbox, solutions: Any) -> torch.Tensor:
        T = getattr(env, "horizon", 0)
        if not isinstance(T, int) or T < 2:
            raise ValueError(
                f"{type(env).__name__} has horizon {T!r}: a hint forces the first steps of a "
                "solution and leaves at least one to the policy, so it needs episodes of 2 or "
                "more steps (a TreeMDP, a Gridworld) or a text task")
        P = env.num_prompts
        if solutions is None:
            rewards = getattr(env, "leaf_rewards", None)
            if rewards is None or not callable(getattr(env, "leaf_actions", None)):
                raise ValueError(
                    f"{type(env).__name__} has no reference solutions to hint from; pass "
                    f"solutions=<({P}, {T}) long tensor of rewarded action sequences> (only a "
                    "TreeMDP has a default: the path to each prompt's first rewarded leaf)")
            empty = (rewards.sum(1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"prompts {empty[:8]} of the tree have no rewarded leaf, so no "
                                 "path to hint along; drop them or pass solutions=...")
            solutions = env.leaf_actions(rewards.argmax(1))  # the first rewarded leaf
        solutions = torch.as_tensor(solutions)
        if solutions.shape != (P, T) or solutions.dtype.is_floating_point \
                or solutions.dtype == torch.bool:
            raise ValueError(f"solutions must be a ({P}, {T}) integer tensor (one action "
                             f"sequence per prompt), got {solutions.dtype} of shape "
                             f"{tuple(solutions.shape)}")
        solutions = solutions.long()
        if bool((solutions < 0).any()) or bool((solutions >= env.num_actions).any()):
            raise ValueError(f"solutions hold actions outside 0..{env.num_actions - 1}")
        earned = env.expected_reward(torch.arange(P), solutions)
        bad = (earned <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"the solutions of prompts {bad[:8]} earn no reward; a hint must "
                             "follow a rewarded solution")
        return solutions

    def solution(self, i: int) -> Any:
        """The reference solution of problem ``i``: ``(horizon,)`` actions or a string."""
        i = int(i)
        if not 0 <= i < self.num_prompts:
            raise IndexError(f"problem {i} is out of range (0..{self.num_prompts - 1})")
        return self._solutions[i]

    @property
    def solutions(self) -> Any:
        """All reference solutions: ``(num_prompts, horizon)`` long, or a list of strings."""
        return self._solutions.clone() if not self.text else list(self._solutions)

    # --- the schedule --------------------------------------------------------------------
    def reset(self) -> None:
        """Every problem back to ``h0`` (adaptive) and no step seen."""
        #: The adaptive schedule's current hint length of each problem, ``(num_prompts,)``.
        self.adaptive_lengths = torch.minimum(torch.full((self.num_prompts,), self.h0),
                                              self.max_hint)
        #: Hinted rollouts scored so far (the training steps the adaptive state has seen).
        self.steps_observed = 0

    @property
    def stateful(self) -> bool:
        """Whether the schedule holds state that moves with training (adaptive)."""
        return self.schedule == "adaptive"

    def hint_lengths(self, prompts: torch.Tensor, step: int = 0,
                     max_steps: int | None = None) -> torch.Tensor:
        """The hint length of each problem ``prompts (n,)`` at ``step`` (0-based) of a run
        of ``max_steps`` steps, ``(n,)`` long. ``max_steps`` is needed by ``linear`` only."""
        prompts = torch.as_tensor(prompts, dtype=torch.long)
        cap = self.max_hint[prompts]
        if self.schedule == "adaptive":
            return self.adaptive_lengths[prompts].clone()
        h = self.h0
        if self.schedule == "linear":
            if max_steps is None or int(max_steps) < 1:
                raise ValueError(f"the linear hint schedule decays over the run and needs its "
                                 f"max_steps (>= 1), got {max_steps!r}")
            step = check_int(step, "step", 0)
            h = int(self.h0 * max(int(max_steps) - step, 0) / int(max_steps) + 0.5)
        return torch.minimum(torch.full_like(cap, h), cap)

    def observe(self, prompts: torch.Tensor, rewards: torch.Tensor) -> None:
        """One training step's outcome, ``prompts (N,)`` and ``rewards (N,)`` of a hinted
        rollout: the adaptive schedule moves each sampled problem's ``h`` by 1 toward the
        target accuracy (its mean reward over its rows in the step). Other schedules only
        count the step."""
        prompts = torch.as_tensor(prompts, dtype=torch.long).reshape(-1)
        rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1).cpu()
        if prompts.shape != rewards.shape:
            raise ValueError(f"prompts {tuple(prompts.shape)} and rewards "
                             f"{tuple(rewards.shape)} must both be (N,)")
        self.steps_observed += 1
        if not self.stateful:
            return
        P = self.num_prompts
        total = torch.zeros(P, dtype=torch.float64).index_add_(0, prompts.cpu(), rewards)
        count = torch.zeros(P, dtype=torch.float64).index_add_(0, prompts.cpu(),
                                                               torch.ones_like(rewards))
        seen = count > 0
        accuracy = total / count.clamp(min=1)
        move = torch.where(accuracy > self.target, -1, torch.where(accuracy < self.target, 1, 0))
        moved = (self.adaptive_lengths + torch.where(seen, move, 0)).clamp(min=0)
        self.adaptive_lengths = torch.minimum(moved, self.max_hint)

    def hint_state(self) -> dict[str, Any]:
        """The schedule's state, for :meth:`load_hint_state` (a run's own bookkeeping)."""
        return {"adaptive_lengths": self.adaptive_lengths.clone(),
                "steps_observed": self.steps_observed}

    def load_hint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`hint_state` returned (e.g. before resuming a run)."""
        h = torch.as_tensor(state["adaptive_lengths"], dtype=torch.long)
        if h.shape != (self.num_prompts,) or bool((h < 0).any()) or bool((h > self.max_hint).any()):
            raise ValueError(f"adaptive_lengths must be ({self.num_prompts},) within 0..max_hint")
        self.adaptive_lengths = h.clone()
        self.steps_observed = check_int(state["steps_observed"], "steps_observed", 0)

    # --- text --------------------------------------------------------------------------
    def _need_text(self, what: str) -> None:
        if not self.text:
            raise TypeError(f"{what} is for text tasks; {type(self.env).__name__} hints with "
                            "forced actions (rlnb.train.hinting.hinted_rollout)")

    def prompt(self, i: int) -> str:
        """The plain prompt ``i``, without a hint (evaluation sees the task as it is)."""
        self._need_text("prompt")
        return self.env.prompt(i)

    def hint_text(self, i: int, h: int) -> str:
        """The first ``h`` characters of problem ``i``'s reference solution."""
        self._need_text("hint_text")
        return self._solutions[int(i)][: int(h)]

    def hinted_prompt(self, i: int, h: int) -> str:
        """Prompt ``i`` with its hint of length ``h`` appended: what the model reads."""
        return self.prompt(i) + self.hint_text(i, h)

    @property
    def alphabet(self) -> str:
        self._need_text("alphabet")
        return self.env.alphabet

    def __getattr__(self, name: str) -> Any:
        # the wrapped task's read-only helpers (answers, task_name, score, ...)
        if name.startswith("_") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    # --- reward ------------------------------------------------------------------------
    def reward_rollout(self, rollout: Any, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """The wrapped task's reward of each row: of the whole action sequence (forced
        prefix included) for a discrete sandbox, of ``hint + completion`` for a text task.
        A rollout from :func:`rlnb.train.hinting.hinted_rollout` (it carries
        ``extra["hint_length"]``) then moves the schedule (:meth:`observe`), once."""
        h = rollout.extra.get("hint_length") if isinstance(rollout.extra, dict) else None
        if self.text and h is not None:
            hinted = [self.hint_text(i, k) + c for i, k, c in zip(
                rollout.prompts.tolist(), h.tolist(), rollout.extra["completions"])]
            scored = dataclasses.replace(rollout, extra={**rollout.extra, "completions": hinted})
            rewards = self.env.reward_rollout(scored, generator)
        else:
            rewards = self.env.reward_rollout(rollout, generator)
        if h is not None and not rollout.extra.get("hint_observed", False):
            self.observe(rollout.prompts, rewards)
            rollout.extra["hint_observed"] = True
        return rewards

    def reward(self, prompts: torch.Tensor, actions: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return self.env.reward(prompts, actions, generator)

    def expected_reward(self, prompts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.env.expected_reward(prompts, actions)

    # --- serialization -----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schedule": self.schedule, "h0": self.h0, "target": self.target}
        if self.text:
            out["solutions"] = list(self._solutions)
        return out

    def get_tensors(self) -> dict[str, torch.Tensor]:
        out = super().get_tensors()
        if not self.text:
            out["solutions"] = self._solutions
        return out

    @classmethod
    def from_spec(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> HintedTask:
        from rlnb.serialization import build_component

        config = dict(spec.get("config", {}))
        inner = config.pop("env", None)
        if not isinstance(inner, dict):
            raise ValueError("a HintedTask spec needs the wrapped task's spec under "
                             "config['env']; this spec was not written by rlnb")
        env = build_component(inner, {k[4:]: v for k, v in tensors.items()
                                      if k.startswith("env.")})
        if "solutions" in tensors:
            config["solutions"] = tensors["solutions"]
        return cls(env, **config)

    def __repr__(self) -> str:
        return (f"HintedTask({self.env!r}, schedule={self.schedule!r}, h0={self.h0}"
                + (f", target={self.target:g}" if self.stateful else "") + ")")
