"""Intrinsic rewards: rewards computed from the policy's own samples, with no verifier.

:func:`majority_vote_rewards` is self-consistency as a reward (TTRL, Zuo et al.
arXiv:2504.16084; card 17): in each group of ``G`` samples of one prompt, a sample earns 1
when its answer is the group's most frequent answer, else 0. The reward never sees the gold
answer, so training on it can only sharpen what the policy already prefers: it helps when
the policy's mode is right and entrenches the mode when it is wrong (card 17's
"misaligned" case).

Ties between modes are broken uniformly at random with the caller's generator: the card
warns that a tie-break which looks at anything else (the first sample, the smallest
answer, the gold answer) can leak the answer or bias the vote.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.envs.votes import NO_ANSWER, majority_vote_rewards
from rlnb.mdp.preference import win_rate_rewards

__all__ = ["NO_ANSWER", "PROCESS_REWARD_MODES", "majority_vote_rewards", "process_rewards",
           "win_rate_rewards"]


#: The refinements of a per-step process reward (Gao et al. 2024, card 22).
PROCESS_REWARD_MODES = ("sum", "clip", "cap", "delta")


def process_rewards(
    scores: Tensor,
    mask: Tensor,
    mode: str = "sum",
    *,
    weight: float = 1.0,
    clip_threshold: float = 0.8,
    cap: float = 0.3,
) -> Tensor:
    """Per-step rewards ``(N, T)`` from a process reward model's step scores ``(N, T)``,
    refined as in *On Designing Effective RL Reward at Training Time for LLM Reasoning*
    (Gao et al. 2024; card 22). Add the outcome reward at the last step yourself.

    With ``s_t`` the score of valid step t of a trajectory and ``w`` the weight:

    - ``"sum"``: ``w s_t``. Every extra step adds reward, so a policy learns to repeat
      correct but useless steps (the hacking card 22 shows).
    - ``"clip"``: ``w min(s_t - eta, 0)`` with ``eta = clip_threshold``: a step is at best
      free, never a gain, so the accumulated process reward is bounded above by 0.
    - ``"cap"``: the cumulative process reward ``w sum_{k<=t} s_k`` capped at ``cap``,
      handed out as its increments (later steps get 0 once the cap is reached).
    - ``"delta"``: ``w (s_t - s_{t+1})``, and ``w s_T`` at the last step: the sum over a
      trajectory telescopes to ``w s_1``, whatever its length (the reward-to-go from step
      t is ``w s_t``, which still leaves a small bonus for one more step).

    Padding (``mask`` 0) gets 0. Steps must be contiguous from t = 0 in each row.
    """
    if mode not in PROCESS_REWARD_MODES:
        from rlnb.registry import unknown_name_error

        raise unknown_name_error("process reward mode", mode, PROCESS_REWARD_MODES)
    if scores.dim() != 2 or scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} must be one "
                         "(N, T) shape: trajectories x steps")
    m = mask.to(scores.dtype)
    lengths = m.sum(-1)
    if not torch.equal(m, (torch.arange(m.shape[1])[None, :] < lengths[:, None]).to(m.dtype)):
        raise ValueError("mask must mark each trajectory's steps contiguously from step 0")
    s = torch.where(m != 0, scores, torch.zeros_like(scores))
    if mode == "sum":
        out = weight * s
    elif mode == "clip":
        out = weight * torch.clamp(s - clip_threshold, max=0.0)
    elif mode == "cap":
        cum = torch.clamp(torch.cumsum(weight * s, dim=-1), max=cap)
        out = cum - torch.nn.functional.pad(cum[:, :-1], (1, 0))
    else:  # delta
        nxt = torch.nn.functional.pad(s[:, 1:], (0, 1)) * torch.nn.functional.pad(m[:, 1:], (0, 1))
        out = weight * (s - nxt)
    return out * m
