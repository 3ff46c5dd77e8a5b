"""Policy losses: registered pure functions returning ``(loss, metrics)``.

Common signature::

    fn(logp, old_logp, advantages, mask, *, agg="token-mean", max_len=None, **options)
        logp        (N, T)  log pi_theta(token), with gradient
        old_logp    (N, T)  log pi_old(token) from the policy that sampled (detached here)
        advantages  (N,) or (N, T); (N,) is broadcast over the tokens (detached here)
        mask        (N, T)  1 for completion tokens, 0 for prompt/padding
    -> loss: scalar tensor, metrics: dict[str, float]

A loss that can be computed micro-batch by micro-batch (gradient accumulation) also takes
``weights=None``: ``(N, T)`` per-token weights that replace the aggregation's normaliser
(the rows of :func:`rlnb.rl.agg_weights` of the whole batch), passed on to
:func:`rlnb.rl.agg_loss`. ``vanilla_pg`` and ``ppo_clip`` take it; ``clip_cov`` and
``kl_cov`` do not, since they pick tokens by a covariance over the whole batch. Their
metrics stay means over the tokens of the rows given (the trainer weights them by token
count to combine micro-batches), except ``pg_loss``, the weighted share of the loss.

The footguns handled here: ``old_logp`` and ``advantages`` are detached, so passing
``old_logp=logp`` gives the on-policy gradient rather than zero; masked positions never
reach the loss (the mask is *not* optional: forgetting it silently trains on the prompt).
The log-ratio is clamped to [-20, 20] (as verl does) so that a garbage log-prob cannot
make exp() overflow; padding positions should still hold finite numbers.

Every loss reports ``pg_loss``, ``ratio_mean`` and ``approx_kl`` = masked mean of
(logp - old_logp)^2 / 2 (Schulman's k2 estimate of KL(pi_old || pi)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.rl.aggregation import agg_loss, check_agg_mode, masked_mean
from rlnb.rl.registry import POLICY_LOSSES, check_options, register_policy_loss

Metrics = dict[str, float]


# --- shared pieces --------------------------------------------------------------------
def _prepare(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, agg: str):
    """Check shapes and agg; return (adv (N, T), mask as logp's dtype, log_ratio (N, T))."""
    check_agg_mode(agg)
    for name, x in (("logp", logp), ("old_logp", old_logp), ("advantages", advantages),
                    ("mask", mask)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch tensor, got {type(x).__name__}; wrap it in "
                "torch.as_tensor(...)"
            )
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must all be (N, T)"
        )
    n, t = logp.shape
    adv = advantages.detach().to(logp.dtype)
    if adv.shape == (n,):
        adv = adv[:, None].expand(n, t)  # (N,) -> (N, T)
    elif adv.shape != (n, t):
        raise ValueError(f"advantages must be ({n},) or ({n}, {t}), got {tuple(adv.shape)}")
    if not bool(torch.isfinite(advantages).all()):
        raise ValueError(
            "advantages must be finite, got nan or inf; check the rewards and the advantage "
            "method's options (compute_advantages refuses non-finite rewards)"
        )
    log_ratio = torch.clamp(logp - old_logp.detach(), -20.0, 20.0)  # (N, T)
    return adv, mask.to(logp.dtype), log_ratio


def _check_clip(epsilon: float, epsilon_high: float | None) -> tuple[float, float]:
    from rlnb.checks import check_number

    why = "the ratio is kept in [1 - epsilon, 1 + epsilon_high]"
    epsilon = check_number(epsilon, "epsilon", 0, 1, low_open=True, high_open=True,
                           meaning=f"{why}; 0.2 is usual")
    eps_high = epsilon if epsilon_high is None else check_number(
        epsilon_high, "epsilon_high", 0, low_open=True, meaning=f"{why}; DAPO uses 0.28")
    return epsilon, eps_high


def _base_metrics(loss: Tensor, log_ratio: Tensor, mask: Tensor) -> Metrics:
    keep = mask != 0  # a 0/1 mask (agg_loss checks it) as bool: the same means, fewer ops
    with torch.no_grad():
        return {
            "pg_loss": loss.item(),
            "ratio_mean": masked_mean(log_ratio.exp(), keep).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, keep).item(),
        }


