"""A training process killed with SIGKILL resumes with no finished step lost."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.envs.strategy_bandit import card_base_logits
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer, resume
from rlnb.train.rundir import read_metrics

SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from rlnb.envs import StrategyBandit
    from rlnb.envs.strategy_bandit import card_base_logits
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    def slow(trainer, metrics):  # a slow step, so the kill lands mid-run
        time.sleep(0.01)

    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    logits = card_base_logits(64, generator=torch.Generator().manual_seed(1))
    pi = TabularPolicy.for_env(env, shared=True, logits=logits)
    cfg = TrainConfig(max_steps=MAX_STEPS, num_generations=4, optimizer="adam",
                      learning_rate=0.05, progress_bar=False)
    Trainer(pi, env, cfg, run_dir=sys.argv[1], callbacks=[slow]).train()
    """
)
MAX_STEPS = 300


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.replace("MAX_STEPS", str(MAX_STEPS)))
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(read_metrics(metrics)) >= 40:
            break
        assert proc.poll() is None, "training process ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _strip(read_metrics(metrics))
    assert 40 <= len(before) < MAX_STEPS

    trainer = resume(run_dir, progress_bar=False)
    after = _strip(read_metrics(metrics))
    steps = [r["step"] for r in after]
    assert steps == list(range(1, MAX_STEPS + 1)), "steps lost or repeated"
    assert trainer.step == MAX_STEPS
    # every step finished before the kill is still there, unchanged
    assert after[: len(before) - 1] == before[:-1]

    # and the resumed run is the run that would have happened without the kill
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    logits = card_base_logits(64, generator=torch.Generator().manual_seed(1))
    pi = TabularPolicy.for_env(env, shared=True, logits=logits)
    cfg = TrainConfig(max_steps=MAX_STEPS, num_generations=4, optimizer="adam",
                      learning_rate=0.05, progress_bar=False)
    Trainer(pi, env, cfg, run_dir=tmp_path / "uninterrupted").train()
    assert after == _strip(read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl"))
    assert torch.equal(trainer.policy.logits, pi.logits)
