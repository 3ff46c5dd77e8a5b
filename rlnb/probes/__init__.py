"""Probes: measurements of a policy that take tensors or DataFrames, never trainers.

- :mod:`rlnb.probes.passk` -- the unbiased pass@k estimator and pass@k curves.
- :mod:`rlnb.probes.bon` -- best-of-n exact distribution and KL, the KL-optimal tilt,
  reward over-optimisation (cards 11, 12).
- :mod:`rlnb.probes.boundary` -- problems solved by base only / RL only / both / neither,
  correct answers lost and gained, answer-level entropy (cards 1, 2).
- :mod:`rlnb.probes.entropy` -- per-token entropy, its summaries, the covariance law of
  entropy change and the entropy-reward fit (card 3).
- :mod:`rlnb.probes.rank` -- effective rank of hidden states and ER/ERV/ERA (card 7).
- :mod:`rlnb.probes.activations` -- named hidden states of any module in a cache.
- :mod:`rlnb.probes.activation_cache` -- the cache of captured states and their pooling.
- the effective horizon (card 9: its closed form, k-QVI-solvability, GORP's exact failure
  probability), re-exported from the exact MDP machinery in :mod:`rlnb.mdp`, which also
  holds :class:`~rlnb.mdp.FiniteMDP`, value iteration and the Q-functions.
- :mod:`rlnb.probes.evaluate` -- sample n completions per problem and count the correct
  ones (the input of pass@k and boundary analysis for language models).
- :mod:`rlnb.probes.linear` -- linear probes, PCA, linear CKA (card 16).
- :mod:`rlnb.probes.critic` -- the policy's states as a critic: rollout features (pooled
  states + entropy statistics), AUROC, a ridge reward probe, POISE's cross-rollout
  baseline, closed-form LM-head scores (card 16); import from the submodule.
"""

from rlnb.mdp import (  # the effective horizon, as a probe; rlnb.mdp is the implementation
    EffectiveHorizon,
    FiniteMDP,
    effective_horizon,
    gorp_effective_horizon,
    gorp_failure_probability,
    is_k_qvi_solvable,
    min_qvi_k,
    policy_evaluation,
    q_k,
    random_policy_q,
    value_iteration,
)
from rlnb.probes.activations import (
    ActivationCache,
    capture,
    find_final_norm,
    find_layers,
    from_hidden_states,
    pool_states,
)
from rlnb.probes.bon import (
    OveroptimisationFit,
    best_of_n_kl,
    best_of_n_probs,
    fit_overoptimisation,
    goodhart_rewards,
    kl_bound,
    kl_divergence,
    overoptimisation_curve,
    tilt,
    tilt_kl,
    tilt_with_kl,
)
from rlnb.probes.boundary import (
    BOUNDARY_CATEGORIES,
    BoundaryResult,
    SupportResult,
    answer_entropy,
    answer_entropy_from_counts,
    answer_support,
    boundary,
    boundary_from_probs,
    support_from_counts,
)
from rlnb.probes.entropy import (
    EntropyCovariance,
    EntropyRewardFit,
    entropy_change_covariance,
    entropy_summary,
    fit_entropy_reward,
    forking_tokens,
    predicted_entropy_change,
    token_entropy,
)
from rlnb.probes.evaluate import compare_completions, sample_counts
from rlnb.probes.linear import ProbeResult, cka_by_layer, linear_cka, linear_probe, pca
from rlnb.probes.passk import default_ks, pass_at_k, pass_at_k_curve, pass_at_k_from_probs
from rlnb.probes.rank import RankDynamics, effective_rank, rank_by_layer, rank_dynamics

__all__ = [
    "OveroptimisationFit",
    "best_of_n_kl",
    "best_of_n_probs",
    "fit_overoptimisation",
    "goodhart_rewards",
    "kl_bound",
    "kl_divergence",
    "overoptimisation_curve",
    "tilt",
    "tilt_kl",
    "tilt_with_kl",
    "compare_completions",
    "sample_counts",
    "EffectiveHorizon",
    "FiniteMDP",
    "effective_horizon",
    "gorp_effective_horizon",
    "gorp_failure_probability",
    "is_k_qvi_solvable",
    "min_qvi_k",
    "policy_evaluation",
    "q_k",
    "random_policy_q",
    "value_iteration",
    "BOUNDARY_CATEGORIES",
    "ActivationCache",
    "BoundaryResult",
    "EntropyCovariance",
    "EntropyRewardFit",
    "ProbeResult",
    "RankDynamics",
    "SupportResult",
    "answer_entropy",
    "answer_entropy_from_counts",
    "answer_support",
    "boundary",
    "boundary_from_probs",
    "capture",
    "cka_by_layer",
    "default_ks",
    "effective_rank",
    "entropy_change_covariance",
    "entropy_summary",
    "find_final_norm",
    "find_layers",
    "fit_entropy_reward",
    "forking_tokens",
    "from_hidden_states",
    "linear_cka",
    "linear_probe",
    "pass_at_k",
    "pass_at_k_curve",
    "pass_at_k_from_probs",
    "pca",
    "pool_states",
    "predicted_entropy_change",
    "rank_by_layer",
    "rank_dynamics",
    "support_from_counts",
    "token_entropy",
]
