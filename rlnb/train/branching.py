"""Rollouts sampled one position at a time: forced prefixes and CURE's branching.

CURE (Li et al., arXiv:2508.11016) fights entropy collapse in two stages. Stage 1 samples
completions, finds each one's highest-entropy token, regenerates new continuations from
the prefix up to it, and trains on the originals and the re-concatenated branches together;
stage 2 trains plainly. :func:`branching_rollout` is stage 1's rollout for the discrete
sandboxes, in the trainer's layout (each prompt's ``n`` rows contiguous: every original
followed by its branches), switched on by ``TrainConfig.cure_branches``.

Both this and EAD's per-position temperatures (:mod:`rlnb.train.schedules`) need what the
policy protocol's ``rollout`` does not offer: to start from a given prefix, or to change the
temperature between positions. :func:`stepwise_rollout` gets both from the protocol alone
by calling ``policy.rollout`` once per position on a one-step view of the sandbox whose
"prompts" are the rows' current states. That works for policies that sample through the
sandbox's states (``TabularPolicy``, ``MLPPolicy``: their rollouts carry ``states``); a
language model's sampler has no per-position temperature nor state view, and is refused.

Footgun: branches share their prefix with the original *and* its tokens: with GRPO each
shared prefix token is trained once per row, with that row's advantage (CURE's
re-concatenated responses are trained whole, as here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlnb.policies.base import Policy, Rollout


class _OneStep:
    """A sandbox seen from given states, for one action: "prompt" ``i`` starts at
    ``states[i]`` and the episode is one step long. Everything else is the sandbox's."""

    def __init__(self, env: Any, states: torch.Tensor) -> None:
        self._env, self._states = env, states
        self.horizon = 1
        self.num_prompts = states.shape[0]

    def initial_states(self, rows: torch.Tensor) -> torch.Tensor:
        return self._states[rows]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _check_stepwise(policy: Policy, env: Any, what: str) -> None:
    missing = [a for a in ("initial_states", "next_states", "is_terminal", "horizon")
               if not hasattr(env, a)]
    if missing:
        raise TypeError(
            f"{what} needs a discrete sandbox with {', '.join(missing)} (rlnb.envs: TreeMDP, "
            f"Gridworld, ...); got {type(env).__name__}")
    if not isinstance(env.horizon, int) or env.horizon < 1:
        raise TypeError(
            f"{what} samples a discrete sandbox position by position; {type(env).__name__} "
            f"has horizon {env.horizon!r} (a text task, sampled by a language model whose "
            "sampler takes one temperature per call and cannot branch): use a constant "
            "temperature and cure_branches=0 for language models")
    if not callable(getattr(policy, "rollout", None)) or not callable(
            getattr(policy, "log_probs", None)):
        raise TypeError(f"{what} needs an rlnb policy (rollout and log_probs), got "
                        f"{type(policy).__name__}")


