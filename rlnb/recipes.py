"""Ready-made experiments that several notebooks and analyses share.

Each recipe is the few lines that set up a sandbox, a base policy and a GRPO run the way
a card prescribes, and returns the pieces so that the caller does the measuring:

- :func:`grpo_on_strategy_bandit` -- card 1 on the strategy bandit (card SB): a shared
  softmax over 64 strategies, GRPO with G=4, 16 prompts per step, SGD lr 1.0;
- :func:`grpo_on_factor` -- card 1 at LM scale: a tiny transformer pre-trained on the
  factor task (:func:`rlnb.policies.pretrain_base`), then GRPO 32 prompts x 8;
- :func:`addition_split` and :func:`addition_base` -- cards 13 and 14: addition with
  operands of 1 to 3 digits (answers of varying length) and its tiny base model;
  :data:`LITE_PPO_CONFIGS`, card 13's six normalisation / aggregation / filtering settings;
- :func:`answer_probability` -- the exact pass@1 of a language model on an exact-match task;
- :func:`completion_states` -- sample completions of a language model and capture their
  hidden states, with the verifier's verdict per completion (the input of rank, probe and
  CKA analyses, card 7 and card 16).

And the small pieces that the notebooks and :mod:`analysis` would otherwise each write out:

- :func:`quick` -- whether ``RLNB_QUICK=1`` asks for reduced budgets (the headless test run);
- :func:`over_seeds` and :func:`sweep` -- run one experiment per seed (per grid point) and
  concatenate the tidy frames, with a column per varied setting;
- :func:`exact_pass_at_k_curve` -- a sandbox's exact pass@k of named policies, as a tidy frame;
- :func:`crossing_k` -- where the base model's pass@k curve catches up with the RL model's;
- :func:`answer_share` and :func:`divisor_answer_share` -- how often a model answers a given
  divisor, on the factor problems it divides and on the others (card 1's caveat);
- :func:`met` -- a criterion's verdict, ``"met"`` or ``"not met"``.

>>> from rlnb.recipes import grpo_on_strategy_bandit
>>> run = grpo_on_strategy_bandit(seed=0, steps=5)
>>> run.env.num_states, run.base_probs.shape == run.rl_probs.shape
(64, True)
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

__all__ = [
    "ADDITION_PRETRAIN",
    "ENTROPY_INTERVENTIONS",
    "LITE_PPO_CONFIGS",
    "QUICK_ENV",
    "BanditRun",
    "FactorRun",
    "LabelledStates",
    "Snapshots",
    "addition_base",
    "addition_split",
    "answer_probability",
    "answer_share",
    "completion_states",
    "crossing_k",
    "divisor_answer_share",
    "exact_pass_at_k_curve",
    "factor_grpo_config",
    "factor_split",
    "grpo_on_factor",
    "grpo_on_strategy_bandit",
    "met",
    "over_seeds",
    "quick",
    "sweep",
    "tree_grpo_config",
    "tree_ppo_config",
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
                            progress: bool = False, **config_changes: Any) -> BanditRun:
    """Card 1 on the strategy bandit: GRPO sharpens one softmax shared by every problem.

    64 problems, 64 strategies (card SB's solve matrix from ``seed``), base logits from
    :func:`rlnb.envs.strategy_bandit.card_base_logits` (seed ``10_000 + seed``), GRPO with
    G=4, 16 prompts per step, ``vanilla_pg``, SGD at lr 1.0 for ``steps`` steps.
    ``shared=False`` gives every problem its own softmax (same initial logits): the
    ablation without the crossover. ``config_changes`` override any other
    :class:`rlnb.train.TrainConfig` field, e.g. ``advantage="nsr", optimizer="adam",
    learning_rate=0.05`` (card 6).
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
    if config_changes:
        config = config.replace(**config_changes)
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


# --- ADDITION WITH ANSWERS OF VARYING LENGTH (cards 13 and 14) ------------------------------

#: Base model of cards 13 and 14: card 1's 2-layer d=64 Llama (:data:`FACTOR_PRETRAIN`) on
#: :func:`addition_split`, batches of 256, stopped at the first evaluation (every 10 steps)
#: with pass@1 >= 0.3: trained to the end it learns addition outright and RL has little
#: to improve.
ADDITION_PRETRAIN: dict[str, Any] = {**FACTOR_PRETRAIN, "batch_size": 256, "steps": 1500,
                                     "target_pass_at_1": 0.3}

#: Card 13's six configurations (Lite PPO, arXiv:2508.08221), as TrainConfig changes:
#: group or batch std, sequence- or token-level aggregation, with or without overlong
#: filtering (DAPO's mask of truncated completions, TRL's ``mask_truncated_completions``).
LITE_PPO_CONFIGS: dict[str, dict[str, Any]] = {
    "group std, seq-mean (GRPO)": {"scale_rewards": "group",
                                   "loss_agg_mode": "seq-mean-token-mean"},
    "group std, token-mean": {"scale_rewards": "group", "loss_agg_mode": "token-mean"},
    "batch std, seq-mean": {"scale_rewards": "batch", "loss_agg_mode": "seq-mean-token-mean"},
    "batch std, token-mean (Lite PPO)": {"scale_rewards": "batch",
                                         "loss_agg_mode": "token-mean"},
    "group std, token-mean, overlong filter": {"scale_rewards": "group",
                                               "loss_agg_mode": "token-mean",
                                               "mask_truncated_completions": True},
    "Lite PPO, overlong filter": {"scale_rewards": "batch", "loss_agg_mode": "token-mean",
                                  "mask_truncated_completions": True},
}


def addition_split(num_train: int = 4000, num_held_out: int = 256,
                   task_seed: int = 0) -> tuple[Any, Any]:
    """``(train, held_out)`` disjoint addition problems whose operands have 1 to 3 digits
    (``addition(..., digits=3, min_digits=1)``): answers of 1 to 4 characters, so that
    completions vary in length (cards 13 and 14)."""
    from rlnb.envs.arithmetic_tasks import addition

    task = addition(num_train + num_held_out, digits=3, min_digits=1, seed=task_seed)
    return task.split(num_held_out, seed=task_seed)


def addition_base(seed: int = 0, *, progress: bool = False) -> Any:
    """Directory of the addition base model of ``seed`` (:data:`ADDITION_PRETRAIN` on the
    training half of :func:`addition_split`), pre-trained on first use and then cached."""
    from rlnb.policies import pretrain_base

    return pretrain_base(addition_split()[0], seed=seed, progress=progress, **ADDITION_PRETRAIN)


@torch.no_grad()
def answer_probability(policy: Any, task: Any, *, temperature: float = 1.0,
                       max_new_tokens: int | None = None) -> np.ndarray:
    """``(P,)`` the exact probability that one completion sampled at ``temperature`` from
    a language-model ``policy`` (:class:`rlnb.policies.LMPolicy`) spells problem ``i``'s
    answer ``task.answers[i]``: the product of the next-token probabilities of the
    answer's characters, times that of EOS after them when the answer is shorter than the
    generation budget ``max_new_tokens`` (default the policy's). A longer answer cannot
    be produced; an answer exactly as long as the budget is produced truncated, which the
    verifier still accepts. This is the exact pass@1 of tasks scored by exact match, up
    to token sequences that decode to the same text (special tokens inside an answer):
    a lower bound that a sampled pass@1 matches within its noise. One batched forward pass.
    """
    budget = policy.max_new_tokens if max_new_tokens is None else max_new_tokens
    tok = policy.tokenizer
    answers = tok(list(task.answers), add_special_tokens=False)["input_ids"]
    rows, spans = [], []
    for i, answer in enumerate(answers):
        answer = list(answer)
        comp = answer + [policy.eos_ids[0]] if len(answer) < budget else answer
        prompt = policy.encode_prompt(task.prompt(i))
        rows.append(prompt + comp)
        spans.append((len(prompt), len(comp), len(answer) <= budget))
    L = max(len(r) for r in rows)
    ids = torch.tensor([r + [policy.pad_id] * (L - len(r)) for r in rows])
    am = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    was_training = policy.model.training
    policy.model.eval()
    logits = policy.model(input_ids=ids.to(policy.device), attention_mask=am.to(policy.device),
                          use_cache=False).logits.float().cpu()
    policy.model.train(was_training)
    logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)  # position t predicts t+1
    tok_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (P, L - 1)
    out = np.zeros(task.num_prompts)
    for i, (lp, lc, possible) in enumerate(spans):
        if possible:
            out[i] = float(torch.exp(tok_logp[i, lp - 1: lp - 1 + lc].sum()))
    return out


