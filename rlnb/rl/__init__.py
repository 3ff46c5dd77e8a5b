"""RL objectives as small pure tensor functions: advantages, policy losses, KL, aggregation.

Advantage methods and policy losses live in registries, looked up by name::

    adv = compute_advantages(rewards, group_size=8, method="grpo", scale_rewards="batch")
    loss, metrics = compute_policy_loss("ppo_clip", logp, old_logp, adv, mask,
                                        epsilon=0.2, epsilon_high=0.28, agg="token-mean")
"""

from rlnb.rl.advantages import (
    SCALE_REWARDS,
    compute_advantages,
    gae,
    grpo,
    nsr,
    psr,
    reinforce,
    reinforce_baseline,
    rloo,
    w_reinforce,
)
from rlnb.rl.aggregation import (
    AGG_MODES,
    TRL_AGG_MODES,
    VERL_AGG_MODES,
    agg_loss,
    agg_weights,
    check_agg_mode,
    masked_mean,
)
from rlnb.rl.kl import KL_ESTIMATORS, entropy_bonus, entropy_from_logits, kl_penalty
from rlnb.rl.losses import (
    clip_cov,
    compute_policy_loss,
    kl_cov,
    ppo_clip,
    token_covariance,
    vanilla_pg,
)
from rlnb.rl.registry import (
    ADVANTAGES,
    POLICY_LOSSES,
    Registry,
    get_advantage_fn,
    get_policy_loss_fn,
    list_advantages,
    list_policy_losses,
    options_of,
    register_advantage,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGES",
    "AGG_MODES",
    "TRL_AGG_MODES",
    "VERL_AGG_MODES",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "SCALE_REWARDS",
    "Registry",
    "agg_loss",
    "agg_weights",
    "check_agg_mode",
    "clip_cov",
    "compute_advantages",
    "compute_policy_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "gae",
    "get_advantage_fn",
    "get_policy_loss_fn",
    "grpo",
    "kl_cov",
    "kl_penalty",
    "list_advantages",
    "list_policy_losses",
    "masked_mean",
    "nsr",
    "options_of",
    "ppo_clip",
    "psr",
    "register_advantage",
    "register_policy_loss",
    "reinforce",
    "reinforce_baseline",
    "rloo",
    "token_covariance",
    "vanilla_pg",
    "w_reinforce",
]
