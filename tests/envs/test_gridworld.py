"""Gridworld: batched step against the plain-Python oracle, exact values against Monte Carlo,
the trainer's reward against the exact value of the policy, round trips, every error."""

from __future__ import annotations

import doctest

import pytest
import torch

import rlnb.envs.gridworld as gridworld_module
import rlnb.envs.gridworld_exact as gridworld_exact_module
import rlnb.envs.gridworld_rules as gridworld_rules_module
import rlnb.envs.layouts as layouts_module
from rlnb.envs.gridworld import Gridworld, reference_step
from rlnb.envs.layouts import LAYOUTS, combination_lock, parse_layout, random_layout
from rlnb.policies import MLPPolicy, TabularPolicy
from rlnb.serialization import load_component, save_component
from rlnb.train import TrainConfig, Trainer
from rlnb.viz.gridworld import effective_horizon_bars, value_heatmap


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TWO_MAPS = ["S.#.G\n..#..\nK.D.L", "SgL..\n.....\n...#G"]


@pytest.mark.parametrize("kwargs", [
    dict(layouts=TWO_MAPS, horizon=12, slip=0.2, sticky=0.25, time_penalty=0.9),
    dict(layouts=LAYOUTS["lock6"][0], horizon=6, sticky=0.25),
    dict(layouts="S.G", horizon=3),
])
def test_batched_step_equals_python_reference(kwargs):
    """Same two uniforms per env -> the same next state, reward and done, for every env,
    including terminal (absorbing) states and states past the horizon."""
    env = Gridworld(**kwargs)
    g = gen(0)
    B = 256
    s = env.reset(B, g)
    for _ in range(env.horizon + 2):
        a = torch.randint(4, (B,), generator=g)
        state = g.get_state()
        u = torch.rand(2, B, generator=g, dtype=torch.float64)
        g.set_state(state)  # step() draws the same u
        s2, r, done = env.step(s, a, g)
        for i in range(B):
            ref = reference_step(env, int(s[i]), int(a[i]), float(u[0, i]), float(u[1, i]))
            assert ref == (int(s2[i]), pytest.approx(float(r[i]), abs=1e-6), bool(done[i])), i
        s = s2


