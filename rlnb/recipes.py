"""Ready-made experiments that several notebooks and analyses share.

Each recipe is the few lines that set up a sandbox, a base policy and a GRPO run the way
a card prescribes, and returns the pieces so that the caller does the measuring:

- :func:`grpo_on_strategy_bandit` -- card 1 on the strategy bandit (card SB): a shared
  softmax over 64 strategies, GRPO with G=4, 16 prompts per step, SGD lr 1.0;
- :func:`grpo_on_factor` -- card 1 at LM scale: a tiny transformer pre-trained on the
  factor task (:func:`rlnb.policies.pretrain_base`), then GRPO 32 prompts x 8;
- :func:`completion_states` -- sample completions of a language model and capture their
  hidden states, with the verifier's verdict per completion (the input of rank, probe and
  CKA analyses, card 7 and card 16).

>>> from rlnb.recipes import grpo_on_strategy_bandit
>>> run = grpo_on_strategy_bandit(seed=0, steps=5)
>>> run.env.num_states, run.base_probs.shape == run.rl_probs.shape
(64, True)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import pandas as pd
import torch

__all__ = [
    "BanditRun",
    "FactorRun",
    "LabelledStates",
    "Snapshots",
    "completion_states",
    "factor_grpo_config",
    "factor_split",
    "grpo_on_factor",
    "grpo_on_strategy_bandit",
]

#: Settings of the factor base model (card 1, "At LM scale"): 2 Llama layers, d=64.
FACTOR_PRETRAIN: dict[str, Any] = {"arch": "llama", "n_layer": 2, "d_model": 64, "n_head": 4,
                                   "n_kv_head": 2, "batch_size": 512, "lr": 3e-3}


class BanditRun(NamedTuple):
    """What :func:`grpo_on_strategy_bandit` returns."""

    env: Any
    """The :class:`rlnb.envs.StrategyBandit`."""
    policy: Any
    """The trained :class:`rlnb.policies.TabularPolicy`."""
    base_probs: torch.Tensor
    """``(1, S)`` the shared softmax before GRPO."""
    rl_probs: torch.Tensor
    """``(1, S)`` the shared softmax after GRPO."""
    history: pd.DataFrame
    """Trainer metrics, with ``exact/pass@1``, ``exact/pass@256``, ``exact/policy_entropy``."""


def grpo_on_strategy_bandit(seed: int = 0, steps: int = 100, *, shared: bool = True,
                            progress: bool = False) -> BanditRun:
    """Card 1 on the strategy bandit: GRPO sharpens one softmax shared by every problem.

    64 problems, 64 strategies (card SB's solve matrix from ``seed``), base logits from
    :func:`rlnb.envs.strategy_bandit.card_base_logits` (seed ``10_000 + seed``), GRPO with
    G=4, 16 prompts per step, ``vanilla_pg``, SGD at lr 1.0 for ``steps`` steps.
    ``shared=False`` gives every problem its own softmax (same initial logits): the
    ablation without the crossover.
    """
    from rlnb.envs import StrategyBandit
    from rlnb.envs.strategy_bandit import card_base_logits
    from rlnb.policies import TabularPolicy
    from rlnb.train import ExactSuccess, TrainConfig, Trainer

    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(seed))
    logits = card_base_logits(env.num_strategies,
                              generator=torch.Generator().manual_seed(10_000 + seed))
    if not shared:
        logits = logits.expand(env.num_states, -1)
    policy = TabularPolicy.for_env(env, shared=shared, logits=logits)
    base = policy.probs().detach().clone()
    config = TrainConfig(
        seed=seed, max_steps=steps, num_prompts_per_step=16, num_generations=4,
        advantage="grpo", scale_rewards="group", policy_loss="vanilla_pg",
        loss_agg_mode="token-mean", optimizer="sgd", learning_rate=1.0, progress_bar=progress,
    )
    history = Trainer(policy, env, config, callbacks=[ExactSuccess(ks=(1, 256))]).train()
    return BanditRun(env, policy, base, policy.probs().detach().clone(), history)


class FactorRun(NamedTuple):
    """What :func:`grpo_on_factor` returns."""

    base: Any
    """The pre-trained base :class:`rlnb.policies.LMPolicy` (untouched)."""
    rl: Any
    """A second copy of the base after GRPO."""
    train: Any
    """The factor problems GRPO trained on."""
    held_out: Any
    """Problems neither pre-training nor GRPO saw: measure pass@k here."""
    history: pd.DataFrame
    """Trainer metrics, one row per step."""
    snapshots: Any = None
    """A :class:`Snapshots` of ``rl`` at ``snapshot_steps`` (and step 0), or None."""


def factor_split(num_train: int = 10_000, num_held_out: int = 128,
                 task_seed: int = 0) -> tuple[Any, Any]:
    """``(train, held_out)`` factor problems (card 1: 10,000 and 128), disjoint."""
    from rlnb.envs.text_tasks import factor

    task = factor(num_train + num_held_out, seed=task_seed)
    return task.split(num_held_out, seed=task_seed)


def factor_grpo_config(seed: int = 0, steps: int = 300, learning_rate: float = 3e-4,
                       **changes: Any) -> Any:
    """Card 1's GRPO for the factor task: 32 prompts x 8 completions, T=1, group mean/std
    advantages, token-mean, Adam at ``learning_rate``. One update per rollout batch
    (on-policy), so ``vanilla_pg``: PPO's clip would be inactive. ``changes`` override any
    other :class:`rlnb.train.TrainConfig` field."""
    from rlnb.train import TrainConfig

    options = dict(
        seed=seed, max_steps=steps, num_prompts_per_step=32, num_generations=8,
        temperature=1.0, advantage="grpo", scale_rewards="group", policy_loss="vanilla_pg",
        loss_agg_mode="token-mean", optimizer="adam", learning_rate=learning_rate,
        progress_bar=False,
    )
    options.update(changes)
    return TrainConfig(**options)


def grpo_on_factor(
    seed: int = 0,
    steps: int = 300,
    *,
    learning_rate: float = 3e-4,
    max_new_tokens: int = 8,
    num_train: int = 10_000,
    num_held_out: int = 128,
    callbacks: Sequence[Any] = (),
    snapshot_steps: Sequence[int] = (),
    progress: bool = False,
    **config_changes: Any,
) -> FactorRun:
    """Card 1 at LM scale: pre-train (or load from the cache) a tiny base on factoring,
    then train a copy of it with GRPO.

    The base model is :func:`rlnb.policies.pretrain_base` with :data:`FACTOR_PRETRAIN` on
    the training problems (cached on disk, one per seed); GRPO uses
    :func:`factor_grpo_config`. ``callbacks`` go to the Trainer (e.g. a
    :class:`rlnb.viz.LivePlot`); ``snapshot_steps`` keeps copies of the weights at those
    steps (:class:`Snapshots`, returned as ``run.snapshots``).

    Footgun: the two policies are separate copies loaded from the same directory; training
    the ``rl`` one never moves ``base``.
    """
    from rlnb.policies import LMPolicy, pretrain_base
    from rlnb.train import Trainer

    train, held_out = factor_split(num_train, num_held_out)
    path = pretrain_base(train, seed=seed, progress=progress, **FACTOR_PRETRAIN)
    base = LMPolicy(path, device="cpu", max_new_tokens=max_new_tokens)
    rl = LMPolicy(path, device="cpu", max_new_tokens=max_new_tokens)
    config = factor_grpo_config(seed, steps, learning_rate, progress_bar=progress,
                                **config_changes)
    snapshots = Snapshots(rl, snapshot_steps) if snapshot_steps else None
    extra = [snapshots] if snapshots is not None else []
    history = Trainer(rl, train, config, callbacks=[*callbacks, *extra]).train()
    return FactorRun(base, rl, train, held_out, history, snapshots)


class Snapshots:
    """A Trainer callback that keeps copies of the policy's weights at chosen steps.

    ``snapshots.states[step]`` is a ``state_dict`` (on the CPU) after that many updates;
    step 0 (the weights before training) is taken when the callback is built, from
    ``policy``. Load one into a copy of the policy to probe that checkpoint:

    >>> import torch
    >>> snap = Snapshots(torch.nn.Linear(2, 1), steps=[2])
    >>> list(snap.states)
    [0]

    Memory: one full copy of the weights per snapshot (fine for tiny models; for large ones
    use a ``run_dir`` and ``save_steps`` instead).
    """

    def __init__(self, policy: Any, steps: Sequence[int]) -> None:
        self.steps = {int(s) for s in steps}
        self.states: dict[int, dict[str, torch.Tensor]] = {0: self._copy(policy)}

    @staticmethod
    def _copy(policy: Any) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> None:
        if trainer.step in self.steps:
            self.states[trainer.step] = self._copy(trainer.policy)

    def policy_at(self, policy: Any, step: int) -> Any:
        """A deep copy of ``policy`` with the weights of ``step`` loaded."""
        if step not in self.states:
            raise KeyError(f"no snapshot at step {step}; have {sorted(self.states)}")
        other = copy.deepcopy(policy)
        other.load_state_dict(self.states[step])
        return other


class LabelledStates(NamedTuple):
    """What :func:`completion_states` returns."""

    rollout: Any
    """The sampled :class:`rlnb.policies.Rollout` (feed it to another checkpoint's
    ``completion_states(other, task, rollout=...)`` to compare states on the same text)."""
    cache: Any
    """:class:`rlnb.probes.ActivationCache` of prompt + completion, ``(N, L, d)`` per name
    (``embed``, ``layers.{i}.resid_post``, ``final_norm``); ``cache.mask`` marks the
    completion tokens (EOS included), so ``cache.pool(name)`` averages the completion."""
    sequence_mask: torch.Tensor
    """``(N, L)`` bool: prompt and completion tokens (no padding)."""
    correct: torch.Tensor
    """``(N,)`` bool: the task's verifier accepted the completion."""
    groups: torch.Tensor
    """``(N,)`` the prompt index of each row (``groups=`` of :func:`rlnb.probes.linear_probe`)."""
    completions: list
    """``N`` decoded completions."""


def completion_states(
    policy: Any,
    task: Any,
    problems: Sequence[int] | None = None,
    n: int = 8,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    rollout: Any = None,
) -> LabelledStates:
    """Sample ``n`` completions for each of ``problems`` and capture their hidden states.

    Args:
        policy: an :class:`rlnb.policies.LMPolicy`.
        task: a text task (``score``, ``reward_rollout``).
        problems: task indices; default all of them.
        n: completions per problem.
        seed: seeds the sampling generator.
        rollout: reuse these completions instead of sampling (states of *this* policy on
            another policy's text: what CKA between checkpoints needs).

    Footgun: the states cover the left-padded prompt too; ``cache.mask`` (completion only)
    and ``sequence_mask`` (prompt + completion) are different questions -- a rank or probe
    over the sequence mostly sees the prompt when completions are a few tokens long.
    """
    from rlnb.probes import ActivationCache

    if rollout is None:
        idx = torch.arange(task.num_prompts) if problems is None else torch.as_tensor(problems)
        with torch.no_grad():
            rollout = policy.rollout(task, idx, n, temperature=temperature,
                                     generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        states = policy.hidden_states(rollout)
    seq = states.pop("attention_mask").bool()  # (N, L)
    Lp = int(rollout.extra["prompt_length"])
    comp = torch.zeros_like(seq)
    comp[:, Lp:] = rollout.mask.bool().cpu()
    correct = task.reward_rollout(rollout).cpu() > 0
    return LabelledStates(rollout, ActivationCache(states, mask=comp), seq & (comp | (
        torch.arange(seq.shape[1]) < Lp)), correct, rollout.prompts.cpu().clone(),
        list(rollout.extra["completions"]))
