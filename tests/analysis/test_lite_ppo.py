"""Card 13's formula identities and the exact pass@1 helper it evaluates with."""

import math

import pytest
import torch

from analysis import lite_ppo
from rlnb.recipes import LITE_PPO_CONFIGS, addition_split, answer_probability
from rlnb.rl import compute_advantages
from rlnb.train import TrainConfig


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_library_matches_the_card_formulas(seed):
    errors = lite_ppo.formula_errors(seed)
    tolerances = {key: tol for key, tol, _ in lite_ppo._FORMULA_CHECKS}
    assert set(errors) == set(tolerances)
    for key, value in errors.items():
        assert value <= tolerances[key], (key, value)


def test_binary_closed_form_by_hand():
    # one group of 4 with one correct: p = 1/4, population std sqrt(3)/4, Bessel's 1/2
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), 4,
                             scale_rewards="group", std_eps=1e-12)
    bessel = math.sqrt(3 / 4)
    assert adv[0].item() == pytest.approx(bessel * math.sqrt(3), rel=1e-9)  # sqrt((1-p)/p)
    assert adv[1].item() == pytest.approx(-bessel * math.sqrt(1 / 3), rel=1e-9)


def test_batch_std_differs_from_group_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    group = compute_advantages(r, 4, scale_rewards="group")
    batch = compute_advantages(r, 4, scale_rewards="batch")
    centred = r.view(2, 4) - r.view(2, 4).mean(1, keepdim=True)
    assert torch.allclose(batch, (centred / (r.std() + 1e-4)).reshape(-1))
    assert not torch.allclose(group, batch)


def test_the_six_configurations_are_valid_and_distinct():
    assert len(LITE_PPO_CONFIGS) == 6
    seen = set()
    for changes in LITE_PPO_CONFIGS.values():
        TrainConfig(**changes)  # every knob exists and validates
        seen.add(tuple(sorted(changes.items())))
    assert len(seen) == 6


def test_answer_probability_equals_the_sampled_sequence_probability():
    """On completions the model itself sampled, the exact probability of each (as the
    task's answer) is exp(sum of the sampled tokens' log-probs, EOS included)."""
    from rlnb.envs.arithmetic_tasks import AdditionTask
    from rlnb.policies import LMPolicy, char_tokenizer, tiny_config, tiny_model

    _, held_out = addition_split(num_train=64, num_held_out=8)
    tok = char_tokenizer(held_out.alphabet)
    config = tiny_config("llama", len(tok), pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    policy = LMPolicy.from_model(tiny_model(config, seed=0), tok, max_new_tokens=5)
    n = 32
    for temperature in (1.0, 0.6):
        rollout = policy.rollout(held_out, torch.arange(held_out.num_prompts), n,
                                 temperature=temperature,
                                 generator=torch.Generator().manual_seed(0))
        texts = rollout.extra["completions"]
        lengths = rollout.mask.sum(1).tolist()  # tokens, EOS included
        keep = [i for i, t in enumerate(texts) if t.isdigit() and t == str(int(t))
                and not rollout.extra["truncated"][i]
                and lengths[i] == len(t) + 1][:20]  # no special token decoded away
        assert keep, "no well-formed sample to compare with"
        for i in keep:  # a one-problem task whose answer is the sampled digit string
            task = AdditionTask([held_out.prompt(i // n)])
            task._answers = [texts[i]]
            want = math.exp(rollout.logp[i].sum().item())
            got = answer_probability(policy, task, temperature=temperature)[0]
            assert got == pytest.approx(want, rel=1e-4)
