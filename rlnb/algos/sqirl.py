"""SQIRL: shallow Q-iteration via reinforcement learning (Laidlaw et al., arXiv:2312.08369).

Random exploration plus ``k`` steps of fitted-Q, one time step at a time::

    for i in 0..T-1:
        roll out m episodes: the policy learned so far for steps < i, uniform random after
        regress Q^1 at step j = min(i + k - 1, T - 1) on the random return from step j
        for j' = j - 1 down to i:  regress Q at j' on  r + max_a Q(s_{j'+1}, a)
        pi_i = greedy on Q at step i

If the MDP is k-QVI-solvable, ``Q`` at step ``i`` estimates ``Q^k`` and acting greedily on it
is optimal once ``m`` is large enough; ``T * m`` episodes in total. Any regressor works if
it generalises in-distribution: :func:`sqirl` takes ``regressor="tabular"`` (a mean per
``(state, action)``: exact in the limit) or ``"mlp"`` (a small network on the sandbox's
``state_features``, the paper's deep-RL argument in miniature).

The sandbox needs the gymnax-style API of :class:`rlnb.envs.gridworld.Gridworld`
(``reset``, ``step``, ``decode``, ``core_states``, ``mdp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlnb.mdp.horizon import expected_return, one_thread

__all__ = ["PlanResult", "evaluate_policy", "one_thread", "sqirl", "tie_break_greedy"]


@dataclass
class PlanResult:
    """What a planning algorithm (SQIRL, GORP) returns.

    Attributes:
        policy: ``(T, C, A)`` time-indexed action probabilities over the map's core states
            (uniform over the greedy set; uniform everywhere a state was never seen).
        episodes: episodes sampled (the unit PPO's samples-to-optimal is counted in).
        env_steps: environment steps simulated (``episodes * T``).
        expected_return: exact return of ``policy`` (from the explicit MDP).
        optimal_value: ``V*`` of the start state.
        random_value: return of the uniform random policy.
    """

    policy: torch.Tensor
    episodes: int
    env_steps: int
    expected_return: float
    optimal_value: float
    random_value: float

    @property
    def normalized_return(self) -> float:
        """``(J - V_rand) / (V* - V_rand)``: 0 = random, 1 = optimal."""
        return _normalize(self.expected_return, self.random_value, self.optimal_value)


def _normalize(j: float, v_rand: float, v_star: float) -> float:
    span = v_star - v_rand
    return 1.0 if span <= 1e-12 else (j - v_rand) / span


def evaluate_policy(env: Any, policy: torch.Tensor, prompt: int = 0) -> tuple[float, float, float]:
    """Exact ``(J(policy), V*, V_rand)`` of a ``(T, C, A)`` policy on one map."""
    from rlnb.mdp.horizon import random_policy_q, value_iteration

    mdp = env.mdp(prompt)
    v_star = float(mdp.initial @ value_iteration(mdp)[1][0])
    q_rand = random_policy_q(mdp)
    v_rand = float(mdp.initial @ q_rand[0].mean(-1))
    return expected_return(mdp, policy), v_star, v_rand


class StopWhenOptimal:
    """Trainer callback for samples-to-optimal: logs the tabular (or MLP) policy's exact
    return on a gridworld (``exact/return``, ``exact/normalized_return``) and stops
    training once the normalised return reaches ``threshold``. ``self.step`` is the step it
    did (None if never); episodes used = ``step * num_prompts_per_step * num_generations``.

    >>> from rlnb.envs.gridworld import Gridworld
    >>> from rlnb.policies import TabularPolicy
    >>> from rlnb.train import TrainConfig, Trainer
    >>> env = Gridworld.from_name("open3")
    >>> stop = StopWhenOptimal(env, threshold=0.9)
    >>> cfg = TrainConfig(max_steps=200, num_prompts_per_step=4, num_generations=16,
    ...                   learning_rate=0.1, num_iterations=4, progress_bar=False)
    >>> _ = Trainer(TabularPolicy.for_env(env), env, cfg, callbacks=[stop]).train()
    >>> stop.step is not None and stop.step < 200
    True
    """

    def __init__(self, env: Any, threshold: float = 0.9, prompt: int = 0) -> None:
        from rlnb.mdp.horizon import random_policy_q, value_iteration

        self.env, self.threshold, self.prompt = env, float(threshold), prompt
        self.mdp = env.mdp(prompt)
        self.v_star = float(self.mdp.initial @ value_iteration(self.mdp)[1][0])
        self.v_rand = float(self.mdp.initial @ random_policy_q(self.mdp)[0].mean(-1))
        self.step: int | None = None

    def __call__(self, trainer: Any, metrics: dict[str, Any]) -> dict[str, float]:
        try:
            probs = trainer.policy.probs()
        except TypeError:  # MLPPolicy enumerates the sandbox's states
            probs = trainer.policy.probs(self.env)
        j = expected_return(self.mdp, self.env.policy_table(probs)[self.prompt])
        norm = _normalize(j, self.v_rand, self.v_star)
        if norm >= self.threshold and self.step is None:
            self.step = trainer.step
            trainer.stop()
        return {"exact/return": j, "exact/normalized_return": norm}


def tie_break_greedy(Q: torch.Tensor, seen: torch.Tensor | None = None, tol: float = 1e-9) -> torch.Tensor:
    """Probabilities uniform over the (seen) argmax actions of ``Q (..., A)``; rows with
    nothing seen are uniform. Exact ties are common with few samples (all zeros when no
    reward was seen): breaking them towards action 0 would walk into a wall forever."""
    if seen is None:
        seen = torch.ones_like(Q, dtype=torch.bool)
    masked = torch.where(seen, Q, torch.full_like(Q, -torch.inf))
    best = seen & (masked >= masked.amax(-1, keepdim=True) - tol)
    best = torch.where(seen.any(-1, keepdim=True), best, torch.ones_like(best))
    return best.double() / best.sum(-1, keepdim=True)


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.multinomial(probs.float(), 1, generator=generator)[:, 0]


# --- regressors: fit (inputs, actions, targets) -> Q table over every core state ---------


class _TabularRegressor:
    """Mean target per (core state, action); unseen pairs are marked unseen."""

    def __init__(self, env: Any) -> None:
        self.C, self.A = env.core_states, env.num_actions

    def fit(self, states, cores, actions, targets, t):
        sums = torch.zeros(self.C, self.A, dtype=torch.float64)
        counts = torch.zeros(self.C, self.A, dtype=torch.float64)
        sums.index_put_((cores, actions), targets.double(), accumulate=True)
        counts.index_put_((cores, actions), torch.ones_like(targets, dtype=torch.float64),
                          accumulate=True)
        seen = counts > 0
        return torch.where(seen, sums / counts.clamp_min(1), torch.zeros_like(sums)), seen


class _MLPRegressor:
    """A small MLP from ``state_features`` to ``A`` Q-values, trained with MSE on the taken
    action's output (full batch, Adam). Predicts every core state, seen or not."""

    def __init__(self, env: Any, hidden: tuple[int, ...], steps: int, lr: float, seed: int,
                 prompt: int) -> None:
        self.env, self.hidden, self.steps, self.lr = env, hidden, steps, lr
        self.seed, self.prompt = seed, prompt

    def fit(self, states, cores, actions, targets, t):
        env = self.env
        g = torch.Generator().manual_seed(self.seed * 1009 + t)  # init only; no global RNG
        sizes = [env.feature_dim, *self.hidden, env.num_actions]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            lin = nn.Linear(a, b)
            bound = 1.0 / a**0.5
            lin.weight.data = torch.rand(b, a, generator=g) * 2 * bound - bound
            lin.bias.data.zero_()
            layers += [lin, nn.Tanh()]
        net = nn.Sequential(*layers[:-1])
        x = env.state_features(states)
        y = targets.float()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                pred = net(x).gather(1, actions[:, None])[:, 0]
                loss = ((pred - y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        C = env.core_states
        every = self.prompt * env.states_per_prompt + t * C + torch.arange(C)  # (C,) at step t
        with torch.no_grad():
            Q = net(env.state_features(every)).double()
        return Q, torch.ones_like(Q, dtype=torch.bool)


def _regressor(env, regressor, hidden, steps, lr, seed, prompt):
    if regressor == "tabular":
        return _TabularRegressor(env)
    if regressor == "mlp":
        return _MLPRegressor(env, tuple(hidden), steps, lr, seed, prompt)
    raise ValueError(f"regressor must be 'tabular' or 'mlp', got {regressor!r}")


@torch.no_grad()
@one_thread()
def sqirl(
    env: Any,
    *,
    k: int = 1,
    episodes_per_step: int = 256,
    regressor: str = "tabular",
    prompt: int = 0,
    generator: torch.Generator | None = None,
    hidden: tuple[int, ...] = (64,),
    fit_steps: int = 300,
    fit_lr: float = 1e-2,
    seed: int = 0,
) -> PlanResult:
    """Run SQIRL on one map and return its greedy policy with its exact return.

    Args:
        env: a :class:`rlnb.envs.gridworld.Gridworld` (or a sandbox with the same API).
        k: fitted-Q depth; SQIRL is guaranteed to work (with enough episodes) on a
            k-QVI-solvable MDP.
        episodes_per_step: ``m``, random-rollout episodes per time step; ``T * m`` in all.
        regressor: ``"tabular"`` or ``"mlp"``.
        prompt: which map.
        generator: the only source of randomness of the rollouts.
        hidden, fit_steps, fit_lr, seed: the MLP regressor's size, Adam steps, learning
            rate and initialisation seed.

    Returns:
        :class:`PlanResult`; ``episodes == T * episodes_per_step``.

    >>> from rlnb.envs.gridworld import Gridworld
    >>> env = Gridworld.from_name("open3")
    >>> res = sqirl(env, k=1, episodes_per_step=64, generator=torch.Generator().manual_seed(0))
    >>> res.episodes, round(res.normalized_return, 2)
    (384, 1.0)
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 (1 = greedy on the random policy's Q), got {k}")
    if int(episodes_per_step) < 1:
        raise ValueError(f"episodes_per_step must be >= 1, got {episodes_per_step}")
    T, A, C, m = env.horizon, env.num_actions, env.core_states, int(episodes_per_step)
    fit = _regressor(env, regressor, hidden, fit_steps, fit_lr, seed, prompt).fit
    policy = torch.full((T, C, A), 1.0 / A, dtype=torch.float64)
    uniform = torch.full((m, A), 1.0 / A)
    prompts = torch.full((m,), prompt, dtype=torch.long)
    for i in range(T):
        # --- ROLLOUT: learned policy before step i, uniform random from step i on ---
        s = env.reset(m, generator, prompts=prompts)
        states, actions, rewards = [], [], []
        for t in range(T):
            core = env.decode(s)["core"]
            probs = policy[t, core] if t < i else uniform
            a = _sample(probs, generator)
            states.append(s)
            actions.append(a)
            s, r, _ = env.step(s, a, generator)
            rewards.append(r.double())
        R = torch.stack(rewards, 1)  # (m, T)
        returns = R.flip(1).cumsum(1).flip(1)  # (m, T): reward from step t on
        # --- REGRESSION: Q^1 at step j, then k-1 fitted-Q steps back to step i ---
        j = min(i + k - 1, T - 1)
        Q, seen = fit(states[j], env.decode(states[j])["core"], actions[j], returns[:, j], j)
        for jj in range(j - 1, i - 1, -1):
            nxt = env.decode(states[jj + 1])["core"]
            v_next = torch.where(seen, Q, torch.full_like(Q, -torch.inf)).amax(-1)  # (C,)
            v_next = torch.where(torch.isinf(v_next), torch.zeros_like(v_next), v_next)
            target = R[:, jj] + v_next[nxt]
            Q, seen = fit(states[jj], env.decode(states[jj])["core"], actions[jj], target, jj)
        policy[i] = tie_break_greedy(Q, seen)
    J, v_star, v_rand = evaluate_policy(env, policy, prompt)
    return PlanResult(policy=policy, episodes=T * m, env_steps=T * T * m, expected_return=J,
                      optimal_value=v_star, random_value=v_rand)