# --- NOTEBOOK AND ANALYSIS HELPERS ----------------------------------------------------------

QUICK_ENV = "RLNB_QUICK"
"""The environment variable that asks for reduced budgets (see :func:`quick`)."""


def quick() -> bool:
    """Whether to run on reduced budgets: the environment variable ``RLNB_QUICK`` is ``"1"``.

    The one switch between a notebook's full budget and its quick one. The test suite
    (``tests/project/test_notebooks.py``) executes every notebook headless with
    ``RLNB_QUICK=1``; a notebook reads it once, ``QUICK = quick()``, and picks its budgets
    from it (``STEPS = 100 if QUICK else 300``). Any other value, or none, is the full
    budget. Read when called, so setting the variable in a running kernel takes effect at
    the next call.
    """
    return os.environ.get(QUICK_ENV) == "1"


def sweep(run: Callable[..., pd.DataFrame], /, **axes: Iterable[Any]) -> pd.DataFrame:
    """``run(**point)`` at every point of the grid that ``axes`` span, as one tidy frame.

    The first axis is the outer loop and the last the inner one. Each point's frame gets
    one column per axis holding that point's value (after ``run``'s own columns, in the
    order of ``axes``; a column of the same name is overwritten); the index is reset.
    Axis values are scalars (a name, a seed): look richer settings up inside ``run``.

    >>> frame = sweep(lambda lr, seed: pd.DataFrame({"step": [0, 1], "loss": [lr, lr * seed]}),
    ...               lr=[0.5, 1.0], seed=[1, 2])
    >>> frame.columns.tolist(), frame[["lr", "seed"]].drop_duplicates().values.tolist()
    (['step', 'loss', 'lr', 'seed'], [[0.5, 1.0], [0.5, 2.0], [1.0, 1.0], [1.0, 2.0]])
    """
    if not axes:
        raise ValueError("sweep needs at least one axis, e.g. sweep(run, seed=[0, 1, 2])")
    names = list(axes)
    grids = [list(values) for values in axes.values()]
    empty = [name for name, values in zip(names, grids, strict=True) if not values]
    if empty:
        raise ValueError(f"axis {empty[0]!r} of the sweep has no values")
    frames = []
    for combo in itertools.product(*grids):
        point = dict(zip(names, combo, strict=True))
        frame = run(**point)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"the sweep's run returned {type(frame).__name__} at {point}; "
                            "it must return a pandas DataFrame (e.g. a Trainer's history)")
        frames.append(frame.assign(**point))
    return pd.concat(frames, ignore_index=True)


