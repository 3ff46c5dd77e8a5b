"""Advantage estimators: from one reward per completion to one number per completion.

Layout, as in TRL: ``rewards`` is flat ``(N,)`` with the ``G = group_size`` completions of
one prompt contiguous, so rows ``g*G .. g*G+G-1`` are prompt ``g``'s group and
``rewards.view(-1, G)`` is ``(num_prompts, G)``.

Every outcome method is a registered pure function ``fn(rewards (N,), group_size, **options)
-> (N,)``; ``compute_advantages`` validates the input and dispatches by name. ``gae`` is
the one estimator for a critic and works per token, ``(N, T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.rl.registry import ADVANTAGES, check_options, options_of, register_advantage

SCALE_REWARDS = ("group", "batch", "none")


# --- validation -----------------------------------------------------------------------
def _check_group_size(group_size: object) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(
            f"group_size must be an int >= 1 (completions per prompt), got {group_size!r}"
        )
    return group_size


def _check_rewards(rewards: Tensor, group_size: int) -> None:
    n = rewards.shape[0] if rewards.dim() > 0 else 0
    if rewards.dim() == 0 or n == 0:
        raise ValueError(
            f"rewards must hold at least one rollout, got shape {tuple(rewards.shape)}"
        )
    if n % group_size != 0:
        raise ValueError(
            f"the number of rollouts ({n}) must be divisible by group_size ({group_size}): "
            f"rewards hold num_prompts * group_size completions, each prompt's group contiguous"
        )
    bad = (~torch.isfinite(rewards)).nonzero().tolist()
    if bad:
        parts = []
        for idx in bad[:5]:
            i = idx[0]
            where = f" at token {idx[1]}" if len(idx) > 1 else ""
            parts.append(
                f"reward of rollout {i} (group {i // group_size}){where} is "
                f"{rewards[tuple(idx)].item()}"
            )
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"{', '.join(parts)}{more}; a reward function must return finite numbers")


def _check_scale_rewards(scale_rewards: object) -> str:
    if scale_rewards is True:  # TRL < 0.22 took a bool
        return "group"
    if scale_rewards is False:
        return "none"
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(
            f"scale_rewards must be one of group, batch, none (or True/False), got "
            f"{scale_rewards!r}: 'group' = GRPO, 'batch' = Lite PPO, 'none' = Dr.GRPO"
        )
    return scale_rewards  # type: ignore[return-value]


# --- outcome methods: (N,) -> (N,) ----------------------------------------------------
@register_advantage("reinforce")
def reinforce(rewards: Tensor, group_size: int) -> Tensor:
    """A = r: REINFORCE with no baseline (Williams 1992). Unbiased, high variance.

    >>> reinforce(torch.tensor([1., 0.]), 2)
    tensor([1., 0.])
    """
    return rewards.clone()


@register_advantage("reinforce_baseline")
def reinforce_baseline(rewards: Tensor, group_size: int) -> Tensor:
    """A = r - mean(r over the whole batch): one shared baseline, ignores the groups.

    >>> reinforce_baseline(torch.tensor([1., 0., 0., 0.]), 2)
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    """
    return rewards - rewards.mean()


@register_advantage("rloo")
def rloo(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out: A_i = r_i - mean_{j != i in i's group} r_j
    (Kool et al. 2019; Ahmadian et al. arXiv:2402.14740). Equal to G/(G-1) * (r_i - mean_g);
    the baseline does not use r_i, so the estimate stays unbiased. Needs group_size >= 2.

    >>> rloo(torch.tensor([1., 0., 0., 1.]), 4)
    tensor([ 0.6667, -0.6667, -0.6667,  0.6667])
    """
    g = group_size
    if g < 2:
        raise ValueError(f"rloo needs group_size >= 2 (a leave-one-out baseline), got {g}")
    grouped = rewards.view(-1, g)  # (P, G)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (g - 1)  # (P, G)
    return (grouped - others_mean).reshape(-1)