def _ppo_tokens(adv: Tensor, ratio: Tensor, eps_low: float, eps_high: float):
    """Per-token clipped PPO loss max(-A r, -A clip(r)) ``(N, T)`` and the clip masks."""
    pg1 = -adv * ratio  # (N, T) unclipped
    pg2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)  # (N, T) clipped
    low = (adv < 0) & (ratio < 1 - eps_low)  # pushed down enough already: no gradient
    high = (adv > 0) & (ratio > 1 + eps_high)  # pushed up enough already: no gradient
    return torch.maximum(pg1, pg2), low, high


def _fraction(flags: Tensor, keep: Tensor, count: Tensor) -> float:
    """The fraction of the ``count`` valid positions (``keep``) where ``flags`` holds."""
    return ((flags & keep).sum() / count).item()


def _clip_metrics(low: Tensor, high: Tensor, mask: Tensor, dual: Tensor | None = None) -> Metrics:
    keep = mask != 0
    count = keep.sum().clamp_min(1)
    out = {
        "clip_ratio/low_mean": _fraction(low, keep, count),
        "clip_ratio/high_mean": _fraction(high, keep, count),
        "clip_ratio/region_mean": _fraction(low | high, keep, count),
    }
    if dual is not None:
        out["clip_ratio/dual_mean"] = _fraction(dual, keep, count)
    return out


def token_covariance(advantages: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token covariance term (A_i - mean A)(logp_i - mean logp) ``(N, T)``, means over
    the valid tokens of the whole batch, detached; 0 on masked positions. Cui et al.
    (arXiv:2505.22617): tokens with large cov are the ones whose update lowers entropy.

    >>> token_covariance(torch.tensor([1., -1.]), torch.tensor([[-1.], [-3.]]), torch.ones(2, 1))
    tensor([[1.],
            [1.]])
    """
    n, t = logp.shape
    adv = advantages.detach().to(logp.dtype)
    adv = adv[:, None].expand(n, t) if adv.dim() == 1 else adv  # (N, T)
    lp = logp.detach()
    cov = (adv - masked_mean(adv, mask)) * (lp - masked_mean(lp, mask))  # (N, T)
    return torch.where(mask > 0, cov, torch.zeros_like(cov))


# --- objectives -----------------------------------------------------------------------
@register_policy_loss("vanilla_pg")
def vanilla_pg(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """Policy gradient with no clipping: loss_t = -A_t * ratio_t, ratio = pi / pi_old.

    On-policy (``old_logp`` = ``logp`` detached) ratio = 1 and its gradient is
    -A * grad log pi: REINFORCE, identical to the textbook -A * logp. Written with the
    ratio it stays a correct (importance-weighted, unclipped) estimate off-policy.
    ``weights`` ``(N, T)``: replace ``agg``'s normaliser (:func:`rlnb.rl.agg_loss`).

    >>> logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    >>> loss, m = vanilla_pg(logp, logp, torch.tensor([2.0]), torch.ones(1, 2))
    >>> loss.backward(); logp.grad
    tensor([[-1., -1.]])
    """
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    ratio = torch.exp(log_ratio)  # (N, T)
    loss = agg_loss(-adv * ratio, mask, agg, max_len=max_len, weights=weights)
    return loss, _base_metrics(loss, log_ratio, mask)


@register_policy_loss("ppo_clip")
def ppo_clip(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO's clipped surrogate (Schulman et al. arXiv:1707.06347), GRPO's policy loss.

    loss_t = max(-A r, -A clip(r, 1 - epsilon, 1 + epsilon_high)),  r = pi / pi_old.

    - ``epsilon_high`` > ``epsilon`` is DAPO's clip-higher (arXiv:2503.14476, 0.28): a
      token with pi_old = 0.01 may grow to 0.0128 in one update instead of 0.012.
    - ``delta``: dual clip (Ye et al. arXiv:1912.09729; verl ``clip_ratio_c``, TRL
      ``delta``): for A < 0 the loss is capped at -A * delta, so a token whose ratio has
      exploded stops pushing. Must exceed 1 + epsilon.
    - With one update per batch (on-policy) r = 1, nothing is clipped, and the gradient
      is vanilla_pg's.
    - ``weights`` ``(N, T)``: replace ``agg``'s normaliser (:func:`rlnb.rl.agg_loss`),
      for a micro-batch's share of a whole batch's loss.

    Metrics ``clip_ratio/low_mean`` (A < 0, r < 1 - eps), ``clip_ratio/high_mean``
    (A > 0, r > 1 + eps_high), ``clip_ratio/region_mean`` (either), TRL's definitions, and
    ``clip_ratio/dual_mean`` (A < 0, r > delta), as fractions of valid tokens.

    >>> logp = torch.log(torch.tensor([[0.02]]))
    >>> old = torch.log(torch.tensor([[0.01]]))
    >>> loss, m = ppo_clip(logp, old, torch.tensor([1.0]), torch.ones(1, 1), epsilon_high=0.28)
    >>> round(loss.item(), 4), m["clip_ratio/high_mean"]
    (-1.28, 1.0)
    """
    eps_low, eps_high = _check_clip(epsilon, epsilon_high)
    if delta is not None and not delta > 1 + eps_low:
        raise ValueError(f"delta (dual clip) must be > 1 + epsilon = {1 + eps_low}, got {delta}")
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    ratio = torch.exp(log_ratio)  # (N, T)
    loss_tok, low, high = _ppo_tokens(adv, ratio, eps_low, eps_high)  # (N, T)
    dual = torch.zeros_like(low)
    if delta is not None:
        dual = (adv < 0) & (loss_tok > -adv * delta)  # (N, T)
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, -adv * delta), loss_tok)
    loss = agg_loss(loss_tok, mask, agg, max_len=max_len, weights=weights)
    metrics = _base_metrics(loss, log_ratio, mask)
    metrics.update(_clip_metrics(low, high, mask, dual))
    return loss, metrics


