"""Known answers and properties of linear probes, PCA and linear CKA (card 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.probes import ActivationCache, cka_by_layer, linear_cka, linear_probe, pca

# --- linear probes -------------------------------------------------------------------


def test_separable_labels_give_auroc_near_one():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    y = (X @ rng.normal(size=8) > 0).astype(int)
    r = linear_probe(torch.tensor(X, dtype=torch.float32), torch.tensor(y))
    assert r.metric == "auroc" and r.test_score > 0.97 and r.cv_mean > 0.97
    assert r.cv_scores.shape == (5,) and r.n_train + r.n_test == 300 and r.n_test == 75
    assert r.model.predict_proba(X[:3]).shape == (3, 2)
    assert set(r.as_dict()) >= {"test_score", "cv_mean", "cv_std"}


def test_random_labels_give_chance_auroc():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 5))
    y = rng.integers(0, 2, size=600)
    r = linear_probe(X, y)
    assert abs(r.test_score - 0.5) < 0.12 and abs(r.cv_mean - 0.5) < 0.08


def test_regression_r2():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 6))
    reward = X @ rng.normal(size=6) + 0.05 * rng.normal(size=400)
    r = linear_probe(X, reward, task="regression")
    assert r.metric == "r2" and r.test_score > 0.98 and r.cv_mean > 0.98
    noise = linear_probe(X, rng.normal(size=400), task="regression")
    assert noise.test_score < 0.05


def test_groups_stop_the_probe_from_recognising_prompts():
    """Several completions per prompt: a probe can score by memorising prompts."""
    rng = np.random.default_rng(3)
    G, per, d = 40, 8, 64
    prompt_vec = rng.normal(size=(G, d)) * 3
    label = rng.integers(0, 2, size=G)  # correctness is a property of the prompt here
    groups = np.repeat(np.arange(G), per)
    X = prompt_vec[groups] + rng.normal(size=(G * per, d))
    y = label[groups]
    leaky = linear_probe(X, y, cv=4)
    honest = linear_probe(X, y, cv=4, groups=groups)
    assert leaky.cv_mean > 0.9  # looks like a great probe...
    assert honest.cv_mean < 0.75  # ...that does not generalise to new prompts


def test_probe_errors():
    X = np.zeros((20, 3))
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(X, np.ones(20))
    with pytest.raises(ValueError, match="one label per row"):
        linear_probe(X, np.ones(19))
    with pytest.raises(ValueError, match="task"):
        linear_probe(X, np.ones(20), task="ranking")
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        linear_probe(np.zeros((20, 3, 2)), np.ones(20))
    with pytest.raises(ValueError, match="rarer class"):
        linear_probe(X, np.r_[np.ones(18), np.zeros(2)])


# --- PCA -------------------------------------------------------------------------------


def test_pca_on_a_line_and_extra_columns():
    t = np.linspace(-1, 1, 50)
    X = np.outer(t, [1.0, 2.0, -1.0]) + 1e-6 * np.random.default_rng(0).normal(size=(50, 3))
    df = pca(X, n=2, correct=(t > 0).astype(int), model="rl")
    assert list(df.columns) == ["pc1", "pc2", "correct", "model"]
    evr = df.attrs["explained_variance_ratio"]
    assert evr[0] > 0.999999 and len(evr) == 2
    assert abs(np.corrcoef(df["pc1"], t)[0, 1]) > 0.999999
    assert abs(df["pc1"].mean()) < 1e-9  # centred
    with pytest.raises(ValueError, match="n \\(5\\)"):
        pca(X, n=5)


# --- linear CKA ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 60), st.integers(1, 12), st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_cka_invariances(N, d, seed, scale):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(X, scale * X @ Q) == pytest.approx(1.0, abs=1e-7)  # rotation + scale
    assert linear_cka(X, X + rng.normal(size=(1, d)) * 5) == pytest.approx(1.0, abs=1e-7)
    Y = rng.normal(size=(N, d + 1))
    c = linear_cka(X, Y)
    assert -1e-12 <= c <= 1 + 1e-12
    assert linear_cka(Y, X) == pytest.approx(c, rel=1e-9)  # symmetric


def test_cka_of_independent_noise_is_small_and_not_invariant_to_stretching():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(2000, 5)), rng.normal(size=(2000, 5))
    assert linear_cka(X, Y) < 0.02
    stretched = X * np.array([10.0, 1.0, 1.0, 1.0, 1.0])  # not isotropic: CKA notices
    assert linear_cka(X, stretched) < 0.9


def test_cka_gram_and_feature_forms_agree():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    Y = X @ rng.normal(size=(4, 3)) + 0.5 * rng.normal(size=(30, 3))
    wide = np.hstack([X, np.zeros((30, 40))])  # zero columns change nothing; N < d1 + d2
    assert linear_cka(wide, Y) == pytest.approx(linear_cka(X, Y), rel=1e-10)
    with pytest.raises(ValueError, match="no variance"):
        linear_cka(np.ones((5, 2)), X[:5])
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(X, X[:10])


def test_cka_by_layer_on_caches():
    g = torch.Generator().manual_seed(0)
    a = ActivationCache({"l0": torch.randn(20, 6, 8, generator=g), "l1": torch.randn(20, 6, 8, generator=g)})
    rotated = ActivationCache({k: v @ torch.linalg.qr(torch.randn(8, 8, generator=g))[0] for k, v in a.items()})
    df = cka_by_layer(a, rotated)
    assert df["name"].tolist() == ["l0", "l1"]
    np.testing.assert_allclose(df["cka"], 1.0, atol=1e-6)
    shuffled = ActivationCache({k: v[torch.randperm(20, generator=g)] for k, v in a.items()})
    assert (cka_by_layer(a, shuffled)["cka"] < 0.9).all()
