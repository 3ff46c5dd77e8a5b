"""Paper-figure reproductions: one module per figure, run headless by ``python -m analysis``.

Each module follows the protocol in :mod:`analysis.base` (``TITLE``, ``CARD``, ``run``,
``figure``, ``checks``). List a module's name in :data:`REPRODUCTIONS` to have the report
(:mod:`analysis.report`) run it.
"""

#: Module names inside this package that the report runs, in report order.
REPRODUCTIONS: tuple[str, ...] = (
    "kl_bayes",
    "passk_crossover_bandit",
    "passk_crossover_lm",
    "effective_horizon",
)
