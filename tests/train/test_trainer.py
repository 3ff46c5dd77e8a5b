"""The one training loop: every objective on every sandbox, determinism, run directories."""

import json

import pandas as pd
import pytest
import torch

from rlnb.envs import Bandit, StrategyBandit, TreeMDP
from rlnb.envs.strategy_bandit import card_base_logits
from rlnb.policies import MLPPolicy, TabularPolicy
from rlnb.train import ExactSuccess, TrainConfig, Trainer, load_run, load_runs, resume
from rlnb.train.rundir import read_metrics

TIME_KEYS = ("time/",)


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIME_KEYS)} for r in rows]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _sandbox(name):
    if name == "bandit":
        return Bandit.random(5, num_envs=3, generator=_gen())
    if name == "strategy":
        return StrategyBandit.from_card(num_problems=16, num_strategies=8, generator=_gen())
    return TreeMDP.random(num_prompts=4, branching=3, depth=3, reward_fraction=0.1,
                          generator=_gen())


def _cfg(**kw):
    base = dict(max_steps=10, num_prompts_per_step=4, num_generations=4, learning_rate=0.1,
                progress_bar=False)
    base.update(kw)
    return TrainConfig(**base)


OBJECTIVES = [
    dict(advantage="grpo", policy_loss="ppo_clip"),
    dict(advantage="grpo", scale_rewards="none", loss_agg_mode="seq-mean-token-sum-norm"),
    dict(advantage="grpo", scale_rewards="none", loss_agg_mode="dr_grpo"),
    dict(advantage="grpo", scale_rewards="batch"),
    dict(advantage="grpo", policy_loss="ppo_clip", epsilon_high=0.28, num_iterations=2),
    dict(advantage="grpo", policy_loss="ppo_clip", delta=3.0, num_iterations=2),
    dict(advantage="rloo", policy_loss="vanilla_pg"),
    dict(advantage="reinforce", policy_loss="vanilla_pg"),
    dict(advantage="reinforce_baseline", policy_loss="vanilla_pg", beta=0.1, kl_estimator="k2"),
    dict(advantage="psr", policy_loss="vanilla_pg"),
    dict(advantage="nsr", policy_loss="vanilla_pg"),
    dict(advantage="w_reinforce", w_reinforce_lambda=0.1, policy_loss="vanilla_pg"),
    dict(advantage="grpo", policy_loss="clip_cov", clip_cov_ratio=0.2),
    dict(advantage="grpo", policy_loss="kl_cov", kl_cov_ratio=0.2),
    dict(advantage="grpo", entropy_coef=0.01, beta=0.05),
    dict(advantage="grpo", policy_loss="gspo", loss_agg_mode="grpo", num_iterations=2),
    dict(advantage="reinforce_plus_plus", policy_loss="ppo_clip"),
    dict(advantage="reinforce_plus_plus_baseline", policy_loss="ppo_clip"),
]


@pytest.mark.parametrize("sandbox", ["bandit", "strategy", "tree"])
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("policy_kind", ["tabular", "mlp"])
def test_ten_step_smoke(sandbox, objective, policy_kind):
    env = _sandbox(sandbox)
    pi = (TabularPolicy.for_env(env) if policy_kind == "tabular"
          else MLPPolicy.for_env(env, hidden=(8,)))
    before = [p.detach().clone() for p in pi.parameters()]
    history = Trainer(pi, env, _cfg(**objective)).train()
    assert len(history) == 10 and list(history["step"]) == list(range(1, 11))
    for col in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "loss", "grad_norm"):
        assert history[col].notna().all(), col
    assert torch.isfinite(torch.tensor(history["loss"].to_numpy())).all()
    if objective.get("beta"):
        assert "kl" in history
    moved = any(not torch.equal(a, b) for a, b in zip(before, pi.parameters()))
    assert moved or history["advantage_abs_mean"].eq(0).all()


