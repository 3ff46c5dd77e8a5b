"""Entropy-preserving policy losses that need per-token quantities beyond log-probs (card 4).

Two registered policy losses, each PPO's clipped surrogate with a token-level change:

- ``steer`` -- STEER (Hao et al. arXiv:2510.10150, github.com/zz-haooo/STEER): every
  token's loss is multiplied by a weight that falls with the size of its predicted entropy
  change ``Omega = (A / pi_old) * pi (1 - pi) (log pi + H)``, so the tokens that would move
  entropy most move less. Needs ``entropy`` ``(N, T)``: the full-distribution entropy H
  at each token (the ``entropy`` of ``policy.log_probs``).
- ``lp_reg`` -- Lp-Reg (arXiv:2510.03222, github.com/CarlanLark/Lp-Reg-dev): the lowest
  ``lp_reg_fraction`` of negative-advantage tokens by log-prob, where pi_theta is below a
  proxy distribution, get ``lp_reg_coef * KL_lowvar(pi_theta || pi_proxy)`` added, which
  shields rare "reasoning sparks" from being pushed to zero. The proxy is pi_old after
  min-p filtering (:func:`min_p_proxy_logp`); the loss needs ``proxy_logp`` ``(N, T)``:
  log pi_proxy of each sampled token.

The Trainer passes these tensors to a loss that declares them as keyword arguments
(:func:`rlnb.rl.token_inputs.token_inputs`), so a config only says ``policy_loss="steer"`` or ``"lp_reg"``.
Neither takes ``weights`` (micro-batch accumulation): STEER's linear map and Lp-Reg's
lowest-1% selection use the whole batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlnb.rl.aggregation import agg_loss, masked_mean
from rlnb.rl.losses import _base_metrics, _check_clip, _clip_metrics, _ppo_tokens, _prepare
from rlnb.rl.registry import register_policy_loss

__all__ = [
    "STEER_WEIGHTINGS",
    "low_var_kl",
    "lp_reg",
    "min_p_proxy_logp",
    "steer",
    "steer_omega",
    "steer_weights",
]

Metrics = dict[str, float]

#: How STEER turns |Omega| into a token weight: the paper's ``exp(-k |Omega|)``, or the
#: official code's default, a linear map of the batch's |Omega| onto [0.8, 1.2].
STEER_WEIGHTINGS = ("exp", "linear")



# --- STEER ----------------------------------------------------------------------------------


def steer_omega(logp: Tensor, old_logp: Tensor, advantages: Tensor, entropy: Tensor) -> Tensor:
    """STEER's predicted per-token entropy change ``(N, T)``, detached:
    ``Omega = (A / pi_old) * pi (1 - pi) (log pi + H)``.

    ``pi`` is clamped to [1e-8, 1 - 1e-8] and ``pi_old`` to >= 1e-8 (as the official code
    does); ``advantages`` must already be ``(N, T)``. A token whose probability equals
    ``exp(-H)`` (log pi = -H) or that is certain (pi = 1) changes entropy by 0.

    >>> p = torch.tensor([[0.5]]); H = torch.tensor([[math.log(2)]])
    >>> steer_omega(p.log(), p.log(), torch.tensor([[1.0]]), H)   # log pi + H = 0
    tensor([[0.]])
    """
    with torch.no_grad():
        pi = logp.detach().exp().clamp(1e-8, 1 - 1e-8)
        pi_old = old_logp.detach().exp().clamp_min(1e-8)
        return (advantages / pi_old) * pi * (1 - pi) * (torch.log(pi) + entropy.detach())


def steer_weights(
    omega: Tensor, mask: Tensor, *, weighting: str = "exp", k: float = 1.0,
    weight_min: float = 0.8, weight_max: float = 1.2,
) -> Tensor:
    """Token weights ``(N, T)`` from ``Omega`` ``(N, T)``, 0 outside ``mask``.

    - ``"exp"`` (the paper's formula): ``lambda = exp(-k |Omega|)``, in (0, 1].
    - ``"linear"`` (the official code's default): the valid tokens' |Omega| mapped linearly
      from [min, max] of the batch onto [weight_max, weight_min] -- the largest |Omega|
      gets ``weight_min`` -- and ``(weight_min + weight_max) / 2`` everywhere if all are equal.

    >>> w = steer_weights(torch.tensor([[0.0, 1.0, 2.0]]), torch.ones(1, 3), weighting="linear")
    >>> [round(x, 4) for x in w[0].tolist()]
    [1.2, 1.0, 0.8]
    """
    if weighting not in STEER_WEIGHTINGS:
        raise ValueError(f"steer_weighting must be one of {STEER_WEIGHTINGS}, got {weighting!r}")
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
        raise ValueError(f"steer_k must be a finite number >= 0 (lambda = exp(-k |Omega|)), got {k!r}")
    if not 0 <= weight_min <= weight_max:
        raise ValueError(f"need 0 <= weight_min <= weight_max, got {weight_min}, {weight_max}")
    valid = mask > 0
    mag = torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega)).abs()
    if weighting == "exp":
        w = torch.exp(-k * mag)
    else:
        vals = mag[valid]
        if vals.numel() == 0 or vals.max() <= vals.min():
            w = torch.full_like(mag, (weight_min + weight_max) / 2)
        else:
            lo, hi = vals.min(), vals.max()
            w = weight_max - (mag - lo) * (weight_max - weight_min) / (hi - lo)
            w = w.clamp(weight_min, weight_max)
    return torch.where(valid, w, torch.zeros_like(w))


@register_policy_loss("steer")
def steer(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    entropy: Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    steer_weighting: str = "exp",
    steer_k: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """STEER (Hao et al. arXiv:2510.10150): PPO's clipped loss, each token's loss times a
    weight that is small where the token's predicted entropy change |Omega| is large.

    loss_t = lambda_t * max(-A r, -A clip(r, 1 - epsilon, 1 + epsilon_high)), with
    ``Omega_t = (A_t / pi_old) pi (1 - pi)(log pi + H_t)`` (:func:`steer_omega`, pi the
    current probability, detached) and ``lambda_t`` from :func:`steer_weights`
    (``steer_weighting`` "exp": ``exp(-steer_k |Omega|)``; "linear": the code's [0.8, 1.2]).
    ``delta`` is the dual clip for A < 0 (the official code uses 3.0).

    Args:
        entropy: ``(N, T)`` entropy of the current full next-token distribution at each
            token (the second output of ``policy.log_probs``); the Trainer passes it.

    Metrics: the PPO ones plus ``steer/weight_mean``, ``steer/weight_min``,
    ``steer/omega_abs_mean`` over valid tokens.
    """
    if entropy is None:
        raise ValueError(
            "steer needs entropy=(N, T), the full-distribution entropy at each token (the "
            "second output of policy.log_probs); the Trainer passes it, a direct call must too")
    eps_low, eps_high = _check_clip(epsilon, epsilon_high)
    if delta is not None and not delta > 1 + eps_low:
        raise ValueError(f"delta (dual clip) must be > 1 + epsilon = {1 + eps_low}, got {delta}")
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    if entropy.shape != logp.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} must be (N, T) = {tuple(logp.shape)}")
    ratio = torch.exp(log_ratio)  # (N, T)
    loss_tok, low, high = _ppo_tokens(adv, ratio, eps_low, eps_high)  # (N, T)
    if delta is not None:
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, -adv * delta), loss_tok)
    omega = steer_omega(logp, old_logp, adv, entropy.to(logp.dtype))  # (N, T)
    lam = steer_weights(omega, mask, weighting=steer_weighting, k=steer_k)  # (N, T)
    loss = agg_loss(loss_tok * lam, mask, agg, max_len=max_len)
    metrics = _base_metrics(loss, log_ratio, mask)
    metrics.update(_clip_metrics(low, high, mask))
    valid = mask > 0
    metrics["steer/weight_mean"] = masked_mean(lam, mask).item()
    metrics["steer/weight_min"] = lam[valid].min().item() if valid.any() else float("nan")
    metrics["steer/omega_abs_mean"] = masked_mean(omega.abs(), mask).item()
    return loss, metrics


# --- Lp-Reg ---------------------------------------------------------------------------------


def min_p_proxy_logp(logits: Tensor, actions: Tensor, min_p: float = 0.02) -> Tensor:
    """log pi_proxy of each sampled token ``(N, T)``: Lp-Reg's proxy distribution.

    ``pi_proxy = pi`` restricted to the tokens with ``pi >= min_p * max pi`` and
    renormalised (min-p filtering); a filtered-out token gets ``-inf``. ``logits``
    ``(N, T, V)`` of the *old* policy (the one that sampled, at its temperature),
    ``actions`` ``(N, T)`` the sampled token ids. Computed without gradients.

    >>> z = torch.log(torch.tensor([[[0.5, 0.3, 0.195, 0.005]]]))
    >>> min_p_proxy_logp(z, torch.tensor([[1]])).exp()   # 0.005 < 0.02 * 0.5 is dropped
    tensor([[0.3015]])
    """
    if not 0 < min_p <= 1:
        raise ValueError(f"lp_reg_min_p must lie in (0, 1] (Lp-Reg uses 0.02), got {min_p!r}")
    if logits.dim() != 3 or actions.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (N, T, V) and actions (N, T); got {tuple(logits.shape)} and "
            f"{tuple(actions.shape)}")
    with torch.no_grad():
        lp = torch.log_softmax(logits.detach().float(), dim=-1)  # (N, T, V)
        keep = lp >= lp.amax(-1, keepdim=True) + math.log(min_p)
        kept = torch.where(keep, lp, torch.full_like(lp, -torch.inf))
        proxy = kept - torch.logsumexp(kept, dim=-1, keepdim=True)  # (N, T, V)
        return proxy.gather(-1, actions.long()[..., None]).squeeze(-1)


def low_var_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """verl's ``low_var_kl`` (Schulman's k3) per token: with ``d = ref_logp - logp``
    clamped to [-20, 20], ``exp(d) - d - 1`` clamped to [-10, 10]. An estimate of
    KL(pi || ref) from tokens sampled from pi; >= 0, and 0 where the two agree.

    >>> low_var_kl(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    """
    d = torch.clamp(ref_logp - logp, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)


@register_policy_loss("lp_reg")
def lp_reg(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    proxy_logp: Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    lp_reg_fraction: float = 0.01,
    lp_reg_coef: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """Lp-Reg (arXiv:2510.03222): PPO's clipped loss, plus a pull towards a min-p proxy on
    the rarest negative-advantage tokens.

    Among the valid tokens with A < 0, the ``max(1, int(lp_reg_fraction * n_neg))`` with
    the lowest current log-prob are candidates; a candidate with ``logp < proxy_logp``
    gets loss ``-A r + lp_reg_coef * low_var_kl(logp, proxy_logp)`` (unclipped, as in the
    official code); every other token gets PPO's clipped loss. The official code skips
    the regulariser when that count is 1 (a batch with fewer than 200 negative tokens at
    1%); this one applies it to that one token.

    Args:
        proxy_logp: ``(N, T)`` log pi_proxy of each token (:func:`min_p_proxy_logp` of
            the old policy's logits; -inf where min-p filtered it out, which never
            qualifies). The Trainer computes it before the step's first update.

    Metrics: the PPO ones plus ``lp_reg/frac_regularized`` (regularised / valid tokens)
    and ``lp_reg/kl_mean`` (mean low-var KL on the regularised tokens, 0 if none).
    """
    if proxy_logp is None:
        raise ValueError(
            "lp_reg needs proxy_logp=(N, T), log pi_proxy of each token (min_p_proxy_logp "
            "of the old policy's logits); the Trainer passes it, a direct call must too")
    if not 0 < lp_reg_fraction <= 1 or not lp_reg_coef >= 0:
        raise ValueError(
            f"need 0 < lp_reg_fraction <= 1 (Lp-Reg: 0.01) and lp_reg_coef >= 0, got "
            f"{lp_reg_fraction}, {lp_reg_coef}")
    eps_low, eps_high = _check_clip(epsilon, epsilon_high)
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    if proxy_logp.shape != logp.shape:
        raise ValueError(f"proxy_logp {tuple(proxy_logp.shape)} must be (N, T) = {tuple(logp.shape)}")
    ratio = torch.exp(log_ratio)  # (N, T)
    loss_tok, low, high = _ppo_tokens(adv, ratio, eps_low, eps_high)  # (N, T)
    tgt = proxy_logp.detach().to(logp.dtype)
    with torch.no_grad():
        neg = ((mask > 0) & (adv < 0)).flatten()  # (N*T,)
        idx = neg.nonzero().squeeze(1)
        chosen = torch.zeros_like(neg)
        if len(idx) > 0:
            k = max(1, int(len(idx) * lp_reg_fraction))
            lowest = torch.topk(logp.detach().flatten()[idx], k, largest=False).indices
            chosen[idx[lowest]] = True
        reg = chosen.view_as(logp) & (logp.detach() < tgt)  # (N, T)
    kl = low_var_kl(logp, tgt)  # (N, T); finite: -inf targets clamp to d = -20
    loss_tok = torch.where(reg, -adv * ratio + lp_reg_coef * kl, loss_tok)
    loss = agg_loss(loss_tok, mask, agg, max_len=max_len)
    metrics = _base_metrics(loss, log_ratio, mask)
    metrics.update(_clip_metrics(low, high, mask))
    metrics["lp_reg/frac_regularized"] = masked_mean(reg.to(mask.dtype), mask).item()
    metrics["lp_reg/kl_mean"] = kl.detach()[reg].mean().item() if reg.any() else 0.0
    return loss, metrics
