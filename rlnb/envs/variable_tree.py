"""A tree MDP with an end-of-sequence token: completions of varying length (card 13).

The :class:`~rlnb.envs.TreeMDP` has fixed-length episodes, so every completion has the
same number of tokens and the loss aggregation modes of ``rlnb.rl.agg_loss`` coincide up
to a constant. Here token 0 is **EOS**: a completion ends at its first EOS (which counts as
a token, as a language model's does), or is *truncated* after ``depth`` tokens without
one. The answer is the tokens before EOS; a truncated completion has no answer and earns
0. So lengths vary from 1 to ``depth``, and the length of right and wrong answers is a
quantity training can change -- the length bias Dr.GRPO (arXiv:2503.20783) attributes to
per-sequence normalisation, and the aggregation study of Lite PPO (arXiv:2508.08221).

It *is* a :class:`TreeMDP` (the same node numbering, states and exact answers) whose
leaf rewards depend only on the tokens up to the first EOS, plus :meth:`is_terminal`:
a node whose path contains EOS is terminal, so a policy samples the steps after it but
masks them out (``rollout.mask``), and completion length is ``rollout.mask.sum(1)``.
Because every row of a tabular policy sums to 1, summing over the unused continuations
leaves each answer's probability unchanged, so ``success_probability``, ``q_values`` and
``leaf_distribution`` of the parent class stay exact. Rows of terminal nodes are never
trained and their Q-values mean nothing.

Answers with ``depth = d`` and ``branching = b``: ``(b - 1)^L`` answers of each length
``L = 0 .. d - 1`` (completion length ``L + 1``), ``sum_L (b - 1)^L`` in all (364 for
``b = 4, d = 6``). Under the uniform policy the completion length is geometric, and
``((b - 1) / b)^d`` of completions are truncated (0.178 for ``b = 4, d = 6``).
"""

from __future__ import annotations

from typing import Any

import torch

from rlnb.checks import check_number, check_size
from rlnb.envs.tree_mdp import TreeMDP, check_tree

__all__ = ["VariableLengthTree"]


def _check_size(branching: object, depth: object, num_prompts: object = 1) -> tuple[int, int, int]:
    """:func:`~rlnb.envs.tree_mdp.check_tree`, plus the per-leaf token table
    ``(branching**depth, depth)`` this class builds."""
    b, d, P = check_tree(branching, depth, num_prompts)
    check_size(b**d * d, "the tree's per-leaf token table",
               f"branching**depth * depth = {b}**{d} * {d}", "lower depth or branching")
    return b, d, P


