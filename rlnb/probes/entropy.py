"""Entropy dynamics: per-token entropy, its summaries, and the covariance law (card 3).

- :func:`token_entropy` -- H_t = -sum_v pi(v | prefix) log pi(v | prefix) per completion
  token, from logits, under the completion mask.
- :func:`entropy_summary` -- one row of numbers per batch (mean, quantiles, the share of
  high-entropy "forking" tokens); log it every step and plot it over training.
- :func:`entropy_change_covariance` -- Cui et al.'s token-level estimator (arXiv:2505.22617,
  PRIME-RL/Entropy-Mechanism-of-RL): ``cov_i = (A_i - mean A)(log pi_i - mean log pi)``.
  Its batch mean estimates Cov(log pi, A), and entropy moves by about ``-eta`` times it.
- :func:`predicted_entropy_change` -- the exact first-order law for a softmax: after a
  logit step ``dz``, ``H(z + dz) - H(z) = -Cov_{a~pi}(log pi(a), dz_a) + O(|dz|^2)``.
- :func:`exact_entropy_change`, :func:`policy_gradient_logit_step`,
  :func:`covariance_identity_error` -- the exact one-step change under a natural or vanilla
  PG step, and how far the first-order law is from it.
- :func:`fit_entropy_reward` -- the empirical law ``R = -a exp(H) + b`` and its ceiling
  ``b - a`` (the reward left when entropy reaches 0).

Why the covariance: for ``pi = softmax(z)``, ``dH/dz_a = -pi_a (log pi_a - E_pi log pi)``,
so a step ``dz`` changes entropy by ``-sum_a pi_a (log pi_a - E log pi) dz_a = -Cov(log pi,
dz)``. Natural policy gradient moves ``dz = eta A``: entropy falls when confident actions
have positive advantage. Vanilla softmax PG moves ``dz = eta pi A``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from rlnb.rl.aggregation import masked_mean
from rlnb.rl.kl import entropy_from_logits

__all__ = [
    "PG_KINDS",
    "CovarianceIdentity",
    "EntropyCovariance",
    "EntropyRewardFit",
    "entropy_change_covariance",
    "covariance_identity_error",
    "entropy_summary",
    "exact_entropy_change",
    "fit_entropy_reward",
    "forking_tokens",
    "policy_gradient_logit_step",
    "predicted_entropy_change",
    "token_entropy",
    "tree_token_entropy",
]


def _tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or an array, got {type(x).__name__}") from err


def _mask_like(mask: Any, shape: torch.Size, name: str = "mask") -> Tensor:
    """A bool mask of ``shape`` (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    m = _tensor(mask, name)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(
            f"{name} {tuple(m.shape)} must have the shape of the values {tuple(shape)}: one "
            "flag per (completion, token)"
        )
    return m.to(torch.bool)


# --- PER-TOKEN ENTROPY ----------------------------------------------------------------


def token_entropy(logits: Any, mask: Any = None, *, temperature: float = 1.0) -> Tensor:
    """Entropy of the next-token distribution at every position, ``(N, T)``.

    Args:
        logits: ``(N, T, V)`` -- position t holds the logits that *predict* completion
            token t. Footgun: a causal LM's ``output.logits[:, j]`` predicts token ``j + 1``;
            take ``logits[:, P - 1 : -1]`` for a completion starting at position P, or the
            entropies come out one token late.
        mask: ``(N, T)``, True on completion tokens that count; entropy is 0 elsewhere.
            Padding and prompt positions have entropies too -- leaving them in skews every
            mean and quantile.
        temperature: the distribution is ``softmax(logits / temperature)``: use the
            sampling temperature to measure the entropy the policy sampled from.

    Returns:
        float tensor ``(N, T)`` in nats, differentiable (``.detach()`` it for logging).
        ``log V`` at most, for V tokens.

    >>> token_entropy(torch.zeros(1, 2, 4), torch.tensor([[True, False]]))  # uniform on 4
    tensor([[1.3863, 0.0000]])
    """
    z = _tensor(logits, "logits")
    if z.ndim < 2 or not z.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor (..., V) such as (N, T, V); got shape "
            f"{tuple(z.shape)}, dtype {z.dtype}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # logsumexp over a large vocabulary in half precision loses digits
    h = entropy_from_logits(z / temperature)  # (N, T)
    if mask is None:
        return h
    m = _mask_like(mask, h.shape).to(h.device)
    return torch.where(m, h, torch.zeros((), dtype=h.dtype, device=h.device))


# --- SUMMARIES -----------------------------------------------------------------------


def _valid_values(entropy: Any, mask: Any) -> tuple[Tensor, Tensor, np.ndarray]:
    h = _tensor(entropy, "entropy").detach()
    if not h.is_floating_point():
        h = h.double()
    m = _mask_like(mask, h.shape).to(h.device)
    valid = h[m].double().cpu().numpy()
    if valid.size == 0:
        raise ValueError("the mask selects no token: nothing to summarise")
    return h, m, valid


def forking_tokens(
    entropy: Any, mask: Any = None, *, threshold: float | None = None, top_fraction: float = 0.2
) -> Tensor:
    """``(N, T)`` bool: the high-entropy "forking" tokens, where the policy hesitates.

    With ``threshold`` None it is the ``1 - top_fraction`` quantile of this batch's valid
    entropies, so about ``top_fraction`` of the tokens fork (fewer with ties); Wang et al.
    2025 ("Beyond the 80/20 rule") find RLVR's learning concentrated in the top 20%. Pass a
    fixed ``threshold`` to compare batches: see :func:`entropy_summary`.

    >>> forking_tokens(torch.tensor([[0.1, 2.0, 0.3, 0.0, 1.5]]), top_fraction=0.4)
    tensor([[False,  True, False, False,  True]])
    """
    h, m, valid = _valid_values(entropy, mask)
    if threshold is None:
        threshold = _batch_threshold(valid, top_fraction)
    return (h > threshold) & m


def _batch_threshold(valid: np.ndarray, top_fraction: float) -> float:
    if not 0.0 < top_fraction < 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1), e.g. 0.2; got {top_fraction!r}")
    return float(np.quantile(valid, 1.0 - top_fraction))


