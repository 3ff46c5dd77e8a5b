"""Micro-batching with gradient accumulation (``per_device_train_batch_size``,
``gradient_accumulation_steps``): the accumulated loss, the gradients and the logged
numbers equal those of the whole batch at once, in every aggregation mode; and the
options are checked."""

from __future__ import annotations

import copy

import pytest
import torch

from rlnb import rl
from rlnb.envs import VariableLengthTree, addition
from rlnb.policies import LMPolicy, MLPPolicy
from rlnb.policies.base import Rollout
from rlnb.train import TrainConfig, Trainer
from rlnb.train.micro_batches import combine_loss_metrics, rollout_rows

#: Largest difference allowed, as a fraction of the reference's largest magnitude.
REL = 1e-5


def _close(got, want, what: str, *, scale: float = 0.0) -> None:
    """max|got - want| <= REL * the larger of max|want| and ``scale`` (the size of the
    terms, for a quantity near zero by cancellation)."""
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    scale = max(float(want.abs().max()), scale)
    diff = float((got - want).abs().max())
    assert diff <= REL * scale, f"{what}: max|diff| {diff:.3g} > {REL} * {scale:.3g}"


def _tree():
    return VariableLengthTree.random(num_prompts=8, branching=3, depth=4, reward_fraction=0.3,
                                     generator=torch.Generator().manual_seed(0))


def _one_step(policy, env, cfg):
    """One step; returns (metrics, {name: grad}) with the gradients of that step."""
    trainer = Trainer(policy, env, cfg)
    metrics = trainer.train_step()
    grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters()
             if p.grad is not None}
    return metrics, grads


def _compare(ref, got):
    (m_ref, g_ref), (m_got, g_got) = ref, got
    # Terms of the losses are advantages times ratios near 1; of the KL and log-ratio
    # metrics, differences of log-probs of size ~1: on-policy both can cancel to ~0.
    terms = {"loss": m_ref["advantage_abs_mean"], "pg_loss": m_ref["advantage_abs_mean"],
             "kl": 1.0, "ratio_mean": 1.0, "approx_kl": 1.0}
    terms.update({k: 1.0 for k in m_ref if k.startswith("clip_ratio/")})  # fractions
    for key in m_ref:
        if key in ("loss", "pg_loss", "entropy", "grad_norm", "kl", "ratio_mean",
                   "approx_kl") or key.startswith("clip_ratio/"):
            _close(m_got[key], m_ref[key], key, scale=terms.get(key, 0.0))
    assert g_ref and g_ref.keys() == g_got.keys()
    for name in g_ref:
        _close(g_got[name], g_ref[name], f"gradient of {name}")


# --- the accumulated step equals the whole-batch step ---------------------------------
@pytest.mark.parametrize("mode", rl.AGG_MODES)
@pytest.mark.parametrize("loss", ["vanilla_pg", "ppo_clip"])
def test_mlp_accumulated_step_equals_the_whole_batch(mode, loss):
    env = _tree()
    base = TrainConfig(max_steps=1, num_prompts_per_step=4, num_generations=3, seed=1,
                       policy_loss=loss, loss_agg_mode=mode, entropy_coef=0.05, beta=0.1,
                       num_iterations=2, epsilon=0.05, optimizer="adam", learning_rate=0.3,
                       progress_bar=False)
    policy = MLPPolicy.for_env(env, hidden=(16,), seed=3)
    ref = _one_step(copy.deepcopy(policy), env, base)
    # micro-batches of 2 (not whole groups of 3) and of whole groups; uneven lengths
    assert ref[0]["completions/min_length"] < ref[0]["completions/max_length"]
    for options in ({"per_device_train_batch_size": 2},
                    {"gradient_accumulation_steps": 4},
                    {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 12}):
        got = _one_step(copy.deepcopy(policy), env, base.replace(**options))
        _compare(ref, got)
    if loss == "ppo_clip":  # the second epoch moved the weights: some tokens are clipped
        assert ref[0]["clip_ratio/region_mean"] > 0


@pytest.fixture
def model_dir(tiny_lm_dir):
    return tiny_lm_dir(addition(64, digits=2, seed=0).alphabet, "llama", n_layer=1,
                       d_model=32, n_head=2, n_kv_head=1)


