"""Preference matrices: the checks and exact quantities of a preference game (card 19).

A preference model over ``K`` outputs is a matrix ``P`` with ``P[y, y'] = P(y is preferred
to y')`` and ``P + P.T = 1``. Everything the layers above need from it as plain tensors:
:func:`check_preference_matrix`, :func:`exploitability` and :func:`win_rate_rewards`
(SPO's reward). :mod:`rlnb.algos.nash` (the minimax winner, Nash-MD), :mod:`rlnb.rl`
(the reward) and :class:`rlnb.envs.PreferenceGame` (the sandbox) re-export or use them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_preference_matrix", "exploitability", "win_rate_rewards"]


def check_preference_matrix(P: Tensor | np.ndarray) -> Tensor:
    """``P`` as a float64 ``(K, K)`` tensor, checked: entries in [0, 1], ``P + P.T = 1``."""
    P = torch.as_tensor(P, dtype=torch.float64)
    if P.dim() != 2 or P.shape[0] != P.shape[1] or P.shape[0] < 2:
        raise ValueError(f"a preference matrix is (K, K) with K >= 2, got {tuple(P.shape)}")
    if bool(((P < 0) | (P > 1)).any()):
        raise ValueError("preference probabilities must lie in [0, 1]")
    if not torch.allclose(P + P.T, torch.ones_like(P), atol=1e-9):
        raise ValueError("P[y, y'] + P[y', y] must be 1 (and the diagonal 1/2): a preference "
                         "matrix says how often y beats y'")
    return P


def exploitability(pi: Tensor | np.ndarray, P: Tensor | np.ndarray) -> float:
    """``max_y P(y beats pi) - 1/2``: how much the best response to ``pi`` wins by."""
    P = check_preference_matrix(P)
    pi = torch.as_tensor(pi, dtype=torch.float64)
    return float((P @ pi).max() - 0.5)


def win_rate_rewards(answers: Tensor, group_size: int, preference: Tensor) -> Tensor:
    """SPO's reward (Swamy et al. arXiv:2401.04056; card 19): each sample's expected win
    rate against the *other* samples of its group, ``mean_{j != i} P[a_i, a_j]``, under a
    preference matrix ``P`` ``(K, K)`` (``P[y, y'] = P(y preferred to y')``). No reward
    model: an intransitive preference is used as it is.

    >>> rps = torch.tensor([[.5, 1., 0.], [0., .5, 1.], [1., 0., .5]])
    >>> win_rate_rewards(torch.tensor([0, 0, 1, 2]), 4, rps)
    tensor([0.5000, 0.5000, 0.3333, 0.6667])
    """
    if not isinstance(answers, Tensor) or answers.dim() != 1 or answers.is_floating_point():
        raise ValueError("answers must be a (N,) integer tensor of output ids")
    if not isinstance(group_size, int) or group_size < 2 or answers.numel() % group_size:
        raise ValueError(f"group_size must be an int >= 2 dividing N = {answers.numel()} (a win "
                         f"rate needs opponents), got {group_size!r}")
    k = preference.shape[0]
    if preference.dim() != 2 or preference.shape != (k, k):
        raise ValueError(f"preference must be a (K, K) matrix, got {tuple(preference.shape)}")
    if bool(((answers < 0) | (answers >= k)).any()):
        raise ValueError(f"answer ids must be in [0, {k}) to index the preference matrix")
    a = answers.view(-1, group_size)  # (P, G)
    pairwise = preference.to(torch.get_default_dtype())[a[:, :, None], a[:, None, :]]  # (P, G, G)
    off_diag = pairwise.sum(-1) - pairwise.diagonal(dim1=1, dim2=2)  # (P, G)
    return (off_diag / (group_size - 1)).reshape(-1)