def entropy_summary(
    entropy: Any,
    mask: Any = None,
    *,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    forking_threshold: float | None = None,
    top_fraction: float = 0.2,
) -> dict[str, float]:
    """Summary statistics of per-token entropies ``(N, T)`` over the valid tokens.

    Args:
        entropy: ``(N, T)`` from :func:`token_entropy` or ``policy.log_probs``.
        mask: ``(N, T)`` valid tokens (completion, not prompt or padding).
        quantiles: reported as ``q10``, ``q50``, ``q90`` (``q{100 q:g}``).
        forking_threshold: entropy above which a token counts as forking. Default: this
            batch's ``1 - top_fraction`` quantile.
        top_fraction: the share of tokens called forking when no threshold is given.

    Returns:
        dict with ``tokens`` (count), ``mean`` (token mean), ``seq_mean`` (mean over
        completions of each one's token mean), the quantiles, ``forking_threshold``,
        ``forking_share`` (share of valid tokens above it) and ``forking_mean`` (their mean
        entropy; nan if none). Collect one dict per step into
        ``pd.DataFrame([{"step": s, **d} ...])`` for :func:`rlnb.viz.training_curves`.

    Footgun: with the default per-batch threshold, ``forking_share`` is ~``top_fraction``
    by construction and says nothing over training. To watch forking tokens disappear, fix
    the threshold once -- e.g. the base model's 80th percentile,
    ``entropy_summary(H0, m0)["forking_threshold"]`` -- and pass it at every step.

    >>> d = entropy_summary(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), quantiles=(0.5,),
    ...                     forking_threshold=1.5)
    >>> d["mean"], d["q50"], d["forking_share"], d["forking_mean"]
    (1.5, 1.5, 0.5, 2.5)
    """
    h, m, valid = _valid_values(entropy, mask)
    out: dict[str, float] = {"tokens": float(valid.size), "mean": float(valid.mean())}
    per_seq = masked_mean(h.double(), m, dim=-1) if h.ndim >= 2 else None
    if per_seq is not None:
        has = m.any(dim=-1)
        out["seq_mean"] = float(per_seq[has].mean())
    else:
        out["seq_mean"] = out["mean"]
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1], got {q!r}")
        out[f"q{100 * q:g}"] = float(np.quantile(valid, q))
    thr = _batch_threshold(valid, top_fraction) if forking_threshold is None else forking_threshold
    fork = valid > thr
    out["forking_threshold"] = float(thr)
    out["forking_share"] = float(fork.mean())
    out["forking_mean"] = float(valid[fork].mean()) if fork.any() else float("nan")
    return out


