"""``save_steps``: automatic by default (every step for a small checkpoint, every 100
steps for one over 256 MiB, always the last step), an explicit value honoured, and run
directories made with another value (older ones: save_steps=1) continuing."""

from __future__ import annotations

import json

import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer, resume
from rlnb.train import checkpoint as checkpoint_module
from rlnb.train.checkpoint import (
    AUTO_SAVE_MAX_BYTES,
    AUTO_SAVE_STEPS_LARGE,
    auto_save_steps,
    checkpoint_bytes,
)
from rlnb.train.rundir import checkpoint_step


def _env():
    return StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 5, "num_generations": 4, "progress_bar": False,
                          "fsync": False, **kw})


def _checkpointed_steps(trainer, run):
    """The checkpoint's step after each step of ``trainer``."""
    with trainer:
        return [checkpoint_step(run) for _ in trainer.steps()]


def test_a_small_policy_checkpoints_every_step_by_default(tmp_path):
    env = _env()
    assert TrainConfig().save_steps is None
    trainer = Trainer(TabularPolicy.for_env(env, shared=True), env, _cfg(), run_dir=tmp_path / "r")
    assert trainer.save_steps == 1
    assert _checkpointed_steps(trainer, tmp_path / "r") == [1, 2, 3, 4, 5]


def test_an_explicit_save_steps_is_honoured_and_the_last_step_is_saved(tmp_path):
    env = _env()
    trainer = Trainer(TabularPolicy.for_env(env, shared=True), env, _cfg(save_steps=2),
                      run_dir=tmp_path / "r")
    assert trainer.save_steps == 2
    assert _checkpointed_steps(trainer, tmp_path / "r") == [0, 2, 2, 4, 5]


def test_a_large_checkpoint_is_saved_every_100_steps(tmp_path, monkeypatch):
    """The tabular policy's checkpoint stands for a large one when the limit is lowered."""
    env = _env()
    policy = TabularPolicy.for_env(env, shared=True)
    size = checkpoint_bytes(policy, torch.optim.Adam(policy.parameters()))
    monkeypatch.setattr(checkpoint_module, "AUTO_SAVE_MAX_BYTES", size - 1)
    trainer = Trainer(policy, env, _cfg(max_steps=3), run_dir=tmp_path / "r")
    assert trainer.save_steps == AUTO_SAVE_STEPS_LARGE == 100
    assert _checkpointed_steps(trainer, tmp_path / "r") == [0, 0, 3]  # the last step
    explicit = Trainer(TabularPolicy.for_env(env, shared=True), env,
                       _cfg(max_steps=3, save_steps=1), run_dir=tmp_path / "s")
    assert explicit.save_steps == 1
    explicit.close()


def test_the_rule_by_size():
    assert AUTO_SAVE_MAX_BYTES == 256 * 2**20
    assert auto_save_steps(0) == 1
    assert auto_save_steps(AUTO_SAVE_MAX_BYTES) == 1
    assert auto_save_steps(AUTO_SAVE_MAX_BYTES + 1) == 100
    assert auto_save_steps(14 * 2**30) == 100  # a 7B model in bf16 with Adam


def test_checkpoint_size_reads_the_state_dict_and_the_trainable_parameters():
    class Adapted(torch.nn.Module):
        """A frozen base of 1000 floats and a trainable adapter of 10, saving the adapter
        only (as a LoRA policy does)."""

        def __init__(self):
            super().__init__()
            self.base = torch.nn.Parameter(torch.zeros(1000), requires_grad=False)
            self.adapter = torch.nn.Parameter(torch.zeros(10))

        def state_dict(self, *args, **kwargs):
            return {"adapter": self.adapter}

    m = Adapted()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert checkpoint_bytes(m, torch.optim.Adam(trainable)) == 40 + 2 * 40
    assert checkpoint_bytes(m, torch.optim.AdamW(trainable)) == 40 + 2 * 40
    assert checkpoint_bytes(m, torch.optim.SGD(trainable, lr=1.0)) == 40
    assert checkpoint_bytes(m, torch.optim.SGD(trainable, lr=1.0, momentum=0.9)) == 80
    half = torch.nn.Linear(4, 4).to(torch.bfloat16)  # 20 parameters of 2 bytes
    assert checkpoint_bytes(half, torch.optim.Adam(half.parameters())) == 40 + 2 * 40


def test_a_run_made_with_save_steps_1_continues_under_the_automatic_default(tmp_path):
    env = _env()
    run = tmp_path / "r"
    with Trainer(TabularPolicy.for_env(env, shared=True), env, _cfg(max_steps=2, save_steps=1),
                 run_dir=run) as t:
        t.train()
    # An older run directory: save_steps=1 (the old default) and none of the newer options.
    path = run / "config.json"
    old = json.loads(path.read_text())
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps",
                 "gradient_checkpointing"):
        del old[name]
    path.write_text(json.dumps(old))
    again = resume(run, max_steps=3, progress_bar=False)  # with its own config
    assert again.step == 3 and again.config.save_steps == 1
    assert again.config.per_device_train_batch_size is None
    with Trainer(TabularPolicy.for_env(env, shared=True), env, _cfg(max_steps=4),
                 run_dir=run) as t:  # the default now: automatic
        assert t.step == 3 and t.config.save_steps is None
        t.train()
    assert checkpoint_step(run) == 4