def test_grpo_raises_strategy_bandit_pass_at_1():
    env = StrategyBandit.from_card(generator=_gen())
    pi = TabularPolicy.for_env(env, shared=True, logits=card_base_logits(64, generator=_gen()))
    cfg = _cfg(max_steps=60, num_prompts_per_step=16, optimizer="sgd", learning_rate=1.0,
               policy_loss="vanilla_pg")
    history = Trainer(pi, env, cfg, callbacks=[ExactSuccess(ks=(1, 64))]).train()
    assert history["exact/pass@1"].iloc[-1] > history["exact/pass@1"].iloc[0] + 0.1
    assert history["exact/policy_entropy"].iloc[-1] < history["exact/policy_entropy"].iloc[0]


def test_same_seed_same_metrics_bit_for_bit(tmp_path):
    def run(seed, d):
        env = TreeMDP.random(num_prompts=4, branching=3, depth=3, reward_fraction=0.1,
                             generator=_gen())
        pi = MLPPolicy.for_env(env, hidden=(8,))
        Trainer(pi, env, _cfg(seed=seed, num_iterations=2, beta=0.01), run_dir=d).train()
        return _strip_time(read_metrics(d / "metrics.jsonl")), pi

    a, pa = run(0, tmp_path / "a")
    b, pb = run(0, tmp_path / "b")
    c, _ = run(1, tmp_path / "c")
    assert a == b  # exact float equality, every metric, every step
    assert all(torch.equal(x, y) for x, y in zip(pa.parameters(), pb.parameters()))
    assert a != c


def test_run_directory_contents_and_load_run(tmp_path):
    env = _sandbox("strategy")
    pi = TabularPolicy.for_env(env, shared=True)
    cfg = _cfg(beta=0.1, log_rollouts_steps=5, log_rollouts_count=3)
    Trainer(pi, env, cfg, run_dir=tmp_path / "run").train()
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "env.json", "env.safetensors", "policy.json", "metrics.jsonl",
            "checkpoint.safetensors", "reference.safetensors", "rollouts.jsonl"} <= names
    assert not any(n.endswith((".pt", ".pkl", ".bin")) for n in names)
    rollouts = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 6 and {r["step"] for r in rollouts} == {5, 10}
    pi2, env2, cfg2 = load_run(tmp_path / "run")
    assert cfg2 == cfg
    assert torch.equal(env2.solve_matrix, env.solve_matrix)
    assert torch.equal(pi2.logits, pi.logits)


def test_load_runs_tidy_and_wide(tmp_path):
    env = _sandbox("bandit")
    for seed in (0, 1):
        for lr in (0.1, 0.5):
            pi = TabularPolicy.for_env(env)
            Trainer(pi, env, _cfg(seed=seed, learning_rate=lr, max_steps=4),
                    run_dir=tmp_path / f"lr{lr}-s{seed}").train()
    tidy = load_runs(tmp_path)
    assert {"run", "step", "metric", "value", "seed", "learning_rate"} <= set(tidy.columns)
    assert tidy.run.nunique() == 4 and set(tidy.step) == {1, 2, 3, 4}
    assert tidy.groupby("run").learning_rate.nunique().eq(1).all()
    wide = load_runs(sorted(tmp_path.iterdir()), wide=True)
    assert len(wide) == 16 and "reward" in wide and "entropy" in wide
    assert isinstance(load_runs(str(tmp_path / "lr0.1-*")), pd.DataFrame)
    with pytest.raises(FileNotFoundError, match="no runs found"):
        load_runs(tmp_path / "nothing-here")


def test_resume_after_partial_line_equals_uninterrupted(tmp_path):
    def setup():
        env = _sandbox("tree")
        return TabularPolicy.for_env(env), env

    pi, env = setup()
    Trainer(pi, env, _cfg(max_steps=8), run_dir=tmp_path / "ref").train()
    reference = _strip_time(read_metrics(tmp_path / "ref" / "metrics.jsonl"))

    pi, env = setup()
    Trainer(pi, env, _cfg(max_steps=5), run_dir=tmp_path / "run").train()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "rew')  # killed in the middle of a write
    trainer = resume(tmp_path / "run", max_steps=8, progress_bar=False)
    assert trainer.step == 8
    got = _strip_time(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in got] == list(range(1, 9))
    assert got == reference


