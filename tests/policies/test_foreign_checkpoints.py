"""Model directories written by other libraries load into LMPolicy (and the command line):
a TRL GRPO checkpoint (full weights, and LoRA adapters on a saved base), and a sharded
transformers checkpoint. Each is checked against the writer's own model: the same weights,
and the same log-probs of a rollout as its own forward pass gives."""

import json
import os

import pandas as pd
import pytest
import torch

from rlnb.cli import main
from rlnb.envs.text import ExactMatchTask
from rlnb.policies.lm import LMPolicy, positions
from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model
from tests._numerics import assert_close

trl = pytest.importorskip("trl")

ALPHABET = "+0123456789="  # the addition task's
PROMPTS = ["1+2=", "3+4=", "5+6=", "7+8="]
TASK = ExactMatchTask(PROMPTS, ["3", "7", "11", "15"])


def _tiny(seed=0):
    tok = char_tokenizer(ALPHABET)
    # hidden 64, 4 heads of 16: the smallest head size the fused kernels and TRL's defaults
    # are both at home with
    return tiny_model(tiny_config("llama", len(tok), d_model=64, n_head=4), seed=seed), tok


def _reward_length(completions, **kwargs):
    """Longer completions score more: rewards differ within a group, so the step moves."""
    return [float(len(c)) for c in completions]


def _grpo_step(model, tok, out, **trainer_options):
    """One GRPO step of trl.GRPOTrainer on the CPU; the trainer, after training."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=str(out), bf16=False, use_cpu=True, report_to=[], max_steps=1,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=4,
        logging_steps=1, save_strategy="no", learning_rate=1e-2, seed=0,
        disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=_reward_length, args=config,
                          train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                          processing_class=tok, **trainer_options)
    trainer.train()
    return trainer


def _save(trainer, tok, directory):
    trainer.save_model(str(directory))
    if not (directory / "tokenizer.json").exists():
        tok.save_pretrained(directory)
    return directory


def _reference_logp(model, rollout):
    """Per-token log-probs of the rollout's completions under ``model``'s own forward over
    the rollout's tokens (left padding handled by position ids), 0 off the mask."""
    ids, am = rollout.extra["input_ids"], rollout.extra["attention_mask"]
    Lp, T = rollout.extra["prompt_length"], rollout.actions.shape[1]
    assert torch.equal(ids[:, Lp:], rollout.actions)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=am, position_ids=positions(am)).logits
    logp = torch.log_softmax(logits[:, Lp - 1 : Lp - 1 + T].float(), -1)
    return logp.gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1) * rollout.mask


def _check_against(policy, reference_model):
    r = policy.rollout(TASK, torch.arange(len(PROMPTS)), 4, generator=torch.Generator()
                       .manual_seed(0))
    logp, _ = policy.log_probs(r)
    want = _reference_logp(reference_model.eval(), r)
    assert r.mask.any()
    assert_close(logp.detach(), want, what="log-probs against the writer's forward")
    assert_close(r.logp, want, what="sampled log-probs against the writer's forward")


@pytest.fixture(scope="module")
def trl_full(tmp_path_factory):
    """A tiny Llama after one TRL GRPO step, saved with trainer.save_model."""
    root = tmp_path_factory.mktemp("trl")
    model, tok = _tiny()
    trainer = _grpo_step(model, tok, root / "out")
    return trainer, _save(trainer, tok, root / "final")


def test_a_trl_grpo_checkpoint_loads_with_its_weights(trl_full):
    trainer, directory = trl_full
    files = set(os.listdir(directory))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    # TRL also writes its training arguments as a pickle; loading never reads it
    assert "training_args.bin" in files
    trained = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    initial = _tiny()[0].state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # the step moved it

    policy = LMPolicy(directory, device="cpu", dtype="float32", max_new_tokens=6)
    assert policy.model_ref == str(directory.resolve())
    loaded = policy.model.state_dict()
    assert set(loaded) == set(trained)
    for name, value in trained.items():
        assert torch.equal(loaded[name], value), name
    assert not policy._prompts.uses_chat_template
    _check_against(policy, trainer.model)
    with pytest.raises(AssertionError, match="exceeds"):  # the check tells the models apart
        _check_against(policy, _tiny()[0])
    # the reference path agrees too
    _check_against(LMPolicy(directory, dtype="float32", max_new_tokens=6, engine="hf"),
                   trainer.model)


def test_a_trl_lora_checkpoint_loads_onto_its_base(tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model, tok = _tiny()
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    # No task type: peft then writes auto_mapping into adapter_config.json, which rlnb
    # ignores (it loads the base itself and looks no class up by name).
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    trainer = _grpo_step(AutoModelForCausalLM.from_pretrained(base), tok, tmp_path / "out",
                         peft_config=lora)
    directory = _save(trainer, tok, tmp_path / "adapters")
    assert (directory / "adapter_model.safetensors").exists()
    assert not (directory / "config.json").exists()
    written = json.loads((directory / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == str(base)
    assert written.get("auto_mapping")  # what peft writes without a task type

    policy = LMPolicy(directory, device="cpu", dtype="float32", max_new_tokens=6)
    _check_against(policy, trainer.model)
    with pytest.raises(AssertionError, match="exceeds"):  # the adapters are in use
        _check_against(policy, AutoModelForCausalLM.from_pretrained(base))


def test_a_sharded_transformers_checkpoint_loads(tmp_path):
    model, tok = _tiny(seed=3)
    directory = tmp_path / "sharded"
    model.save_pretrained(directory, max_shard_size="100KB")
    tok.save_pretrained(directory)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all(s.endswith(".safetensors") for s in shards)
    assert not (directory / "model.safetensors").exists()

    policy = LMPolicy(directory, device="cpu", dtype="float32", max_new_tokens=6)
    expected = model.state_dict()
    for name, value in policy.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    _check_against(policy, model)


def test_the_command_line_reads_trl_checkpoints(trl_full, tmp_path, capsys):
    _, directory = trl_full
    args = ["probe", "passk", "--model", str(directory), "--task", "addition",
            "--task-arg", "digits=1", "--num-problems", "4", "--n", "4", "--max-new-tokens",
            "3", "--bootstrap", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert len(counts) == 4 and (counts["n"] == 4).all()

    capsys.readouterr()
    assert main([*args, "--chat-template", "on", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--chat-template on but the tokenizer has no chat template" in err
    assert main([*args, "--system-prompt", "add.", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--system-prompt 'add.' needs a chat template" in err
    assert main([*args, "--system-prompt", "add.", "--chat-template", "off",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--system-prompt needs a chat template to place it, but --chat-template is off" in (
        capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