def over_seeds(run: Callable[[int], pd.DataFrame], seeds: Iterable[int], /,
               **labels: Any) -> pd.DataFrame:
    """``run(seed)`` for each of ``seeds``, concatenated into one tidy frame.

    Each seed's frame gets the ``labels`` as constant columns, then a ``seed`` column; the
    index is reset. The frame that ``rlnb.viz.training_curves(..., band="seed")`` draws as
    a mean with a band over seeds. (Several settings times several seeds: :func:`sweep`.)

    >>> over_seeds(lambda seed: pd.DataFrame({"step": [0, 1], "reward": [0.0, seed]}),
    ...            [1, 2], run="demo")
       step  reward   run  seed
    0     0     0.0  demo     1
    1     1     1.0  demo     1
    2     0     0.0  demo     2
    3     1     2.0  demo     2
    """
    return sweep(lambda seed: run(seed).assign(**labels), seed=seeds)


def exact_pass_at_k_curve(env: Any, probs: Mapping[str, torch.Tensor],
                          ks: Sequence[int]) -> pd.DataFrame:
    """Exact pass@k of named policies on a sandbox, as a tidy ``model, k, pass_at_k`` frame.

    ``probs`` maps a model's name to its action probabilities (``policy.probs()``);
    ``env.pass_at_k_exact(probs, ks)`` computes the curve (e.g.
    :meth:`rlnb.envs.StrategyBandit.pass_at_k_exact`). The frame
    :func:`rlnb.viz.passk_curves` draws.

    >>> from rlnb.envs import StrategyBandit
    >>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    >>> uniform = torch.full((1, env.num_strategies), 1 / env.num_strategies)
    >>> exact_pass_at_k_curve(env, {"uniform": uniform}, [1, 256]).columns.tolist()
    ['model', 'k', 'pass_at_k']
    """
    ks = [int(k) for k in ks]
    frames = [pd.DataFrame({"model": name, "k": ks,
                            "pass_at_k": env.pass_at_k_exact(p, ks).detach().tolist()})
              for name, p in probs.items()]
    return pd.concat(frames, ignore_index=True)


