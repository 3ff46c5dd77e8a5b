"""Advantage estimators and the registries: loop references, TRL's formula, known answers."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.rl import (
    ADVANTAGES,
    Registry,
    compute_advantages,
    gae,
    get_advantage_fn,
    get_policy_loss_fn,
    grpo,
    list_advantages,
    list_policy_losses,
    options_of,
    register_advantage,
)

# --- plain-loop references (Python floats) --------------------------------------------


def grpo_loop(rewards: list[float], g: int, scale: str) -> list[float]:
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    out = []
    for i, r in enumerate(rewards):
        group = rewards[(i // g) * g : (i // g + 1) * g]
        a = r - sum(group) / g
        if scale == "group":
            a /= (statistics.stdev(group) if g > 1 else 0.0) + 1e-4
        elif scale == "batch":
            a /= batch_std + 1e-4
        out.append(a)
    return out


def rloo_loop(rewards: list[float], g: int) -> list[float]:
    out = []
    for i, r in enumerate(rewards):
        start = (i // g) * g
        others = [rewards[j] for j in range(start, start + g) if j != i]
        out.append(r - sum(others) / len(others))
    return out


def baseline_loop(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def gae_loop(rewards, values, mask, gamma, lam):
    """Row by row, token by token, backwards; masked tokens are skipped."""
    advs, rets = [], []
    for r_row, v_row, m_row in zip(rewards, values, mask):
        adv = [0.0] * len(r_row)
        next_v, next_a = 0.0, 0.0
        for t in reversed(range(len(r_row))):
            if not m_row[t]:
                continue
            delta = r_row[t] + gamma * next_v - v_row[t]
            adv[t] = delta + gamma * lam * next_a
            next_v, next_a = v_row[t], adv[t]
        advs.append(adv)
        rets.append([a + v if m else 0.0 for a, v, m in zip(adv, v_row, m_row)])
    return advs, rets


def trl_grpo(rewards: torch.Tensor, g: int, scale: str) -> torch.Tensor:
    """TRL GRPOTrainer's advantage code, written out literally."""
    mean_grouped_rewards = rewards.view(-1, g).mean(dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(g, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale in ["group", "none"]:
        std_rewards = rewards.view(-1, g).std(dim=1)
        std_rewards = std_rewards.repeat_interleave(g, dim=0)
    elif scale == "batch":
        std_rewards = rewards.std().expand_as(rewards)
    if scale != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return advantages


def random_rewards(n: int, gen: torch.Generator, binary: bool) -> torch.Tensor:
    if binary:
        return (torch.rand(n, generator=gen) < 0.4).double()
    return torch.randn(n, generator=gen, dtype=torch.float64) * 3


# --- grpo -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("g", [2, 3, 4, 8])
@pytest.mark.parametrize("binary", [True, False])
def test_grpo_matches_trl_formula(scale, g, binary):
    gen = torch.Generator().manual_seed(g)
    for prompts in (1, 3, 16):
        rewards = random_rewards(prompts * g, gen, binary).float()
        got = compute_advantages(rewards, g, method="grpo", scale_rewards=scale)
        assert got.dtype == torch.float32
        assert torch.allclose(got, trl_grpo(rewards, g, scale), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("g", [1, 2, 5])
def test_grpo_matches_loop(scale, g):
    gen = torch.Generator().manual_seed(7)
    for prompts in (1, 2, 6):
        for binary in (True, False):
            rewards = random_rewards(prompts * g, gen, binary)
            got = compute_advantages(rewards, g, scale_rewards=scale)
            ref = torch.tensor(grpo_loop(rewards.tolist(), g, scale), dtype=torch.float64)
            assert torch.allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_grpo_bool_scale_rewards_and_group_size_one():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert torch.equal(
        compute_advantages(r, 3, scale_rewards=True),
        compute_advantages(r, 3, scale_rewards="group"),
    )
    assert torch.equal(
        compute_advantages(r, 3, scale_rewards=False),
        compute_advantages(r, 3, scale_rewards="none"),
    )
    # One completion per prompt: the group mean is the reward itself, so A = 0 (no nan).
    for scale in ("group", "batch", "none"):
        assert torch.equal(compute_advantages(r, 1, scale_rewards=scale), torch.zeros(6))
    assert torch.equal(
        compute_advantages(torch.tensor([3.0]), 1, scale_rewards="batch"), torch.zeros(1)
    )


def test_grpo_known_answer_binary():
    # Group (1, 0): mean 0.5, Bessel std sqrt(0.5). Group (1, 1): std 0, A = 0.
    got = compute_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(got, torch.tensor([a, -a, 0.0, 0.0]))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_grpo_group_means_vanish(data):
    g = data.draw(st.integers(1, 6), label="g")
    prompts = data.draw(st.integers(1, 5), label="prompts")
    values = data.draw(
        st.lists(st.floats(-100, 100), min_size=g * prompts, max_size=g * prompts), label="rewards"
    )
    rewards = torch.tensor(values, dtype=torch.float64)
    for scale in ("none", "group"):
        adv = compute_advantages(rewards, g, scale_rewards=scale).view(-1, g)
        assert torch.isfinite(adv).all()
        assert torch.allclose(adv.mean(dim=1), torch.zeros(prompts, dtype=torch.float64), atol=1e-8)
    if g >= 2:
        sums = compute_advantages(rewards, g, method="rloo").view(-1, g).sum(dim=1)
        assert torch.allclose(sums, torch.zeros(prompts, dtype=torch.float64), atol=1e-8)


# --- the other outcome methods --------------------------------------------------------


@pytest.mark.parametrize("g", [2, 3, 4, 7])
def test_rloo_and_baselines_match_loops(g):
    gen = torch.Generator().manual_seed(g)
    for prompts in (1, 4):
        for binary in (True, False):
            r = random_rewards(prompts * g, gen, binary)
            rl = r.tolist()
            cases = {
                "rloo": rloo_loop(rl, g),
                "reinforce_baseline": baseline_loop(rl),
                "reinforce": rl,
                "psr": rl,
                "nsr": [x - 1 for x in rl],
                "w_reinforce": [0.1 * x - (1 - x) for x in rl],
            }
            for method, ref in cases.items():
                got = compute_advantages(r, g, method=method)
                assert got.shape == r.shape and got.dtype == r.dtype, method
                assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64)), method


def test_known_answers():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.allclose(
        compute_advantages(r, 4, method="rloo"), torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    )
    b = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert torch.equal(compute_advantages(b, 2, method="psr"), b)
    assert torch.equal(compute_advantages(b, 2, method="nsr"), torch.tensor([0.0, -1, 0, -1]))
    assert torch.allclose(
        compute_advantages(b, 2, method="w_reinforce"), torch.tensor([0.1, -1, 0.1, -1])
    )
    assert torch.allclose(
        compute_advantages(b, 2, method="w_reinforce", lam=0.5), torch.tensor([0.5, -1, 0.5, -1])
    )
    # Non-binary rewards: the line through (0, -1) and (1, lam).
    assert torch.allclose(
        compute_advantages(torch.tensor([0.5, 2.0]), 1, method="w_reinforce"),
        torch.tensor([0.05 - 0.5, 0.2 + 1.0]),
    )
    assert torch.allclose(
        compute_advantages(b, 2, method="reinforce_baseline"), torch.tensor([0.5, -0.5, 0.5, -0.5])
    )


def test_scale_rewards_is_ignored_by_other_methods():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])
    for method in ("rloo", "reinforce", "psr", "nsr", "w_reinforce", "reinforce_baseline"):
        outs = [
            compute_advantages(r, 2, method=method, scale_rewards=s)
            for s in ("group", "batch", "none")
        ]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_dtypes():
    r64 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert compute_advantages(r64, 2).dtype == torch.float64
    assert compute_advantages(torch.tensor([1, 0, 0, 1]), 2, method="rloo").dtype == torch.float32
    r16 = torch.tensor([1.0, 0.0], dtype=torch.bfloat16)
    assert compute_advantages(r16, 2, method="rloo").dtype == torch.bfloat16


