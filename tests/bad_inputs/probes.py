"""Bad inputs of the probes (``rlnb.probes``): pass@k, boundary, rank, entropy, best-of-n."""

from __future__ import annotations

import torch

from rlnb.probes import (
    FiniteMDP,
    best_of_n_probs,
    boundary,
    boundary_from_probs,
    default_ks,
    effective_rank,
    entropy_change_covariance,
    entropy_summary,
    fit_entropy_reward,
    forking_tokens,
    kl_divergence,
    linear_cka,
    pass_at_k,
    pass_at_k_curve,
    pass_at_k_from_probs,
    pca,
    rank_by_layer,
    rank_dynamics,
    sample_counts,
    tilt,
    token_entropy,
)
from tests.bad_inputs import BadInput, row_maker

T = torch.tensor


row = row_maker("probes")


def _task():
    from rlnb.envs import ExactMatchTask

    return ExactMatchTask(["1+1="], ["2"])


CASES = [
    # --- pass@k
    row("passk-c-above-n", lambda: pass_at_k(4, 5, 1), ValueError, "c (5)", "n (4)"),
    row("passk-k-above-n", lambda: pass_at_k(4, 1, 5), ValueError, "k (5)", "n (4)",
        "smaller k"),
    row("passk-negative-c", lambda: pass_at_k(4, [1, -1], 1), ValueError, "c (-1)", ">= 0",
        "index (1)"),
    row("passk-negative-n", lambda: pass_at_k(-4, 0, 1), ValueError, "n (-4)", ">= 0"),
    row("passk-k-zero", lambda: pass_at_k(4, 1, 0), ValueError, "k (0)", "at least 1"),
    row("passk-k-float", lambda: pass_at_k(4, 1, 1.5), TypeError, "k", "1.5"),
    row("passk-c-fraction", lambda: pass_at_k(4, [1.5], 1), ValueError, "c", "whole numbers"),
    row("passk-c-strings", lambda: pass_at_k(4, ["a"], 1), TypeError, "c", "integers"),
    row("passk-shapes", lambda: pass_at_k([4, 4, 4], [1, 2], 1), ValueError, "(3,)", "(2,)",
        "one c per problem"),
    row("passk-ragged-counts", lambda: pass_at_k(4, [[1, 2], [3]], 1), ValueError, "c", "flat"),
    row("passk-curve-empty", lambda: pass_at_k_curve([], 4), ValueError, "empty"),
    row("passk-curve-k-above-n", lambda: pass_at_k_curve([1, 2], 4, ks=[8]), ValueError, "k (8)",
        "n (4)"),
    row("passk-curve-bootstrap", lambda: pass_at_k_curve([1, 2], 4, bootstrap=-1), ValueError,
        "bootstrap (-1)", ">= 0"),
    row("passk-curve-ci", lambda: pass_at_k_curve([1, 2], 4, ci=1.5), ValueError, "ci (1.5)",
        "(0, 1)"),
    row("passk-curve-n-missing-model", lambda: pass_at_k_curve({"a": [1]}, {"b": 4}), KeyError,
        "'a'"),
    row("passk-probs-above-1", lambda: pass_at_k_from_probs([1.5], 1), ValueError, "p", "[0, 1]"),
    row("passk-probs-reduce", lambda: pass_at_k_from_probs([0.5], 1, reduce="sum"), ValueError,
        "reduce", "'sum'", "'mean'"),
    row("default-ks-zero", lambda: default_ks(0), ValueError, "n (0)", "at least 1"),
    row("default-ks-string", lambda: default_ks("4"), TypeError, "n", "'4'"),
    # --- boundary
    row("boundary-shapes", lambda: boundary([1, 2], [1], 4, 4, k=[1]), ValueError,
        "counts_base (2,)", "counts_rl (1,)"),
    row("boundary-k-zero", lambda: boundary([1, 2], [1, 2], 4, 4, k=[0]), ValueError, "k", ">= 1"),
    row("boundary-threshold", lambda: boundary([1, 2], [1, 2], 4, 4, k=[1], threshold=2),
        ValueError, "threshold (2)", "[0, 1)"),
    row("boundary-probs", lambda: boundary_from_probs([1.5], [0.5], k=[1]), ValueError, "[0, 1]"),
    # --- effective rank
    row("rank-empty-matrix", lambda: effective_rank(torch.zeros(0, 5)), ValueError, "(0, 5)",
        "empty"),
    row("rank-empty-hidden", lambda: effective_rank(torch.zeros(3, 0)), ValueError, "(3, 0)",
        "empty"),
    row("rank-vector", lambda: effective_rank(torch.zeros(5)), ValueError, "(5,)",
        "(tokens, hidden)"),
    row("rank-nan", lambda: effective_rank(T([[float("nan"), 1.0]])), ValueError, "nan"),
    row("rank-strings", lambda: effective_rank([["a", "b"]]), TypeError, "Z", "real numbers"),
    row("rank-center-string", lambda: effective_rank(torch.eye(3), center="yes"), TypeError,
        "center", "'yes'"),
    row("rank-dynamics-stride", lambda: rank_dynamics(torch.eye(3), 0), ValueError, "stride",
        ">= 1"),
    row("rank-by-layer-mask", lambda: rank_by_layer({"a": torch.zeros(2, 3, 4)},
                                                    mask=torch.ones(2, 4)), ValueError,
        "mask (2, 4)", "(2, 3)"),
    # --- entropy
    row("entropy-temperature", lambda: token_entropy(torch.zeros(2, 3, 4), temperature=0),
        ValueError, "temperature", "> 0"),
    row("entropy-mask-shape", lambda: token_entropy(torch.zeros(2, 3, 4), torch.ones(2, 4)),
        ValueError, "mask (2, 4)", "(2, 3)"),
    row("entropy-summary-empty-mask", lambda: entropy_summary(torch.zeros(2, 3), torch.zeros(2, 3)),
        ValueError, "mask selects no token"),
    row("forking-top-fraction", lambda: forking_tokens(torch.zeros(2, 3), top_fraction=0),
        ValueError, "top_fraction", "(0, 1)"),
    row("entropy-covariance-shape",
        lambda: entropy_change_covariance(torch.zeros(2, 3), torch.zeros(3)), ValueError,
        "advantages (3,)", "N = 2"),
    row("entropy-reward-fit-pairs", lambda: fit_entropy_reward([1, 2], [1]), ValueError,
        "H (2,)", "R (1,)"),
    # --- best-of-n, KL, MDPs, linear probes, sampling
    row("bon-n-zero", lambda: best_of_n_probs([0.5, 0.5], [0, 1], 0), ValueError, "n", ">= 1"),
    row("bon-not-distribution", lambda: best_of_n_probs([0.5, 0.6], [0, 1], 2), ValueError,
        "probs", "sum 1.1", "softmax"),
    row("tilt-beta-zero", lambda: tilt([0.5, 0.5], [0, 1], 0), ValueError, "beta", "> 0"),
    row("kl-divergence-not-distribution", lambda: kl_divergence([1.5, -0.5], [0.5, 0.5]),
        ValueError, "q", "distribution", "-0.5"),
    row("mdp-transitions-shape",
        lambda: FiniteMDP(torch.zeros(2, 4, 3), torch.zeros(3, 2, 4), T([1.0, 0.0])), ValueError,
        "transitions", "(2, 4, 3)"),
    row("pca-components", lambda: pca(torch.zeros(4, 3), 10), ValueError, "n (10)", "[1, 3]"),
    row("cka-rows", lambda: linear_cka(torch.zeros(4, 3), torch.zeros(5, 3)), ValueError,
        "4 rows", "5 rows"),
    row("sample-counts-n-zero", lambda: sample_counts(object(), _task(), n=0), ValueError, "n",
        ">= 1"),
    row("sample-counts-batch-size", lambda: sample_counts(object(), _task(), n=2, batch_size=0),
        ValueError, "batch_size", ">= 1"),
    row("sample-counts-temperature", lambda: sample_counts(object(), _task(), temperature="hot"),
        TypeError, "temperature", "'hot'"),
    row("sample-counts-not-a-policy", lambda: sample_counts(object(), _task(), n=2), TypeError,
        "policy", "rollout"),
    row("sample-counts-problem-index", lambda: sample_counts(_Policy(), _task(), n=2,
                                                             problems=[3]), IndexError,
        "[3]", "0..0"),
]


class _Policy:
    def rollout(self, *args, **kwargs):  # never reached: the problems are checked first
        raise AssertionError("sample_counts sampled before checking its arguments")


def _horizon_rows() -> list[BadInput]:
    from rlnb.mdp import horizon

    return [
        BadInput("probes/value-iteration-not-an-mdp", lambda _t: horizon.value_iteration("x"),
                 TypeError, ("value_iteration", "FiniteMDP", "str")),
        BadInput("probes/effective-horizon-not-an-mdp",
                 lambda _t: horizon.effective_horizon(None),
                 TypeError, ("effective_horizon", "FiniteMDP", "NoneType")),
    ]


CASES += _horizon_rows()
