"""Does this policy fit this sandbox? Checked before anything is trained or written.

A tabular policy indexes its logit table with the sandbox's states and picks one of its
actions; a language model answers text prompts. :func:`check_pair` compares what the two
declare (number of actions, of states per prompt and in all, the state features of an
MLP) and refuses a pair that would fail at the first step (an ``IndexError`` deep in the
rollout) or, worse, train on the wrong sizes without a word (a 3-action policy on a
64-strategy bandit samples only the first three strategies).

>>> import torch
>>> from rlnb.envs import StrategyBandit
>>> from rlnb.policies import TabularPolicy
>>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
>>> check_pair(TabularPolicy.for_env(env, shared=True), env)  # fits: nothing to say
>>> check_pair(TabularPolicy(1, 3), env)
Traceback (most recent call last):
...
ValueError: TabularPolicy has num_actions=3 but StrategyBandit has num_actions=64 (the actions to choose from at every step); build the policy from the sandbox: TabularPolicy.for_env(env) (shared=True for one table shared by all prompts)
"""

from __future__ import annotations

from typing import Any

from rlnb.envs.text import TextTask
from rlnb.policies.lm import LMPolicy
from rlnb.policies.tabular import MLPPolicy, TabularPolicy

__all__ = ["check_pair"]

_TABULAR_FIX = ("build the policy from the sandbox: TabularPolicy.for_env(env) (shared=True "
                "for one table shared by all prompts)")
_MLP_FIX = "build the policy from the sandbox: MLPPolicy.for_env(env)"


def _is_text_task(env: Any) -> bool:
    return isinstance(env, TextTask) or (
        callable(getattr(env, "prompt", None)) and not getattr(env, "num_actions", 0))


def _describe(env: Any) -> str:
    name = type(env).__name__
    return f"{name} (horizon {env.horizon})" if getattr(env, "horizon", 1) not in (0, 1) else name


def check_pair(policy: Any, env: Any) -> None:
    """Raise if ``policy`` cannot be trained on ``env``; return None if it can.

    * an :class:`~rlnb.policies.LMPolicy` needs a text task (:class:`~rlnb.envs.TextTask`);
      a tabular or MLP policy needs a discrete sandbox (``TypeError`` otherwise);
    * a :class:`~rlnb.policies.TabularPolicy` must have the sandbox's ``num_actions`` and
      ``states_per_prompt``, and unless it is shared across prompts its ``num_states``;
      an :class:`~rlnb.policies.MLPPolicy` its ``num_actions`` and ``feature_dim``; any
      other policy that declares ``num_actions``, that one (``ValueError`` otherwise).

    Each error names both sizes and how to build a policy that fits.
    """
    pname, ename = type(policy).__name__, type(env).__name__
    for method in ("rollout", "log_probs"):
        if not callable(getattr(policy, method, None)):
            raise TypeError(f"the policy must be an rlnb policy (rollout and log_probs, e.g. "
                            f"TabularPolicy, MLPPolicy, LMPolicy); got {pname}, which has no "
                            f"{method}()")
    missing = [m for m in ("sample_prompts", "reward_rollout")
               if not callable(getattr(env, m, None))]
    if missing:
        hint = (" (a datasets.Dataset: rebuild the task with TextTask.from_dataset(ds))"
                if hasattr(env, "column_names") else "")
        raise TypeError(f"env must be an rlnb sandbox or text task (sample_prompts and "
                        f"reward_rollout); got {ename}, which has no {', '.join(missing)}{hint}")

    text = _is_text_task(env)
    if isinstance(policy, LMPolicy):
        if not text:
            raise TypeError(
                f"LMPolicy samples text and needs a text task (a TextTask such as "
                f"rlnb.envs.factor(...) or make_task(name)); got {ename}, a discrete sandbox "
                f"with num_actions={getattr(env, 'num_actions', '?')}: train TabularPolicy."
                "for_env(env) or MLPPolicy.for_env(env) on it")
        return  # prompts are text: nothing to compare (see LMPolicy.check_prompts)
    if text:
        raise TypeError(
            f"{pname} picks one of a fixed set of actions and cannot answer {ename}, a text "
            f"task of {env.num_prompts} prompts with no action set; train a language model "
            "on it: LMPolicy(model_dir) (rlnb.policies.pretrain_base(task) makes a tiny one)")

    def same(attr: str, what: str, fix: str) -> None:
        mine, theirs = getattr(policy, attr, None), getattr(env, attr, None)
        if mine is None or theirs is None or int(mine) == int(theirs):
            return
        raise ValueError(f"{pname} has {attr}={mine} but {_describe(env)} has {attr}={theirs} "
                         f"({what}); {fix}")

    if isinstance(policy, TabularPolicy):
        same("num_actions", "the actions to choose from at every step", _TABULAR_FIX)
        same("states_per_prompt", "the decision states inside one prompt", _TABULAR_FIX)
        if not policy.shared:
            nprompts = getattr(env, "num_prompts", "?")
            same("num_states", f"one table row per state: num_prompts={nprompts} x "
                 f"states_per_prompt={getattr(env, 'states_per_prompt', '?')}", _TABULAR_FIX)
    elif isinstance(policy, MLPPolicy):
        same("num_actions", "the actions to choose from at every step", _MLP_FIX)
        same("feature_dim", "the length of env.state_features(states)", _MLP_FIX)
    else:
        same("num_actions", "the actions to choose from at every step",
             f"build a {pname} with the sandbox's num_actions")