@register_policy_loss("gspo")
def gspo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """GSPO (Zheng et al. arXiv:2507.18071), as TRL's ``importance_sampling_level="sequence"``:
    PPO's clipped surrogate with one importance ratio per *sequence*, the geometric mean of
    its tokens' ratios (length-normalised),

        s_i = exp(mean over i's valid tokens of log(pi / pi_old)),
        loss_t = max(-A s_i, -A clip(s_i, 1 - epsilon, 1 + epsilon_high))  for every token t of i,

    so the whole sequence is clipped, or not, together; the gradient reaches each token's
    log-probability with weight 1 / |y_i|. The paper clips at 3e-4 / 4e-4, far tighter
    than token-level PPO's 0.2. TRL warns that the token-summing aggregations (``bnpo``,
    ``dr_grpo``, ``dapo``) weight a sequence by its length; the paper's objective is
    ``agg="grpo"`` (or verl's ``seq-mean-token-mean``). Clip metrics are TRL's, as
    fractions of valid tokens.

    >>> logp = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> old = torch.log(torch.tensor([[0.25, 1.0]]))   # token ratios 2 and 0.5: s = 1
    >>> loss, m = gspo(logp, old, torch.tensor([1.0]), torch.ones(1, 2))
    >>> round(loss.item(), 4), m["clip_ratio/region_mean"]
    (-1.0, 0.0)
    """
    eps_low, eps_high = _check_clip(epsilon, epsilon_high)
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    seq_log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1.0)
    ratio = torch.exp(seq_log_ratio).expand_as(log_ratio)  # (N, T): one ratio per sequence
    loss_tok, low, high = _ppo_tokens(adv, ratio, eps_low, eps_high)  # (N, T)
    loss = agg_loss(loss_tok, mask, agg, max_len=max_len, weights=weights)
    metrics = _base_metrics(loss, log_ratio, mask)
    metrics.update(_clip_metrics(low, high, mask))
    return loss, metrics