# --- THE COVARIANCE VIEW (card 3) ---------------------------------------------------------


class EntropyCovariance(NamedTuple):
    """What :func:`entropy_change_covariance` returns.

    Attributes:
        per_token: ``(N, T)`` ``cov_i`` on valid tokens, 0 elsewhere (Clip-Cov and KL-Cov
            select the tokens with the largest values).
        covariance: its mean over valid tokens -- the batch estimate of Cov(log pi, A).
        total: its sum over valid tokens.
    """

    per_token: Tensor
    covariance: float
    total: float


def entropy_change_covariance(logp: Any, advantages: Any, mask: Any = None) -> EntropyCovariance:
    """Per-token covariance between log-prob and advantage (Cui et al. 2025, card 3).

    ``cov_i = (A_i - mean A)(log pi_i - mean log pi)`` with both means over the batch's
    valid tokens, as in the Entropy-Mechanism code. On tokens sampled from pi its mean
    estimates Cov_{a~pi}(log pi(a), A(a)), and under a natural-PG step of size eta entropy
    changes by about ``-eta`` times it: a positive covariance (confident tokens rewarded)
    drives entropy down.

    Args:
        logp: ``(N, T)`` log-probs of the sampled tokens (detached here).
        advantages: ``(N,)`` one per completion (GRPO) or ``(N, T)`` per token.
        mask: ``(N, T)`` valid tokens.

    Returns:
        :class:`EntropyCovariance` ``(per_token, covariance, total)``.

    >>> logp = torch.log(torch.tensor([[0.9], [0.1]]))
    >>> r = entropy_change_covariance(logp, torch.tensor([1.0, -1.0]))
    >>> round(r.covariance, 4)   # the likely token was the rewarded one: entropy will fall
    1.0986
    """
    lp = _tensor(logp, "logp").detach()
    if lp.ndim != 2 or not lp.is_floating_point():
        raise ValueError(f"logp must be a float (N, T) tensor, got shape {tuple(lp.shape)}")
    adv = _tensor(advantages, "advantages").detach().to(device=lp.device)
    if adv.ndim == 1:
        if adv.shape[0] != lp.shape[0]:
            raise ValueError(
                f"advantages ({adv.shape[0]},) must have one value per completion "
                f"(N = {lp.shape[0]}), or be (N, T)"
            )
        adv = adv[:, None].expand_as(lp)  # (N, T) sequence advantage on every token
    if tuple(adv.shape) != tuple(lp.shape):
        raise ValueError(f"advantages {tuple(adv.shape)} must be (N,) or (N, T) = {tuple(lp.shape)}")
    m = _mask_like(mask, lp.shape).to(lp.device)
    if not m.any():
        raise ValueError("the mask selects no token: the covariance is undefined")
    dtype = torch.promote_types(lp.dtype, torch.float32)
    lp, adv = lp.to(dtype), adv.to(dtype)
    cov = (adv - masked_mean(adv, m)) * (lp - masked_mean(lp, m))  # (N, T)
    cov = torch.where(m, cov, torch.zeros((), dtype=dtype, device=cov.device))
    n = m.sum()
    return EntropyCovariance(cov, float(cov.sum() / n), float(cov.sum()))


