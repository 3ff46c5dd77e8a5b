"""Tabular and MLP softmax policies for the discrete sandboxes of ``rlnb.envs``.

Both sample step by step through the sandbox's deterministic transitions::

    s = env.initial_states(prompts)          # (N,)
    for t in range(env.horizon):
        a ~ softmax(logits(s) / temperature)  # (N,)
        s = env.next_states(s, a, generator)  # stochastic sandboxes draw from generator

Steps taken from a terminal state (``env.is_terminal``) are sampled but masked out.

and record the visited states in the rollout, so ``log_probs`` can recompute the logits
of exactly the states that were visited.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlnb.checks import as_tensor, check_finite, check_int
from rlnb.policies.base import Policy, Rollout, validate_sampling_args


def _check_logits(logits: Any, rows: int, num_actions: int, shared: bool) -> torch.Tensor:
    """Initial or loaded logits as a float32 ``(rows, num_actions)`` tensor: real, finite,
    of the table's shape (one pass over the table)."""
    t = as_tensor(logits, "logits", "a (rows, num_actions) tensor of real logits")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"logits must hold real numbers, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if t.dim() == 1:
        t = t[None]
    if t.shape != (rows, num_actions):
        raise ValueError(
            f"logits must have shape (rows, num_actions) = ({rows}, {num_actions}) "
            f"for shared={shared}, got {tuple(t.shape)}"
        )
    check_finite(t, "logits", "nan or inf logits make every probability of its row nan; "
                 "use a large negative number such as -1e9 to rule an action out")
    return t


def _sample_categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel-max sampling: one draw per row of ``logits (N, A)`` -> ``(N,)``.
    Same generator state, same draws, on every CPU."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp_(1e-20, 1.0)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


