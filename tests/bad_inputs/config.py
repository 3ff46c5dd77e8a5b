"""Bad training configurations and policy / sandbox pairings: refused at construction, with
the field, the value and what is allowed, before a run directory is made."""

from __future__ import annotations

import math
from typing import Any

import torch

from rlnb.train import TrainConfig, Trainer
from tests.bad_inputs import BadInput


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**kw)


def _row(id: str, raises: Any, words: list[str], **kw: Any) -> BadInput:
    return BadInput(f"config/{id}", lambda tmp, kw=kw: _cfg(**kw), raises, words)


def _strategy_bandit():
    from rlnb.envs import StrategyBandit

    return StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))


def _train(policy, env, config=None):
    """A Trainer with a run directory that must not be created."""
    return Trainer(policy, env, config or TrainConfig(progress_bar=False), run_dir="run")


def _tabular_3_actions_on_64_strategies(tmp):
    from rlnb.policies import TabularPolicy

    return _train(TabularPolicy(1, 3, shared=True), _strategy_bandit())


def _tabular_for_2_prompts(tmp):
    from rlnb.envs import Bandit
    from rlnb.policies import TabularPolicy

    env = Bandit.random(4, num_envs=5, generator=torch.Generator().manual_seed(0))
    return _train(TabularPolicy(2, 4), env)


def _tabular_for_a_shallower_tree(tmp):
    from rlnb.envs import TreeMDP
    from rlnb.policies import TabularPolicy

    g = torch.Generator().manual_seed(0)
    small = TreeMDP.random(num_prompts=2, branching=2, depth=2, generator=g)
    big = TreeMDP.random(num_prompts=2, branching=2, depth=4, generator=g)
    return _train(TabularPolicy.for_env(small, shared=True), big)


def _mlp_wrong_features(tmp):
    from rlnb.policies import MLPPolicy

    return _train(MLPPolicy(5, 64), _strategy_bandit())


def _mlp_wrong_actions(tmp):
    from rlnb.envs import Gridworld
    from rlnb.envs.layouts import LAYOUTS
    from rlnb.policies import MLPPolicy

    env = Gridworld.from_name(sorted(LAYOUTS)[0])
    return _train(MLPPolicy(env.feature_dim, env.num_actions + 1), env)


def _tabular_on_text(tmp):
    from rlnb.envs import factor
    from rlnb.policies import TabularPolicy

    return _train(TabularPolicy(4, 10), factor(4, seed=0))


def _lm_on_bandit(tmp):
    from rlnb.envs import factor
    from rlnb.policies import LMPolicy
    from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

    tok = char_tokenizer(factor(2, seed=0).alphabet)
    model = tiny_model(tiny_config("llama", len(tok), n_layer=1, d_model=16, n_head=2,
                                   n_kv_head=1))
    return _train(LMPolicy.from_model(model, tok, max_new_tokens=4), _strategy_bandit())


def _env_not_a_sandbox(tmp):
    from rlnb.policies import TabularPolicy

    return _train(TabularPolicy(1, 2), {"means": [0.1, 0.9]})


def _policy_not_a_policy(tmp):
    return _train(torch.nn.Linear(2, 2), _strategy_bandit())


def _mutated(**changes: Any):
    def call(tmp):
        from rlnb.policies import TabularPolicy

        env = _strategy_bandit()
        config = TrainConfig(progress_bar=False)
        for name, value in changes.items():
            setattr(config, name, value)  # after construction: Trainer checks again
        return _train(TabularPolicy.for_env(env, shared=True), env, config)

    return call


