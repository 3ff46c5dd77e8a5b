"""Mixed precision: a bfloat16 policy keeps float32 master weights and learns at the small
learning rates of full-scale RL; the pure-bf16 update (an explicit opt-in) loses them."""

import os

import pytest
import torch

from rlnb.envs import addition
from rlnb.policies import LMPolicy, pretrain_base
from rlnb.policies.lm import precision
from rlnb.train import TrainConfig, Trainer


def test_resolve_mixed_precision():
    assert precision.resolve_mixed_precision(None, torch.bfloat16) is True
    assert precision.resolve_mixed_precision(None, torch.float16) is True
    assert precision.resolve_mixed_precision(False, torch.bfloat16) is False
    assert precision.resolve_mixed_precision(None, torch.float32) is False
    assert precision.resolve_mixed_precision(True, torch.float32) is False  # nothing to mix
    with pytest.raises(TypeError, match="mixed_precision must be True, False or None"):
        precision.resolve_mixed_precision("yes", torch.bfloat16)


def test_mixed_precision_is_recorded_only_when_set(tiny_lm_dir):
    path = tiny_lm_dir("0123456789+=")
    assert "mixed_precision" not in LMPolicy(path).get_config()
    pi = LMPolicy(path, dtype="bfloat16", mixed_precision=False)
    assert pi.get_config()["mixed_precision"] is False
    assert pi.runtime_info()["dtype"] == "torch.bfloat16"
    mixed = LMPolicy(path, dtype="bfloat16")
    assert mixed.runtime_info()["compute_dtype"] == "torch.bfloat16"
    assert mixed.runtime_info()["dtype"] == "torch.float32"
    with pytest.raises(ValueError, match="autocast"):
        LMPolicy(path, dtype="bfloat16", engine="fast")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    task = addition(2000, digits=2, seed=0)
    train, _ = task.split(200, seed=0)
    cache = None if os.environ.get("RLNB_CACHE") else tmp_path_factory.mktemp("base_models")
    path = pretrain_base(train, batch_size=128, target_pass_at_1=0.2, steps=1000,
                         eval_samples=256, seed=0, cache_dir=cache, progress=False)
    return path, train


@pytest.mark.slow
def test_bf16_training_moves_the_policy_as_far_as_float32(base):
    """GRPO, 30 steps at learning rate 1e-5 from a pre-trained addition base: the mean
    |change of log p| of a fixed set of completions, bf16 (mixed precision, the default)
    over float32, lies in [0.7, 1.4]; with bf16 weights updated in place
    (``mixed_precision=False``) most of the steps round away (measured: 1.01 and 0.09)."""
    path, task = base
    ref = LMPolicy(path, max_new_tokens=8)
    fixed = ref.rollout(task, torch.arange(16), 4, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        start = ref.log_probs(fixed)[0]

    def moved(**options):
        pi = LMPolicy(path, max_new_tokens=8, **options)
        cfg = TrainConfig(max_steps=30, num_prompts_per_step=8, num_generations=8,
                          learning_rate=1e-5, progress_bar=False, seed=0)
        Trainer(pi, task, cfg).train()
        # Scored in float32 whatever the training dtype, so only the weights differ.
        weights = {k: v.float() for k, v in pi.model.state_dict().items()}
        scorer = LMPolicy(path, max_new_tokens=8, engine="hf")
        scorer.model.load_state_dict(weights)
        with torch.no_grad():
            logp = scorer.log_probs(fixed)[0]
        return float((logp - start).abs()[fixed.mask].mean())

    fp32 = moved()
    mixed = moved(dtype="bfloat16")
    pure = moved(dtype="bfloat16", mixed_precision=False)
    assert fp32 > 1e-2  # the run moves the policy at all
    assert 0.7 <= mixed / fp32 <= 1.4, (mixed, fp32)
    assert pure / fp32 < 0.4, (pure, fp32)
