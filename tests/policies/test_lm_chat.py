"""Instruct models: prompts rendered through the tokenizer's chat template (PromptChecker,
LMPolicy), system prompts, and completions that end with the template's end-of-turn token."""

import pytest
import torch

from rlnb.envs.text import ExactMatchTask
from rlnb.policies.lm import LMPolicy
from rlnb.policies.lm.text import PromptChecker
from rlnb.policies.tiny import (
    CHATML_TEMPLATE,
    IM_END,
    IM_START,
    char_tokenizer,
    chat_tokenizer,
    tiny_config,
    tiny_model,
)

ALPHABET = "0123456789+= abcdefghijklmnopqrstuvwxyz."
SYSTEM = "add the numbers."


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _chat_model(seed=0):
    tok = chat_tokenizer(ALPHABET)
    cfg = tiny_config("llama", len(tok), max_len=128, eos_token_id=tok.eos_token_id)
    return tiny_model(cfg, seed=seed), tok


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny instruct model saved with save_pretrained (template included)."""
    model, tok = _chat_model()
    directory = tmp_path_factory.mktemp("chat") / "model"
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _template_ids(tok, text, system=None):
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": text}]
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# --- the tokenizer ----------------------------------------------------------------------
def test_chat_tokenizer_round_trips_its_template(chat_dir):
    tok = chat_tokenizer(ALPHABET)
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.eos_token == IM_END
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    assert tok(IM_START + "1" + IM_END, add_special_tokens=False)["input_ids"] == [
        start, tok.convert_tokens_to_ids("1"), end]
    # the characters keep char_tokenizer's ids: the template's extras and markers come after
    plain = char_tokenizer(ALPHABET)
    assert tok("12+3=")["input_ids"] == plain("12+3=")["input_ids"]
    assert start >= len(plain)
    assert tok.decode([start, tok.convert_tokens_to_ids("7"), end], skip_special_tokens=True) == "7"

    loaded = LMPolicy(chat_dir).tokenizer
    assert loaded.chat_template == CHATML_TEMPLATE and loaded.eos_token == IM_END
    assert _template_ids(loaded, "1+2=") == _template_ids(tok, "1+2=")


# --- PromptChecker ----------------------------------------------------------------------
def test_prompt_checker_renders_through_the_template():
    model, tok = _chat_model()
    checker = PromptChecker(tok, model.config)
    assert checker.uses_chat_template
    assert checker.render("1+2=") == f"<s>{IM_START}user\n1+2={IM_END}\n{IM_START}assistant\n"
    ids = checker.encode("1+2=")
    assert ids == _template_ids(tok, "1+2=")
    assert ids.count(tok.bos_token_id) == 1  # the template writes BOS; encoding adds none

    system = PromptChecker(tok, model.config, system_prompt=SYSTEM)
    assert system.render("1+2=").startswith(f"<s>{IM_START}system\n{SYSTEM}{IM_END}\n")
    assert system.encode("1+2=") == _template_ids(tok, "1+2=", SYSTEM)

    off = PromptChecker(tok, model.config, chat_template=False)
    assert not off.uses_chat_template
    assert off.render("1+2=") == "1+2="
    assert off.encode("1+2=") == tok("1+2=")["input_ids"]


def test_prompt_checker_without_a_template_is_unchanged():
    tok = char_tokenizer(ALPHABET)
    cfg = tiny_config("llama", len(tok))
    for option in (None, False):
        checker = PromptChecker(tok, cfg, chat_template=option)
        assert not checker.uses_chat_template
        for text in ("1+2=", "", "ab c", "99+99+1="):
            assert checker.render(text) == text
            assert checker.encode(text) == tok(text, add_special_tokens=True)["input_ids"]
    with pytest.raises(ValueError, match="chat_template=True but the tokenizer has no chat "
                                         "template.*chat_template=None"):
        PromptChecker(tok, cfg, chat_template=True)
    with pytest.raises(ValueError, match="no chat template.*put the instruction into the "
                                         "prompt text"):
        PromptChecker(tok, cfg, system_prompt=SYSTEM)
    model, chat = _chat_model()
    with pytest.raises(ValueError, match="chat_template=False.*put the instruction"):
        PromptChecker(chat, model.config, chat_template=False, system_prompt=SYSTEM)
    with pytest.raises(TypeError, match="chat_template must be None, True or False"):
        PromptChecker(chat, model.config, chat_template="yes")
    with pytest.raises(TypeError, match="system_prompt must be a str"):
        PromptChecker(chat, model.config, system_prompt=["x"])


def test_prompt_checks_read_the_rendered_prompt_and_name_the_given_one():
    model, tok = _chat_model()
    checker = PromptChecker(tok, model.config, system_prompt=SYSTEM)
    # rendered: 7 + len(system) + 1 + 2 (system turn) ... ; the check counts all of it
    text = "1+2="
    n = len(checker.encode(text))
    assert n == len(_template_ids(tok, text, SYSTEM)) > len(text) + 1
    checker.check([text], [checker.encode(text)], ["prompt 0"], 128 - n)
    with pytest.raises(ValueError, match=r"prompt 0 '1\+2=' has \d+ tokens.*chat template "
                                         "renders it, system prompt included.*"
                                         rf"\(at most {128 - n} for this prompt\)"):
        checker.check([text], [checker.encode(text)], ["prompt 0"], 128 - n + 1)

    bad = "1+2=\u20ac"
    with pytest.raises(ValueError, match="prompt 3 '1\\+2=\u20ac' holds characters the "
                                         "tokenizer cannot represent: '\u20ac'"):
        checker.check([bad], [checker.encode(bad)], ["prompt 3"], 1)
    odd = PromptChecker(tok, model.config, system_prompt="add \u00e9")
    with pytest.raises(ValueError, match="prompt 0 '1\\+2=', rendered through the chat "
                                         "template.*'\u00e9', written by the system prompt"):
        odd.check([text], [odd.encode(text)], ["prompt 0"], 1)


def test_a_template_that_refuses_a_system_message_fails_at_construction():
    model, tok = _chat_model()
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + CHATML_TEMPLATE)
    assert PromptChecker(tok, model.config).uses_chat_template  # no system message: fine
    with pytest.raises(ValueError, match="System role not supported.*leave system_prompt=None"):
        PromptChecker(tok, model.config, system_prompt=SYSTEM)


# --- LMPolicy ---------------------------------------------------------------------------
def test_lm_policy_renders_a_templated_model_directory(chat_dir):
    policy = LMPolicy(chat_dir, max_new_tokens=8)
    assert policy._prompts.uses_chat_template
    tok = policy.tokenizer
    assert policy.encode_prompt("12+3=") == _template_ids(tok, "12+3=")
    assert policy.eos_ids == [tok.convert_tokens_to_ids(IM_END)]
    policy.check_prompts(["12+3="])


def test_char_tokenizer_models_stay_plain_text(tiny_lm_dir):
    policy = LMPolicy(tiny_lm_dir("+0123456789="), max_new_tokens=4)
    assert not policy._prompts.uses_chat_template
    assert policy.encode_prompt("12+3=") == policy.tokenizer("12+3=")["input_ids"]
    assert policy.encode_prompt("12+3=")[0] == policy.tokenizer.bos_token_id


def test_rollout_and_log_probs_through_the_template(chat_dir):
    policy = LMPolicy(chat_dir, max_new_tokens=10)
    with torch.no_grad():  # near-uniform next tokens: some rows end their turn early
        policy.model.get_output_embeddings().weight.mul_(0.05)
    task = ExactMatchTask(["1+2=", "12+30="], ["3", "42"])
    r = policy.rollout(task, torch.tensor([0, 1]), 16, generator=_gen(0))
    Lp = r.extra["prompt_length"]
    assert Lp == max(len(policy.encode_prompt(p)) for p in task.prompts)
    # the prompt part of every row is the rendered prompt, left-padded
    ids, am = r.extra["input_ids"], r.extra["attention_mask"]
    for row, i in enumerate(r.prompts.tolist()):
        want = policy.encode_prompt(task.prompt(i))
        assert ids[row, :Lp][am[row, :Lp].bool()].tolist() == want
    end = policy.tokenizer.convert_tokens_to_ids(IM_END)
    lengths = r.mask.sum(1)
    stopped = ~r.extra["truncated"]
    assert stopped.any() and r.extra["truncated"].any()
    for row in range(len(r)):
        body = r.actions[row, : lengths[row]].tolist()
        assert (body[-1] == end) == bool(stopped[row])  # a turn ends at <|im_end|>, once
        assert end not in body[:-1]
        assert IM_END not in r.extra["completions"][row]
    logp, entropy = policy.log_probs(r)
    assert torch.allclose(logp, r.logp, atol=1e-5)
    assert (entropy[r.mask] > 0).all() and (logp[~r.mask] == 0).all()


def test_lm_policy_chat_options(chat_dir, tiny_lm_dir):
    system = LMPolicy(chat_dir, system_prompt=SYSTEM, max_new_tokens=4)
    assert system._prompts.uses_chat_template
    assert system.encode_prompt("1+2=") == _template_ids(system.tokenizer, "1+2=", SYSTEM)
    assert f"{IM_START}system\n{SYSTEM}{IM_END}" in system._prompts.render("1+2=")
    config = system.get_config()
    assert config["system_prompt"] == SYSTEM and "chat_template" not in config
    rebuilt = LMPolicy(**config)
    assert rebuilt.encode_prompt("1+2=") == system.encode_prompt("1+2=")

    plain = LMPolicy(chat_dir, chat_template=False, max_new_tokens=4)
    assert not plain._prompts.uses_chat_template
    assert plain.encode_prompt("1+2=") == plain.tokenizer("1+2=")["input_ids"]
    assert plain.get_config()["chat_template"] is False
    assert LMPolicy(**plain.get_config()).encode_prompt("1+2=") == plain.encode_prompt("1+2=")
    assert "chat_template" not in LMPolicy(chat_dir).get_config()  # the default is not stored

    base = tiny_lm_dir("+0123456789=")
    with pytest.raises(ValueError, match="chat_template=True but the tokenizer has no chat "
                                         "template"):
        LMPolicy(base, chat_template=True)
    with pytest.raises(ValueError, match="needs a chat template.*put the instruction into "
                                         "the prompt text"):
        LMPolicy(base, system_prompt=SYSTEM)
    model, tok = _chat_model()
    wrapped = LMPolicy.from_model(model, tok, system_prompt=SYSTEM)
    assert wrapped.encode_prompt("1+2=") == _template_ids(tok, "1+2=", SYSTEM)


def test_the_command_line_renders_through_the_template(chat_dir, tmp_path, capsys):
    import pandas as pd

    from rlnb.cli import main

    args = ["probe", "passk", "--model", str(chat_dir), "--task", "addition", "--task-arg",
            "digits=1", "--num-problems", "3", "--n", "4", "--max-new-tokens", "3",
            "--bootstrap", "0", "--no-progress"]
    assert main([*args, "--system-prompt", SYSTEM, "--out", str(tmp_path / "a")]) == 0
    assert len(pd.read_csv(tmp_path / "a" / "counts.csv")) == 3
    assert main([*args, "--chat-template", "off", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    # a character outside the vocabulary, in the system prompt: named as such
    assert main([*args, "--system-prompt", "add \u00e9", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "rendered through the chat template" in err and "written by the system prompt" in err