# --- GAE ------------------------------------------------------------------------------


def random_masks(n: int, t: int, gen: torch.Generator, gaps: bool) -> torch.Tensor:
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    lengths[0] = 0  # always one empty row
    lengths[-1] = t  # and one full row
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    if gaps:  # tokens the policy did not choose, mid-sequence
        mask = mask * (torch.rand(n, t, generator=gen) > 0.25).long()
    return mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (0.99, 0.0), (0.5, 0.3)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (6, 12)])
def test_gae_matches_loop(gamma, lam, shape):
    gen = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    for gaps in (False, True):
        mask = random_masks(*shape, gen, gaps)
        rewards = torch.randn(shape, generator=gen, dtype=torch.float64)
        values = torch.randn(shape, generator=gen, dtype=torch.float64)
        adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
        ref_adv, ref_ret = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64))
        assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64))


def test_gae_lambda_one_is_return_minus_value():
    gen = torch.Generator().manual_seed(0)
    mask = random_masks(5, 8, gen, gaps=False)
    rewards = torch.randn(5, 8, generator=gen) * mask
    values = torch.randn(5, 8, generator=gen)
    returns = rewards.flip(1).cumsum(1).flip(1)  # reward-to-go, gamma = 1
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, (returns - values) * mask, atol=1e-6)
    assert torch.allclose(ret, returns * mask, atol=1e-6)