@torch.no_grad()
def stepwise_rollout(
    policy: Policy,
    env: Any,
    prompts: torch.Tensor,
    n: int,
    *,
    temperatures: float | Sequence[float] = 1.0,
    generator: torch.Generator | None = None,
    prefix: Rollout | None = None,
    depth: torch.Tensor | None = None,
) -> Rollout:
    """``n`` completions per prompt (rows grouped as ``policy.rollout`` groups them), each
    position ``t`` sampled by its own ``policy.rollout`` call at ``temperatures[t]`` (one
    number: the same at every position).

    With ``prefix`` (a rollout of ``len(prompts) * n`` rows of the same sandbox) and
    ``depth`` ``(N,)`` long: row ``i`` keeps ``prefix``'s actions, states and log-probs at
    positions ``t < depth[i]`` and is sampled afresh from its state at ``depth[i]`` on.
    Every position of every row draws from ``generator`` (forced ones too), so the same
    generator state gives the same rollout.

    Returns a :class:`Rollout` with ``logp`` of each sampled token under the temperature
    it was sampled at, ``states`` and, for an MLP policy, ``extra["features"]``.

    >>> from rlnb.envs import TreeMDP
    >>> from rlnb.policies import TabularPolicy
    >>> env = TreeMDP.random(num_prompts=2, depth=3, generator=torch.Generator().manual_seed(0))
    >>> r = stepwise_rollout(TabularPolicy.for_env(env), env, torch.arange(2), 3,
    ...                      temperatures=[1.2, 1.0, 0.5], generator=torch.Generator().manual_seed(0))
    >>> r.actions.shape, r.prompts.tolist()
    (torch.Size([6, 3]), [0, 0, 0, 1, 1, 1])
    """
    _check_stepwise(policy, env, "stepwise_rollout")
    T = env.horizon
    taus = [float(temperatures)] * T if isinstance(temperatures, (int, float)) else [
        float(t) for t in temperatures]
    if len(taus) != T:
        raise ValueError(f"temperatures must hold one temperature per position (horizon "
                         f"{T}), got {len(taus)}")
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    rows = prompts.repeat_interleave(n)  # (N,) groups contiguous, as Policy.rollout
    N = rows.shape[0]
    if (prefix is None) != (depth is None):
        raise ValueError("pass prefix and depth together (the rollout to branch from and the "
                         "position each row branches at), or neither")
    if prefix is not None:
        if prefix.states is None or len(prefix) != N or prefix.actions.shape[1] != T:
            raise ValueError(
                f"prefix must be a rollout of {N} rows and {T} positions with states (sampled "
                f"by a tabular or MLP policy), got {len(prefix)} rows")
        depth = torch.as_tensor(depth, dtype=torch.long)
        if depth.shape != (N,) or bool((depth < 0).any()) or bool((depth >= T).any()):
            raise ValueError(f"depth must be ({N},) long with values in [0, {T - 1}], got "
                             f"shape {tuple(depth.shape)}")
    s = env.initial_states(rows)  # (N,)
    done = env.is_terminal(s)
    actions, states, logps, masks, feats = [], [], [], [], []
    row_ids = torch.arange(N)
    for t in range(T):
        if prefix is not None:
            s = torch.where(t <= depth, prefix.states[:, t], s)  # the branch point too
        one = policy.rollout(_OneStep(env, s), row_ids, 1, temperature=taus[t],
                             generator=generator)
        if one.states is None:
            raise TypeError(
                f"{type(policy).__name__} samples without the sandbox's states, so it cannot "
                "be sampled position by position (per-position temperatures, branching); use "
                "a TabularPolicy or MLPPolicy, or a constant temperature")
        a, lp = one.actions[:, 0], one.logp[:, 0]
        f = one.extra.get("features")
        if prefix is not None:
            forced = t < depth
            a = torch.where(forced, prefix.actions[:, t], a)
            lp = torch.where(forced, prefix.logp[:, t], lp)
            if f is not None:
                f = torch.where(forced[:, None], prefix.extra["features"][:, t], f[:, 0])[:, None]
        actions.append(a)
        states.append(s)
        logps.append(lp)
        masks.append(~done)
        if f is not None:
            feats.append(f)
        if t < T - 1:
            s = env.next_states(s, a, generator)
            done = done | env.is_terminal(s)
    extra = {"features": torch.cat(feats, dim=1)} if feats else {}  # (N, T, F)
    mask = torch.stack(masks, dim=1)
    logp = torch.stack(logps, dim=1)
    return Rollout(prompts=rows, actions=torch.stack(actions, dim=1), mask=mask,
                   logp=torch.where(mask, logp, torch.zeros_like(logp)), group_size=n,
                   states=torch.stack(states, dim=1), extra=extra)