CASES = [
    # --- integers are ints ----------------------------------------------------------
    _row("max-steps-float", TypeError, ["max_steps", "must be an int", "float", "2.5"],
         max_steps=2.5),
    _row("max-steps-bool", TypeError, ["max_steps", "must be an int", "bool", "True"],
         max_steps=True),
    _row("max-steps-negative", ValueError, ["max_steps", ">= 0", "-1"], max_steps=-1),
    _row("seed-float", TypeError, ["seed", "int", "float"], seed=0.5),
    _row("num-prompts-zero", ValueError, ["num_prompts_per_step", ">= 1", "got 0"],
         num_prompts_per_step=0),
    _row("num-generations-zero", ValueError, ["num_generations", ">= 1", "got 0"],
         num_generations=0),
    _row("num-generations-str", TypeError, ["num_generations", "int", "str", "'8'"],
         num_generations="8"),
    _row("num-iterations-zero", ValueError, ["num_iterations", ">= 1"], num_iterations=0),
    _row("save-steps-zero", ValueError, ["save_steps", ">= 1", "got 0"], save_steps=0),
    _row("log-rollouts-steps-negative", ValueError, ["log_rollouts_steps", ">= 0"],
         log_rollouts_steps=-1),
    _row("log-rollouts-count-zero", ValueError, ["log_rollouts_count", ">= 1", "got 0"],
         log_rollouts_count=0),
    _row("torch-threads-zero", ValueError, ["torch_threads", ">= 1 or None", "got 0"],
         torch_threads=0),
    _row("torch-threads-float", TypeError, ["torch_threads", "int or None", "float", "2.0"],
         torch_threads=2.0),
    # --- floats are finite numbers in range -------------------------------------------
    _row("learning-rate-str", TypeError, ["learning_rate", "must be a float", "str", "'0.1'"],
         learning_rate="0.1"),
    _row("learning-rate-zero", ValueError, ["learning_rate", "> 0", "got 0"], learning_rate=0),
    _row("learning-rate-nan", ValueError, ["learning_rate", "finite", "nan"],
         learning_rate=math.nan),
    _row("temperature-inf", ValueError, ["temperature", "finite", "inf"], temperature=math.inf),
    _row("temperature-zero", ValueError, ["temperature", "> 0"], temperature=0.0),
    _row("temperature-none", TypeError, ["temperature", "float", "NoneType"], temperature=None),
    _row("epsilon-negative", ValueError, ["epsilon", "> 0", "-0.2"], epsilon=-0.2),
    _row("epsilon-high-zero", ValueError, ["epsilon_high", "> 0 or None", "got 0"],
         epsilon_high=0.0),
    _row("delta-below-one-plus-epsilon", ValueError, ["delta", "1 + epsilon = 1.2", "1.1"],
         delta=1.1),
    _row("delta-str", TypeError, ["delta", "float or None", "str"], delta="3"),
    _row("beta-negative", ValueError, ["beta", ">= 0", "-0.1"], beta=-0.1),
    _row("entropy-coef-nan", ValueError, ["entropy_coef", "finite", "nan"],
         entropy_coef=math.nan),
    _row("weight-decay-negative", ValueError, ["weight_decay", ">= 0", "-1"], weight_decay=-1.0),
    _row("w-reinforce-lambda-negative", ValueError, ["w_reinforce_lambda", ">= 0"],
         w_reinforce_lambda=-0.1),
    _row("max-grad-norm-zero", ValueError, ["max_grad_norm", "> 0 or None"], max_grad_norm=0.0),
    _row("clip-cov-ratio-above-one", ValueError, ["clip_cov_ratio", "(0, 1]", "2.0"],
         clip_cov_ratio=2.0),
    _row("clip-cov-bounds-reversed", ValueError, ["clip_cov_lb", "< clip_cov_ub", "5.0", "1.0"],
         clip_cov_lb=5.0, clip_cov_ub=1.0),
    _row("kl-cov-ratio-zero", ValueError, ["kl_cov_ratio", "(0, 1]"], kl_cov_ratio=0.0),
    _row("kl-cov-coef-negative", ValueError, ["kl_cov_coef", ">= 0"], kl_cov_coef=-1.0),
    # --- adam_betas -------------------------------------------------------------------
    _row("adam-betas-one-value", ValueError, ["adam_betas", "pair", "(0.9,)"],
         adam_betas=(0.9,)),
    _row("adam-betas-beta2-one", ValueError, ["adam_betas[1]", "beta2", "[0, 1)", "1.0"],
         adam_betas=(0.9, 1.0)),
    _row("adam-betas-negative", ValueError, ["adam_betas[0]", "[0, 1)", "-0.1"],
         adam_betas=(-0.1, 0.999)),
    _row("adam-betas-str", TypeError, ["adam_betas", "pair", "str"], adam_betas="0.9,0.999"),
    # --- bools and names --------------------------------------------------------------
    _row("progress-bar-int", TypeError, ["progress_bar", "bool", "int"], progress_bar=1),
    _row("advantage-unknown", ValueError,
         ["unknown advantage method 'grop'", "did you mean 'grpo'", "rloo"], advantage="grop"),
    _row("advantage-none", TypeError, ["advantage", "str", "NoneType"], advantage=None),
    _row("advantage-gae", ValueError, ["'gae'", "critic", "grpo"], advantage="gae"),
    _row("policy-loss-unknown", ValueError, ["policy_loss", "'ppo'", "ppo_clip", "vanilla_pg"],
         policy_loss="ppo"),
    _row("scale-rewards-unknown", ValueError,
         ["scale_rewards", "'grp'", "did you mean 'group'", "batch", "none"],
         scale_rewards="grp"),
    _row("optimizer-unknown", ValueError, ["optimizer", "'adma'", "did you mean 'adam'", "sgd"],
         optimizer="adma"),
    _row("kl-estimator-unknown", ValueError, ["kl_estimator", "'k4'", "k3"], kl_estimator="k4"),
    _row("loss-agg-mode-unknown", ValueError, ["loss_agg_mode", "'mean'", "token-mean"],
         loss_agg_mode="mean"),
    # --- combinations -----------------------------------------------------------------
    _row("rloo-one-generation", ValueError,
         ["rloo", "num_generations >= 2", "num_generations=1", "reinforce_baseline"],
         advantage="rloo", num_generations=1),
    # --- unknown options --------------------------------------------------------------
    _row("unknown-option", TypeError,
         ["unknown TrainConfig option 'lr'", "did you mean 'learning_rate'", "valid options",
          "num_generations"], lr=0.1),
    BadInput("config/unknown-option-from-dict",
             lambda tmp: TrainConfig.from_dict({"num_generation": 4}), ValueError,
             ["'num_generation'", "did you mean 'num_generations'", "valid options"]),
    BadInput("config/from-dict-not-a-dict",
             lambda tmp: TrainConfig.from_dict([("max_steps", 4)]), TypeError,
             ["from_dict", "dict", "list"]),
    BadInput("config/replace-unknown-option",
             lambda tmp: TrainConfig().replace(temprature=0.5), TypeError,
             ["'temprature'", "did you mean 'temperature'"]),
    BadInput("config/replace-bad-value",
             lambda tmp: TrainConfig().replace(num_generations=2.0), TypeError,
             ["num_generations", "int", "float"]),
    # --- Trainer: the config again, and the policy against its sandbox ------------------
    BadInput("config/trainer-mutated-max-steps", _mutated(max_steps=2.5), TypeError,
             ["max_steps", "int", "float"]),
    BadInput("config/trainer-mutated-rloo-one-generation",
             _mutated(advantage="rloo", num_generations=1), ValueError,
             ["rloo", "num_generations >= 2"]),
    BadInput("config/trainer-mutated-scale-rewards", _mutated(scale_rewards="grp"), ValueError,
             ["scale_rewards", "'grp'", "group"]),
    BadInput("config/trainer-tabular-3-actions-on-64-strategies",
             _tabular_3_actions_on_64_strategies, ValueError,
             ["num_actions=3", "StrategyBandit has num_actions=64", "TabularPolicy.for_env(env)"]),
    BadInput("config/trainer-tabular-for-2-prompts", _tabular_for_2_prompts, ValueError,
             ["num_states=2", "num_states=5", "num_prompts=5", "TabularPolicy.for_env(env)"]),
    BadInput("config/trainer-tabular-for-a-shallower-tree", _tabular_for_a_shallower_tree,
             ValueError, ["states_per_prompt=3", "states_per_prompt=15", "horizon 4", "for_env"]),
    BadInput("config/trainer-mlp-wrong-features", _mlp_wrong_features, ValueError,
             ["MLPPolicy", "feature_dim=5", "feature_dim=64", "MLPPolicy.for_env(env)"]),
    BadInput("config/trainer-mlp-wrong-actions", _mlp_wrong_actions, ValueError,
             ["MLPPolicy", "num_actions=5", "Gridworld", "num_actions=4", "MLPPolicy.for_env(env)"]),
    BadInput("config/trainer-tabular-on-text-task", _tabular_on_text, TypeError,
             ["TabularPolicy", "FactorTask", "text task", "LMPolicy"]),
    BadInput("config/trainer-lm-on-bandit", _lm_on_bandit, TypeError,
             ["LMPolicy", "text task", "StrategyBandit", "TabularPolicy.for_env(env)"]),
    BadInput("config/trainer-env-not-a-sandbox", _env_not_a_sandbox, TypeError,
             ["sandbox", "dict", "sample_prompts"]),
    BadInput("config/trainer-policy-not-a-policy", _policy_not_a_policy, TypeError,
             ["rlnb policy", "Linear", "rollout"]),
    # --- micro-batches and gradient checkpointing ------------------------------------------
    _row("micro-batch-not-a-divisor", ValueError,
         ["per_device_train_batch_size (5)", "4 * 4 = 16", "1, 2, 4, 8, 16"],
         num_prompts_per_step=4, num_generations=4, per_device_train_batch_size=5),
    _row("micro-batches-product", ValueError, ["4 * 3 = 12", "must equal", "16 completions"],
         num_prompts_per_step=4, num_generations=4, per_device_train_batch_size=4,
         gradient_accumulation_steps=3),
    _row("gradient-checkpointing-str", TypeError, ["gradient_checkpointing", "bool", "'yes'"],
         gradient_checkpointing="yes"),
    BadInput("config/trainer-clip-cov-micro-batches",
             _mutated(policy_loss="clip_cov", per_device_train_batch_size=64), ValueError,
             ["clip_cov", "covariance", "micro-batches", "ppo_clip"]),
    BadInput("config/trainer-gradient-checkpointing-tabular",
             _mutated(gradient_checkpointing=True), ValueError,
             ["TabularPolicy", "gradient_checkpointing", "LMPolicy"]),
]
