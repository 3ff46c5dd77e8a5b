"""Tiny base models made here: character tokenizer, tiny configs, cached pre-training."""

import json
import random

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from rlnb.envs.text_tasks import make_task
from rlnb.policies.lm import LMPolicy
from rlnb.policies.tiny import (
    char_tokenizer,
    default_cache_dir,
    pretrain_base,
    tiny_config,
    tiny_model,
)

ALPHABET = "0123456789+= \nabc"


# --- tokenizer -------------------------------------------------------------------------
def test_char_tokenizer_round_trips_any_string_over_the_alphabet():
    tok = char_tokenizer(ALPHABET)
    rng = random.Random(0)
    strings = ["", " ", "\n", "12 + 3\n=4 ", "  a\n\nb  "]
    strings += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
                for _ in range(200)]
    for s in strings:
        ids = tok(s)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(s) + 1  # one token a character
        assert tok.decode(ids, skip_special_tokens=True) == s
    assert len(tok) == 4 + len(set(ALPHABET))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok("x")["input_ids"] == [1, tok.unk_token_id]  # outside the alphabet
    with pytest.raises(ValueError, match="non-empty string"):
        char_tokenizer("")


def test_tokenizer_save_load_keeps_characters_and_left_padding(tmp_path):
    tok = char_tokenizer(ALPHABET, model_max_length=32)
    tok.save_pretrained(tmp_path)
    back = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert back.padding_side == "left" and back.model_max_length == 32
    s = "1 +2\n= ab"
    assert back(s)["input_ids"] == tok(s)["input_ids"]
    assert back.decode(back(s)["input_ids"], skip_special_tokens=True) == s
    batch = back(["1", "123"], padding=True)
    assert batch["input_ids"][0][:2] == [0, 0] and batch["attention_mask"][0] == [0, 0, 1, 1]