def _uneven(policy):
    """Cut each completion's mask at its own length (1..T), so the batch mixes lengths."""
    sample = policy.rollout

    def rollout(*args, **kwargs):
        r = sample(*args, **kwargs)
        n, t = r.mask.shape
        keep = torch.arange(t)[None, :] < (torch.arange(n) % t + 1)[:, None]  # (N, T)
        r.mask = r.mask & keep
        return r

    policy.rollout = rollout
    policy.training_rollout = rollout
    return policy


@pytest.mark.parametrize("mode", rl.AGG_MODES)
@pytest.mark.parametrize("loss", ["vanilla_pg", "ppo_clip"])
def test_lm_accumulated_step_equals_the_whole_batch(model_dir, mode, loss):
    task = addition(64, digits=2, seed=0)
    cfg = TrainConfig(max_steps=1, num_prompts_per_step=3, num_generations=2, seed=0,
                      policy_loss=loss, loss_agg_mode=mode, beta=0.05, entropy_coef=0.01,
                      optimizer="adamw", learning_rate=1e-3, progress_bar=False)
    policy = LMPolicy(model_dir, max_new_tokens=5)
    ref = _one_step(_uneven(copy.deepcopy(policy)), task, cfg)
    assert ref[0]["completions/min_length"] < ref[0]["completions/max_length"]
    for options in ({"per_device_train_batch_size": 2}, {"gradient_accumulation_steps": 6}):
        got = _one_step(_uneven(copy.deepcopy(policy)), task, cfg.replace(**options))
        _compare(ref, got)


def test_lm_two_epochs_and_masked_truncations(model_dir):
    """num_iterations=2 loops over the micro-batches in each epoch; completions masked
    out whole (overlong filtering) leave rows with no valid token."""
    task = addition(64, digits=2, seed=0)
    cfg = TrainConfig(max_steps=1, num_prompts_per_step=2, num_generations=4, seed=2,
                      loss_agg_mode="seq-mean-token-mean", num_iterations=2, beta=0.05,
                      mask_truncated_completions=True, optimizer="adamw",
                      learning_rate=3e-3, progress_bar=False)
    policy = LMPolicy(model_dir, max_new_tokens=3)
    ref = _one_step(copy.deepcopy(policy), task, cfg)
    assert 0 < ref[0]["completions/clipped_ratio"] < 1
    got = _one_step(copy.deepcopy(policy), task, cfg.replace(per_device_train_batch_size=4))
    _compare(ref, got)


def test_one_micro_batch_is_the_plain_step_bit_for_bit():
    env = _tree()
    cfg = TrainConfig(max_steps=2, num_prompts_per_step=4, num_generations=3, beta=0.1,
                      entropy_coef=0.01, progress_bar=False)
    policy = MLPPolicy.for_env(env, hidden=(16,), seed=3)
    plain = Trainer(copy.deepcopy(policy), env, cfg).train()
    one = Trainer(copy.deepcopy(policy), env,
                  cfg.replace(per_device_train_batch_size=12, gradient_accumulation_steps=1)
                  ).train()
    drop = [c for c in plain.columns if c.startswith("time/")]
    assert plain.drop(columns=drop).equals(one.drop(columns=drop))


# --- pieces ---------------------------------------------------------------------------
def test_rollout_rows_slices_every_per_row_entry():
    n = 6
    r = Rollout(prompts=torch.arange(n) // 2, actions=torch.arange(n * 3).view(n, 3),
                mask=torch.ones(n, 3, dtype=torch.bool), logp=torch.zeros(n, 3), group_size=2,
                states=torch.zeros(n, 3, dtype=torch.long),
                extra={"input_ids": torch.arange(n * 5).view(n, 5), "prompt_length": 2,
                       "truncated": torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool),
                       "completions": list("abcdef"), "activations": object(),
                       "hidden_states": {"embed": torch.zeros(n, 5, 4)}})
    part = rollout_rows(r, slice(2, 4))
    assert part.actions.tolist() == r.actions[2:4].tolist() and part.group_size == 2
    assert part.extra["input_ids"].tolist() == r.extra["input_ids"][2:4].tolist()
    assert part.extra["truncated"].tolist() == [False, False]
    assert part.extra["completions"] == ["c", "d"] and part.extra["prompt_length"] == 2
    assert part.extra["hidden_states"]["embed"].shape == (2, 5, 4)
    assert part.states.shape == (2, 3) and "activations" not in part.extra
    assert rollout_rows(r, slice(1, 3)).group_size == 1  # splits groups
    with pytest.raises(ValueError, match="contiguous"):
        rollout_rows(r, slice(0, 6, 2))