def highest_entropy_depth(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position of the highest-entropy token of each row, ``(N, T), (N, T) -> (N,)`` long
    (the first one on ties; positions outside ``mask`` never win).

    >>> highest_entropy_depth(torch.tensor([[0.1, 0.9, 0.9], [1.0, 0.2, 5.0]]),
    ...                       torch.tensor([[True, True, True], [True, True, False]]))
    tensor([1, 0])
    """
    masked = torch.where(mask, entropy, torch.full_like(entropy, -torch.inf))
    return masked.argmax(dim=1)


@torch.no_grad()
def branching_rollout(
    policy: Policy,
    env: Any,
    prompts: torch.Tensor,
    n: int,
    *,
    branches: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """CURE stage 1: ``n`` rows per prompt made of ``n // (branches + 1)`` originals, each
    followed by ``branches`` regenerations from the prefix before its highest-entropy
    position (the policy's entropy at ``temperature`` along the original's own path).

    Returns the trainer's layout (``group_size == n``; rows of a prompt contiguous), with
    ``extra["branch_depth"]`` ``(N,)`` (the position a branch regenerates from; -1 for an
    original) and ``extra["is_branch"]`` ``(N,)`` bool. A branch keeps its original's
    tokens before that position and samples the rest, that position included.

    >>> from rlnb.envs import TreeMDP
    >>> from rlnb.policies import TabularPolicy
    >>> env = TreeMDP.random(num_prompts=2, depth=3, generator=torch.Generator().manual_seed(0))
    >>> r = branching_rollout(TabularPolicy.for_env(env), env, torch.arange(2), 4, branches=1,
    ...                       generator=torch.Generator().manual_seed(0))
    >>> r.group_size, r.extra["is_branch"].tolist()
    (4, [False, True, False, True, False, True, False, True])
    """
    _check_stepwise(policy, env, "branching_rollout")
    if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
        raise ValueError(f"branches must be an integer >= 1 (regenerations per original), "
                         f"got {branches!r}")
    if n % (branches + 1):
        raise ValueError(
            f"n ({n}) must be a multiple of branches + 1 = {branches + 1}: each prompt's rows "
            f"are originals each followed by {branches} branch(es)")
    m = n // (branches + 1)  # originals per prompt
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    orig = policy.rollout(env, prompts, m, temperature=temperature, generator=generator)
    if orig.states is None:
        raise TypeError(f"{type(policy).__name__} samples without the sandbox's states; "
                        "branching needs a TabularPolicy or MLPPolicy")
    _, entropy = policy.log_probs(orig, temperature=temperature)  # (P*m, T)
    k = highest_entropy_depth(entropy, orig.mask)  # (P*m,)
    # --- BRANCHES: `branches` regenerations of every original from its position k ---
    rep = torch.arange(len(orig)).repeat_interleave(branches)  # (P*m*b,)
    src = _take(orig, rep, group_size=1)
    new = stepwise_rollout(policy, env, orig.prompts[rep], 1, temperatures=temperature,
                           generator=generator, prefix=src, depth=k[rep])
    # --- LAYOUT: original o, then its branches, for o = 0..P*m-1 ---
    both = _cat([orig, new])
    n_orig = len(orig)
    originals = torch.arange(n_orig)[:, None]  # (P*m, 1)
    order = torch.cat([originals, n_orig + originals * branches + torch.arange(branches)],
                      dim=1).reshape(-1)  # (N,)
    out = _take(both, order, group_size=n)
    is_branch = order >= n_orig
    out.extra["is_branch"] = is_branch
    out.extra["branch_depth"] = torch.cat([torch.full((n_orig,), -1), k[rep]])[order]
    return out


def _take(r: Rollout, index: torch.Tensor, *, group_size: int) -> Rollout:
    """Rows ``index`` of a rollout (per-row ``extra`` tensors too)."""
    N = len(r)

    def pick(v: Any) -> Any:
        return v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == N else v

    return Rollout(prompts=r.prompts[index], actions=r.actions[index], mask=r.mask[index],
                   logp=r.logp[index], group_size=group_size,
                   states=None if r.states is None else r.states[index],
                   extra={k: pick(v) for k, v in r.extra.items()})


def _cat(parts: list[Rollout]) -> Rollout:
    """Rows of several rollouts of the same sandbox and policy, one after the other."""
    keys = set(parts[0].extra)
    return Rollout(
        prompts=torch.cat([p.prompts for p in parts]),
        actions=torch.cat([p.actions for p in parts]),
        mask=torch.cat([p.mask for p in parts]),
        logp=torch.cat([p.logp for p in parts]),
        group_size=1,
        states=torch.cat([p.states for p in parts]),
        extra={k: torch.cat([p.extra[k] for p in parts]) for k in keys
               if all(isinstance(p.extra.get(k), torch.Tensor) for p in parts)},
    )