def predicted_entropy_change(logits: Any, delta_logits: Any) -> Tensor:
    """First-order entropy change of ``softmax(z)`` per state after ``z -> z + dz``.

    ``-Cov_{a~pi}(log pi(a|s), dz_{s,a}) = -sum_a pi_a (log pi_a - E log pi)(dz_a - E dz)``.

    Args:
        logits: ``(S, A)`` (or ``(A,)``) logits z of one softmax per state.
        delta_logits: same shape, the step dz. Natural PG: ``eta * A``; vanilla softmax
            PG: ``eta * pi * A`` (A the advantage ``r - E_pi r``).

    Returns:
        ``(S,)`` (or a 0-d tensor), in nats. Exact up to O(|dz|^2): at eta = 1e-3 the
        relative error is ~1e-4 (tests/probes/test_entropy.py).

    >>> z = torch.tensor([2.0, 0.0, 0.0])
    >>> dz = 1e-3 * torch.tensor([1.0, 0.0, 0.0])   # push up the likely action
    >>> bool(predicted_entropy_change(z, dz) < 0)
    True
    """
    z = _tensor(logits, "logits")
    dz = _tensor(delta_logits, "delta_logits").to(device=z.device)
    if tuple(z.shape) != tuple(dz.shape):
        raise ValueError(f"logits {tuple(z.shape)} and delta_logits {tuple(dz.shape)} must match")
    dtype = torch.promote_types(z.dtype, torch.float32)
    logp = torch.log_softmax(z.to(dtype), dim=-1)  # (S, A)
    p = logp.exp()
    logp = torch.where(p > 0, logp, torch.zeros_like(logp))  # 0 * -inf would be nan
    dz = dz.to(dtype)
    mean_lp = (p * logp).sum(-1, keepdim=True)
    mean_dz = (p * dz).sum(-1, keepdim=True)
    return -(p * (logp - mean_lp) * (dz - mean_dz)).sum(-1)


def exact_entropy_change(logits: Any, delta_logits: Any) -> Tensor:
    """Exact entropy change ``H(softmax(z + dz)) - H(softmax(z))`` per state, in float64.

    The quantity :func:`predicted_entropy_change` approximates to first order. Float64
    because the change is ~``|dz|`` and float32 entropies lose it in rounding.

    >>> z = torch.zeros(4)
    >>> float(exact_entropy_change(z, torch.zeros(4)))   # no step, no change
    0.0
    """
    z = _tensor(logits, "logits").double()
    dz = _tensor(delta_logits, "delta_logits").double().to(z.device)
    if tuple(z.shape) != tuple(dz.shape):
        raise ValueError(f"logits {tuple(z.shape)} and delta_logits {tuple(dz.shape)} must match")
    return entropy_from_logits(z + dz) - entropy_from_logits(z)


#: The two logit steps of Cui et al.'s entropy law (card 3).
PG_KINDS = ("natural", "vanilla")


def policy_gradient_logit_step(logits: Any, advantages: Any, eta: float, kind: str = "natural"
                               ) -> Tensor:
    """The logit step ``dz`` of one exact policy-gradient update of a softmax per state.

    ``kind="natural"``: ``dz = eta * A`` (natural PG, or NPG's tabular update);
    ``kind="vanilla"``: ``dz = eta * pi * A`` (the exact gradient of ``E_pi[A]`` with
    respect to the logits, since ``d E_pi[r] / dz_a = pi_a (r_a - E_pi r)``).

    Args:
        logits: ``(S, A)`` logits.
        advantages: ``(S, A)`` advantage of every action (e.g. ``r - E_pi r``).
        eta: step size.

    >>> policy_gradient_logit_step(torch.zeros(2), torch.tensor([1.0, -1.0]), 0.1, "vanilla")
    tensor([ 0.0500, -0.0500])
    """
    if kind not in PG_KINDS:
        raise ValueError(f"kind must be one of {PG_KINDS}, got {kind!r}")
    z = _tensor(logits, "logits")
    adv = _tensor(advantages, "advantages").to(device=z.device, dtype=torch.promote_types(
        z.dtype, torch.float32))
    if tuple(adv.shape) != tuple(z.shape):
        raise ValueError(f"advantages {tuple(adv.shape)} must match logits {tuple(z.shape)}")
    if kind == "natural":
        return eta * adv
    return eta * torch.softmax(z.to(adv.dtype), dim=-1) * adv