@register_advantage("grpo")
def grpo(
    rewards: Tensor, group_size: int, *, scale_rewards: str | bool = "group", std_eps: float = 1e-4
) -> Tensor:
    """GRPO's group-relative advantage, TRL ``GRPOTrainer``'s formula (Shao et al.
    arXiv:2402.03300): A = r - mean_g, then divided according to ``scale_rewards``:

      - ``"group"``: by (std_g + 1e-4), std with Bessel's correction (``torch.std``).
      - ``"batch"``: by (std of all N rewards + 1e-4): group mean, batch std = Lite PPO
        (arXiv:2508.08221).
      - ``"none"``: no division, Dr.GRPO (arXiv:2503.20783). Dividing by std_g up-weights
        prompts that are nearly always (or never) solved; Dr.GRPO calls that a bias.

    ``True``/``False`` are read as "group"/"none". With group_size 1 (or one rollout for
    "batch") the std is taken as 0, as TRL does; the advantage is then 0.

    >>> grpo(torch.tensor([1., 0., 0., 0.]), 4, scale_rewards="none")
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    """
    from rlnb.checks import check_number

    scale = _check_scale_rewards(scale_rewards)
    check_number(std_eps, "std_eps", 0, low_open=True, meaning="added to the std before dividing")
    grouped = rewards.view(-1, group_size)  # (P, G)
    adv = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(adv)
        adv = adv / (std + std_eps)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros_like(rewards[0])
        adv = adv / (std + std_eps)
    return adv.reshape(-1)


@register_advantage("psr")
def psr(rewards: Tensor, group_size: int) -> Tensor:
    """Positive sample reinforcement, A = r (Zhu et al. arXiv:2506.01347). With rewards in
    {0, 1} only correct samples carry a gradient: their probability is pushed up.

    >>> psr(torch.tensor([1., 0.]), 2)
    tensor([1., 0.])
    """
    return rewards.clone()


@register_advantage("nsr")
def nsr(rewards: Tensor, group_size: int) -> Tensor:
    """Negative sample reinforcement, A = r - 1 (Zhu et al. arXiv:2506.01347). With rewards
    in {0, 1} only wrong samples carry a gradient: their probability is pushed down and the
    mass flows to the other outputs in proportion to their probability.

    Footgun: with exact expectations PSR and NSR have the *same* gradient (sum_y pi = 1);
    they differ only through sampling noise and adaptive optimisers such as Adam.

    >>> nsr(torch.tensor([1., 0.]), 2)
    tensor([ 0., -1.])
    """
    return rewards - 1


@register_advantage("w_reinforce")
def w_reinforce(rewards: Tensor, group_size: int, *, lam: float = 0.1) -> Tensor:
    """Weighted REINFORCE, A = lam for a correct sample (r = 1), -1 for a wrong one
    (r = 0); the paper recommends lam = 0.1 (Zhu et al. arXiv:2506.01347). For rewards
    outside {0, 1} this is defined as the line through those points, A = lam*r - (1 - r).

    >>> w_reinforce(torch.tensor([1., 0.]), 2)
    tensor([ 0.1000, -1.0000])
    """
    from rlnb.checks import check_number

    check_number(lam, "lam", 0, meaning="advantage of a correct sample; the paper uses 0.1")
    return lam * rewards - (1 - rewards)