def crossing_k(ks: Sequence[int], base: Sequence[float], rl: Sequence[float], *,
               interpolate: bool = True) -> float | int | None:
    """The k at which the base model's pass@k catches up with the RL model's.

    ``ks`` ascending, ``base`` and ``rl`` the two pass@k curves at those ks. The crossing
    is the first k of ``ks`` where the base is at least as good (``base >= rl``); None if
    RL leads at every k. ``interpolate=False`` returns that k as it is; by default the
    crossing is placed between it and the k before, where RL still led, by interpolating
    the difference ``rl - base`` linearly in log2 k to its zero. If the base is at least
    as good already at the first k there is nothing to interpolate: that k is returned.

    >>> crossing_k([1, 2, 4, 8], [0.2, 0.4, 0.6, 0.8], [0.5, 0.6, 0.6, 0.6])
    4.0
    >>> round(crossing_k([1, 2, 4, 8], [0.2, 0.4, 0.55, 0.8], [0.5, 0.6, 0.6, 0.6]), 3)
    4.595
    >>> crossing_k([1, 2, 4, 8], [0.2, 0.4, 0.55, 0.8], [0.5, 0.6, 0.6, 0.6], interpolate=False)
    8
    >>> crossing_k([1, 2], [0.1, 0.2], [0.5, 0.6]) is None
    True
    """
    d = np.asarray(rl, dtype=float) - np.asarray(base, dtype=float)  # > 0 where RL leads
    if d.shape != (len(ks),):
        raise ValueError(f"base and rl need one value per k: {len(ks)} ks, "
                         f"curves of shape {np.shape(base)} and {np.shape(rl)}")
    caught_up = np.flatnonzero(d <= 0)
    if caught_up.size == 0:
        return None
    j = int(caught_up[0])
    if not interpolate:
        return ks[j]
    if j == 0:
        return float(ks[0])
    lo, hi = np.log2(ks[j - 1]), np.log2(ks[j])
    return float(2 ** (lo + (hi - lo) * d[j - 1] / (d[j - 1] - d[j])))


def answer_share(samples: Sequence[str], answer: str) -> float:
    """Fraction of ``samples`` (completions of one problem) that are ``answer``, once
    stripped of surrounding whitespace.

    >>> answer_share(["3", " 3", "7", "13"], "3")
    0.5
    """
    return sum(s.strip() == answer for s in samples) / len(samples)


