"""TrainConfig: every field checked at construction, normalised, copied with replace."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from rlnb.train import TrainConfig


def test_defaults_and_every_round_trip_validate():
    c = TrainConfig()
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c  # adam_betas: list -> tuple
    assert c.replace() == c and c.replace() is not c


def test_numbers_are_normalised_not_changed():
    c = TrainConfig(max_steps=np.int64(7), learning_rate=1, temperature=np.float32(0.5),
                    adam_betas=[0.5, 0.99], progress_bar=np.bool_(False))
    assert type(c.max_steps) is int and c.max_steps == 7
    assert type(c.learning_rate) is float and c.learning_rate == 1.0
    assert type(c.temperature) is float and c.temperature == 0.5
    assert c.adam_betas == (0.5, 0.99) and c.progress_bar is False
    json.dumps(c.to_dict())  # numpy scalars would not serialise


@pytest.mark.parametrize("field, value, words", [
    ("max_steps", 2.5, ["max_steps must be an int", "got float 2.5"]),
    ("max_steps", True, ["max_steps must be an int", "got bool True"]),
    ("num_generations", 4.0, ["num_generations must be an int", "write num_generations=4"]),
    ("learning_rate", "0.1", ["learning_rate must be a float", "got str '0.1'", "without quotes"]),
    ("epsilon_high", "0.28", ["epsilon_high must be a float or None", "str"]),
    ("mask_truncated_completions", "yes", ["mask_truncated_completions must be a bool", "str"]),
    ("policy_loss", 3, ["policy_loss must be a str", "got int 3"]),
    ("adam_betas", 0.9, ["adam_betas must be a pair", "float"]),
    ("adam_betas", (0.9, "0.99"), ["adam_betas[1] must be a float", "str"]),
])
def test_type_errors_name_the_field_and_both_types(field, value, words):
    with pytest.raises(TypeError) as info:
        TrainConfig(**{field: value})
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("changes, words", [
    ({"delta": 1.2}, ["delta (the dual clip) must be > 1 + epsilon = 1.2", "got 1.2"]),
    ({"delta": 1.3, "epsilon": 0.3}, ["1 + epsilon = 1.3"]),
    ({"adam_betas": (0.9,)}, ["adam_betas must be a pair", "1 value(s)"]),
    ({"adam_betas": (0.9, 0.99, 0.999)}, ["adam_betas must be a pair", "3 value(s)"]),
    ({"adam_betas": (1.0, 0.999)}, ["adam_betas[0] (beta1) must be in [0, 1), got 1.0"]),
    ({"adam_betas": (0.9, float("nan"))}, ["adam_betas[1] (beta2) must be in [0, 1)"]),
    ({"learning_rate": float("inf")}, ["learning_rate must be a finite number, got inf"]),
    ({"beta": float("nan")}, ["beta must be a finite number, got nan"]),
    ({"scale_rewards": "grp"}, ["scale_rewards must be one of ['group', 'batch', 'none']",
                                "did you mean 'group'"]),
    ({"advantage": "rloo", "num_generations": 1}, ["'rloo' needs num_generations >= 2"]),
    ({"advantage": "grop"}, ["unknown advantage method 'grop'", "did you mean 'grpo'"]),
    ({"advantage": "gae"}, ["'gae' needs a critic"]),
    ({"policy_loss": "ppo_clipp"}, ["unknown policy loss 'ppo_clipp'", "did you mean 'ppo_clip'"]),
    ({"clip_cov_ratio": 0.0}, ["clip_cov_ratio must be in (0, 1]"]),
    ({"clip_cov_lb": 2.0, "clip_cov_ub": 2.0}, ["clip_cov_lb must be < clip_cov_ub"]),
    ({"kl_cov_ratio": 1.5}, ["kl_cov_ratio must be in (0, 1]"]),
    ({"log_rollouts_count": 0}, ["log_rollouts_count must be >= 1"]),
    ({"seed": 2**64}, ["seed must be in [-2**63, 2**64)"]),
])
def test_value_errors_say_what_is_allowed(changes, words):
    with pytest.raises(ValueError) as info:
        TrainConfig(**changes)
    for w in words:
        assert w in str(info.value)


def test_valid_edges_are_accepted():
    TrainConfig(delta=1.21, adam_betas=(0.0, 0.0), max_steps=0, clip_cov_ratio=1.0,
                kl_cov_coef=0.0, entropy_coef=-0.01, w_reinforce_lambda=0.0, seed=-1)
    TrainConfig(advantage="rloo", num_generations=2)
    TrainConfig(advantage="reinforce", num_generations=1)


def test_unknown_options_list_the_valid_names_and_the_closest():
    with pytest.raises(TypeError, match=r"unknown TrainConfig option 'lr' \(did you mean "
                                        r"'learning_rate'\?\); valid options: adam_betas, "):
        TrainConfig(lr=0.1)
    with pytest.raises(TypeError, match=r"options 'num_generation' \(did you mean "
                                        r"'num_generations'\?\), 'zzz'; valid options"):
        TrainConfig(num_generation=4, zzz=1)
    with pytest.raises(ValueError, match=r"'betas' \(did you mean 'adam_betas'\?\)"):
        TrainConfig.from_dict({"betas": [0.9, 0.99]})
    with pytest.raises(TypeError, match=r"'temprature' \(did you mean 'temperature'\?\)"):
        TrainConfig().replace(temprature=0.5)


def test_grpo_with_groups_of_one_warns_with_the_fix():
    with pytest.warns(UserWarning, match=r"num_generations=1 with advantage 'grpo'.*every "
                                         r"advantage .* is zero.*num_generations >= 2") as rec:
        c = TrainConfig(num_generations=1)
    assert rec[0].filename == __file__  # points at the line that made the config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.validate()  # once per config
        TrainConfig(num_generations=2)
        TrainConfig(num_generations=1, advantage="reinforce")
    with pytest.warns(UserWarning, match="reinforce_baseline"):
        TrainConfig(num_generations=1, num_prompts_per_step=1, advantage="reinforce_baseline")


def test_replace_is_a_validated_copy():
    c = TrainConfig(max_steps=5)
    d = c.replace(learning_rate=0.5, epsilon_high=0.28)
    assert (d.learning_rate, d.epsilon_high, d.max_steps) == (0.5, 0.28, 5)
    assert (c.learning_rate, c.epsilon_high) == (0.01, None)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        c.replace(temperature=0.0)
    with pytest.raises(ValueError, match="delta"):
        c.replace(epsilon=0.5, delta=1.4)  # checked against the new epsilon
    assert dataclasses.asdict(c) == dataclasses.asdict(TrainConfig(max_steps=5))


def test_validate_catches_a_field_set_after_construction():
    c = TrainConfig()
    c.max_steps = 2.5
    with pytest.raises(TypeError, match="max_steps must be an int"):
        c.validate()
    c.max_steps = 3
    c.advantage, c.num_generations = "rloo", 1
    with pytest.raises(ValueError, match="rloo"):
        c.validate()


def test_from_dict_needs_a_mapping():
    with pytest.raises(TypeError, match="from_dict needs a dict of options, got list"):
        TrainConfig.from_dict([("max_steps", 3)])


def test_doctests():
    import doctest

    import rlnb.train.compat
    import rlnb.train.config

    for module in (rlnb.train.config, rlnb.train.compat):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
