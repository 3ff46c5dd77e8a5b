"""Linear probes, PCA and representation similarity on pooled hidden states (card 16).

- :func:`linear_probe` -- does a linear read-out of the states predict correctness
  (held-out AUROC) or reward (held-out R^2)? POISE (card 16) uses such a probe as a cheap
  critic; here it is a measurement.
- :func:`pca` -- the top principal components, as a DataFrame ready to scatter.
- :func:`linear_cka` -- linear centred kernel alignment (Kornblith et al. 2019) between two
  representations of the same inputs, e.g. one layer of the base and of the RL checkpoint;
  :func:`cka_by_layer` does it for every layer of two caches.

Inputs are ``(N, d)`` arrays or tensors: pool per-token states first
(``cache.to_numpy("layers.1.resid_post", how="mean", mask=completion_mask)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ProbeResult", "cka_by_layer", "linear_cka", "linear_probe", "pca"]

TASKS = ("classification", "regression")


def _matrix(X: Any, name: str = "X") -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().float().numpy()
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be (N, d), one row per example; got shape {x.shape}. Pool per-token "
            "states first (cache.pool(name, mask))"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds nan or inf")
    return x


def _vector(y: Any, n: int, name: str = "y") -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    v = np.asarray(y).ravel()
    if v.size != n:
        raise ValueError(f"{name} has {v.size} values but X has {n} rows: one label per row")
    return v


@dataclass
class ProbeResult:
    """What :func:`linear_probe` returns.

    Attributes:
        task: ``"classification"`` or ``"regression"``.
        metric: ``"auroc"`` or ``"r2"``.
        test_score: the metric on the held-out split (``test_size`` of the rows).
        cv_scores: ``(cv,)`` the metric on each cross-validation fold (over all rows).
        cv_mean, cv_std: their mean and standard deviation.
        model: the fitted scikit-learn Pipeline (StandardScaler + LogisticRegression or
            Ridge), trained on the training split. ``model.predict_proba(X)[:, 1]`` or
            ``model.predict(X)``.
        n_train, n_test: rows in each split.
    """

    task: str
    metric: str
    test_score: float
    cv_scores: np.ndarray
    cv_mean: float
    cv_std: float
    model: Any
    n_train: int
    n_test: int

    def as_dict(self) -> dict[str, Any]:
        """The numbers, for a DataFrame row: ``pd.DataFrame([r.as_dict() for r in ...])``."""
        return {"task": self.task, "metric": self.metric, "test_score": self.test_score,
                "cv_mean": self.cv_mean, "cv_std": self.cv_std, "n_train": self.n_train,
                "n_test": self.n_test}


def linear_probe(
    X: Any,
    y: Any,
    *,
    task: str = "classification",
    cv: int = 5,
    test_size: float = 0.25,
    seed: int = 0,
    groups: Any = None,
    C: float = 1.0,
    alpha: float = 1.0,
) -> ProbeResult:
    """Fit a standardised linear probe from states ``X`` to labels ``y``; score it held out.

    Args:
        X: ``(N, d)`` pooled hidden states (array or tensor).
        y: ``(N,)`` labels: 0/1 correctness for ``"classification"``, a reward for
            ``"regression"``.
        task: ``"classification"`` (LogisticRegression, AUROC) or ``"regression"`` (Ridge,
            R^2). Both after a StandardScaler, inside one Pipeline so that the scaler is
            fitted on training rows only.
        cv: folds of the cross-validation over all N rows (stratified for classification).
        test_size: fraction of rows held out for ``test_score``.
        seed: seeds the split and the folds.
        groups: ``(N,)`` a group id per row -- the prompt, when there are several
            completions per prompt. Rows of one group then stay on one side of every split.
        C: inverse L2 strength of the logistic regression.
        alpha: L2 strength of the ridge regression.

    Returns:
        :class:`ProbeResult`.

    Footgun: completions of one prompt share its prompt tokens and much of its states;
    split them across train and test and the probe scores high by recognising the prompt,
    not correctness. Pass ``groups=prompt_ids``.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)); y = (X[:, 0] > 0).astype(int)
    >>> r = linear_probe(X, y)
    >>> r.metric, r.test_score > 0.95, r.cv_scores.shape
    ('auroc', True, (5,))
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.model_selection import (
        GroupKFold,
        GroupShuffleSplit,
        KFold,
        StratifiedKFold,
        cross_val_score,
        train_test_split,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    x = _matrix(X)
    n = x.shape[0]
    target = _vector(y, n)
    if task == "classification":
        classes = np.unique(target)
        if classes.size != 2:
            raise ValueError(
                f"classification needs two classes in y (e.g. correct 1 / wrong 0), got "
                f"{classes.size}: {classes[:5].tolist()}"
            )
        target = (target == classes[1]).astype(np.int64)
        if np.bincount(target).min() < cv:
            raise ValueError(
                f"the rarer class has {np.bincount(target).min()} rows, fewer than cv={cv} "
                "folds: collect more rows or lower cv"
            )
        estimator = LogisticRegression(C=C, max_iter=2000)
        scoring, metric = "roc_auc", "auroc"
    else:
        target = target.astype(np.float64)
        estimator = Ridge(alpha=alpha)
        scoring, metric = "r2", "r2"
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie in (0, 1), got {test_size}")
    if cv < 2:
        raise ValueError(f"cv must be >= 2 folds, got {cv}")

    def pipeline() -> Any:
        return make_pipeline(StandardScaler(), estimator)

    if groups is not None:
        g = _vector(groups, n, "groups")
        if np.unique(g).size < cv:
            raise ValueError(f"groups has {np.unique(g).size} distinct ids, fewer than cv={cv}")
        split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        train, test = next(split.split(x, target, g))
        folds = list(GroupKFold(n_splits=cv).split(x, target, g))
    else:
        strat = target if task == "classification" else None
        train, test = train_test_split(
            np.arange(n), test_size=test_size, random_state=seed, stratify=strat)
        kf = (StratifiedKFold if task == "classification" else KFold)(
            n_splits=cv, shuffle=True, random_state=seed)
        folds = list(kf.split(x, target))
    if task == "classification" and np.unique(target[test]).size < 2:
        raise ValueError("the held-out split has one class only: AUROC is undefined; "
                         "collect more rows or change seed/test_size")
    cv_scores = cross_val_score(pipeline(), x, target, cv=folds, scoring=scoring)
    model = pipeline().fit(x[train], target[train])
    if task == "classification":
        test_score = float(roc_auc_score(target[test], model.predict_proba(x[test])[:, 1]))
    else:
        test_score = float(r2_score(target[test], model.predict(x[test])))
    return ProbeResult(
        task=task, metric=metric, test_score=test_score, cv_scores=np.asarray(cv_scores),
        cv_mean=float(np.mean(cv_scores)), cv_std=float(np.std(cv_scores)), model=model,
        n_train=int(len(train)), n_test=int(len(test)),
    )


def pca(X: Any, n: int = 2, **columns: Any) -> pd.DataFrame:
    """Project ``X`` ``(N, d)`` on its top ``n`` principal components.

    Args:
        X: ``(N, d)`` pooled states.
        n: number of components.
        **columns: extra ``(N,)`` columns to carry along for colouring, e.g.
            ``correct=y, model="rl"``.

    Returns:
        DataFrame with ``pc1 .. pc{n}`` and the extra columns; ``df.attrs
        ["explained_variance_ratio"]`` holds the fraction of variance of each component.
        Signs are fixed by scikit-learn's convention (deterministic, but arbitrary: two
        checkpoints' PC1 may point opposite ways).

    >>> df = pca(np.eye(4), n=2, label=list("abcd"))
    >>> list(df.columns), len(df)
    (['pc1', 'pc2', 'label'], 4)
    """
    from sklearn.decomposition import PCA

    x = _matrix(X)
    if not 1 <= n <= min(x.shape):
        raise ValueError(f"n ({n}) must lie in [1, min(N, d)] = [1, {min(x.shape)}]")
    model = PCA(n_components=n, svd_solver="full").fit(x)
    proj = model.transform(x)  # (N, n)
    df = pd.DataFrame(proj, columns=[f"pc{i + 1}" for i in range(n)])
    for key, value in columns.items():
        df[key] = _vector(value, x.shape[0], key) if np.ndim(value) else value
    df.attrs["explained_variance_ratio"] = model.explained_variance_ratio_.tolist()
    return df


def linear_cka(X: Any, Y: Any) -> float:
    """Linear CKA (Kornblith et al. 2019) between ``X`` ``(N, d1)`` and ``Y`` ``(N, d2)``.

    With columns centred, ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``: 1 when the
    representations agree up to a rotation and an isotropic scale, near 0 for unrelated
    ones. Rows must be the *same* inputs in the same order.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 4))
    >>> Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    >>> round(linear_cka(X, 3.0 * X @ Q), 6)
    1.0

    Footgun: CKA of unrelated states is biased upwards at small N (about d / N for random
    data); compare against a shuffled-rows baseline.
    """
    x, yy = _matrix(X, "X"), _matrix(Y, "Y")
    if x.shape[0] != yy.shape[0]:
        raise ValueError(f"X ({x.shape[0]} rows) and Y ({yy.shape[0]} rows) must describe the same inputs")
    x = x - x.mean(axis=0)
    yy = yy - yy.mean(axis=0)
    # Scale each to unit Frobenius norm first: CKA is scale invariant, and this keeps the
    # products away from overflow and underflow.
    nx, ny = np.linalg.norm(x), np.linalg.norm(yy)
    if nx == 0 or ny == 0:
        raise ValueError("X or Y has no variance across rows: CKA is undefined")
    x, yy = x / nx, yy / ny
    if x.shape[0] < x.shape[1] + yy.shape[1]:  # Gram form is cheaper with few rows
        kx, ky = x @ x.T, yy @ yy.T
        hsic, nxx, nyy = np.sum(kx * ky), np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        hsic = np.linalg.norm(yy.T @ x) ** 2
        nxx, nyy = np.linalg.norm(x.T @ x), np.linalg.norm(yy.T @ yy)
    return float(hsic / (nxx * nyy))


def cka_by_layer(
    cache_a: Any,
    cache_b: Any,
    *,
    names: Sequence[str] | None = None,
    mask: Any = None,
    how: str = "mean",
) -> pd.DataFrame:
    """Linear CKA between two caches (two checkpoints, same inputs) at every shared name.

    Args:
        cache_a, cache_b: :class:`rlnb.probes.ActivationCache` of the same rows.
        names: default every name both hold, in ``cache_a``'s order.
        mask: ``(N, L)`` positions to pool over; default each cache's own mask.
        how: pooling, ``"mean"`` or ``"last"``.

    Returns:
        DataFrame ``name, cka``: a curve that typically stays near 1 in early layers and
        drops where fine-tuning changed the representation.
    """
    if names is None:
        names = [k for k in cache_a if k in cache_b]
    rows = []
    for name in names:
        xa = cache_a.to_numpy(name, how=how, mask=mask)
        xb = cache_b.to_numpy(name, how=how, mask=mask)
        rows.append({"name": name, "cka": linear_cka(xa, xb)})
    return pd.DataFrame(rows, columns=["name", "cka"])
