"""The policy's own hidden states as a critic: reward probes and a cross-rollout baseline (card 16).

POISE (arXiv:2605.07579) fits a light probe on a rollout's hidden states (of the prompt and
of the trajectory) plus entropy statistics to predict its reward, and uses the prediction
as the baseline of the policy gradient. The baseline of rollout ``i`` is the probe applied
to an *independent* rollout ``j`` of the same prompt, so that it does not depend on the
sample it is subtracted from and the gradient stays unbiased::

    g_hat = mean_i (r_i - b_i) grad log pi(y_i | x_i),   b_i = probe(features(y_j)), j != i

``E[b_i grad log pi(y_i)] = E[b_i] E[grad log pi(y_i)] = 0`` because ``y_j`` and ``y_i`` are
drawn independently given the prompt and the score has mean zero. Applied to the rollout's
*own* features the same probe is a biased baseline: ``b_i`` then depends on ``y_i``.

The pieces, all on tensors and arrays (no policy, no trainer):

- :func:`rollout_features` -- mean-pooled prompt and completion states of every layer of
  a cache, plus per-rollout statistics of the token entropies and sampled log-probs;
- :func:`auroc` -- the area under the ROC curve (Mann-Whitney, ties counted half);
- :func:`fit_reward_probe` -- a standardised ridge regression from features to reward;
- :func:`independent_partner` and :func:`cross_rollout_baseline` -- the baseline of each
  rollout from another rollout of the same prompt;
- :func:`head_score_gradients` -- the per-rollout score ``grad_W log pi(y)`` of a linear LM
  head in closed form (what a variance comparison of gradient estimators needs, without
  one backward pass per rollout);
- :func:`policy_gradient` -- ``mean_i (r_i - b_i) g_i``;
- :func:`string_one_hot` -- the features of a control probe that reads the text alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from rlnb.probes.activation_cache import pool_states

__all__ = [
    "ENTROPY_STATS",
    "RolloutFeatures",
    "auroc",
    "cross_rollout_baseline",
    "fit_reward_probe",
    "head_score_gradients",
    "independent_partner",
    "policy_gradient",
    "rollout_features",
    "string_one_hot",
]

ENTROPY_STATS = ("entropy_mean", "entropy_max", "entropy_min", "entropy_first",
                 "entropy_last", "logp_mean", "logp_sum", "logp_min", "length")
"""The scalar features :func:`rollout_features` adds after the pooled states."""


class RolloutFeatures(NamedTuple):
    """What :func:`rollout_features` returns."""

    X: np.ndarray
    """``(N, F)`` float64, one row per rollout."""
    columns: list[str]
    """``F`` names: ``"{name}/prompt/{k}"``, ``"{name}/completion/{k}"``, then
    :data:`ENTROPY_STATS`."""


def _bool(mask: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    m = torch.as_tensor(mask).to(torch.bool).cpu()
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(m.shape)}; it must be {tuple(shape)}")
    return m


def rollout_features(
    cache: Any,
    prompt_mask: Any,
    completion_mask: Any,
    entropy: Any,
    logp: Any,
    token_mask: Any,
    *,
    names: Sequence[str] | None = None,
) -> RolloutFeatures:
    """Features of each rollout for a reward probe: pooled states plus entropy statistics.

    Args:
        cache: a mapping name -> ``(N, L, d)`` states over prompt + completion (an
            :class:`~rlnb.probes.ActivationCache`, e.g. ``completion_states(...).cache``).
        prompt_mask: ``(N, L)`` True on the prompt's tokens (no padding).
        completion_mask: ``(N, L)`` True on the completion's tokens (EOS included).
        entropy: ``(N, T)`` the entropy of the sampling distribution at each completion
            token (``policy.log_probs(rollout)[1]``).
        logp: ``(N, T)`` the log-probability of each sampled token (``rollout.logp``).
        token_mask: ``(N, T)`` the completion tokens that count (``rollout.mask``).
        names: which cache entries to pool; default every ``(N, L, d)`` entry.

    Returns:
        :class:`RolloutFeatures` ``(X, columns)``: for each name the mean state over the
        prompt and over the completion (``2 * d`` columns), then the mean, max, min, first
        and last token entropy, the mean, sum and min sampled log-prob and the length.

    Footgun: the prompt's pooled states are the same for every completion of a prompt; a
    probe that splits one prompt's rollouts across its training and test rows can score
    high by recognising the prompt. Hold out whole prompts.

    >>> h = torch.arange(12.).reshape(1, 3, 4)         # one rollout, 3 positions, d = 4
    >>> pm, cm = torch.tensor([[1, 0, 0]]), torch.tensor([[0, 1, 1]])
    >>> f = rollout_features({"h": h}, pm, cm, torch.tensor([[0.5, 1.5]]),
    ...                      torch.tensor([[-1., -2.]]), torch.tensor([[1, 1]]))
    >>> f.X[0, :8].tolist(), f.X[0, 8:].tolist()
    ([0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0], [1.0, 1.5, 0.5, 0.5, 1.5, -1.5, -3.0, -2.0, 2.0])
    """
    if names is None:
        names = [k for k in cache.keys() if cache[k].ndim == 3]
    if not names:
        raise ValueError("the cache has no (N, L, d) entry to pool; capture per-token states")
    first = cache[names[0]]
    N, L = first.shape[:2]
    pm = _bool(prompt_mask, (N, L), "prompt_mask")
    cm = _bool(completion_mask, (N, L), "completion_mask")
    if bool((pm & cm).any()):
        raise ValueError("prompt_mask and completion_mask overlap: a token is either one or the other")
    if not bool(cm.any(1).all()) or not bool(pm.any(1).all()):
        raise ValueError("every rollout needs at least one prompt and one completion token")
    ent = torch.as_tensor(entropy).detach().double().cpu()
    lp = torch.as_tensor(logp).detach().double().cpu()
    tm = _bool(token_mask, tuple(ent.shape), "token_mask")
    if ent.ndim != 2 or ent.shape[0] != N or tuple(lp.shape) != tuple(ent.shape):
        raise ValueError(f"entropy and logp must both be (N={N}, T); got {tuple(ent.shape)} "
                         f"and {tuple(lp.shape)}")
    lengths = tm.sum(1)  # (N,)
    if not bool((lengths > 0).all()):
        raise ValueError("a rollout has no masked completion token: its statistics are undefined")
    blocks, columns = [], []
    for name in names:
        h = cache[name]
        if tuple(h.shape[:2]) != (N, L) or h.ndim != 3:
            raise ValueError(f"{name!r} has shape {tuple(h.shape)}; expected ({N}, {L}, d)")
        for part, m in (("prompt", pm), ("completion", cm)):
            blocks.append(pool_states(h.cpu(), m).double().numpy())  # (N, d)
            columns += [f"{name}/{part}/{k}" for k in range(h.shape[-1])]
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    first_idx = tm.to(torch.int64).argmax(1)  # (N,) first masked token
    last_idx = (tm.cumsum(1) == lengths[:, None]).to(torch.int64).argmax(1)  # last masked one
    rows = torch.arange(N)
    stats = torch.stack([
        (ent * tm).sum(1) / lengths,
        torch.where(tm, ent, -inf).amax(1),
        torch.where(tm, ent, inf).amin(1),
        ent[rows, first_idx],
        ent[rows, last_idx],
        (lp * tm).sum(1) / lengths,
        (lp * tm).sum(1),
        torch.where(tm, lp, inf).amin(1),
        lengths.double(),
    ], dim=1)  # (N, 9)
    blocks.append(stats.numpy())
    columns += list(ENTROPY_STATS)
    return RolloutFeatures(np.concatenate(blocks, axis=1), columns)


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive).

    The probability that a random positive scores above a random negative, ties counted
    one half (the Mann-Whitney statistic, from mid-ranks). 0.5 is chance.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> auroc([1, 1, 1], [0, 1, 1])
    0.5
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) must have one value per row")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold nan or inf")
    values = np.unique(y)
    if not set(values.tolist()) <= {0, 1} or values.size != 2:  # True == 1, False == 0
        raise ValueError(f"labels must hold both 0 and 1 (AUROC needs both classes); got "
                         f"{values[:5].tolist()}")
    pos = y.astype(bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # mid-ranks: every run of equal scores gets the mean of its ranks 1..N
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fit_reward_probe(X: Any, y: Any, *, alpha: float = 10.0) -> Any:
    """A standardised ridge regression from rollout features to reward (POISE's probe).

    Returns the fitted scikit-learn Pipeline; ``probe.predict(X)`` estimates E[r | features].
    Fit it on rollouts of prompts that you will not evaluate it on.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); y = (X[:, 0] > 0).astype(float)
    >>> auroc(fit_reward_probe(X[:100], y[:100]).predict(X[100:]), y[100:]) > 0.9
    True
    """
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(X, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64).ravel()
    if x.ndim != 2 or x.shape[0] != t.size:
        raise ValueError(f"X must be (N, F) with one reward per row; got X {x.shape}, y {t.shape}")
    if not alpha > 0:
        raise ValueError(f"alpha (the L2 strength) must be > 0, got {alpha!r}")
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, t)


def independent_partner(groups: Any, generator: np.random.Generator | None = None) -> np.ndarray:
    """For each row, the index of another row of the same group (prompt): ``(N,) int64``.

    Within each group of ``n >= 2`` rows the partners are a cyclic shift by a random offset
    in ``1 .. n-1``, so no row is its own partner. Rows of one group are i.i.d. samples
    given the prompt, so the partner's features are independent of the row's own sample.

    >>> independent_partner([0, 0, 1, 1, 1], np.random.default_rng(0)).tolist()
    [1, 0, 4, 2, 3]
    """
    g = np.asarray(groups).ravel()
    rng = np.random.default_rng(0) if generator is None else generator
    partner = np.empty(g.size, dtype=np.int64)
    for value in np.unique(g):
        idx = np.flatnonzero(g == value)
        if idx.size < 2:
            raise ValueError(f"group {value!r} has one row: a cross-rollout baseline needs at "
                             "least 2 rollouts per prompt")
        shift = int(rng.integers(1, idx.size))
        partner[idx] = np.roll(idx, -shift)
    return partner


def cross_rollout_baseline(predictions: Any, groups: Any,
                           generator: np.random.Generator | None = None) -> np.ndarray:
    """POISE's baseline: ``b_i = predictions[j]`` for an independent rollout ``j`` of the same
    prompt (:func:`independent_partner`). ``(N,)`` float64.

    Footgun: ``predictions`` itself (the probe on each rollout's *own* features) is not an
    unbiased baseline: it depends on the sample it is subtracted from.
    """
    p = np.asarray(predictions, dtype=np.float64).ravel()
    partner = independent_partner(groups, generator)
    if partner.size != p.size:
        raise ValueError(f"predictions ({p.size}) and groups ({partner.size}) differ in length")
    return p[partner]


def head_score_gradients(h: Any, weight: Any, actions: Any, mask: Any) -> torch.Tensor:
    """Per-rollout ``grad_W log pi(y)`` of a linear LM head ``logits = h @ W.T`` (no bias).

    Args:
        h: ``(N, T, d)`` the states the head reads at the positions that predict completion
            tokens ``0 .. T-1`` (after the final norm).
        weight: ``(V, d)`` the head's weight.
        actions: ``(N, T)`` the sampled token ids.
        mask: ``(N, T)`` the tokens that count.

    Returns:
        ``(N, V * d)`` float64: ``sum_t mask_t (onehot(a_t) - softmax(W h_t)) h_t^T``,
        flattened row-major like ``W.flatten()``; at temperature 1.

    >>> g = head_score_gradients(torch.zeros(1, 1, 2), torch.zeros(3, 2),
    ...                          torch.tensor([[0]]), torch.tensor([[True]]))
    >>> g.shape, float(g.abs().sum())
    (torch.Size([1, 6]), 0.0)
    """
    hh = torch.as_tensor(h).detach().double().cpu()
    W = torch.as_tensor(weight).detach().double().cpu()
    a = torch.as_tensor(actions).cpu().long()
    if hh.ndim != 3 or W.ndim != 2 or hh.shape[-1] != W.shape[1]:
        raise ValueError(f"h must be (N, T, d) and weight (V, d) with the same d; got "
                         f"{tuple(hh.shape)} and {tuple(W.shape)}")
    m = _bool(mask, tuple(hh.shape[:2]), "mask").double()
    if tuple(a.shape) != tuple(hh.shape[:2]):
        raise ValueError(f"actions {tuple(a.shape)} must be (N, T) = {tuple(hh.shape[:2])}")
    probs = torch.softmax(hh @ W.T, dim=-1)  # (N, T, V)
    onehot = torch.nn.functional.one_hot(a.clamp(0, W.shape[0] - 1), W.shape[0]).double()
    coef = (onehot - probs) * m[..., None]  # (N, T, V)
    return torch.einsum("ntv,ntd->nvd", coef, hh).reshape(hh.shape[0], -1)


def policy_gradient(rewards: Any, grads: Any, baseline: Any = None) -> np.ndarray:
    """The REINFORCE estimate ``mean_i (r_i - b_i) g_i`` ``(P,)`` from per-rollout scores
    ``grads`` ``(N, P)``; ``baseline`` ``(N,)`` or None (no baseline).

    >>> policy_gradient([1.0, 0.0], np.eye(2), baseline=[0.5, 0.5]).tolist()
    [0.25, -0.25]
    """
    g = np.asarray(grads, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64).ravel()
    if g.ndim != 2 or g.shape[0] != r.size:
        raise ValueError(f"grads must be (N, P) with one reward per row; got {g.shape}, {r.shape}")
    b = np.zeros_like(r) if baseline is None else np.asarray(baseline, dtype=np.float64).ravel()
    if b.shape != r.shape:
        raise ValueError(f"baseline has {b.size} values for {r.size} rewards")
    return ((r - b)[:, None] * g).mean(0)


def string_one_hot(texts: Sequence[str], alphabet: str, max_len: int) -> np.ndarray:
    """Position-wise one-hot of each text's first ``max_len`` characters, plus a one-hot of
    its length (clipped at ``max_len``): ``(N, max_len * len(alphabet) + max_len + 1)``.

    The features of a *control* probe that sees the answer string alone: if it predicts
    the reward as well as a probe on hidden states, the states add nothing beyond the text.
    Characters outside ``alphabet`` set no column. Texts are stripped first.

    >>> string_one_hot(["12", "3"], "123", 2).astype(int).tolist()
    [[1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0, 1, 0]]
    """
    if not alphabet or max_len < 1:
        raise ValueError(f"alphabet must be non-empty and max_len >= 1; got {alphabet!r}, {max_len}")
    index = {ch: k for k, ch in enumerate(alphabet)}
    A = len(alphabet)
    X = np.zeros((len(texts), max_len * A + max_len + 1))
    for i, text in enumerate(texts):
        s = str(text).strip()
        for j, ch in enumerate(s[:max_len]):
            if ch in index:
                X[i, j * A + index[ch]] = 1.0
        X[i, max_len * A + min(len(s), max_len)] = 1.0
    return X
