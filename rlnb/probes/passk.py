"""pass@k curves: the benchmark pass@k over a range of k, with a bootstrap band.

The estimator itself -- unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al.
2021, in the stable product form), and exact pass@k from known success probabilities --
is the core module :mod:`rlnb.estimators`, re-exported here. Average it over problems to
get the benchmark pass@k (Yue et al. 2025, arXiv:2504.13837, card 1).

The footgun: ``1 - (1 - c/n)**k`` (plugging the empirical success rate into the exact
formula) is *biased* -- it overestimates pass@k at small c/n. Use :func:`pass_at_k` on
counts and :func:`pass_at_k_from_probs` only when you know the true probabilities (a
tabular policy, a sandbox's exact answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rlnb.estimators import as_int_array, default_ks, pass_at_k, pass_at_k_from_probs

__all__ = ["default_ks", "pass_at_k", "pass_at_k_curve", "pass_at_k_from_probs"]


def _one_curve(
    counts: Any,
    n: Any,
    ks: Sequence[int],
    model: str,
    bootstrap: int,
    ci: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    c = as_int_array(counts, "counts").ravel()
    if c.size == 0:
        raise ValueError(f"counts for model {model!r} is empty: give one count per problem")
    per_problem = np.stack([pass_at_k(n, c, int(k)) * np.ones_like(c, float) for k in ks])
    frame = pd.DataFrame(
        {"model": model, "k": np.asarray(ks, dtype=np.int64), "pass_at_k": per_problem.mean(1)}
    )
    if bootstrap > 0:
        p = c.size
        # Resampling problems with replacement == multinomial weights over problems.
        weights = rng.multinomial(p, np.full(p, 1.0 / p), size=bootstrap)  # (B, P)
        boot = weights @ per_problem.T / p  # (B, K)
        alpha = (1.0 - ci) / 2.0
        frame["lo"] = np.quantile(boot, alpha, axis=0)
        frame["hi"] = np.quantile(boot, 1.0 - alpha, axis=0)
    return frame


def pass_at_k_curve(
    counts: Any,
    n: int | Mapping[str, int],
    ks: Sequence[int] | None = None,
    *,
    model: str = "model",
    bootstrap: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Benchmark pass@k over a range of k, as a tidy DataFrame ready for plotting.

    Args:
        counts: correct samples per problem, shape ``(P,)`` -- or a dict
            ``{model_name: counts}`` to put several models in one frame.
        n: samples drawn per problem (an int, a ``(P,)`` array, or a dict by model name).
        ks: the budgets; default :func:`default_ks` ``(n)``: 1, 2, 4, ..., n.
        model: the ``model`` label when ``counts`` is a single array.
        bootstrap: number of percentile-bootstrap resamples *over problems* for a
            confidence band (0 = no band). The band shows problem-sampling noise, not the
            noise of the n samples per problem.
        ci: the band's coverage, e.g. 0.95 for the 2.5th-97.5th percentiles.
        seed: seeds the bootstrap's ``numpy.random.Generator``.

    Returns:
        DataFrame with one row per (model, k) and columns ``model, k, pass_at_k``, plus
        ``lo, hi`` when ``bootstrap > 0``. Feed it to :func:`rlnb.viz.passk_curves`.

    >>> pass_at_k_curve([0, 1, 4], n=4, ks=[1, 4])
       model  k  pass_at_k
    0  model  1   0.416667
    1  model  4   0.666667
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap ({bootstrap}) must be >= 0 resamples")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci ({ci}) must be in (0, 1), e.g. 0.95")
    by_model = dict(counts) if isinstance(counts, Mapping) else {model: counts}
    rng = np.random.default_rng(seed)
    frames = []
    for name, model_counts in by_model.items():
        if isinstance(n, Mapping):
            if name not in n:
                raise KeyError(f"n has no entry for model {name!r}; give n as an int or per model")
            model_n = n[name]
        else:
            model_n = n
        model_ks = list(ks) if ks is not None else default_ks(int(np.min(model_n)))
        frames.append(_one_curve(model_counts, model_n, model_ks, str(name), bootstrap, ci, rng))
    return pd.concat(frames, ignore_index=True)