def _batch_whiten(values: Tensor, mask: Tensor | None) -> Tensor:
    """verl's ``masked_whiten`` of a per-sequence value broadcast over its tokens: mean and
    Bessel-corrected variance over the valid tokens of the batch (a sequence counts once
    per valid token; once each without ``mask``), then ``(v - mean) / sqrt(var + 1e-8)``."""
    if mask is None:
        weight = torch.ones_like(values)
    else:
        if mask.dim() != 2 or mask.shape[0] != values.shape[0]:
            raise ValueError(f"mask must be (N, T) with N = {values.shape[0]} completions, got "
                             f"{tuple(mask.shape)}")
        weight = mask.to(values.dtype).sum(-1)  # (N,) valid tokens per completion
    total = weight.sum()
    if total < 2:
        raise ValueError("whitening over the batch needs at least 2 valid tokens")
    mean = (weight * values).sum() / total
    var = (weight * (values - mean) ** 2).sum() / total * total / (total - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


@register_advantage("reinforce_plus_plus")
def reinforce_plus_plus(rewards: Tensor, group_size: int, *, mask: Tensor | None = None) -> Tensor:
    """REINFORCE++ (Hu et al. arXiv:2501.03262) as verl's ``reinforce_plus_plus`` estimator
    computes it for an outcome reward (gamma = 1): the return ``r`` of every token,
    whitened over the valid tokens of the *whole batch* (no per-prompt baseline).

    ``mask`` ``(N, T)``: the completions' valid tokens, so that a long completion weighs as
    many tokens as it has (verl's token-level whitening; the Trainer passes it). Without
    it each completion counts once.

    >>> reinforce_plus_plus(torch.tensor([1., 0., 0., 1.]), 2)
    tensor([ 0.8660, -0.8660, -0.8660,  0.8660])
    """
    return _batch_whiten(rewards, mask)


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(
    rewards: Tensor, group_size: int, *, mask: Tensor | None = None
) -> Tensor:
    """verl's ``reinforce_plus_plus_baseline``: the reward minus its group's mean (0 for a
    group of one), then whitened over the valid tokens of the batch as in
    :func:`reinforce_plus_plus`.

    >>> reinforce_plus_plus_baseline(torch.tensor([1., 0., 1., 1.]), 2)
    tensor([ 1.2247, -1.2247,  0.0000,  0.0000])
    """
    grouped = rewards.view(-1, group_size)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True) if group_size > 1 else grouped
    return _batch_whiten(centred.reshape(-1), mask)


