"""Hinted rollouts through the Trainer: forced prefixes on the tree MDP, hinted prompts for a
tiny language model, no gradient at hint positions, the adaptive state and resuming."""

from __future__ import annotations

import copy

import pytest
import torch

from rlnb.envs import HintedTask, TreeMDP, addition
from rlnb.policies import LMPolicy, MLPPolicy, TabularPolicy
from rlnb.train import TrainConfig, Trainer
from rlnb.train.hinting import hinted_rollout


def tree(seed=0, prompts=4, depth=4, fraction=0.02):
    return TreeMDP.random(prompts, 4, depth, fraction, generator=torch.Generator().manual_seed(seed))


def cfg(**kw):
    base = dict(max_steps=3, num_prompts_per_step=4, num_generations=8, advantage="grpo",
                policy_loss="vanilla_pg", loss_agg_mode="seq-mean-token-sum", optimizer="sgd",
                learning_rate=4.0, progress_bar=False, seed=0)
    return TrainConfig(**{**base, **kw})


def test_forced_prefix_follows_the_solution_and_is_masked():
    env = HintedTask(tree(), "adaptive", h0=3)
    env.load_hint_state({"adaptive_lengths": torch.tensor([0, 1, 2, 3]), "steps_observed": 0})
    pi = TabularPolicy.for_env(env)
    r = hinted_rollout(pi.rollout, pi, env, torch.tensor([0, 1, 2, 3]), 5, step=0, max_steps=3,
                       generator=torch.Generator().manual_seed(1))
    h = r.extra["hint_length"]
    assert h.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    sol = env.solutions[r.prompts]
    t = torch.arange(4)[None, :]
    forced = t < h[:, None]
    assert torch.equal(r.actions[forced], sol[forced])
    assert torch.equal(r.mask, ~forced) and torch.all(r.logp[forced] == 0)
    # the states are the path the actions walk; the rewards score the whole path
    s = env.initial_states(r.prompts)
    for k in range(3):
        s = env.next_states(s, r.actions[:, k])
        assert torch.equal(r.states[:, k + 1], s)
    assert torch.equal(env.env.reward(r.prompts, r.actions), env.reward_rollout(r))
    # the sampled positions' log-probs are the policy's
    logp, _ = pi.log_probs(r)
    torch.testing.assert_close(logp[r.mask], r.logp[r.mask])
    # the h = 3 rows all end in the child of the solution's depth-3 node
    assert torch.all(r.actions[15:, :3] == sol[15:, :3])


def test_hint_positions_get_no_gradient_on_the_tree():
    t = tree(prompts=2, depth=4)
    env = HintedTask(t, "fixed", h0=3)
    pi = TabularPolicy.for_env(env)
    r = hinted_rollout(pi.rollout, pi, env, torch.arange(2), 16, step=0, max_steps=1,
                       generator=torch.Generator().manual_seed(0))
    adv = torch.randn(len(r), generator=torch.Generator().manual_seed(2))
    logp, _ = pi.log_probs(r)
    (-(adv[:, None] * logp).sum()).backward()
    grad = pi.logits.grad  # (num_states, A)
    forced_states = r.states[:, :3].unique()
    sampled_states = r.states[:, 3].unique()
    assert torch.all(grad[forced_states] == 0)
    assert torch.all(grad[sampled_states].abs().sum(1) > 0)
    # the same rollout with the mask restored trains the forced states too (the test can fail)
    pi.logits.grad = None
    r.mask = torch.ones_like(r.mask)
    logp, _ = pi.log_probs(r)
    (-(adv[:, None] * logp).sum()).backward()
    assert torch.all(pi.logits.grad[forced_states].abs().sum(1) > 0)


def test_trainer_leaves_forced_logits_untouched_and_moves_the_adaptive_schedule():
    t = tree(prompts=4, depth=4, fraction=0.05)
    env = HintedTask(t, "adaptive", h0=3)
    pi = TabularPolicy.for_env(env)
    before = pi.logits.detach().clone()
    seen = []
    trainer = Trainer(pi, env, cfg(max_steps=1),
                      callbacks=[lambda tr, m: seen.append(env.adaptive_lengths.clone())])
    trainer.train()
    path = [t.initial_states(torch.arange(4))]
    for k in range(2):
        path.append(t.next_states(path[-1], env.solutions[:, k]))
    forced = torch.cat(path)  # depth 0..2 along each prompt's path: forced at h = 3
    assert torch.equal(pi.logits.detach()[forced], before[forced])
    assert not torch.equal(pi.logits.detach(), before)
    assert env.steps_observed == 1 and len(seen) == 1
    assert set(env.adaptive_lengths.tolist()) <= {2, 3}  # each moved by one (or stayed at the cap)
    assert trainer.history[0]["completions/mean_length"] == 1.0  # one sampled action per row


def test_linear_schedule_through_the_trainer_and_mlp_policy():
    t = tree(prompts=4, depth=4)
    env = HintedTask(t, "linear", h0=3)
    pi = MLPPolicy.for_env(env)
    lengths = []

    def spy(trainer, metrics):
        lengths.append(metrics["completions/mean_length"])

    Trainer(pi, env, cfg(max_steps=6, optimizer="adam", learning_rate=0.01),
            callbacks=[spy]).train()
    # h = round(3 (6 - s) / 6) = 3, 3, 2, 2, 1, 1 -> own actions 1, 1, 2, 2, 3, 3
    assert lengths == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


