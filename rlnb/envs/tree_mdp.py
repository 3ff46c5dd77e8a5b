"""The tree MDP (card TM): prompts x a branching token tree with verifiable leaves.

Each prompt owns a complete ``b``-ary tree of ``depth`` levels. An episode is ``depth``
tokens (actions ``0..b-1``) that walk from the root to one of ``b**depth`` leaves; the leaf
is rewarded (1) or not (0). It is an LLM's answer space in miniature: a tabular softmax per
prefix is a language model over a tiny vocabulary, and only a few completions are correct.
Card 3 (entropy collapse, Cui et al. arXiv:2505.22617) trains GRPO on it; card 8 (ROVER,
He et al. arXiv:2509.24981) shows that greedy w.r.t. the uniform policy's Q is optimal.
Card TM: 16 prompts, ``b = 4``, ``depth = 6`` (4096 leaves), 1% of leaves rewarded.

Node numbering (level order): the root is node 0 and the child of node ``n`` under action
``a`` is ``n * b + 1 + a``. The ``I = (b**depth - 1) / (b - 1)`` internal nodes are the
decision states of one prompt (``states_per_prompt == I``); level ``l`` holds nodes
``off(l) .. off(l) + b**l - 1`` with ``off(l) = (b**l - 1) / (b - 1)``. After the last action
the node index is ``>= I`` and ``node - I`` is the leaf index, which equals the actions read as
base-``b`` digits, first action most significant (:meth:`TreeMDP.leaf_index`).

Exact answers are backward/forward passes over levels, vectorised over nodes:
:meth:`~TreeMDP.q_values`, :meth:`~TreeMDP.values`, :meth:`~TreeMDP.random_policy_q`,
:meth:`~TreeMDP.success_probability`, :meth:`~TreeMDP.leaf_distribution`,
:meth:`~TreeMDP.coverage`, :meth:`~TreeMDP.pass_at_k_exact`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlnb.checks import (
    as_tensor,
    binary_matrix,
    check_index,
    check_int,
    check_number,
    check_probs,
    check_size,
)
from rlnb.envs.base import Sandbox
from rlnb.estimators import exact_pass_at_k


def check_tree(branching: object, depth: object, num_prompts: object = 1) -> tuple[int, int, int]:
    """``(branching, depth, num_prompts)`` as ints after checking their types and ranges
    and that the ``num_prompts * branching**depth`` leaf table stays within
    :data:`rlnb.checks.MAX_TABLE_ENTRIES` (checked before anything is allocated)."""
    b = check_int(branching, "branching", 2, meaning="tokens per step")
    d = check_int(depth, "depth", 1, meaning="actions per episode")
    P = check_int(num_prompts, "num_prompts", 1)
    check_size(P * b**d, "the tree's leaf table",
               f"num_prompts * branching**depth = {P} * {b}**{d}",
               "lower depth or branching (card TM: 16 prompts, branching 4, depth 6)")
    return b, d, P


class TreeMDP(Sandbox):
    """``num_prompts`` complete ``branching``-ary trees of ``depth`` levels with 0/1 leaves.

    Args:
        leaf_rewards: ``(num_prompts, branching**depth)`` of 0/1 (float, int or bool; stored
            as float); leaf ``j`` of prompt ``p`` is reached by the actions whose base-``b``
            digits are ``j``.
        branching: ``b``, the number of tokens (actions) at every step, >= 2.
        depth: episode length (``horizon``), >= 1.

    Sandbox layout: ``num_actions == branching``, ``horizon == depth``,
    ``states_per_prompt == I == (b**depth - 1) / (b - 1)`` (internal nodes), global state
    ``prompt * I + node``.

    A policy for the exact methods is given as probabilities over actions, ``(I, b)`` (one
    row per node, shared by all prompts) or ``(num_prompts * I, b)`` (one row per state).

    >>> R = torch.tensor([[0., 0., 0., 1.]])            # 1 prompt, b=2, depth=2
    >>> env = TreeMDP(leaf_rewards=R, branching=2, depth=2)
    >>> env.states_per_prompt, env.leaf_index(torch.tensor([[1, 1]]))
    (3, tensor([3]))
    >>> env.random_policy_q()[0]                       # Q of the uniform policy
    tensor([[0.0000, 0.5000],
            [0.0000, 0.0000],
            [0.0000, 1.0000]])
    >>> env.success_probability(torch.full((3, 2), 0.5))
    tensor([0.2500])
    """

    def __init__(self, leaf_rewards: torch.Tensor, branching: int, depth: int) -> None:
        b, d, _ = check_tree(branching, depth)
        num_leaves = b**d
        R = as_tensor(leaf_rewards, "leaf_rewards",
                      "a (num_prompts, branching**depth) tensor of 0/1")
        if R.ndim != 2 or R.shape[0] < 1 or R.shape[1] != num_leaves:
            P = R.shape[0] if R.ndim == 2 else "num_prompts"
            raise ValueError(
                f"leaf_rewards must have shape (num_prompts, branching**depth) = ({P}, "
                f"{num_leaves}) with num_prompts >= 1, got {tuple(R.shape)}"
            )
        R = binary_matrix(R, "leaf_rewards", "binary verifiable reward", "prompt", "leaf")
        self.leaf_rewards = R  # (P, b**d)
        self.branching = b
        self.depth = d
        self.num_leaves = num_leaves
        self.num_prompts = R.shape[0]
        self.num_actions = b
        self.horizon = d
        self.states_per_prompt = (num_leaves - 1) // (b - 1)
        # off[l] = first node of level l, for l = 0..depth (off[depth] == I)
        self._offsets = [(b**l - 1) // (b - 1) for l in range(d + 1)]

    # --- construction -------------------------------------------------------------
    @classmethod
    def random(
        cls,
        num_prompts: int = 16,
        branching: int = 4,
        depth: int = 6,
        reward_fraction: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> TreeMDP:
        """Card TM's instances: each prompt gets exactly
        ``max(1, round(reward_fraction * branching**depth))`` rewarded leaves, chosen
        uniformly at random without replacement (41 of 4096 with the defaults).

        >>> env = TreeMDP.random(generator=torch.Generator().manual_seed(0))
        >>> env.leaf_rewards.shape, env.leaf_rewards.sum(1)[:2]
        (torch.Size([16, 4096]), tensor([41., 41.]))
        """
        branching, depth, num_prompts = check_tree(branching, depth, num_prompts)
        reward_fraction = check_number(reward_fraction, "reward_fraction", 0, 1, low_open=True,
                                       meaning="fraction of leaves rewarded")
        num_leaves = branching**depth
        count = max(1, round(reward_fraction * num_leaves))
        scores = torch.rand(num_prompts, num_leaves, generator=generator)
        chosen = scores.topk(count, dim=1).indices  # (P, count), uniform without replacement
        R = torch.zeros(num_prompts, num_leaves).scatter_(1, chosen, 1.0)
        return cls(leaf_rewards=R, branching=int(branching), depth=int(depth))

    def get_config(self) -> dict[str, Any]:
        return {"branching": self.branching, "depth": self.depth}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {"leaf_rewards": self.leaf_rewards}

    def __repr__(self) -> str:
        return (
            f"TreeMDP(num_prompts={self.num_prompts}, branching={self.branching}, "
            f"depth={self.depth}, rewarded_leaves_per_prompt={self.leaf_rewards.sum(1).mean().item():.1f})"
        )

    # --- state layout -------------------------------------------------------------
    def next_states(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Global state after taking ``actions`` in ``states``: ``(N,), (N,) -> (N,)``.
        Deterministic: ``generator`` is accepted for the protocol and unused.

        Only for steps ``t < depth - 1``; after the last action the episode ends at a leaf
        (use :meth:`reward`, or :meth:`leaf_index` on the whole action sequence)."""
        check_index(actions, self.num_actions, "actions", "token index")
        check_index(states, self.num_states, "states", "global state index")
        I = self.states_per_prompt
        prompt, node = states // I, states % I
        child = node * self.branching + 1 + actions  # (N,)
        if child.numel() and child.max() >= I:
            raise ValueError(
                f"next_states was called on a state at the last level (depth {self.depth - 1}): "
                "its children are leaves, not states. Call it only for t < horizon - 1 and "
                "score the finished episode with reward()"
            )
        return prompt * I + child

    def state_depth(self, states: torch.Tensor) -> torch.Tensor:
        """Level of each state's node (number of actions taken so far), ``(N,)`` long."""
        I = self.states_per_prompt
        node = states % I
        bounds = torch.tensor(self._offsets[1 : self.depth], device=states.device)
        return torch.bucketize(node, bounds, right=True)

    def state_actions(self, states: torch.Tensor) -> torch.Tensor:
        """Actions taken so far to reach each state, ``(N, depth)`` long, padded with
        ``branching`` ("not yet") after the node's level."""
        b, d = self.branching, self.depth
        node = states % self.states_per_prompt
        level = self.state_depth(states)  # (N,)
        offsets = torch.tensor(self._offsets, device=states.device)
        j = node - offsets[level]  # index within the level, base-b digits = actions
        powers = b ** torch.arange(d, device=states.device)  # (d,)
        t = torch.arange(d, device=states.device)  # (d,)
        exponent = (level.unsqueeze(1) - 1 - t).clamp(min=0)  # (N, d)
        digits = (j.unsqueeze(1) // powers[exponent]) % b
        return torch.where(t < level.unsqueeze(1), digits, torch.full_like(digits, b))

    @property
    def feature_dim(self) -> int:
        """``num_prompts + depth * (branching + 1)``."""
        return self.num_prompts + self.depth * (self.branching + 1)

    def state_features(self, states: torch.Tensor) -> torch.Tensor:
        """Compact features ``(N, num_prompts + depth * (branching + 1))`` float: a one-hot
        of the prompt, then for each position ``t = 0..depth-1`` a one-hot over
        ``branching + 1`` slots - the action taken at ``t``, or the last slot ("not yet")
        when the state is at level ``<= t``. The root of every prompt has all "not yet"
        slots set."""
        N = states.shape[0]
        prompt = states // self.states_per_prompt
        onehot_prompt = torch.nn.functional.one_hot(prompt, self.num_prompts)  # (N, P)
        path = torch.nn.functional.one_hot(self.state_actions(states), self.branching + 1)
        return torch.cat([onehot_prompt, path.reshape(N, -1)], dim=1).float()

    # --- episodes -----------------------------------------------------------------
    def leaf_index(self, actions: torch.Tensor) -> torch.Tensor:
        """Leaf reached by each action sequence: ``(N, depth) -> (N,)`` long, the actions
        read as base-``branching`` digits with the first action most significant (matches
        the node numbering: final node = ``I + leaf``)."""
        if actions.ndim != 2 or actions.shape[1] != self.depth:
            raise ValueError(
                f"actions must have shape (N, depth) = (N, {self.depth}), got {tuple(actions.shape)}"
            )
        weights = self.branching ** torch.arange(self.depth - 1, -1, -1, device=actions.device)
        return (actions * weights).sum(-1)

    decode_leaf = leaf_index  # alias

    def leaf_actions(self, leaves: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`leaf_index`: ``(N,)`` leaf indices -> ``(N, depth)`` actions."""
        powers = self.branching ** torch.arange(self.depth - 1, -1, -1, device=leaves.device)
        return (leaves.unsqueeze(1) // powers) % self.branching

    def reward(
        self,
        prompts: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reward of the leaf each episode reaches: prompts ``(N,)``, actions
        ``(N, depth)`` -> ``(N,)`` float in {0, 1}. Deterministic; ``generator`` unused."""
        if prompts.ndim != 1 or actions.shape[:1] != prompts.shape:
            raise ValueError(
                f"prompts must have shape (N,) and actions (N, depth); got "
                f"{tuple(prompts.shape)} and {tuple(actions.shape)}"
            )
        check_index(prompts, self.num_prompts, "prompts", "prompt index")
        check_index(actions, self.num_actions, "actions", "token index")
        return self.leaf_rewards[prompts, self.leaf_index(actions)]

    # --- exact answers --------------------------------------------------------------
    def _levels(self) -> list[tuple[int, int]]:
        """``(first node, number of nodes)`` of each level ``0..depth-1``."""
        return [(self._offsets[l], self.branching**l) for l in range(self.depth)]

    def _policy(self, probs: torch.Tensor) -> torch.Tensor:
        pi = self.action_probs(torch.as_tensor(probs))  # (P, I, b)
        check_probs(pi)
        return pi

    def _backup(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward recursion: returns Q ``(P, I, b)`` and V ``(P, I)`` of the policy."""
        pi = self._policy(probs)
        P, b = self.num_prompts, self.branching
        V = self.leaf_rewards.to(pi.dtype)  # (P, b**depth): V(leaf) = reward
        qs, vs = [], []
        for start, n in reversed(self._levels()):
            Q_l = V.reshape(P, n, b)  # Q(s, a) = V(child); children of a level are contiguous
            V = (pi[:, start : start + n] * Q_l).sum(-1)  # (P, n)
            qs.append(Q_l)
            vs.append(V)
        return torch.cat(qs[::-1], dim=1), torch.cat(vs[::-1], dim=1)

    def q_values(self, probs: torch.Tensor) -> torch.Tensor:
        """Exact ``Q^pi(s, a)`` of a tabular policy, ``(num_prompts, I, branching)``.

        ``probs``: ``(I, b)`` shared or ``(num_prompts * I, b)`` per state. Backward from the
        leaves: ``Q(s, a) = V(child)``, ``V(s) = sum_a pi(a|s) Q(s, a)``, ``V(leaf) = reward``."""
        return self._backup(probs)[0]

    def values(self, probs: torch.Tensor) -> torch.Tensor:
        """Exact ``V^pi(s)`` of every internal node, ``(num_prompts, I)``."""
        return self._backup(probs)[1]

    def random_policy_q(self) -> torch.Tensor:
        """``Q^{pi_u}`` of the uniform random policy, ``(num_prompts, I, branching)``: the
        mean reward of the leaves under the child's subtree. Card 8 (ROVER): acting greedily
        on it is optimal in a deterministic tree with binary terminal reward."""
        return self._subtree_reduce(lambda x: x.mean(-1))

    def optimal_q_values(self) -> torch.Tensor:
        """``Q*(s, a)``: 1 if some rewarded leaf lies under the child, ``(P, I, b)``."""
        return self._subtree_reduce(lambda x: x.amax(-1))

    def _subtree_reduce(self, reduce) -> torch.Tensor:
        P, b, d = self.num_prompts, self.branching, self.depth
        out = []
        for l in range(d):
            # children of level l are the b**(l+1) nodes of level l+1, each over b**(d-l-1) leaves
            per_child = reduce(self.leaf_rewards.reshape(P, b ** (l + 1), b ** (d - l - 1)))
            out.append(per_child.reshape(P, b**l, b))
        return torch.cat(out, dim=1)

    def success_probability(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Exact pass@1 per prompt, ``V^pi(root)``, ``(num_prompts,)``."""
        return self.values(policy_probs)[:, 0]

    def optimal_value(self) -> torch.Tensor:
        """Best achievable pass@1 per prompt, ``(num_prompts,)``: 1 if any leaf is rewarded."""
        return self.leaf_rewards.amax(dim=1)

    def leaf_distribution(self, probs: torch.Tensor) -> torch.Tensor:
        """Exact probability of reaching each leaf, ``(num_prompts, branching**depth)``
        (rows sum to 1). ``(leaf_distribution * leaf_rewards).sum(1)`` is pass@1."""
        pi = self._policy(probs)
        reach = torch.ones(self.num_prompts, 1, dtype=pi.dtype, device=pi.device)
        for start, n in self._levels():
            reach = (reach.unsqueeze(-1) * pi[:, start : start + n]).reshape(self.num_prompts, -1)
        return reach

    def coverage(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        """Expected fraction of each prompt's rewarded leaves found at least once in ``n``
        independent episodes, ``(num_prompts,)``: ``mean over rewarded leaves of
        1 - (1 - q_leaf)^n`` (card 8's "coverage of correct leaves in 256 samples").
        NaN for a prompt with no rewarded leaf."""
        n = check_int(n, "n", 1, meaning="number of sampled episodes")
        q = self.leaf_distribution(probs)
        R = self.leaf_rewards.to(q.dtype)
        found = 1 - (1 - q).clamp(0, 1) ** n
        return (found * R).sum(1) / R.sum(1)

    def pass_at_k_exact(
        self,
        policy_probs: torch.Tensor,
        k: int | Sequence[int] | torch.Tensor,
        *,
        per_problem: bool = False,
    ) -> torch.Tensor:
        """Exact pass@k, mean over prompts of ``1 - (1 - V(root))^k``; shapes as in
        :func:`rlnb.estimators.exact_pass_at_k`."""
        return exact_pass_at_k(self.success_probability(policy_probs), k, per_problem=per_problem)
