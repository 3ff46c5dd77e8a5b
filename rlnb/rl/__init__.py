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
    reinforce_plus_plus,
    reinforce_plus_plus_baseline,
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
from rlnb.rl.entropy_losses import (  # registers "steer" and "lp_reg"
    lp_reg,
    min_p_proxy_logp,
    steer,
)
from rlnb.rl.intrinsic import (
    NO_ANSWER,
    PROCESS_REWARD_MODES,
    majority_vote_rewards,
    process_rewards,
    win_rate_rewards,
)
from rlnb.rl.kl import KL_ESTIMATORS, entropy_bonus, entropy_from_logits, kl_penalty
from rlnb.rl.losses import (
    clip_cov,
    compute_policy_loss,
    gspo,
    kl_cov,
    ppo_clip,
    token_covariance,
    vanilla_pg,
)
from rlnb.rl.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    compute_preference_loss,
    sequence_logps,
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
from rlnb.rl.rover_loss import (  # registers the "rover" policy loss and advantage
    rover,
    rover_reward,
    vocab_mean_logp,
)
from rlnb.rl.token_inputs import TOKEN_INPUTS, full_logits, token_inputs

__all__ = [
    "ADVANTAGES",
    "TOKEN_INPUTS",
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
    "full_logits",
    "entropy_from_logits",
    "gae",
    "get_advantage_fn",
    "get_policy_loss_fn",
    "grpo",
    "kl_cov",
    "kl_penalty",
    "list_advantages",
    "list_policy_losses",
    "lp_reg",
    "masked_mean",
    "majority_vote_rewards",
    "process_rewards",
    "win_rate_rewards",
    "PROCESS_REWARD_MODES",
    "NO_ANSWER",
    "PREFERENCE_LOSSES",
    "bradley_terry_loss",
    "compute_preference_loss",
    "sequence_logps",
    "min_p_proxy_logp",
    "nsr",
    "options_of",
    "gspo",
    "ppo_clip",
    "psr",
    "register_advantage",
    "register_policy_loss",
    "reinforce",
    "reinforce_baseline",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "rloo",
    "rover",
    "rover_reward",
    "steer",
    "token_covariance",
    "token_inputs",
    "vanilla_pg",
    "vocab_mean_logp",
    "w_reinforce",
]