def test_adaptive_state_is_not_resumed_and_says_so(tmp_path):
    t = tree(prompts=4, depth=4)
    with Trainer(TabularPolicy.for_env(t), HintedTask(t, "adaptive", 3), cfg(max_steps=2),
                 run_dir=tmp_path / "a") as first:
        first.train()
    resumed = Trainer(TabularPolicy.for_env(t), HintedTask(t, "adaptive", 3), cfg(max_steps=4),
                      run_dir=tmp_path / "a")
    assert resumed.step == 2
    with pytest.raises(ValueError, match="not saved in checkpoints"):
        resumed.train()
    resumed.close()
    # restored by hand, it continues
    env = HintedTask(t, "adaptive", 3)
    env.load_hint_state({"adaptive_lengths": torch.full((4,), 2), "steps_observed": 2})
    with Trainer(TabularPolicy.for_env(t), env, cfg(max_steps=4), run_dir=tmp_path / "a") as tr:
        assert len(tr.train()) == 4 and env.steps_observed == 4
    # a fixed schedule holds no state: it resumes
    with Trainer(TabularPolicy.for_env(t), HintedTask(t, "fixed", 2), cfg(max_steps=2),
                 run_dir=tmp_path / "b") as first:
        first.train()
    with Trainer(TabularPolicy.for_env(t), HintedTask(t, "fixed", 2), cfg(max_steps=3),
                 run_dir=tmp_path / "b") as again:
        assert again.step == 2 and len(again.train()) == 3


def test_hints_do_not_combine_with_the_other_rollout_sources():
    t = tree(prompts=4, depth=4)
    env = HintedTask(t, "fixed", 2)
    with pytest.raises(ValueError, match="do not combine"):
        Trainer(TabularPolicy.for_env(t), env, cfg(cure_branches=1)).train()
    with pytest.raises(ValueError, match="do not combine"):
        Trainer(TabularPolicy.for_env(t), env,
                cfg(temperature_schedule={"name": "ead", "c": 0, "d0": 3})).train()
    with pytest.raises(TypeError, match="samples a HintedTask"):
        hinted_rollout(None, None, t, torch.arange(2), 2, step=0, max_steps=1)


# --- a text task and a tiny language model -------------------------------------------------
@pytest.fixture
def model_dir(tiny_lm_dir):
    return tiny_lm_dir(addition(64, digits=2, seed=0).alphabet, "llama", n_layer=1,
                       d_model=32, n_head=2, n_kv_head=1)


def test_lm_reads_the_hint_in_its_prompt_and_the_task_scores_hint_plus_completion(model_dir):
    task = addition(8, digits=2, seed=0)
    env = HintedTask(task, "fixed", h0=2)
    policy = LMPolicy(model_dir, max_new_tokens=4)
    prompts = torch.tensor([3, 5])
    r = hinted_rollout(policy.rollout, policy, env, prompts, 3, step=0, max_steps=1,
                       generator=torch.Generator().manual_seed(0))
    Lp = r.extra["prompt_length"]
    tok = policy.tokenizer
    for k in range(len(r)):
        i = int(r.prompts[k])
        ids = r.extra["input_ids"][k, :Lp][r.extra["attention_mask"][k, :Lp].bool()]
        text = tok.decode(ids, skip_special_tokens=True)
        assert text == task.prompt(i) + task.answer(i)[:2]
    expected = [task.score(task.prompt(int(i)), task.answer(int(i))[:2] + c)
                for i, c in zip(r.prompts, r.extra["completions"])]
    assert env.reward_rollout(r).tolist() == expected


def test_lm_hint_tokens_get_no_gradient(model_dir):
    task = addition(8, digits=2, seed=0)
    env = HintedTask(task, "fixed", h0=2)
    policy = LMPolicy(model_dir, max_new_tokens=4, engine="hf")
    r = hinted_rollout(policy.rollout, policy, env, torch.tensor([3]), 1, step=0, max_steps=1,
                       generator=torch.Generator().manual_seed(0))
    ids, Lp = r.extra["input_ids"], r.extra["prompt_length"]
    T = int(r.mask.sum())

    def grads(loss):
        policy.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

    trained = grads(policy.log_probs(r)[0].sum())  # what the trainer's loss sums
    logp_all = torch.log_softmax(policy.model(input_ids=ids).logits[0, :-1].float(), -1)
    token = logp_all.gather(-1, ids[0, 1:, None]).squeeze(-1)  # token j + 1 given 0..j
    completion = token[Lp - 1: Lp - 1 + T].sum()
    torch.testing.assert_close(grads(completion), trained, rtol=1e-4, atol=1e-6)
    hint = token[Lp - 3: Lp - 1].sum()  # the two hint tokens, the last of the prompt
    with_hint = grads(completion + hint)
    assert (with_hint - trained).abs().max() > 1e-4  # training on them would change the step


def test_lm_trainer_steps_with_an_adaptive_hint(model_dir):
    task = addition(8, digits=2, seed=0)
    env = HintedTask(task, "adaptive", h0=2)
    policy = LMPolicy(model_dir, max_new_tokens=4)
    before = copy.deepcopy(env.adaptive_lengths)
    history = Trainer(policy, env, TrainConfig(
        max_steps=2, num_prompts_per_step=8, num_generations=4, learning_rate=1e-3,
        optimizer="adamw", progress_bar=False)).train()
    assert len(history) == 2 and env.steps_observed == 2
    assert torch.all((env.adaptive_lengths - before).abs() <= 2)
    assert torch.all(env.adaptive_lengths <= env.max_hint)
