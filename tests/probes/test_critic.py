"""Known answers of the own-critic pieces (card 16): features, AUROC, the cross-rollout
baseline and the closed-form LM-head scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from rlnb.probes.critic import (
    ENTROPY_STATS,
    auroc,
    cross_rollout_baseline,
    fit_reward_probe,
    head_score_gradients,
    independent_partner,
    policy_gradient,
    rollout_features,
    string_one_hot,
)

# --- AUROC ------------------------------------------------------------------------------


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, size=60).astype(float)  # many ties
        y = rng.integers(0, 2, size=60)
        y[:2] = [0, 1]
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_known_answers_and_errors():
    assert auroc([0, 1], [0, 1]) == 1.0 and auroc([1, 0], [0, 1]) == 0.0
    assert auroc([3, 3, 3, 3], [0, 1, 0, 1]) == 0.5
    with pytest.raises(ValueError, match="both 0 and 1"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="one value per row"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="nan"):
        auroc([np.nan, 0.2], [0, 1])


# --- features -----------------------------------------------------------------------------


def test_rollout_features_pool_the_right_tokens_and_loop_statistics():
    g = torch.Generator().manual_seed(0)
    N, L, d, T = 5, 7, 3, 4
    h = torch.randn(N, L, d, generator=g)
    prompt = torch.zeros(N, L, dtype=torch.bool)
    comp = torch.zeros(N, L, dtype=torch.bool)
    token = torch.zeros(N, T, dtype=torch.bool)
    for i in range(N):
        lp, lc = 1 + i % 3, 1 + (i % T)
        prompt[i, 3 - lp:3] = True
        comp[i, 3:3 + lc] = True
        token[i, :lc] = True
    ent = torch.rand(N, T, generator=g)
    logp = -torch.rand(N, T, generator=g)
    f = rollout_features({"a": h, "b": 2 * h, "pooled": h[:, 0]}, prompt, comp, ent, logp, token)
    assert f.X.shape == (N, 2 * 2 * d + len(ENTROPY_STATS)) and len(f.columns) == f.X.shape[1]
    assert f.columns[0] == "a/prompt/0" and f.columns[-1] == "length"
    for i in range(N):
        np.testing.assert_allclose(f.X[i, :d], h[i][prompt[i]].mean(0).double(), rtol=1e-6)
        np.testing.assert_allclose(f.X[i, d:2 * d], h[i][comp[i]].mean(0).double(), rtol=1e-6)
        np.testing.assert_allclose(f.X[i, 2 * d:3 * d], 2 * h[i][prompt[i]].mean(0).double(),
                                   rtol=1e-6)
        e, lpi = ent[i][token[i]].double(), logp[i][token[i]].double()
        want = [e.mean(), e.max(), e.min(), e[0], e[-1], lpi.mean(), lpi.sum(), lpi.min(), len(e)]
        np.testing.assert_allclose(f.X[i, -len(ENTROPY_STATS):], [float(w) for w in want],
                                   rtol=1e-6)


def test_rollout_features_errors_say_what_is_wrong():
    h = torch.randn(2, 3, 4)
    pm = torch.tensor([[1, 0, 0], [1, 0, 0]])
    cm = torch.tensor([[0, 1, 1], [0, 1, 0]])
    e = torch.ones(2, 2)
    tm = torch.tensor([[1, 1], [1, 0]])
    with pytest.raises(ValueError, match="overlap"):
        rollout_features({"h": h}, pm | cm, cm, e, e, tm)
    with pytest.raises(ValueError, match="at least one prompt"):
        rollout_features({"h": h}, pm * 0, cm, e, e, tm)
    with pytest.raises(ValueError, match="no masked completion token"):
        rollout_features({"h": h}, pm, cm, e, e, tm * 0)
    with pytest.raises(ValueError, match="prompt_mask has shape"):
        rollout_features({"h": h}, pm[:, :2], cm, e, e, tm)
    with pytest.raises(ValueError, match=r"\(N, L, d\) entry"):
        rollout_features({"h": h[:, 0]}, pm, cm, e, e, tm)


def test_string_one_hot():
    X = string_one_hot([" 101\n", "9", "12345"], "0123456789", 3)
    assert X.shape == (3, 3 * 10 + 4)
    assert X[0, 1] == X[0, 10 + 0] == X[0, 20 + 1] == X[0, 30 + 3] == 1 and X[0].sum() == 4
    assert X[1, 9] == 1 and X[1, 31] == 1 and X[1].sum() == 2
    assert X[2, 33] == 1  # length clipped at max_len
    with pytest.raises(ValueError, match="max_len"):
        string_one_hot(["1"], "1", 0)


# --- the cross-rollout baseline -------------------------------------------------------------


def test_independent_partner_stays_in_group_and_never_self():
    groups = np.repeat([5, 1, 7, 3], [2, 3, 4, 8])
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = independent_partner(groups, rng)
        assert np.all(p != np.arange(groups.size)) and np.all(groups[p] == groups)
        assert sorted(p.tolist()) == list(range(groups.size))  # a permutation
    with pytest.raises(ValueError, match="at least 2 rollouts"):
        independent_partner([0, 0, 1])


def _bandit(n_prompts: int, G: int, rng: np.random.Generator):
    """Rollouts of a 3-armed softmax policy per prompt: actions, rewards, scores."""
    logits = np.array([1.0, 0.0, -1.0])
    p = np.exp(logits) / np.exp(logits).sum()
    means = np.array([0.9, 0.4, 0.1])
    a = rng.choice(3, size=n_prompts * G, p=p)
    r = (rng.random(a.size) < means[a]).astype(float)
    g = np.eye(3)[a] - p  # score of the logits
    return a, r, g, means, np.repeat(np.arange(n_prompts), G)


def test_cross_rollout_baseline_is_unbiased_and_the_own_one_is_not():
    rng = np.random.default_rng(0)
    a, r, g, means, groups = _bandit(40_000, 2, rng)
    predicted = means[a]  # a perfect probe of E[r | own action]
    exact = (np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum())
    for name, b in [("cross", cross_rollout_baseline(predicted, groups, rng)), ("own", predicted)]:
        term = b[:, None] * g  # what the baseline changes in the estimate
        z = term.mean(0) / (term.std(0, ddof=1) / np.sqrt(len(term)))
        if name == "cross":
            assert np.all(np.abs(z) < 4)
        else:  # E[b g] = sum_a p_a m_a (e_a - p) != 0
            bias = (exact * means) @ (np.eye(3) - exact)
            np.testing.assert_allclose(term.mean(0), bias, atol=5 * term.std(0).max() / 200)
            assert np.abs(z).max() > 20


def test_cross_rollout_baseline_reads_the_partner():
    groups = np.array([0, 0, 1, 1])
    b = cross_rollout_baseline([10.0, 20.0, 30.0, 40.0], groups)
    assert b.tolist() == [20.0, 10.0, 40.0, 30.0]
    with pytest.raises(ValueError, match="differ in length"):
        cross_rollout_baseline([1.0, 2.0], groups)


def test_policy_gradient_and_probe():
    g = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert policy_gradient([1, 0, 1], g).tolist() == pytest.approx([2 / 3, 1 / 3])
    assert policy_gradient([1, 0, 1], g, [1, 0, 1]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="baseline has 2 values"):
        policy_gradient([1, 0, 1], g, [1, 0])
    X = np.random.default_rng(0).normal(size=(50, 2))
    probe = fit_reward_probe(X, X[:, 0] * 3)
    assert np.corrcoef(probe.predict(X), X[:, 0])[0, 1] > 0.99
    with pytest.raises(ValueError, match="alpha"):
        fit_reward_probe(X, X[:, 0], alpha=0)


# --- closed-form LM-head scores ---------------------------------------------------------------


def test_head_score_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    N, T, d, V = 4, 5, 6, 7
    h = torch.randn(N, T, d, generator=g, dtype=torch.float64)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    actions = torch.randint(0, V, (N, T), generator=g)
    mask = torch.rand(N, T, generator=g) > 0.3
    got = head_score_gradients(h, W, actions, mask)
    assert got.shape == (N, V * d)
    for i in range(N):
        w = W.clone().requires_grad_(True)
        logp = torch.log_softmax(h[i] @ w.T, -1).gather(-1, actions[i][:, None]).squeeze(-1)
        (logp * mask[i]).sum().backward()
        torch.testing.assert_close(got[i], w.grad.flatten(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="same d"):
        head_score_gradients(h, W[:, :3], actions, mask)