# --- configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_tiny_configs_build_save_and_load(arch, tmp_path):
    tok = char_tokenizer(ALPHABET)
    cfg = tiny_config(arch, len(tok), n_layer=2, d_model=32, n_head=4, n_kv_head=2, max_len=48)
    assert cfg.model_type == arch and cfg.num_hidden_layers == 2 and cfg.hidden_size == 32
    assert cfg.max_position_embeddings == 48 and cfg.vocab_size == len(tok)
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    model = tiny_model(cfg, seed=0)
    assert all(not isinstance(m, torch.nn.Dropout) or m.p == 0 for m in model.modules())
    assert torch.equal(model.lm_head.weight, tiny_model(cfg, seed=0).lm_head.weight)
    assert not torch.equal(model.lm_head.weight, tiny_model(cfg, seed=1).lm_head.weight)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    pi = LMPolicy(tmp_path, device="cpu")
    # qwen2 would lose spaces and newlines through AutoTokenizer; the policy's loader keeps them
    assert pi.tokenizer.decode(pi.tokenizer("1 2\n3")["input_ids"], skip_special_tokens=True) == "1 2\n3"
    ids = torch.tensor([tok("12+3=")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(pi.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tiny_config_errors():
    with pytest.raises(ValueError, match="arch must be one of"):
        tiny_config("mamba", 16)
    with pytest.raises(ValueError, match="divisible by n_head"):
        tiny_config("llama", 16, d_model=30, n_head=4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        tiny_config("llama", 16, n_head=4, n_kv_head=3)


# --- pretrain_base ---------------------------------------------------------------------
TINY = dict(d_model=32, n_head=2, n_kv_head=1, steps=80, batch_size=64, eval_every=20,
            eval_samples=64, target_pass_at_1=1.0, progress=False)


def _task(seed=0):
    return make_task("addition", num_prompts=64, digits=1, seed=seed)


def _pass_at_1(policy, task, n=16):
    prompts = task.prompts
    texts = policy.sample_texts(prompts, n, generator=torch.Generator().manual_seed(0))
    return sum(task.score(p, t) for p, row in zip(prompts, texts) for t in row) / (n * len(prompts))


def test_pretrain_base_caches_keys_and_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("RLNB_CACHE", str(tmp_path / "rlnb"))
    task = _task()
    with pytest.warns(UserWarning, match="step budget"):  # pass@1 1.0 is out of reach
        path = pretrain_base(task, **TINY)
    assert path.parent == tmp_path / "rlnb" / "base_models" == default_cache_dir()
    assert path.name.startswith("additiontask-llama-")
    record = json.loads((path / "pretrain.json").read_text())
    assert record["steps_run"] == 80 and not record["targets_met"]
    assert [h["step"] for h in record["history"]] == [20, 40, 60, 80]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]

    stamps = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert pretrain_base(task, **TINY) == path  # cached: no training, no warning
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamps  # nothing rewritten
    assert pretrain_base(task, **{**TINY, "progress": True}) == path  # not in the key

    # the saved model loads as a policy and beats an untrained model of the same shape
    trained = LMPolicy(path, device="cpu", max_new_tokens=6)
    tok = trained.tokenizer
    random_model = tiny_model(tiny_config("llama", len(tok), d_model=32, n_head=2, n_kv_head=1))
    untrained = LMPolicy.from_model(random_model, tok, max_new_tokens=6)
    p_trained, p_random = _pass_at_1(trained, task), _pass_at_1(untrained, task)
    assert p_trained > p_random + 0.05, (p_trained, p_random)
    assert abs(p_trained - record["final"]["pass_at_1"]) < 0.15  # consistent with its log


def test_pretrain_base_key_covers_settings_and_task(tmp_path):
    task = _task()
    quick = {**TINY, "steps": 10, "eval_every": 10, "cache_dir": tmp_path}
    with pytest.warns(UserWarning):
        a = pretrain_base(task, **quick)
    with pytest.warns(UserWarning):
        b = pretrain_base(task, **{**quick, "lr": 1e-3})
    with pytest.warns(UserWarning):
        c = pretrain_base(_task(seed=1), **quick)
    with pytest.warns(UserWarning):
        d = pretrain_base(task, **{**quick, "cache_dir": tmp_path / "other"})
    assert len({a.name, b.name, c.name}) == 3 and a.parent == tmp_path
    assert d.name == a.name and d != a
    # same seed, same weights, bit for bit
    from safetensors.torch import load_file

    wa, wd = load_file(str(a / "model.safetensors")), load_file(str(d / "model.safetensors"))
    assert wa.keys() == wd.keys() and all(torch.equal(wa[k], wd[k]) for k in wa)


def test_pretrain_base_stops_at_its_targets(tmp_path):
    path = pretrain_base(_task(), **{**TINY, "steps": 200, "eval_every": 10,
                                      "target_pass_at_1": 0.1, "target_malformed": 0.2,
                                      "cache_dir": tmp_path})
    record = json.loads((path / "pretrain.json").read_text())
    assert record["targets_met"] and record["steps_run"] < 200
    last = record["final"]
    assert last["pass_at_1"] >= 0.1 and last["malformed"] <= 0.2
    assert torch.get_num_threads() >= 1


def test_pretrain_base_argument_errors(tmp_path):
    class NoConfig:
        alphabet = "01"
        num_prompts = 1

    with pytest.raises(ValueError, match="arch must be one of"):
        pretrain_base(NoConfig(), arch="rnn", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="steps must be an integer"):
        pretrain_base(NoConfig(), steps=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="get_config"):
        pretrain_base(NoConfig(), cache_dir=tmp_path)


def test_doctests():
    import doctest

    import rlnb.policies.tiny as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_concurrent_calls_for_one_base_train_it_once(tmp_path, monkeypatch):
    """Two reproductions needing the same base at once (a fresh cache, --jobs 2): the
    second waits on the key's lock and loads what the first wrote."""
    import threading

    import rlnb.policies.tiny as tiny

    calls = []
    real = tiny._pretrain

    def counting(*args, **kwargs):
        calls.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "_pretrain", counting)
    settings = {**TINY, "steps": 20, "eval_every": 10, "cache_dir": tmp_path}
    paths = []
    import warnings

    def work():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the step-budget warning of the tiny budget
            paths.append(pretrain_base(_task(), **settings))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(paths) == 2 and paths[0] == paths[1]
    assert (paths[0] / "pretrain.json").exists()