class VariableLengthTree(TreeMDP):
    """``num_prompts`` trees of completions that stop at the EOS token 0.

    Args:
        leaf_rewards: ``(num_prompts, branching**depth)`` 0/1, as for :class:`TreeMDP`,
            and consistent with EOS: every leaf's reward must equal that of its answer
            (the same for all tokens after the first EOS), and leaves without an EOS
            (truncated completions) must be 0. Build one with :meth:`random` or
            :meth:`from_answers`.
        branching: tokens per step including EOS, >= 2.
        depth: the longest completion, in tokens (the length budget), >= 1.

    >>> env = VariableLengthTree.from_answers([[(1,), (2, 1)]], branching=3, depth=3)
    >>> env.num_answers                      # (), (1,), (2,), (1, 1), (1, 2), (2, 1), (2, 2)
    7
    >>> env.completion_lengths()[[0, 9, 21, 26]].tolist()   # tokens 000, 100, 210, 222
    [1, 2, 3, 3]
    >>> uniform = torch.full((env.states_per_prompt, 3), 1 / 3)
    >>> round(float(env.success_probability(uniform)[0]), 6)     # 1/9 + 1/27
    0.148148
    >>> {k: round(v, 4) for k, v in env.length_stats(uniform).items()}["exact/truncated"]
    0.2963

    Footgun: the Trainer's ``completions/mean_length`` counts tokens in the mask, which
    is right here; ``entropy`` averages over those tokens too, so a policy that stops
    early has fewer, often more certain, tokens in that average.
    """

    eos_token: int = 0  # fixed: the canonical leaf of an answer pads it with EOS

    def __init__(self, leaf_rewards: torch.Tensor, branching: int, depth: int) -> None:
        _check_size(branching, depth)
        super().__init__(leaf_rewards=leaf_rewards, branching=branching, depth=depth)
        b, d = self.branching, self.depth
        digits = self.leaf_actions(torch.arange(self.num_leaves))  # (L, d)
        is_eos = digits == self.eos_token
        has_eos = is_eos.any(dim=1)
        first = is_eos.float().argmax(dim=1)  # position of the first EOS (0 if none)
        self._lengths = torch.where(has_eos, first + 1, torch.full_like(first, d))  # (L,)
        self._truncated = ~has_eos  # (L,)
        # the canonical leaf of each answer: the tokens up to EOS, then EOS (0) to the end
        keep = torch.arange(d)[None, :] < self._lengths[:, None]  # (L, d)
        canonical = self.leaf_index(torch.where(keep, digits, torch.zeros_like(digits)))  # (L,)
        self._canonical = canonical
        R = self.leaf_rewards
        bad = (R != R[:, canonical]).any(dim=0)
        if bad.any():
            leaf = int(bad.nonzero()[0])
            raise ValueError(
                f"leaf_rewards must depend only on the tokens up to the first EOS (token "
                f"{self.eos_token}); leaf {leaf} (tokens {digits[leaf].tolist()}) differs from "
                f"leaf {int(canonical[leaf])} with the same answer. Build the rewards with "
                "VariableLengthTree.random or from_answers"
            )
        if (R[:, self._truncated] != 0).any():
            raise ValueError(
                "leaf_rewards must be 0 on truncated completions (no EOS within depth "
                "tokens): they have no answer"
            )
        self._answer_leaves = torch.unique(canonical[~self._truncated])  # (num_answers,)
        # terminal flag of every internal node: some action on its path was EOS
        I = self.states_per_prompt
        terminal = torch.zeros(I, dtype=torch.bool)
        for level in range(1, d):
            start, count = self._offsets[level], b**level
            nodes = torch.arange(start, start + count)
            parent, action = (nodes - 1) // b, (nodes - 1) % b
            terminal[nodes] = terminal[parent] | (action == self.eos_token)
        self._terminal_nodes = terminal  # (I,)

    # --- construction ---------------------------------------------------------------
    @classmethod
    def random(
        cls,
        num_prompts: int = 16,
        branching: int = 4,
        depth: int = 6,
        reward_fraction: float = 0.03,
        generator: torch.Generator | None = None,
    ) -> VariableLengthTree:
        """Each prompt gets ``max(1, round(reward_fraction * num_answers))`` correct
        answers, drawn uniformly without replacement among all answers (of every length).
        Defaults: 11 of 364 answers; most answers are long (243 have 5 tokens), so the
        uniform policy solves about 1.3% of completions, with correct ones longer than wrong.

        >>> env = VariableLengthTree.random(generator=torch.Generator().manual_seed(0))
        >>> env.num_answers, env.answer_rewards().sum(1)[:2].tolist()
        (364, [11.0, 11.0])
        """
        branching, depth, num_prompts = _check_size(branching, depth, num_prompts)
        reward_fraction = check_number(reward_fraction, "reward_fraction", 0, 1, low_open=True,
                                       meaning="fraction of answers rewarded")
        empty = cls(torch.zeros(1, int(branching) ** int(depth)), branching, depth)
        answers = empty._answer_leaves  # (A,)
        count = max(1, round(reward_fraction * answers.numel()))
        scores = torch.rand(num_prompts, answers.numel(), generator=generator)
        chosen = answers[scores.topk(count, dim=1).indices]  # (P, count) canonical leaves
        return cls(empty._spread(chosen, num_prompts), empty.branching, empty.depth)

    @classmethod
    def from_answers(
        cls, answers: list[list[tuple[int, ...]]], branching: int, depth: int
    ) -> VariableLengthTree:
        """Rewards from explicit correct answers per prompt: ``answers[p]`` is a list of
        token tuples without EOS, each shorter than ``depth``, with tokens in
        ``1 .. branching - 1``. ``()`` is the empty answer (EOS first)."""
        if isinstance(answers, (str, bytes)) or not isinstance(answers, (list, tuple)):
            raise TypeError(
                f"answers must be a list with one list of answers (token tuples) per prompt, "
                f"got {type(answers).__name__} {answers!r}"[:200]
            )
        _check_size(branching, depth, max(len(answers), 1))
        empty = cls(torch.zeros(1, int(branching) ** int(depth)), branching, depth)
        b, d = empty.branching, empty.depth
        rows = []
        for p, prompt_answers in enumerate(answers):
            leaves = []
            for ans in prompt_answers:
                ans = tuple(int(t) for t in ans)
                if len(ans) >= d or any(not 1 <= t < b for t in ans):
                    raise ValueError(
                        f"answer {ans} of prompt {p} must have fewer than depth = {d} tokens, "
                        f"each in 1..{b - 1} (token {cls.eos_token} is EOS)"
                    )
                digits = list(ans) + [cls.eos_token] * (d - len(ans))
                leaves.append(int(empty.leaf_index(torch.tensor([digits]))[0]))
            rows.append(torch.tensor(leaves, dtype=torch.long))
        if not rows:
            raise ValueError("answers must hold one list of correct answers per prompt")
        R = torch.zeros(len(rows), b**d)
        for p, leaves in enumerate(rows):
            R[p] = empty._spread(leaves[None], 1)[0] if leaves.numel() else 0.0
        return cls(R, b, d)

    def _spread(self, canonical: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """Leaf rewards ``(P, L)`` from rewarded canonical leaves ``(P, k)``: every leaf
        whose answer is one of them gets 1."""
        marked = torch.zeros(num_prompts, self.num_leaves).scatter_(1, canonical, 1.0)
        R = marked[:, self._canonical]  # every leaf takes its answer's reward
        R[:, self._truncated] = 0.0
        return R

    def __repr__(self) -> str:
        correct = self.answer_rewards().sum(1).mean().item()
        return (
            f"VariableLengthTree(num_prompts={self.num_prompts}, branching={self.branching} "
            f"(token {self.eos_token} = EOS), depth={self.depth}, answers={self.num_answers}, "
            f"correct_answers_per_prompt={correct:.1f})"
        )

    # --- layout ---------------------------------------------------------------------
    def is_terminal(self, states: torch.Tensor) -> torch.Tensor:
        """``(N,) -> (N,) bool``: the node's path contains EOS (the completion ended)."""
        return self._terminal_nodes.to(states.device)[states % self.states_per_prompt]

    @property
    def num_answers(self) -> int:
        """Distinct answers (EOS-terminated completions): ``sum_{L < depth} (b - 1)^L``."""
        return int(self._answer_leaves.numel())

    def completion_lengths(self) -> torch.Tensor:
        """Tokens in the completion that reaches each leaf, ``(branching**depth,)`` long:
        the position of the first EOS plus one, or ``depth`` if truncated."""
        return self._lengths.clone()

    def truncated_leaves(self) -> torch.Tensor:
        """``(branching**depth,)`` bool: leaves reached without any EOS."""
        return self._truncated.clone()

    def answer_rewards(self) -> torch.Tensor:
        """``(num_prompts, num_answers)`` rewards of the distinct answers."""
        return self.leaf_rewards[:, self._answer_leaves]

    # --- exact answers ----------------------------------------------------------------
    def expected_length(self, probs: torch.Tensor, outcome: str = "all") -> torch.Tensor:
        """Exact expected completion length per prompt, ``(num_prompts,)``.

        ``outcome``: ``"all"``, ``"correct"`` (given reward 1) or ``"wrong"`` (given
        reward 0, truncated completions included); NaN where that outcome has
        probability 0."""
        if outcome not in ("all", "correct", "wrong"):
            raise ValueError(f"outcome must be 'all', 'correct' or 'wrong', got {outcome!r}")
        q = self.leaf_distribution(probs)  # (P, L)
        R = self.leaf_rewards.to(q.dtype)
        w = q if outcome == "all" else q * (R if outcome == "correct" else 1 - R)
        lengths = self._lengths.to(q.dtype)
        mass = w.sum(1)
        return torch.where(mass > 0, (w * lengths).sum(1) / mass.clamp_min(1e-300),
                           torch.full_like(mass, float("nan")))

    def truncation_probability(self, probs: torch.Tensor) -> torch.Tensor:
        """Exact probability that a completion emits no EOS within ``depth`` tokens,
        ``(num_prompts,)``."""
        q = self.leaf_distribution(probs)
        return q[:, self._truncated].sum(1)

    def length_stats(self, probs: torch.Tensor) -> dict[str, float]:
        """Means over prompts, for logging from a callback: ``exact/pass@1``,
        ``exact/length``, ``exact/length_correct``, ``exact/length_wrong`` (nan-means
        over the prompts where the outcome is possible) and ``exact/truncated``."""
        q = self.leaf_distribution(probs)  # (P, L)
        R = self.leaf_rewards.to(q.dtype)
        lengths = self._lengths.to(q.dtype)
        out = {"exact/pass@1": float((q * R).sum(1).mean())}
        for name, w in (("length", q), ("length_correct", q * R), ("length_wrong", q * (1 - R))):
            mass = w.sum(1)
            ok = mass > 1e-12
            out[f"exact/{name}"] = (
                float(((w * lengths).sum(1)[ok] / mass[ok]).mean()) if ok.any() else float("nan")
            )
        out["exact/truncated"] = float(q[:, self._truncated].sum(1).mean())
        return out

    def get_config(self) -> dict[str, Any]:
        return {"branching": self.branching, "depth": self.depth}
