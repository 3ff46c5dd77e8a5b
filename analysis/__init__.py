"""Paper-figure reproductions: one module per figure, run headless by ``python -m analysis``.

Each module follows the protocol in :mod:`analysis.base` (``TITLE``, ``CARD``, ``run``,
``figure``, ``checks``). List a module's name in :data:`REPRODUCTIONS` to have the report
(:mod:`analysis.report`) run it.
"""

#: Module names inside this package that the report runs, in report order.
REPRODUCTIONS: tuple[str, ...] = (
    "passk_crossover_bandit",  # card 1
    "passk_crossover_lm",  # card 1 at LM scale
    "boundary_shrinkage",  # card 2
    "entropy_covariance",  # card 3
    "entropy_interventions",  # card 4
    "rollout_exploration",  # card 5
    "psr_nsr",  # card 6
    "effective_rank",  # card 7
    "rover",  # card 8
    "effective_horizon",  # card 9
    "kl_bayes",  # card 10
    "bon_vs_kl",  # card 11
    "overoptimisation",  # card 12
    "lite_ppo",  # card 13
    "one_shot_rlvr",  # card 14
    "noisy_verifiers",  # card 15
    "own_critic",  # card 16
    "unsupervised_rlvr",  # card 17
    "broad_rollouts",  # card 18
    "intransitive_preferences",  # card 19
    "hint_scaffolding",  # card 21
)
