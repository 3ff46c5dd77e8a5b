"""The sandbox protocol shared by every tabular environment in rlnb.

A *sandbox* is a batch of independent problems ("prompts") that a policy answers with a
sequence of ``horizon`` discrete actions. Prompts play the role of environment instances
(the leading env dimension of gymnax-style batching): a ``Bandit`` with ``E`` instances has
``E`` prompts, a ``StrategyBandit`` has one prompt per problem, a ``TreeMDP`` one per tree.

States are integers so that a ``TabularPolicy`` can index a logit table with them::

    state = prompt * states_per_prompt + local_state

``local_state`` is what a policy *shared across prompts* sees (the strategy bandit's one
softmax over strategies is ``TabularPolicy(shared=True)`` on ``states_per_prompt == 1``).

Everything is batched and state-in/state-out: no method keeps hidden state, and every
random draw takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rlnb.serialization import Serializable


class Sandbox(Serializable):
    """Base class of the discrete sandboxes. Subclasses fill in the class attributes'
    instance values in ``__init__`` and implement ``next_states`` and ``reward``.

    Attributes:
        num_prompts: number of problems / environment instances.
        num_actions: size of the action set at every step.
        horizon: number of actions in one episode (1 for bandits).
        states_per_prompt: number of decision states inside one prompt.
    """

    num_prompts: int
    num_actions: int
    horizon: int
    states_per_prompt: int
    # Name of the quantity that `reward` returns, for plots and logs.
    reward_name: ClassVar[str] = "reward"

    # --- state layout -------------------------------------------------------------
    @property
    def num_states(self) -> int:
        return self.num_prompts * self.states_per_prompt

    def initial_states(self, prompts: torch.Tensor) -> torch.Tensor:
        """Decision state at step 0 of each prompt: ``(N,) long -> (N,) long``."""
        from rlnb.checks import check_index

        check_index(prompts, self.num_prompts, "prompts", f"prompt index of {type(self).__name__}")
        return prompts * self.states_per_prompt

    def next_states(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Transition ``(N,), (N,) -> (N,)``, called for steps ``t < horizon - 1``.
        Stochastic sandboxes (slippery gridworlds) draw from ``generator``."""
        raise NotImplementedError(f"{type(self).__name__} has horizon 1 and no transitions")

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """``(N,) -> (N,) bool``: episodes that reached a terminal state. A policy masks
        out (does not train on) the steps taken from terminal states. Default: never."""
        return torch.zeros(states.shape, dtype=torch.bool)

    @property
    def feature_dim(self) -> int:
        return self.num_states

    def state_features(self, states: torch.Tensor) -> torch.Tensor:
        """Features of each state for function-approximation policies (MLPPolicy):
        ``(N,) long -> (N, feature_dim) float``. Default: one-hot of the state index."""
        return torch.nn.functional.one_hot(states, self.num_states).float()

    # --- episodes -----------------------------------------------------------------
    def sample_prompts(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` prompt indices drawn uniformly with replacement: ``(n,) long``.
        When ``n == num_prompts`` every prompt is used once, in random order."""
        if n == self.num_prompts:
            return torch.randperm(self.num_prompts, generator=generator)
        return torch.randint(self.num_prompts, (n,), generator=generator)

    def reward(
        self,
        prompts: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reward of each finished episode: prompts ``(N,)``, actions ``(N, horizon)`` ->
        ``(N,) float``. Stochastic sandboxes draw from ``generator``."""
        raise NotImplementedError

    def reward_rollout(self, rollout: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reward of each completion of a :class:`rlnb.policies.Rollout`, ``(N,) float``.
        This is what the trainer calls; tabular sandboxes score the action ids, text tasks
        override it to score the decoded completions."""
        return self.reward(rollout.prompts, rollout.actions, generator)

    def expected_reward(self, prompts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Mean of ``reward`` over its noise, same shapes. Deterministic sandboxes return
        ``reward`` itself."""
        return self.reward(prompts, actions)

    # --- exact answers --------------------------------------------------------------
    def action_probs(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Helper for exact analysis: expand a tabular policy given as probabilities over
        either shared ``(states_per_prompt, A)`` or per-prompt ``(num_states, A)`` rows
        into ``(num_prompts, states_per_prompt, A)``."""
        A = self.num_actions
        if policy_probs.shape == (self.states_per_prompt, A):
            return policy_probs.expand(self.num_prompts, self.states_per_prompt, A)
        if policy_probs.shape == (self.num_states, A):
            return policy_probs.reshape(self.num_prompts, self.states_per_prompt, A)
        raise ValueError(
            f"policy_probs has shape {tuple(policy_probs.shape)}; expected "
            f"({self.states_per_prompt}, {A}) for a shared policy or ({self.num_states}, {A}) "
            "for one row per state"
        )

    def success_probability(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Exact per-prompt probability that one episode earns reward > 0 (for binary
        sandboxes: pass@1 per prompt), ``(num_prompts,)``. Policies as in ``action_probs``."""
        raise NotImplementedError(f"{type(self).__name__} has no exact success probability")


class SandboxWrapper(Sandbox):
    """A sandbox that is ``env`` in everything but its reward (a noisy verifier, a majority
    vote): prompts, actions, transitions, state features, prompt sampling and the exact
    (clean) success probability are the wrapped sandbox's, and the wrapper's spec nests
    ``env``'s spec under ``config["env"]`` (its tensors under ``env.``). Subclasses set
    their own options in ``__init__(env, **options)`` after calling this one, return
    those options from ``get_config``, and implement the reward."""

    def __init__(self, env: Sandbox) -> None:
        self.env = env
        self.num_prompts, self.num_actions = env.num_prompts, env.num_actions
        self.horizon, self.states_per_prompt = env.horizon, env.states_per_prompt

    # --- serialization: the wrapped sandbox's spec nested in ours ------------------------
    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {f"env.{k}": v for k, v in self.env.get_tensors().items()}

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out["config"] = {**out["config"], "env": self.env.spec()}
        return out

    @classmethod
    def from_spec(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SandboxWrapper:
        from rlnb.serialization import build_component

        config = dict(spec.get("config", {}))
        inner = config.pop("env", None)
        if not isinstance(inner, dict):
            raise ValueError(f"a {cls.__name__} spec needs the wrapped sandbox's spec under "
                             "config['env']; this spec was not written by rlnb")
        env = build_component(inner, {k[4:]: v for k, v in tensors.items()
                                      if k.startswith("env.")})
        return cls(env, **config)

    # --- everything but the reward is the wrapped sandbox's -----------------------------
    def initial_states(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.env.initial_states(prompts)

    def next_states(self, states: torch.Tensor, actions: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        return self.env.next_states(states, actions, generator)

    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        return self.env.is_terminal(states)

    @property
    def feature_dim(self) -> int:
        return self.env.feature_dim

    def state_features(self, states: torch.Tensor) -> torch.Tensor:
        return self.env.state_features(states)

    def sample_prompts(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.env.sample_prompts(n, generator)

    def success_probability(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """The wrapped sandbox's exact per-prompt success probability (what the policy is
        judged on: the wrapper changes the reward the trainer sees, not which answers are
        right)."""
        return self.env.success_probability(policy_probs)