class CovarianceIdentity(NamedTuple):
    """What :func:`covariance_identity_error` returns.

    Attributes:
        relative_error: ``||exact - predicted|| / ||exact||`` over the states (2-norm): the
            error of the first-order law as a share of the entropy changes.
        worst_state_relative_error: ``max_s |exact_s - predicted_s| / |exact_s|``. Footgun:
            unbounded where a state's covariance is near 0 (its first-order change
            vanishes and the second-order term is all that is left), so it grows with the
            number of states drawn; it is reported, not a criterion.
        correlation: Pearson correlation of exact and predicted changes over the states.
        exact, predicted: ``(S,)`` float64 entropy changes.
    """

    relative_error: float
    worst_state_relative_error: float
    correlation: float
    exact: Tensor
    predicted: Tensor


def covariance_identity_error(logits: Any, advantages: Any, eta: float, kind: str = "natural"
                              ) -> CovarianceIdentity:
    """Compare the exact entropy change of one PG step with ``-Cov_{a~pi}(log pi, dz)``.

    The step is :func:`policy_gradient_logit_step` (``kind`` natural: ``dz = eta A``;
    vanilla: ``dz = eta pi A``); the exact change is :func:`exact_entropy_change`, the
    prediction :func:`predicted_entropy_change`. The error is O(eta): card 3 asks for a
    relative error below 1% at eta <= 1e-3 (about 2e-4 for random states).

    >>> g = torch.Generator().manual_seed(0)
    >>> z, r = torch.randn(100, 6, generator=g), torch.rand(100, 6, generator=g)
    >>> A = r - (torch.softmax(z, -1) * r).sum(-1, keepdim=True)
    >>> covariance_identity_error(z, A, 1e-3).relative_error < 1e-2
    True
    """
    z = _tensor(logits, "logits").double()
    if z.ndim != 2:
        raise ValueError(f"logits must be (S, A): one softmax per state, got {tuple(z.shape)}")
    dz = policy_gradient_logit_step(z, _tensor(advantages, "advantages").double(), eta, kind)
    exact = exact_entropy_change(z, dz)
    pred = predicted_entropy_change(z, dz).double()
    diff = exact - pred
    denom = exact.abs()
    per_state = torch.where(denom > 0, diff.abs() / denom, torch.where(
        diff == 0, torch.zeros_like(diff), torch.full_like(diff, torch.inf)))
    norm = float(exact.norm())
    rel = float(diff.norm()) / norm if norm > 0 else float("nan")
    corr = (float(torch.corrcoef(torch.stack([exact, pred]))[0, 1]) if exact.numel() > 1
            else float("nan"))
    return CovarianceIdentity(rel, float(per_state.max()), corr, exact, pred)