@register_policy_loss("clip_cov")
def clip_cov(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Metrics]:
    """Clip-Cov (Cui et al. arXiv:2505.22617, PRIME-RL/Entropy-Mechanism-of-RL): PPO clip
    loss, except that a few high-covariance tokens are cut out of the update.

    cov_t = (A_t - mean A)(logp_t - mean logp) over valid tokens (``token_covariance``).
    Candidates: valid tokens with clip_cov_lb < cov < clip_cov_ub that PPO did not already
    clip. ``max(int(clip_cov_ratio * n_valid), 1)`` of them (or all, if fewer) are drawn
    uniformly with ``generator`` and their loss is multiplied by 0: no gradient, and they
    add 0 to the sum while still counting in the token-mean denominator (as the reference
    does). High-cov tokens are those whose update collapses entropy most.
    Metric ``clip_cov/frac_detached``: detached tokens / valid tokens.
    """
    eps_low, eps_high = _check_clip(epsilon, epsilon_high)
    if not 0 < clip_cov_ratio <= 1 or not clip_cov_lb < clip_cov_ub:
        raise ValueError(
            f"need 0 < clip_cov_ratio <= 1 and clip_cov_lb < clip_cov_ub, got "
            f"{clip_cov_ratio}, {clip_cov_lb}, {clip_cov_ub}"
        )
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    ratio = torch.exp(log_ratio)  # (N, T)
    loss_tok, low, high = _ppo_tokens(adv, ratio, eps_low, eps_high)  # (N, T)
    with torch.no_grad():
        cov = token_covariance(adv, logp, mask)  # (N, T)
        cand = (mask > 0) & ~(low | high) & (cov > clip_cov_lb) & (cov < clip_cov_ub)  # (N, T)
        cand_idx = cand.flatten().nonzero().squeeze(1)  # (C,)
        n_pick = min(max(int(clip_cov_ratio * (mask > 0).sum().item()), 1), len(cand_idx))
        dev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(len(cand_idx), generator=generator, device=dev).to(cand_idx.device)
        keep = torch.ones(loss_tok.numel(), dtype=loss_tok.dtype, device=loss_tok.device)
        keep[cand_idx[perm[:n_pick]]] = 0.0
        keep = keep.view_as(loss_tok)  # (N, T) 0 = detached
    loss = agg_loss(loss_tok * keep, mask, agg, max_len=max_len)
    metrics = _base_metrics(loss, log_ratio, mask)
    metrics.update(_clip_metrics(low, high, mask))
    metrics["clip_cov/frac_detached"] = masked_mean((keep == 0).to(mask.dtype), mask).item()
    return loss, metrics


@register_policy_loss("kl_cov")
def kl_cov(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    max_len: int | None = None,
    kl_cov_ratio: float = 2e-3,
    kl_coef: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """KL-Cov (Cui et al. arXiv:2505.22617, PRIME-RL/Entropy-Mechanism-of-RL).

    The top ``max(1, int(kl_cov_ratio * n_valid))`` valid tokens by cov (see
    ``token_covariance``) get loss -A r + kl_coef * |logp - old_logp|, which pulls them
    back towards pi_old; every other token gets the plain, *unclipped* -A r, as in the
    reference code (KL-Cov replaces clipping rather than adding to it). The default 2e-3
    penalises the top 0.2% of tokens; verl's default is 2e-4.
    Metrics: ``kl_cov/frac_penalized`` (penalised / valid tokens), ``abs_kl`` (masked mean
    of |logp - old_logp|).
    """
    if not 0 < kl_cov_ratio <= 1 or not kl_coef >= 0:
        raise ValueError(
            f"need 0 < kl_cov_ratio <= 1 and kl_coef >= 0, got {kl_cov_ratio}, {kl_coef}"
        )
    adv, mask, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    ratio = torch.exp(log_ratio)  # (N, T)
    pg = -adv * ratio  # (N, T)
    with torch.no_grad():
        valid = (mask > 0).flatten()  # (N*T,)
        n_valid = int(valid.sum().item())
        cov = token_covariance(adv, logp, mask).flatten()  # (N*T,)
        cov = torch.where(valid, cov, torch.full_like(cov, -torch.inf))
        k = max(1, int(n_valid * kl_cov_ratio)) if n_valid > 0 else 0
        penalize = torch.zeros_like(valid)
        penalize[torch.topk(cov, k).indices] = True
        penalize = penalize.view_as(pg)  # (N, T)
    loss_tok = torch.where(penalize, pg + kl_coef * log_ratio.abs(), pg)  # (N, T)
    loss = agg_loss(loss_tok, mask, agg, max_len=max_len)
    metrics = _base_metrics(loss, log_ratio, mask)
    metrics["kl_cov/frac_penalized"] = masked_mean(penalize.to(mask.dtype), mask).item()
    metrics["abs_kl"] = masked_mean(log_ratio.detach().abs(), mask).item()
    return loss, metrics


def compute_policy_loss(
    name: str, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, **options
) -> tuple[Tensor, Metrics]:
    """Look up the policy loss ``name`` and call it; an option it does not take is a
    ``ValueError`` naming the ones it does (``options_of(get_policy_loss_fn(name))``).

    >>> logp = torch.zeros(2, 3)
    >>> loss, m = compute_policy_loss("ppo_clip", logp, logp, torch.tensor([1., -1.]),
    ...                               torch.ones(2, 3), epsilon_high=0.28)
    >>> loss
    tensor(0.)
    """
    fn = POLICY_LOSSES[name]
    check_options("policy loss", name, fn, options)
    return fn(logp, old_logp, advantages, mask, **options)