def test_gae_lambda_zero_is_td_error():
    gen = torch.Generator().manual_seed(1)
    mask = random_masks(5, 8, gen, gaps=False)
    rewards = torch.randn(5, 8, generator=gen)
    values = torch.randn(5, 8, generator=gen)
    gamma = 0.9
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(5, 1)], dim=1)
    td = rewards + gamma * next_values - values
    adv, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    assert torch.allclose(adv, td * mask, atol=1e-6)


def test_gae_through_compute_advantages():
    gen = torch.Generator().manual_seed(2)
    mask = random_masks(6, 7, gen, gaps=True)
    values = torch.randn(6, 7, generator=gen, requires_grad=True)
    outcome = torch.randn(6, generator=gen)
    token_rewards = torch.zeros(6, 7)
    for i, row in enumerate(mask.tolist()):
        valid = [t for t, m in enumerate(row) if m]
        if valid:
            token_rewards[i, valid[-1]] = outcome[i]
    kw = dict(values=values, mask=mask, gamma=0.95, lam=0.9)
    want = gae(token_rewards, values, mask, gamma=0.95, lam=0.9)[0]
    got = compute_advantages(outcome, 3, method="gae", **kw)
    assert got.shape == (6, 7) and not got.requires_grad
    assert torch.allclose(got, want)
    assert torch.allclose(compute_advantages(token_rewards, 3, method="gae", **kw), want)
    with pytest.raises(ValueError, match="needs values"):
        compute_advantages(outcome, 3, method="gae")


# --- errors ---------------------------------------------------------------------------


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as err:
        compute_advantages(torch.zeros(4), 2, method="grop")
    msg = str(err.value)
    assert "unknown advantage method 'grop'" in msg
    assert "valid: " + ", ".join(sorted(list_advantages())) in msg
    assert "did you mean 'grpo'" in msg
    for name in (
        "gae",
        "grpo",
        "nsr",
        "psr",
        "reinforce",
        "reinforce_baseline",
        "rloo",
        "w_reinforce",
    ):
        assert name in list_advantages()


