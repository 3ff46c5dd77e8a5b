"""The policy's hooks the Trainer calls: ``reference_policy()`` for the KL term (a copy by
default; a view with an empty state, as a LoRA model's, saves and resumes), and
``enable_gradient_checkpointing()`` for ``TrainConfig.gradient_checkpointing``."""

from __future__ import annotations

import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import MLPPolicy, TabularPolicy
from rlnb.policies.base import Policy
from rlnb.serialization import read_tensors
from rlnb.train import TrainConfig, Trainer
from rlnb.train.rundir import read_metrics


def _env():
    return StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 2, "num_generations": 4, "beta": 0.1, "learning_rate": 0.5,
                          "progress_bar": False, "fsync": False, **kw})


def test_the_default_reference_is_a_frozen_copy():
    env = _env()
    policy = TabularPolicy.for_env(env, shared=True)
    ref = policy.reference_policy()
    assert type(ref) is TabularPolicy and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.parameters()) and policy.training
    for a, b in zip(ref.parameters(), policy.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    trainer = Trainer(policy, env, _cfg())
    trainer.train()
    moved = any(not torch.equal(a, b) for a, b in
                zip(trainer.reference.parameters(), policy.parameters()))
    assert moved, "the reference followed the updates"


class _View(Policy):
    """A reference that scores with a frozen copy it keeps out of its own state (as a
    LoRA model with its adapters off keeps its weights in the policy): state_dict() {}."""

    def __init__(self, inner: Policy) -> None:
        super().__init__()
        self._inner = [inner]  # not a submodule: nothing in state_dict()

    def log_probs(self, rollout, *, temperature=1.0):
        return self._inner[0].log_probs(rollout, temperature=temperature)


def test_a_reference_with_an_empty_state_is_saved_and_resumed(tmp_path):
    env = _env()
    run = tmp_path / "r"
    policy = TabularPolicy.for_env(env, shared=True)
    calls = []

    def reference_policy():
        calls.append(1)
        return _View(Policy.reference_policy(policy))

    policy.reference_policy = reference_policy
    with Trainer(policy, env, _cfg(), run_dir=run) as t:
        assert t.reference.state_dict() == {}
        t.train()
    assert calls == [1]
    assert read_tensors(run / "reference.safetensors") == {}
    again = TabularPolicy.for_env(env, shared=True)
    again.reference_policy = lambda: _View(Policy.reference_policy(again))
    with Trainer(again, env, _cfg(max_steps=3), run_dir=run) as t:
        assert t.step == 2
        t.train()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["kl"] > 0


def test_a_reference_state_that_does_not_fit_the_file_is_named(tmp_path):
    env = _env()
    run = tmp_path / "r"
    with Trainer(TabularPolicy.for_env(env, shared=True), env, _cfg(), run_dir=run) as t:
        t.train()
    again = TabularPolicy.for_env(env, shared=True)
    again.reference_policy = lambda: _View(Policy.reference_policy(again))
    with pytest.raises(ValueError, match=r"reference.safetensors does not fit .* holds 1, "
                                         r"the reference 0"):
        Trainer(again, env, _cfg(max_steps=3), run_dir=run)


def test_reference_policy_must_return_a_policy():
    env = _env()
    policy = TabularPolicy.for_env(env, shared=True)
    policy.reference_policy = lambda: "not a policy"
    with pytest.raises(TypeError, match=r"reference_policy\(\) must return a policy"):
        Trainer(policy, env, _cfg())


def test_gradient_checkpointing_is_refused_by_policies_without_it():
    env = _env()
    for policy in (TabularPolicy.for_env(env, shared=True), MLPPolicy(64, 64, hidden=(4,))):
        with pytest.raises(ValueError, match=rf"{type(policy).__name__} has no activations worth "
                                             "recomputing; gradient_checkpointing applies to "
                                             "language-model policies"):
            policy.enable_gradient_checkpointing()
    policy = TabularPolicy.for_env(env, shared=True)
    with pytest.raises(ValueError, match="gradient_checkpointing applies to language-model"):
        Trainer(policy, env, _cfg(beta=0.0, gradient_checkpointing=True))
    Trainer(policy, env, _cfg(beta=0.0))  # off by default: nothing asked


def test_gradient_checkpointing_is_asked_of_the_policy_once():
    env = _env()
    policy = TabularPolicy.for_env(env, shared=True)
    calls = []
    policy.enable_gradient_checkpointing = lambda: calls.append(1)
    assert TrainConfig().gradient_checkpointing is False
    Trainer(policy, env, _cfg(gradient_checkpointing=True)).train()
    assert calls == [1]