def test_loss_metrics_combine_by_token_count():
    got = combine_loss_metrics([(3, {"pg_loss": -0.5, "clip_ratio/low_mean": 0.0}),
                                (1, {"pg_loss": 0.25, "clip_ratio/low_mean": 1.0}),
                                (0, {"pg_loss": 0.0, "clip_ratio/low_mean": 0.0})])
    assert got == {"pg_loss": -0.25, "clip_ratio/low_mean": 0.25}


# --- checks ---------------------------------------------------------------------------
def test_the_options_resolve_and_bad_combinations_name_the_numbers():
    cfg = TrainConfig(num_prompts_per_step=4, num_generations=2)
    assert (cfg.micro_batch_size, cfg.num_micro_batches) == (8, 1)
    assert cfg.replace(per_device_train_batch_size=2).num_micro_batches == 4
    assert cfg.replace(gradient_accumulation_steps=2).micro_batch_size == 4
    assert cfg.replace(per_device_train_batch_size=4,
                       gradient_accumulation_steps=2).num_micro_batches == 2
    with pytest.raises(ValueError, match=r"2 \* 3 = 6 must equal .* 4 \* 2 = 8 completions"):
        cfg.replace(per_device_train_batch_size=2, gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size \(3\) must divide .* "
                                         r"= 8 completions.*1, 2, 4, 8"):
        cfg.replace(per_device_train_batch_size=3)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps \(3\) must divide"):
        cfg.replace(gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size \(16\) must divide"):
        cfg.replace(per_device_train_batch_size=16)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps must be >= 1"):
        cfg.replace(gradient_accumulation_steps=0)
    with pytest.raises(TypeError, match="per_device_train_batch_size must be an int"):
        cfg.replace(per_device_train_batch_size=2.0)
    with pytest.raises(TypeError, match="did you mean 'per_device_train_batch_size'"):
        TrainConfig(micro_batch_size=2)
    assert TrainConfig.from_dict(cfg.replace(per_device_train_batch_size=2).to_dict()
                                 ).per_device_train_batch_size == 2


@pytest.mark.parametrize("loss", ["clip_cov", "kl_cov"])
def test_covariance_losses_are_refused_with_micro_batches(loss):
    env = _tree()
    policy = MLPPolicy.for_env(env, hidden=(8,))
    cfg = TrainConfig(num_prompts_per_step=4, num_generations=2, policy_loss=loss,
                      progress_bar=False)
    Trainer(policy, env, cfg)  # the whole batch at once: fine
    with pytest.raises(ValueError, match=rf"{loss}.*covariance over all the batch's tokens.*"
                                         r"4 micro-batches.*per_device_train_batch_size=2"):
        Trainer(policy, env, cfg.replace(per_device_train_batch_size=2))


def test_a_registered_loss_without_weights_is_refused_only_with_micro_batches(monkeypatch):
    calls = []

    def plain(logp, old_logp, advantages, mask, *, agg="token-mean"):
        calls.append(len(logp))
        return rl.vanilla_pg(logp, old_logp, advantages, mask, agg=agg)

    monkeypatch.setitem(rl.POLICY_LOSSES._fns, "test_plain_pg", plain)  # registered for the test
    env = _tree()
    policy = MLPPolicy.for_env(env, hidden=(8,))
    cfg = TrainConfig(max_steps=1, num_prompts_per_step=4, num_generations=2,
                      policy_loss="test_plain_pg", progress_bar=False)
    Trainer(policy, env, cfg).train()
    assert calls == [8]
    with pytest.raises(ValueError, match=r"takes no `weights` argument.*2 micro-batches.*"
                                         r"rlnb.rl.agg_loss\(\.\.\., weights=weights\)"):
        Trainer(policy, env, cfg.replace(gradient_accumulation_steps=2))