@pytest.mark.parametrize(
    "bad,index,group", [(float("nan"), 5, 1), (float("inf"), 2, 0), (float("-inf"), 7, 1)]
)
def test_non_finite_reward_names_rollout_and_group(bad, index, group):
    r = torch.zeros(8)
    r[index] = bad
    with pytest.raises(ValueError) as err:
        compute_advantages(r, 4)
    msg = str(err.value)
    assert f"reward of rollout {index} (group {group}) is {bad}" in msg
    assert "finite" in msg


def test_many_non_finite_rewards_are_summarised():
    r = torch.full((12,), float("nan"))
    with pytest.raises(ValueError, match=r"rollout 0 \(group 0\).*and 7 more"):
        compute_advantages(r, 3)


def test_bad_shapes_and_group_sizes():
    with pytest.raises(ValueError, match=r"\(6\) must be divisible by group_size \(4\)"):
        compute_advantages(torch.zeros(6), 4)
    for g in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="group_size must be an int >= 1"):
            compute_advantages(torch.zeros(4), g)
    with pytest.raises(ValueError, match="group_size >= 2"):
        compute_advantages(torch.zeros(4), 1, method="rloo")
    with pytest.raises(ValueError, match=r"must be \(N,\)"):
        compute_advantages(torch.zeros(4, 2), 2)
    with pytest.raises(ValueError, match="at least one rollout"):
        compute_advantages(torch.zeros(0), 2)


def test_invalid_scale_rewards_and_options():
    for method in ("grpo", "rloo"):
        with pytest.raises(ValueError, match="group, batch, none"):
            compute_advantages(torch.zeros(4), 2, method=method, scale_rewards="std")
    with pytest.raises(ValueError, match="group, batch, none"):
        grpo(torch.zeros(4), 2, scale_rewards="mean")
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['gamma'\]; its options: lam"):
        compute_advantages(torch.zeros(4), 2, method="w_reinforce", gamma=0.9)


# --- registries -----------------------------------------------------------------------


def test_registry_behaviour():
    reg = Registry("widget")

    @reg.register("b")
    def b(x):
        return x

    @reg.register("a")
    def a(x):
        return -x

    assert list(reg) == ["a", "b"] and len(reg) == 2 and reg["a"] is a
    reg.register("a")(a)  # re-registering the same function is harmless
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(b)
    with pytest.raises(ValueError, match=r"unknown widget 'c'; valid: a, b"):
        reg["c"]
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("")


def test_global_lookups():
    assert get_advantage_fn("grpo") is grpo
    assert list_advantages() == sorted(list_advantages())
    assert set(list_policy_losses()) >= {"vanilla_pg", "ppo_clip", "clip_cov", "kl_cov"}
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'; valid: .*ppo_clip"):
        get_policy_loss_fn("ppo")
    assert options_of(grpo) == {"scale_rewards": "group", "std_eps": 1e-4}


def test_registering_a_new_advantage(monkeypatch):
    monkeypatch.setattr(ADVANTAGES, "_fns", dict(ADVANTAGES._fns))  # undone after the test

    @register_advantage("median_baseline")
    def median_baseline(rewards, group_size):
        return rewards - rewards.median()

    @register_advantage("shifted")
    def shifted(rewards, group_size, shift=0.0):  # an option that is not keyword-only
        return rewards - shift

    got = compute_advantages(torch.tensor([1.0, 2.0, 9.0]), 1, method="median_baseline")
    assert torch.equal(got, torch.tensor([-1.0, 0.0, 7.0]))
    assert "median_baseline" in list_advantages()
    got = compute_advantages(torch.tensor([1.0, 2.0]), 1, method="shifted", shift=1.0)
    assert torch.equal(got, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['lam'\]; its options: shift"):
        compute_advantages(torch.tensor([1.0, 2.0]), 1, method="shifted", lam=1.0)


def test_registry_membership_does_not_raise():
    from rlnb.rl import ADVANTAGES, POLICY_LOSSES

    assert "grpo" in ADVANTAGES and "grop" not in ADVANTAGES
    assert "ppo_clip" in POLICY_LOSSES and 3 not in POLICY_LOSSES
    assert ADVANTAGES.get("nope") is None