@pytest.mark.parametrize("kwargs", [
    dict(layouts=TWO_MAPS, horizon=12, slip=0.2, sticky=0.25, time_penalty=0.9),
    dict(layouts=LAYOUTS["lock6"][0], horizon=6, sticky=0.25),
    dict(layouts="S.g\n..G", horizon=5, slip=0.3, decoy_reward=0.4),
])
def test_step_table_equals_the_computed_step(kwargs, monkeypatch):
    """The precomputed step table gives bitwise the step computed from the decoded state,
    for every state (terminal and past-the-horizon ones included) and many draws; a map
    over the table's limit steps by the computation."""
    table_env = Gridworld(**kwargs)
    monkeypatch.setattr(gridworld_module, "STEP_TABLE_LIMIT", 0)
    plain_env = Gridworld(**kwargs)
    assert plain_env._step_table() is None
    monkeypatch.undo()
    assert table_env._step_table() is not None
    states = torch.arange(table_env.num_states).repeat(8)
    g = gen(3)
    actions = torch.randint(4, states.shape, generator=g)
    u = torch.rand(2, states.numel(), generator=g, dtype=torch.float64)
    for got, want in zip(table_env._transition(states, actions, u),
                         plain_env._transition(states, actions, u), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(table_env.is_terminal(states), plain_env.is_terminal(states))


def test_exact_random_value_matches_monte_carlo_within_4_se():
    env = Gridworld.from_name("key_door", slip=0.1, sticky=0.25, time_penalty=0.9)
    n, g = 40_000, gen(1)
    s, total = env.reset(n), torch.zeros(n, dtype=torch.float64)
    for _ in range(env.horizon):
        s, r, _ = env.step(s, torch.randint(4, (n,), generator=g), g)
        total += r.double()
    exact = float(env.random_value()[0])
    se = float(total.std()) / n**0.5
    assert abs(float(total.mean()) - exact) <= 4 * se + 1e-9


@pytest.mark.parametrize("name,kw", [("open3", dict(slip=0.1, sticky=0.25, time_penalty=0.9)),
                                     ("lock4", dict(sticky=0.25)),
                                     ("key_door", dict())])
def test_reward_rollout_mean_equals_exact_policy_value(name, kw):
    """A TabularPolicy's sampled rollouts scored by reward_rollout (the trainer's path,
    including the simulated last transition) average to the exact value of the policy."""
    env = Gridworld.from_name(name, **kw)
    from rlnb.mdp.horizon import value_iteration

    Q, _ = value_iteration(env.mdp())  # a noisy near-optimal policy: returns far from 0
    good = torch.nn.functional.one_hot(Q.argmax(-1), 4).float()  # (T, C, 4)
    logits = 2.0 * env.table_to_states(good) + torch.randn(env.num_states, 4, generator=gen(2))
    pi = TabularPolicy.for_env(env, logits=logits)
    n = 20_000
    rollout = pi.rollout(env, torch.zeros(1, dtype=torch.long), n, generator=gen(3))
    rewards = env.reward_rollout(rollout, gen(4)).double()
    exact = float(env.expected_return(pi.probs())[0])
    se = float(rewards.std()) / n**0.5
    assert abs(float(rewards.mean()) - exact) <= 4 * se + 1e-9
    # the mask excludes exactly the steps taken from terminal states
    assert torch.equal(rollout.mask, ~env.is_terminal(rollout.states))


def test_reward_of_a_deterministic_episode():
    env = Gridworld("S..G", horizon=5, time_penalty=0.9)
    s = env.reset(1)
    total = 0.0
    for _ in range(5):
        s, r, done = env.step(s, torch.tensor([1]))
        total += float(r)
    assert total == pytest.approx(1 - 0.9 * 3 / 5)  # entered at the third action
    assert env.reward(torch.tensor([0]), torch.ones(1, 5, dtype=torch.long)).item() == \
        pytest.approx(1 - 0.9 * 3 / 5)


def test_terminal_states_absorb_and_mask():
    env = Gridworld("SL.\n..G", horizon=4)
    s, r, done = env.step(env.reset(1), torch.tensor([1]))  # into lava
    assert bool(done) and float(r) == 0.0 and bool(env.is_terminal(s))
    s2, r2, _ = env.step(s, torch.tensor([1]))
    assert env.decode(s2)["cell"] == env.decode(s)["cell"] and float(r2) == 0.0
    assert env.decode(s2)["t"] == 2


def test_sticky_repeats_the_previous_action_never_at_t0():
    env = Gridworld("...G\n.S..\n....", horizon=3, sticky=1.0)  # always sticky after t=0
    s = env.reset(1)
    s, _, _ = env.step(s, torch.tensor([1]))  # t=0: right, executed as chosen
    s, _, _ = env.step(s, torch.tensor([2]))  # t=1: down is ignored, right repeated
    d = env.decode(s)
    assert (int(d["row"]), int(d["col"]), int(d["prev"])) == (1, 3, 1)


def test_key_opens_the_door():
    env = Gridworld("SKDG", horizon=3)
    s = env.reset(1)
    for _ in range(2):
        s, r, done = env.step(s, torch.tensor([1]))
    assert int(env.decode(s)["key"]) == 1 and int(env.decode(s)["col"]) == 2
    s, r, done = env.step(s, torch.tensor([1]))
    assert float(r) == 1.0 and bool(done)
    no_key = Gridworld("S.K\n.D.\n.G.", horizon=8)  # going down without the key: blocked
    s, _, _ = no_key.step(no_key.step(no_key.reset(1), torch.tensor([1]))[0], torch.tensor([2]))
    assert int(no_key.decode(s)["row"]) == 0


def test_encode_decode_round_trip_and_features():
    env = Gridworld(TWO_MAPS, horizon=12, sticky=0.25)
    states = torch.arange(env.num_states)
    d = env.decode(states)
    back = env.encode(d["prompt"], d["t"], d["row"], d["col"], d["key"], d["prev"])
    assert torch.equal(back, states)
    f = env.state_features(states[:50])
    assert f.shape == (50, env.feature_dim) and torch.all(f.sum(1) >= 4)


def test_trainer_smoke_ppo_reinforce_and_mlp():
    env = Gridworld.from_name("open3", sticky=0.25)
    for loss, adv, iters, policy in [
        ("ppo_clip", "grpo", 2, TabularPolicy.for_env(env)),
        ("vanilla_pg", "reinforce_baseline", 1, TabularPolicy.for_env(env)),
        ("ppo_clip", "rloo", 2, MLPPolicy.for_env(env, hidden=(16,))),
    ]:
        cfg = TrainConfig(max_steps=10, num_prompts_per_step=2, num_generations=8,
                          policy_loss=loss, advantage=adv, num_iterations=iters,
                          learning_rate=0.1, progress_bar=False)
        history = Trainer(policy, env, cfg).train()
        assert len(history) == 10 and history["reward"].between(0, 1).all()


def test_exact_success_and_returns_of_mlp_policy():
    env = Gridworld.from_name("open3", slip=0.1)
    pi = MLPPolicy.for_env(env, hidden=(8,))
    probs = pi.probs(env)
    ret, succ = env.expected_return(probs), env.success_probability(probs)
    assert torch.allclose(ret, succ)  # binary reward: the return is the success probability
    assert 0 < float(ret[0]) < float(env.optimal_value()[0])


def test_serialization_round_trip(tmp_path):
    env = Gridworld.random(4, 5, num_prompts=3, generator=gen(5), slip=0.1, sticky=0.25,
                           time_penalty=0.9, decoy_reward=0.3)
    save_component(env, tmp_path, "env")
    back = load_component(tmp_path, "env")
    assert back.get_config() == env.get_config()
    s = env.reset(64, gen(6))
    a = torch.randint(4, (64,), generator=gen(7))
    out1, out2 = env.step(s, a, gen(8)), back.step(s, a, gen(8))
    assert all(torch.equal(x, y) for x, y in zip(out1, out2))


def test_random_layouts_are_seeded_and_solvable():
    a = random_layout(6, 6, wall_density=0.3, generator=gen(9))
    assert a == random_layout(6, 6, wall_density=0.3, generator=gen(9))
    assert a != random_layout(6, 6, wall_density=0.3, generator=gen(10))
    env = Gridworld.random(6, 6, num_prompts=4, generator=gen(11))
    assert env.num_prompts == 4 and (env.optimal_value() > 0).all()


def test_named_layouts_and_the_lock():
    for name in LAYOUTS:
        env = Gridworld.from_name(name)
        assert float(env.optimal_value()[0]) == pytest.approx(1.0), name
    for n in (3, 5, 8):
        env = Gridworld(combination_lock(n), horizon=n)
        # exactly one of the 4**n action sequences opens the lock
        assert float(env.random_value()[0]) == pytest.approx(4.0**-n)


@pytest.mark.parametrize("layout,kwargs,message", [
    ("S.Q\n..G", {}, "row 0, column 2: unknown character 'Q'; valid: # (wall)"),
    ("S..\n.G", {}, "row 1, column 2: row 1 has 2 characters but row 0 has 3"),
    ("...\n..G", {}, "no start: the layout needs exactly one 'S'"),
    ("S.S\n..G", {}, "row 0, column 2: a second start 'S' (the first is at row 0, column 0)"),
    ("S..\n...", {}, "no goal: the layout needs at least one 'G'"),
    ("S.#\n.#G", {}, "row 1, column 2: the goal is unreachable from the start at row 0, column 0"),
    ("SD.G", {}, "row 0, column 1: a door 'D' but no key 'K'"),
    ("S.L\n.LG", {}, "row 1, column 2: the goal is unreachable"),
    ("S...G", dict(horizon=3), "the nearest goal is 4 steps from the start but horizon is 3"),
    ("S.G", dict(slip=1.5), "slip must lie in [0, 1]"),
    ("S.G", dict(sticky=-0.1), "sticky must lie in [0, 1]"),
    ("S.G", dict(horizon=0), "horizon must be an integer >= 1"),
    ("S.G", dict(time_penalty=1.0), "time_penalty must lie in [0, 1)"),
    ("S.G", dict(decoy_reward=2.0), "decoy_reward must lie in [0, 1]"),
    ("\n\n", {}, "the layout is empty"),
])
def test_layout_and_parameter_errors(layout, kwargs, message):
    kwargs = {"horizon": 10, **kwargs}
    with pytest.raises(ValueError) as err:
        Gridworld(layout, **kwargs)
    assert message in str(err.value)


def test_errors_name_the_layout_when_there_are_several():
    with pytest.raises(ValueError, match=r"layout 1, row 0, column 1: unknown character 'x'"):
        Gridworld(["S.G", "SxG"], horizon=4)
    with pytest.raises(ValueError, match="layout 1 is 1x4 but layout 0 is 1x3"):
        Gridworld(["S.G", "S..G"], horizon=4)
    with pytest.raises(ValueError, match="actions must lie in"):
        env = Gridworld("S.G", horizon=2)
        env.step(env.reset(2), torch.tensor([0, 7]))


def test_parse_layout_normalises_indentation():
    assert parse_layout("\n    S.\n    .G  \n") == ["S.", ".G"]


def test_value_heatmap_and_bars():
    env = Gridworld.from_name("key_door")
    from rlnb.mdp.horizon import value_iteration

    Q, V = value_iteration(env.mdp())
    fig = value_heatmap(env.layout(), env.grid_view(V[:-1]), env.grid_view(Q.argmax(-1)),
                        title="V* at t = 0")
    arrows = [a.text for a in fig.layout.annotations if a.text in "↑→↓←"]
    assert len(fig.data) == 1 and len(arrows) == 12  # 15 cells - 2 walls - 1 goal
    bars = effective_horizon_bars(env.effective_horizon().frame(), env.horizon)
    assert len(bars.data) >= 2
    with pytest.raises(ValueError, match="values must have shape"):
        value_heatmap(env.layout(), torch.zeros(2, 2))


def test_docstring_examples():
    for module in (gridworld_module, gridworld_exact_module, gridworld_rules_module,
                   layouts_module):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