def _masked_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of categorical distributions given log-probs ``(..., A)``, safe at -inf."""
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def _check_env(env: Any, attributes: tuple[str, ...], policy: str) -> None:
    missing = [a for a in attributes if not hasattr(env, a)]
    if missing:
        raise TypeError(
            f"{policy}.for_env needs a discrete sandbox (rlnb.envs: Bandit, StrategyBandit, "
            f"TreeMDP, Gridworld, ...) with {', '.join(attributes)}; got "
            f"{type(env).__name__}, which lacks {', '.join(missing)}"
        )


class _StepwisePolicy(Policy):
    """Shared sampling / scoring for policies whose logits depend on the current state."""

    def state_logits(self, states: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, env: Any, states: torch.Tensor) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def rollout(
        self,
        env: Any,
        prompts: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        validate_sampling_args(n, temperature)
        prompts = torch.as_tensor(prompts, dtype=torch.long)
        rows = prompts.repeat_interleave(n)  # (N,) groups contiguous
        s = env.initial_states(rows)
        actions, states, logps, feats, masks = [], [], [], [], []
        done = env.is_terminal(s)  # (N,) steps from terminal states are masked out
        for t in range(env.horizon):
            f = self._features(env, s)
            logp_all = torch.log_softmax(self.state_logits(s, f) / temperature, dim=-1)  # (N, A)
            a = _sample_categorical(logp_all, generator)
            actions.append(a)
            states.append(s)
            logps.append(logp_all.gather(-1, a[:, None]).squeeze(-1))
            if f is not None:
                feats.append(f)
            masks.append(~done)
            if t < env.horizon - 1:
                s = env.next_states(s, a, generator)
                done = done | env.is_terminal(s)
        extra = {"features": torch.stack(feats, dim=1)} if feats else {}  # (N, T, F)
        actions_t = torch.stack(actions, dim=1)  # (N, T)
        return Rollout(
            prompts=rows,
            actions=actions_t,
            mask=torch.stack(masks, dim=1),
            logp=torch.stack(logps, dim=1),
            group_size=n,
            states=torch.stack(states, dim=1),
            extra=extra,
        )

    def log_probs(
        self, rollout: Rollout, *, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if rollout.states is None:
            raise ValueError(
                f"{type(self).__name__}.log_probs needs rollout.states: score rollouts "
                "sampled by a tabular or MLP policy"
            )
        logits = self.state_logits(rollout.states, rollout.extra.get("features"))  # (N, T, A)
        logp_all = torch.log_softmax(logits / temperature, dim=-1)
        logp = logp_all.gather(-1, rollout.actions[..., None]).squeeze(-1)  # (N, T)
        entropy = _masked_entropy(logp_all)  # (N, T)
        zero = torch.zeros((), dtype=logp.dtype)
        return torch.where(rollout.mask, logp, zero), torch.where(rollout.mask, entropy, zero)


class TabularPolicy(_StepwisePolicy):
    """A softmax over actions for every decision state: ``pi(a|s) = softmax(logits[s])``.

    Args:
        num_states: number of states of the sandbox (``env.num_states``).
        num_actions: ``env.num_actions``.
        states_per_prompt: ``env.states_per_prompt``.
        shared: one row of logits per *local* state, shared by all prompts (the strategy
            bandit's single softmax over strategies). Otherwise one row per state.
        logits: initial logits, ``(rows, num_actions)``; zeros (uniform) by default.

    >>> from rlnb.envs import StrategyBandit
    >>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    >>> pi = TabularPolicy.for_env(env, shared=True)
    >>> pi.probs().shape
    torch.Size([1, 64])

    Footgun: with ``shared=False`` on a bandit every prompt learns alone, and the pass@k
    crossover of card 1 disappears: it needs parameters shared across problems.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        states_per_prompt: int = 1,
        shared: bool = False,
        logits: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_states = check_int(num_states, "num_states", 1, meaning="env.num_states")
        self.num_actions = check_int(num_actions, "num_actions", 1, meaning="env.num_actions")
        self.states_per_prompt = check_int(states_per_prompt, "states_per_prompt", 1,
                                           meaning="env.states_per_prompt")
        if self.num_states % self.states_per_prompt:
            raise ValueError(
                f"num_states ({self.num_states}) must be a multiple of states_per_prompt "
                f"({self.states_per_prompt}): num_states = num_prompts * states_per_prompt; "
                "build the policy with TabularPolicy.for_env(env)"
            )
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be True or False, got {shared!r}")
        self.shared = shared
        rows = self.states_per_prompt if self.shared else self.num_states
        if logits is None:
            logits = torch.zeros(rows, self.num_actions)
        self.logits = nn.Parameter(_check_logits(logits, rows, self.num_actions, self.shared).clone())

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # load_state_dict is the one other way in for the logits: refuse nan/inf there too.
        value = state_dict.get(prefix + "logits")
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            check_finite(value, "logits", "a checkpoint's logits must be finite")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def for_env(
        cls, env: Any, *, shared: bool = False, logits: torch.Tensor | None = None
    ) -> TabularPolicy:
        _check_env(env, ("num_states", "num_actions", "states_per_prompt"), "TabularPolicy")
        return cls(env.num_states, env.num_actions, env.states_per_prompt, shared, logits)

    def get_config(self) -> dict[str, Any]:
        return {
            "num_states": self.num_states,
            "num_actions": self.num_actions,
            "states_per_prompt": self.states_per_prompt,
            "shared": self.shared,
        }

    def rows(self, states: torch.Tensor) -> torch.Tensor:
        return states % self.states_per_prompt if self.shared else states

    def state_logits(self, states: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        return self.logits[self.rows(states)]

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        """The policy as a probability table ``(rows, num_actions)``, detached; feed it to
        a sandbox's exact ``success_probability`` / ``q_values``."""
        validate_sampling_args(1, temperature)
        with torch.no_grad():
            return torch.softmax(self.logits / temperature, dim=-1)


class MLPPolicy(_StepwisePolicy):
    """A small MLP from the sandbox's ``state_features`` to action logits.

    Args:
        feature_dim: ``env.feature_dim``.
        num_actions: ``env.num_actions``.
        hidden: sizes of the hidden layers.
        activation: ``"tanh"`` or ``"relu"``.
        seed: initialisation seed (the weights do not depend on the global RNG).
    """

    def __init__(
        self,
        feature_dim: int,
        num_actions: int,
        hidden: tuple[int, ...] | list[int] = (64,),
        activation: str = "tanh",
        seed: int = 0,
    ) -> None:
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        feature_dim = check_int(feature_dim, "feature_dim", 1, meaning="env.feature_dim")
        num_actions = check_int(num_actions, "num_actions", 1, meaning="env.num_actions")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (list, tuple)):
            raise TypeError(
                f"hidden must be a tuple or list of layer widths such as (64,) or (64, 64), got "
                f"{type(hidden).__name__} {hidden!r}"
            )
        hidden = [check_int(h, f"hidden[{i}]", 1, meaning="width of a hidden layer")
                  for i, h in enumerate(hidden)]
        self.feature_dim, self.num_actions = feature_dim, num_actions
        self.hidden, self.activation = hidden, activation
        self.seed = check_int(seed, "seed", 0)
        sizes = [self.feature_dim, *self.hidden, self.num_actions]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(acts[activation]())
        self.net = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    bound = 1.0 / m.in_features**0.5
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                    m.bias.zero_()
            self.net[-1].weight.mul_(0.01)  # start near uniform, as cleanrl's policy head

    @classmethod
    def for_env(cls, env: Any, **kwargs: Any) -> MLPPolicy:
        _check_env(env, ("feature_dim", "num_actions", "state_features"), "MLPPolicy")
        return cls(env.feature_dim, env.num_actions, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {
            "feature_dim": self.feature_dim,
            "num_actions": self.num_actions,
            "hidden": self.hidden,
            "activation": self.activation,
            "seed": self.seed,
        }

    def _features(self, env: Any, states: torch.Tensor) -> torch.Tensor:
        return env.state_features(states)

    def state_logits(self, states: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        if features is None:
            raise ValueError("MLPPolicy needs state features; sample with MLPPolicy.rollout")
        return self.net(features)

    def probs(self, env: Any, temperature: float = 1.0) -> torch.Tensor:
        """Probability table over every state of ``env``: ``(num_states, num_actions)``."""
        validate_sampling_args(1, temperature)
        with torch.no_grad():
            states = torch.arange(env.num_states)
            return torch.softmax(self.net(env.state_features(states)) / temperature, dim=-1)