def divisor_answer_share(task: Any, samples: Iterable[Sequence[str]],
                         divisor: int = 3) -> tuple[float, float]:
    """How often a model answers ``divisor`` on the factor problems it divides, and on the
    others: ``(mean share where divisor divides N, mean share where it does not)``.

    ``samples`` holds the completions of each problem of ``task`` (a factor task, problem
    ``i`` is ``task.n(i)``), in problem order: the ``samples`` column of
    :func:`rlnb.probes.evaluate.sample_counts`. Each problem counts once
    (:func:`answer_share` of its completions). Two equal shares mean the model does not
    condition on N (card 1's caveat: shared-prior sharpening, not per-problem reasoning).
    """
    answer = str(divisor)
    hit, miss = [], []
    for i, row in enumerate(samples):
        (hit if task.n(i) % divisor == 0 else miss).append(answer_share(row, answer))
    return float(np.mean(hit)), float(np.mean(miss))


def met(condition: Any) -> str:
    """A criterion's verdict for the sentences notebooks write: ``"met"`` or ``"not met"``.

    >>> met(0.93 >= 0.9), met(2.0 < 1.5)
    ('met', 'not met')
    """
    return "met" if bool(condition) else "not met"


# --- cards 3 and 4: the tree MDP's entropy runs ---------------------------------------------

#: Card 4's objectives on the tree MDP, as changes to :func:`tree_ppo_config`: PPO's clip,
#: DAPO's clip-higher, Clip-Cov (2% of the tokens with cov > 1, as the card's numpy toy;
#: "Clip-Cov (1, 5)" is the paper's window), KL-Cov on the top 2%, an entropy bonus, STEER
#: and Lp-Reg (rlnb.rl.entropy_losses). 2% because a batch holds 1536 tokens, not millions.
ENTROPY_INTERVENTIONS: dict[str, dict[str, Any]] = {
    "PPO": {},
    "clip-higher": {"epsilon_high": 0.28},
    "Clip-Cov": {"policy_loss": "clip_cov", "clip_cov_ratio": 0.02, "clip_cov_ub": 1e9},
    "Clip-Cov (1, 5)": {"policy_loss": "clip_cov", "clip_cov_ratio": 0.02},
    "KL-Cov": {"policy_loss": "kl_cov", "kl_cov_ratio": 0.02},
    "entropy bonus": {"entropy_coef": 0.1},
    "STEER": {"policy_loss": "steer"},
    "Lp-Reg": {"policy_loss": "lp_reg"},
}


def tree_grpo_config(seed: int = 0, steps: int = 200) -> Any:
    """Card 3's GRPO on the tree MDP: 16 prompts x G = 16, group-scaled advantages, one
    PPO epoch (on-policy), Adam 0.05 -- entropy log 4 -> ~0.04, pass@1 0.01 -> ~0.99.

    >>> tree_grpo_config(seed=1).num_generations
    16
    """
    from rlnb.train import TrainConfig

    return TrainConfig(
        seed=seed, max_steps=steps, num_prompts_per_step=16, num_generations=16,
        advantage="grpo", scale_rewards="group", policy_loss="ppo_clip", num_iterations=1,
        optimizer="adam", learning_rate=0.05, progress_bar=False,
    )


def tree_ppo_config(seed: int = 0, steps: int = 150, intervention: str = "PPO") -> Any:
    """Card 4's PPO on the tree MDP (four epochs per batch, Adam 0.03) with one of
    :data:`ENTROPY_INTERVENTIONS` applied.

    >>> tree_ppo_config(intervention="Clip-Cov").policy_loss
    'clip_cov'
    """
    if intervention not in ENTROPY_INTERVENTIONS:
        raise ValueError(f"intervention must be one of {list(ENTROPY_INTERVENTIONS)}, got "
                         f"{intervention!r}")
    return tree_grpo_config(seed, steps).replace(
        num_iterations=4, learning_rate=0.03, **ENTROPY_INTERVENTIONS[intervention])