# --- critic: GAE over tokens ----------------------------------------------------------
def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. arXiv:1506.02438) over tokens.

    Backwards in time over the valid tokens only (``mask`` > 0)::

        delta_t = r_t + gamma * V_next - V_t          # V_next: value of the next valid token, 0 at the end
        A_t     = delta_t + gamma * lam * A_next

    Args:
        token_rewards: ``(N, T)`` reward per token; rewards on masked positions are ignored,
            so put an outcome reward on the *last valid* token.
        values: ``(N, T)`` critic values V(s_t). Treated as constants (detached).
        mask: ``(N, T)`` 1 for completion tokens, 0 for padding (and, mid-sequence, for
            tokens the policy did not choose, e.g. tool output: they are skipped).
        gamma, lam: discount and GAE lambda. lam=1: A = return - V (Monte Carlo);
            lam=0: A = one-step TD error.

    Returns:
        ``(advantages, returns)``, both ``(N, T)``, 0 on masked positions;
        returns = advantages + values on valid ones (the critic's regression target).
        Unlike verl, the advantages are not whitened here.

    >>> adv, ret = gae(torch.tensor([[0., 1.]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2))
    >>> adv, ret
    (tensor([[0.5000, 0.5000]]), tensor([[1., 1.]]))
    """
    from rlnb.checks import check_number

    check_number(gamma, "gamma", 0, 1, meaning="discount")
    check_number(lam, "lam", 0, 1, meaning="GAE lambda")
    for name, x in (("token_rewards", token_rewards), ("values", values), ("mask", mask)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be an (N, T) tensor, got {type(x).__name__}")
    if not (token_rewards.shape == values.shape == mask.shape) or values.dim() != 2:
        raise ValueError(
            f"token_rewards {tuple(token_rewards.shape)}, values {tuple(values.shape)} and "
            f"mask {tuple(mask.shape)} must all be (N, T)"
        )
    values = values.detach()
    rewards = token_rewards.detach().to(values.dtype)
    valid = mask > 0  # (N, T)
    n, t_len = values.shape
    adv = torch.zeros_like(values)  # (N, T)
    next_value = values.new_zeros(n)  # (N,)
    next_adv = values.new_zeros(n)  # (N,)
    for t in reversed(range(t_len)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (N,)
        adv_t = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(valid[:, t], adv_t, 0.0)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
    returns = torch.where(valid, adv + values, 0.0)
    return adv, returns


@register_advantage("gae")
def _gae_method(
    rewards: Tensor,
    group_size: int,
    *,
    values: Tensor | None = None,
    mask: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> Tensor:
    """GAE through ``compute_advantages``: ``rewards`` (N,) outcome rewards are placed on
    each row's last valid token, or (N, T) per-token rewards are used as they are.
    Returns the (N, T) advantages (see ``gae``)."""
    if values is None or mask is None:
        raise ValueError("method 'gae' needs values=(N, T) critic values and mask=(N, T)")
    if rewards.dim() == 1:
        if rewards.shape[0] != values.shape[0]:
            raise ValueError(
                f"rewards ({rewards.shape[0]},) and values {tuple(values.shape)} disagree on N"
            )
        valid = (mask > 0).to(torch.long)  # (N, T)
        positions = torch.arange(valid.shape[1], device=valid.device)  # (T,)
        last = (valid * (positions + 1)).argmax(dim=1, keepdim=True)  # (N, 1) last valid index
        token_rewards = torch.zeros_like(values).scatter(1, last, rewards[:, None].to(values.dtype))
    else:
        token_rewards = rewards
    return gae(token_rewards, values, mask, gamma=gamma, lam=lam)[0]


# --- entry point ----------------------------------------------------------------------
def compute_advantages(
    rewards: Tensor,
    group_size: int,
    method: str = "grpo",
    scale_rewards: str | bool = "group",
    **kw,
) -> Tensor:
    """Advantages of N rollouts laid out as contiguous groups of ``group_size``.

    Args:
        rewards: ``(N,)`` one reward per completion, prompt g's group at rows
            ``g*G .. g*G+G-1`` (TRL's layout); ``(N, T)`` per-token rewards for ``gae``.
        group_size: completions per prompt, G (TRL's ``num_generations``).
        method: a registered name: gae, grpo, nsr, psr, reinforce, reinforce_baseline,
            reinforce_plus_plus, reinforce_plus_plus_baseline, rloo, w_reinforce
            (``list_advantages()``).
        scale_rewards: "group" | "batch" | "none"; used by ``grpo`` only, ignored otherwise.
        **kw: options of the method, e.g. ``lam=0.1`` for w_reinforce;
            ``values=, mask=, gamma=, lam=`` for gae.

    Returns:
        ``(N,)`` advantages (``(N, T)`` for gae), same float dtype as ``rewards``.

    >>> compute_advantages(torch.tensor([1., 0., 1., 1.]), group_size=2)
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    """
    from rlnb.checks import as_tensor

    group_size = _check_group_size(group_size)
    fn = ADVANTAGES[method]
    rewards = as_tensor(rewards, "rewards", "a (N,) tensor of numbers, one reward per completion")
    if rewards.dtype == torch.bool or rewards.is_complex():
        raise TypeError(f"rewards must hold real numbers, got dtype {rewards.dtype}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if rewards.dim() != 1 and not (method == "gae" and rewards.dim() == 2):
        raise ValueError(
            f"rewards must be (N,), one per completion, got shape {tuple(rewards.shape)}"
            + ("" if method == "gae" else "; only method 'gae' takes (N, T) per-token rewards")
        )
    _check_rewards(rewards, group_size)
    check_options("advantage method", method, fn, kw)
    if "scale_rewards" in options_of(fn):
        kw = {"scale_rewards": scale_rewards, **kw}
    else:
        _check_scale_rewards(scale_rewards)  # a typo is an error even where it is unused
    adv = fn(rewards, group_size, **kw)
    return adv.to(rewards.dtype)
