"""Bad inputs of the objective functions (``rlnb.rl``): advantages, losses, KL, aggregation."""

from __future__ import annotations

import torch

from rlnb.rl import (
    agg_loss,
    compute_advantages,
    compute_policy_loss,
    entropy_bonus,
    gae,
    get_policy_loss_fn,
    kl_penalty,
    masked_mean,
    register_advantage,
)
from tests.bad_inputs import row_maker

T = torch.tensor
LP = torch.zeros(2, 3)
M = torch.ones(2, 3)
ADV = T([1.0, 0.0])


row = row_maker("objectives")


def loss(name: str, logp=LP, old=LP, adv=ADV, mask=M, **kw):
    return lambda: compute_policy_loss(name, logp, old, adv, mask, **kw)


CASES = [
    # --- advantages
    row("adv-unknown-method", lambda: compute_advantages(ADV, 2, method="grop"), ValueError,
        "'grop'", "grpo", "rloo"),
    row("adv-string-rewards", lambda: compute_advantages(["1", "0"], 2), TypeError, "rewards",
        "'1'"),
    row("adv-none-rewards", lambda: compute_advantages(None, 2), TypeError, "rewards", "None"),
    row("adv-nan-reward", lambda: compute_advantages(T([1.0, float("nan")]), 2), ValueError,
        "rollout 1", "nan", "finite"),
    row("adv-group-size-zero", lambda: compute_advantages(ADV, 0), ValueError, "group_size",
        ">= 1"),
    row("adv-not-divisible", lambda: compute_advantages(T([1.0, 0.0, 1.0]), 2), ValueError,
        "(3)", "group_size (2)"),
    row("adv-scale-rewards", lambda: compute_advantages(ADV, 2, scale_rewards="grp"), ValueError,
        "scale_rewards", "'grp'", "batch"),
    row("adv-unknown-option", lambda: compute_advantages(ADV, 2, method="w_reinforce", lamb=0.1),
        ValueError, "'lamb'", "lam"),
    row("adv-lam-string", lambda: compute_advantages(ADV, 2, method="w_reinforce", lam="x"),
        TypeError, "lam", "'x'"),
    row("adv-lam-nan", lambda: compute_advantages(ADV, 2, method="w_reinforce", lam=float("nan")),
        ValueError, "lam", "nan"),
    row("adv-std-eps-negative", lambda: compute_advantages(ADV, 2, std_eps=-1), ValueError,
        "std_eps", "> 0", "-1"),
    row("adv-rloo-group-of-one", lambda: compute_advantages(ADV, 1, method="rloo"), ValueError,
        "rloo", "group_size >= 2"),
    row("adv-2d-rewards", lambda: compute_advantages(torch.zeros(2, 2), 2), ValueError,
        "(2, 2)", "gae"),
    row("adv-gae-gamma", lambda: compute_advantages(ADV, 1, method="gae", values=torch.zeros(2, 3),
                                                    mask=M, gamma=2), ValueError, "gamma",
        "[0, 1]"),
    row("gae-shapes", lambda: gae(torch.zeros(2, 3), torch.zeros(2, 4), M), ValueError,
        "values (2, 4)", "(N, T)"),
    row("gae-lam-negative", lambda: gae(torch.zeros(2, 3), torch.zeros(2, 3), M, lam=-1),
        ValueError, "lam", "[0, 1]"),
    row("register-taken-name", lambda: register_advantage("grpo")(lambda r, g: r), ValueError,
        "'grpo'", "already registered"),
    # --- policy losses
    row("loss-unknown-name", loss("ppo"), ValueError, "'ppo'", "ppo_clip", "vanilla_pg"),
    row("loss-get-none", lambda: get_policy_loss_fn(None), ValueError, "None", "ppo_clip"),
    row("loss-unknown-option", loss("ppo_clip", eps=0.2), ValueError, "'eps'", "epsilon"),
    row("loss-epsilon-negative", loss("ppo_clip", epsilon=-0.1), ValueError, "epsilon",
        "(0, 1)", "-0.1"),
    row("loss-epsilon-above-1", loss("ppo_clip", epsilon=1.5), ValueError, "epsilon", "(0, 1)",
        "1.5"),
    row("loss-epsilon-string", loss("ppo_clip", epsilon="x"), TypeError, "epsilon", "'x'"),
    row("loss-epsilon-high-zero", loss("clip_cov", epsilon_high=0.0), ValueError, "epsilon_high",
        "> 0"),
    row("loss-dual-clip-delta", loss("ppo_clip", delta=1.0), ValueError, "delta", "1.2"),
    row("loss-old-logp-shape", loss("ppo_clip", old=torch.zeros(2, 4)), ValueError,
        "old_logp (2, 4)", "(N, T)"),
    row("loss-mask-shape", loss("vanilla_pg", mask=torch.ones(3, 3)), ValueError, "mask (3, 3)"),
    row("loss-advantages-shape", loss("vanilla_pg", adv=T([1.0, 0.0, 1.0])), ValueError,
        "advantages", "(2,)", "(3,)"),
    row("loss-advantages-nan", loss("vanilla_pg", adv=T([1.0, float("nan")])), ValueError,
        "advantages", "finite"),
    row("loss-lists", loss("vanilla_pg", logp=[[0.0]], old=[[0.0]], adv=[1.0], mask=[[1.0]]),
        TypeError, "logp", "list", "tensor"),
    row("loss-agg-mode", loss("vanilla_pg", agg="mean"), ValueError, "'mean'", "token-mean"),
    row("loss-max-len-negative", loss("vanilla_pg", max_len=-1), ValueError, "max_len", "> 0"),
    row("loss-clip-cov-ratio", loss("clip_cov", clip_cov_ratio=2), ValueError, "clip_cov_ratio"),
    row("loss-kl-cov-coef", loss("kl_cov", kl_coef=-1), ValueError, "kl_coef >= 0", "-1"),
    # --- KL, aggregation
    row("kl-unknown-estimator", lambda: kl_penalty(LP, LP, "k4"), ValueError, "'k4'", "k3"),
    row("kl-shapes", lambda: kl_penalty(LP, torch.zeros(2, 4)), ValueError, "ref_logp (2, 4)"),
    row("agg-unknown-mode", lambda: agg_loss(LP, M, "avg"), ValueError, "'avg'",
        "seq-mean-token-mean"),
    row("agg-shapes", lambda: agg_loss(LP, torch.ones(2, 4)), ValueError, "mask (2, 4)"),
    row("masked-mean-shapes", lambda: masked_mean(LP, torch.ones(2, 4)), ValueError, "(2, 4)"),
    row("entropy-bonus-mode", lambda: entropy_bonus(LP, M, "avg"), ValueError, "'avg'"),
    row("agg-mask-as-weights", lambda: agg_loss(LP, T([[1.0, 0.5, 0.0], [1.0, 1.0, 2.0]]), "token-mean"),
        ValueError, "mask", "0 and 1", "0.5"),
]