def test_existing_run_dir_with_other_config_is_refused(tmp_path):
    env = _sandbox("bandit")
    Trainer(TabularPolicy.for_env(env), env, _cfg(max_steps=2), run_dir=tmp_path).train()
    with pytest.raises(ValueError, match=r"different config \(options \['learning_rate'\]"):
        Trainer(TabularPolicy.for_env(env), env, _cfg(learning_rate=0.3), run_dir=tmp_path)
    # same config, more steps: continues
    t = Trainer(TabularPolicy.for_env(env), env, _cfg(max_steps=4), run_dir=tmp_path)
    assert t.step == 2
    t.train()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


class _BadRewardEnv(Bandit):
    def reward(self, prompts, actions, generator=None):
        r = super().reward(prompts, actions, generator)
        r[5] = float("nan")
        return r


def test_nan_reward_names_the_rollout():
    env = _BadRewardEnv(means=torch.tensor([[0.2, 0.8]] * 4))
    with pytest.raises(ValueError, match="rollout 5"):
        Trainer(TabularPolicy.for_env(env), env, _cfg()).train()


def test_config_errors():
    with pytest.raises(ValueError, match="unknown advantage"):
        Trainer(TabularPolicy(1, 2), Bandit(means=torch.tensor([0.1, 0.2])),
                _cfg(advantage="grop"))
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        _cfg(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        TrainConfig.from_dict({"lr": 1.0})


def test_callbacks_merge_metrics_and_can_stop():
    env = _sandbox("bandit")
    seen = []

    def cb(trainer, metrics):
        seen.append(metrics["step"])
        if trainer.step == 3:
            trainer.stop()
        return {"custom": 1.0}

    history = Trainer(TabularPolicy.for_env(env), env, _cfg(), callbacks=[cb]).train()
    assert seen == [1, 2, 3] and len(history) == 3 and (history["custom"] == 1.0).all()


def test_load_runs_keeps_runs_whose_sweep_value_is_none(tmp_path):
    env = _sandbox("bandit")
    for eh in (None, 0.28):
        Trainer(TabularPolicy.for_env(env), env, _cfg(max_steps=3, epsilon_high=eh),
                run_dir=tmp_path / f"eh{eh}").train()
    wide = load_runs(tmp_path, wide=True)
    assert len(wide) == 6 and wide.run.nunique() == 2
    assert "config/learning_rate" not in wide  # not varying, so not a column at all


def test_update_config_between_steps():
    env = _sandbox("strategy")
    trainer = Trainer(TabularPolicy.for_env(env, shared=True), env,
                      _cfg(policy_loss="ppo_clip", num_iterations=2))
    trainer.train(max_steps=2)
    trainer.update_config(learning_rate=0.5, epsilon_high=0.28, temperature=0.7)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.5
    assert trainer._loss_options["epsilon_high"] == 0.28
    assert trainer.config.temperature == 0.7
    trainer.train(max_steps=3)
    assert trainer.step == 3
    with pytest.raises(ValueError, match=r"cannot change during a run"):
        trainer.update_config(num_generations=8)
    with pytest.raises(ValueError, match="no reference policy"):
        trainer.update_config(beta=0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        trainer.update_config(temperature=0.0)
    assert trainer.config.temperature == 0.7  # a refused change leaves the config as it was


def test_a_bad_config_writes_no_run_dir_and_the_fixed_one_then_trains(tmp_path):
    env = _sandbox("bandit")
    bad = _cfg(max_steps=2)
    bad.advantage, bad.num_generations = "rloo", 1  # set after construction: Trainer checks
    with pytest.raises(ValueError, match="'rloo' needs num_generations >= 2"):
        Trainer(TabularPolicy.for_env(env), env, bad, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    fixed = _cfg(max_steps=2, advantage="rloo", num_generations=2)
    Trainer(TabularPolicy.for_env(env), env, fixed, run_dir=tmp_path / "run").train()
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2


def test_the_policy_must_fit_its_sandbox(tmp_path):
    env = StrategyBandit.from_card(generator=_gen())  # 64 strategies, 64 problems
    with pytest.raises(ValueError, match=r"num_actions=3 but StrategyBandit has "
                                         r"num_actions=64 .*TabularPolicy\.for_env\(env\)"):
        Trainer(TabularPolicy(1, 3, shared=True), env, _cfg(), run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"num_states=2 but StrategyBandit has num_states=64"):
        Trainer(TabularPolicy(2, 64), env, _cfg(), run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"feature_dim=3 but StrategyBandit has feature_dim=64"):
        Trainer(MLPPolicy(3, 64), env, _cfg())
    assert list(tmp_path.iterdir()) == []
    # shared tables fit any number of prompts; the sizes the sandbox builds always fit
    Trainer(TabularPolicy(1, 64, shared=True), env, _cfg(max_steps=1)).train()
    Trainer(MLPPolicy.for_env(env), env, _cfg(max_steps=1)).train()


def test_update_config_refuses_a_wrong_type_and_keeps_the_config():
    env = _sandbox("bandit")
    trainer = Trainer(TabularPolicy.for_env(env), env, _cfg())
    with pytest.raises(TypeError, match="learning_rate must be a float, got str '0.5'"):
        trainer.update_config(learning_rate="0.5")
    with pytest.raises(ValueError, match=r"delta \(the dual clip\) must be > 1 \+ epsilon"):
        trainer.update_config(delta=1.1)
    assert trainer.config.learning_rate == 0.1 and trainer.config.delta is None


def test_update_config_checks_types_before_comparing():
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    trainer = Trainer(TabularPolicy.for_env(env, shared=True), env,
                      TrainConfig(max_steps=1, progress_bar=False))
    with pytest.raises(TypeError, match="beta"):
        trainer.update_config(beta="0.1")
    with pytest.raises(ValueError, match="no reference policy"):
        trainer.update_config(beta=0.1)
    assert trainer.config.beta == 0


def test_a_config_given_as_a_dict_is_refused_with_the_fix():
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"TrainConfig\(\*\*options\)"):
        Trainer(TabularPolicy.for_env(env, shared=True), env, {"max_steps": 1})


def test_a_run_made_before_an_option_existed_continues(tmp_path):
    """config.json of an older run lacks options added since: they take their defaults."""
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=2, progress_bar=False)
    with Trainer(TabularPolicy.for_env(env, shared=True), env, cfg, run_dir=tmp_path / "r") as t:
        t.train()
    path = tmp_path / "r" / "config.json"
    old = json.loads(path.read_text())
    del old["matmul_threads"], old["fsync"]
    path.write_text(json.dumps(old))
    t = resume(tmp_path / "r", max_steps=3, progress_bar=False)
    assert t.step == 3


def test_the_runtime_is_recorded_and_a_change_on_resume_is_named(tmp_path):
    """runtime.json holds what the numbers depend on besides the config; continuing a run
    under another thread count warns that its later steps are not bitwise the same."""
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=2, progress_bar=False)
    with Trainer(TabularPolicy.for_env(env, shared=True), env, cfg, run_dir=tmp_path / "r") as t:
        t.train()
    recorded = json.loads((tmp_path / "r" / "runtime.json").read_text())
    assert recorded["torch_threads"] == 1 and recorded["matmul_threads"] == 1
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    with pytest.warns(UserWarning, match=r"torch_threads: 1 -> 2"):
        t2 = Trainer(TabularPolicy.for_env(env, shared=True), env,
                     cfg.replace(max_steps=3, torch_threads=2), run_dir=tmp_path / "r")
    t2.close()
    assert json.loads((tmp_path / "r" / "runtime.json").read_text())["torch_threads"] == 2
