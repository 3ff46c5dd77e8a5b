"""The Trainer with a language-model policy: overlong masking, KL against the frozen
reference, checkpoints that resume, TRL-named metrics."""

import pytest
import torch

from rlnb.envs import addition
from rlnb.policies import LMPolicy
from rlnb.train import TrainConfig, Trainer, load_run, resume
from rlnb.train.rundir import read_metrics
from tests._numerics import assert_close


@pytest.fixture
def model_dir(tiny_lm_dir):
    return tiny_lm_dir(addition(64, digits=2, seed=0).alphabet, "llama", n_layer=1,
                       d_model=32, n_head=2, n_kv_head=1)


def _cfg(**kw):
    base = dict(max_steps=3, num_prompts_per_step=4, num_generations=4, learning_rate=1e-3,
                optimizer="adamw", progress_bar=False)
    base.update(kw)
    return TrainConfig(**base)


def test_truncated_completions_are_masked_out_of_the_loss(model_dir):
    task = addition(64, digits=2, seed=0)
    policy = LMPolicy(model_dir, max_new_tokens=2)  # an untrained model rarely stops in 2
    seen = []
    sample = policy.training_rollout

    def recording_rollout(*args, **kwargs):
        seen.append(sample(*args, **kwargs))
        return seen[-1]

    policy.training_rollout = recording_rollout  # what the trainer samples with
    history = Trainer(policy, task, _cfg(max_steps=1, mask_truncated_completions=True)).train()
    rollout = seen[0]
    truncated = rollout.extra["truncated"]
    assert truncated.any()
    assert not rollout.mask[truncated].any(), "a truncated completion still counts in the loss"
    assert history["completions/clipped_ratio"].iloc[0] == pytest.approx(truncated.float().mean())
    # lengths are logged before masking
    assert history["completions/mean_length"].iloc[0] > 0


def test_kl_reference_run_directory_and_resume(model_dir, tmp_path):
    task = addition(64, digits=2, seed=0)
    run = tmp_path / "run"
    Trainer(LMPolicy(model_dir, max_new_tokens=4), task,
            _cfg(beta=0.04, kl_estimator="k3", max_steps=2), run_dir=run).train()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for name in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "kl",
                 "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                 "completions/mean_length", "completions/min_length",
                 "completions/max_length", "completions/clipped_ratio"):
        assert name in rows[-1], name
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples the reference itself
    trainer = resume(run, max_steps=4, progress_bar=False)
    assert trainer.step == 4
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]
    policy, _, _ = load_run(run)
    for (name, a), b in zip(policy.state_dict().items(), trainer.policy.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_replayed_updates_train_like_the_forward_pass(model_dir, monkeypatch, num_iterations):
    """The trainer's first update of each batch re-uses the sampler's activations; the
    run matches one that scores every update with a forward pass (same rewards, losses
    and weights up to float rounding), with a KL reference and an entropy bonus on."""
    from rlnb.policies.lm.fast import replay as lm_replay

    task = addition(64, digits=2, seed=0)
    cfg = _cfg(max_steps=4, num_iterations=num_iterations, beta=0.04, entropy_coef=0.01,
               learning_rate=3e-3)
    calls = []
    original = lm_replay.replay
    monkeypatch.setattr(lm_replay, "replay", lambda *a: calls.append(1) or original(*a))
    replayed = Trainer(LMPolicy(model_dir, max_new_tokens=6), task, cfg)
    h1 = replayed.train()
    assert len(calls) == 4  # the first update of every batch
    monkeypatch.setattr(LMPolicy, "replay_supported", property(lambda self: False))
    plain = Trainer(LMPolicy(model_dir, max_new_tokens=6), task, cfg)
    h2 = plain.train()
    assert len(calls) == 4
    for name in ("reward", "loss", "entropy", "kl", "completions/mean_length"):
        assert h1[name].tolist() == pytest.approx(h2[name].tolist(), rel=1e-4, abs=1e-6), name
    # Weights compare at the scale of the model's weights: Adam divides each gradient by
    # its own running size, so float rounding in a near-zero gradient entry moves that
    # weight by up to a step, whatever the tensor's own magnitude.
    scale = max(float(p.detach().abs().max()) for p in plain.policy.parameters())
    for (name, a), b in zip(replayed.policy.named_parameters(), plain.policy.parameters()):
        assert_close(a, b, scale=scale, what=name)


def test_trainer_keeps_freed_memory_on_the_cpu(model_dir, monkeypatch):
    from rlnb import allocator

    applied = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: applied.append(1) or True)
    task = addition(64, digits=2, seed=0)
    Trainer(LMPolicy(model_dir, max_new_tokens=2), task, _cfg(max_steps=1)).train()
    assert applied == [1]
    Trainer(LMPolicy(model_dir, max_new_tokens=2), task,
            _cfg(max_steps=1, keep_freed_memory=False)).train()
    assert applied == [1]


def test_trainer_trims_the_heap_for_a_large_policy(model_dir, monkeypatch):
    from rlnb import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(allocator, "trim", lambda: calls.append("trim") or True)
    policy = LMPolicy(model_dir, max_new_tokens=2)
    monkeypatch.setattr(allocator, "MAX_PARAMS", sum(p.numel() for p in policy.parameters()) - 1)
    Trainer(policy, addition(64, digits=2, seed=0), _cfg(max_steps=2)).train()
    assert calls == ["trim"] * 4  # after sampling and after the backward, every step
    calls.clear()
    micro = _cfg(max_steps=1, per_device_train_batch_size=4)  # 16 completions, 4 micro-batches
    Trainer(policy, addition(64, digits=2, seed=0), micro).train()
    assert calls == ["trim"] * 2  # full fine-tuning: the optimiser state is the peak
    calls.clear()
    adapters = LMPolicy(model_dir, max_new_tokens=2,
                        lora=dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    Trainer(adapters, addition(64, digits=2, seed=0), micro).train()
    # adapters: after sampling, between micro-batches (3), after the last backward
    assert calls == ["trim"] * 5


def _linux_glibc() -> bool | None:
    """Whether the C library is glibc on Linux; None on another system."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"),
                   "gnu_get_libc_version")


@pytest.mark.parametrize("setting", ["trim", "keep_freed_memory"])
def test_allocator_settings_are_idempotent_and_run_on_glibc(setting):
    from rlnb import allocator

    first = getattr(allocator, setting)()
    assert getattr(allocator, setting)() is first
    glibc = _linux_glibc()
    if glibc is not None:
        assert first is glibc