def tree_token_entropy(env: Any, probs: Any) -> float:
    """Exact mean per-token entropy of a tabular policy on a tree sandbox, along its own
    episodes: ``E_pi[(1/depth) sum_t H(pi(. | s_t))]``, averaged over the prompts.

    The expectation of the Trainer's logged ``entropy`` (the mean, over sampled tokens, of
    the entropy at each) for :class:`rlnb.envs.TreeMDP` (card TM), without sampling noise.
    ``env`` needs ``action_probs``, ``num_prompts``, ``branching`` and ``depth`` with
    level-order nodes (the children of a level contiguous); ``probs`` is the policy's
    probability table (``policy.probs()``). Reach probabilities are propagated level by
    level, as in ``TreeMDP.leaf_distribution``.
    """
    pi = env.action_probs(_tensor(probs, "probs")).double()  # (P, I, b)
    P, b = env.num_prompts, env.branching
    H = -(pi * torch.log(pi.clamp_min(1e-300))).sum(-1)  # (P, I)
    reach = torch.ones(P, 1, dtype=pi.dtype)
    total = torch.zeros(P, dtype=pi.dtype)
    start = 0
    for level in range(env.depth):
        n = b**level
        total = total + (reach * H[:, start:start + n]).sum(-1)
        reach = (reach.unsqueeze(-1) * pi[:, start:start + n]).reshape(P, -1)
        start += n
    return float((total / env.depth).mean())


# --- THE ENTROPY-REWARD LAW -----------------------------------------------------------------


@dataclass(frozen=True)
class EntropyRewardFit:
    """Least-squares fit of ``R = -a * exp(H) + b`` (Cui et al. 2025).

    Attributes:
        a, b: the coefficients.
        ceiling: ``b - a``, the predicted reward at H = 0 (when entropy is spent).
        r2: coefficient of determination on the fitted points (nan if R is constant).
        n: number of points.
    """

    a: float
    b: float
    ceiling: float
    r2: float
    n: int

    def predict(self, H: Any) -> np.ndarray:
        """``-a * exp(H) + b`` for entropies ``H``."""
        return -self.a * np.exp(np.asarray(H, dtype=np.float64)) + self.b


def fit_entropy_reward(H: Any, R: Any) -> EntropyRewardFit:
    """Fit ``R = -a exp(H) + b`` to (entropy, reward) pairs logged over training.

    The model is linear in ``x = exp(H)``, so the least-squares ``(a, b)`` is closed-form
    (ordinary regression of R on x). Card 3: on the tree MDP the fit reached R^2 = 0.98 and
    its ceiling ``b - a`` matched the final reward.

    Args:
        H: ``(K,)`` mean token entropy at K checkpoints (array, tensor or Series).
        R: ``(K,)`` mean reward at the same checkpoints.

    >>> H = np.array([1.0, 0.5, 0.2, 0.0])
    >>> fit = fit_entropy_reward(H, -0.3 * np.exp(H) + 1.0)
    >>> round(fit.a, 6), round(fit.b, 6), round(fit.ceiling, 6), round(fit.r2, 6)
    (0.3, 1.0, 0.7, 1.0)

    Footgun: points from the first steps, before entropy moves, pin ``b`` poorly; the fit
    extrapolates the ceiling to H = 0, so check it on runs that got close.
    """
    h = np.asarray(H.detach().cpu() if isinstance(H, Tensor) else H, dtype=np.float64).ravel()
    r = np.asarray(R.detach().cpu() if isinstance(R, Tensor) else R, dtype=np.float64).ravel()
    if h.shape != r.shape:
        raise ValueError(f"H ({h.size},) and R ({r.size},) must pair up: one of each per checkpoint")
    ok = np.isfinite(h) & np.isfinite(r)
    if not ok.all():
        raise ValueError("H and R must be finite; drop the steps with nan before fitting")
    x = np.exp(h)
    if h.size < 2 or np.ptp(x) == 0:
        raise ValueError(
            "H must take at least two distinct values: the fit needs entropies that vary "
            "(log them over training)"
        )
    xc, rc = x - x.mean(), r - r.mean()
    slope = float(xc @ rc / (xc @ xc))  # R = b + slope * exp(H), slope = -a
    b = float(r.mean() - slope * x.mean())
    resid = r - (b + slope * x)
    ss_tot = float(rc @ rc)
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    a = -slope
    return EntropyRewardFit(a=a, b=b, ceiling=b - a, r2=r2, n=int(h.size))
