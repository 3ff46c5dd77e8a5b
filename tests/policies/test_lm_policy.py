"""LMPolicy: batched KV-cached sampling, log-probs under left padding, engines, errors."""

import math
import warnings

import pytest
import torch

from rlnb.envs.text import ExactMatchTask
from rlnb.envs.text_tasks import make_task
from rlnb.policies.base import Rollout
from rlnb.policies.lm import LMPolicy, positions
from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model
from rlnb.serialization import atomic_save_safetensors, build_component
from tests._numerics import assert_close, in_float64

ALPHABET = "+0123456789="


class Prompts:
    """The smallest env ``rollout`` needs: ``prompt(i) -> str``."""

    def __init__(self, prompts):
        self.prompts = list(prompts)
        self.num_prompts = len(self.prompts)

    def prompt(self, i):
        return self.prompts[int(i)]


# Prompts of different lengths: every batch is left-padded.
MIXED = Prompts(["1+2=", "12+34=", "5=", "99+99+1="])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _tok():
    return char_tokenizer(ALPHABET)


def _model(arch="llama", *, seed=0, init=0.3, **kw):
    """A random tiny model with peaked next-token distributions (init std 0.3), so that an
    off-by-one or a wrong position changes the log-probs visibly."""
    tok = _tok()
    cfg = tiny_config(arch, len(tok), **kw)
    cfg.initializer_range = init
    return tiny_model(cfg, seed=seed), tok


def _policy(arch="llama", *, engine="auto", max_new_tokens=8, seed=0, init=0.3, **kw):
    model, tok = _model(arch, seed=seed, init=init)
    return LMPolicy.from_model(model, tok, engine=engine, max_new_tokens=max_new_tokens, **kw)


def _eos_friendly(policy, scale=0.05):
    """Shrink the LM head so every token, EOS included, has probability ~1/V: some rows
    stop early and others run to max_new_tokens."""
    with torch.no_grad():
        policy.model.get_output_embeddings().weight.mul_(scale)
    return policy


# --- rollout ---------------------------------------------------------------------------
def test_rollout_shapes_groups_and_masks():
    pi = _eos_friendly(_policy(max_new_tokens=12))
    prompts = torch.tensor([2, 0, 3])
    n = 4
    r = pi.rollout(MIXED, prompts, n, generator=_gen(1))
    N, T = 12, r.actions.shape[1]
    Lp = r.extra["prompt_length"]
    assert r.actions.shape == r.mask.shape == r.logp.shape == (N, T) and T <= 12
    assert r.group_size == n and len(r) == N
    assert torch.equal(r.prompts, prompts.repeat_interleave(n))
    assert r.extra["input_ids"].shape == r.extra["attention_mask"].shape == (N, Lp + T)
    assert Lp == max(len(pi.encode_prompt(p)) for p in MIXED.prompts)
    # groups are contiguous: the n rows of a group share one (left-padded) prompt
    ids = r.extra["input_ids"]
    for g, i in enumerate(prompts.tolist()):
        want = pi.encode_prompt(MIXED.prompt(i))
        for row in range(g * n, (g + 1) * n):
            assert ids[row, Lp - len(want):Lp].tolist() == want
            assert ids[row, : Lp - len(want)].eq(pi.pad_id).all()
            assert r.extra["attention_mask"][row, :Lp].sum() == len(want)
    assert torch.equal(ids[:, Lp:], r.actions)
    assert torch.equal(r.extra["attention_mask"][:, Lp:].bool(), r.mask)
    eos = pi.tokenizer.eos_token_id
    stopped = ~r.extra["truncated"]
    assert stopped.any() and (~stopped).any(), "pick a seed with both kinds of rows"
    for row in range(N):
        k = int(r.mask[row].sum())
        assert r.mask[row, :k].all() and not r.mask[row, k:].any()  # a prefix
        if stopped[row]:  # the EOS is the last masked token, padding after it
            assert r.actions[row, k - 1] == eos and (r.actions[row, :k - 1] != eos).all()
            assert r.actions[row, k:].eq(pi.pad_id).all()
        else:  # truncated: no EOS, the whole budget used
            assert k == 12 and (r.actions[row] != eos).all()
    assert (r.logp[r.mask] < 0).all() and (r.logp[~r.mask] == 0).all()
    texts = pi.tokenizer.batch_decode(
        [a[m].tolist() for a, m in zip(r.actions, r.mask)], skip_special_tokens=True)
    assert r.extra["completions"] == texts == pi.decode(r)
    assert all(set(t) <= set(ALPHABET) for t in texts)


def test_same_generator_same_completions_different_generator_different():
    pi = _policy()
    prompts = torch.tensor([0, 1, 2, 3])
    a = pi.rollout(MIXED, prompts, 8, generator=_gen(5))
    b = pi.rollout(MIXED, prompts, 8, generator=_gen(5))
    c = pi.rollout(MIXED, prompts, 8, generator=_gen(6))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.logp, b.logp)
    assert a.extra["completions"] == b.extra["completions"]
    assert a.extra["completions"] != c.extra["completions"]
    # the generator advances: a second rollout from the same generator differs
    g = _gen(5)
    first = pi.rollout(MIXED, prompts, 8, generator=g)
    second = pi.rollout(MIXED, prompts, 8, generator=g)
    assert torch.equal(first.actions, a.actions) and not torch.equal(second.actions, a.actions)


def test_sampling_frequencies_match_the_model():
    """The first completion token of 4000 samples follows softmax(logits / T)."""
    pi = _policy(init=0.1, max_new_tokens=1)
    for temperature in (1.0, 0.7):
        r = pi.rollout(MIXED, torch.tensor([1]), 4000, temperature=temperature, generator=_gen(2))
        with torch.no_grad():
            ids = torch.tensor([pi.encode_prompt(MIXED.prompt(1))])
            logits = pi.model(input_ids=ids).logits[0, -1] / temperature
        p = torch.softmax(logits, -1)
        freq = torch.bincount(r.actions[:, 0], minlength=p.numel()).float() / 4000
        se = (p * (1 - p) / 4000).sqrt()
        assert ((freq - p).abs() <= 4.5 * se + 1e-3).all()


def test_temperature_scales_logp_and_entropy():
    pi = _policy()
    prompts = torch.tensor([0, 1])
    cold = pi.rollout(MIXED, prompts, 6, temperature=0.5, generator=_gen(0))
    lp_cold, h_cold = pi.log_probs(cold, temperature=0.5)
    assert_close(lp_cold, cold.logp)
    lp_other, _ = pi.log_probs(cold, temperature=1.0)
    assert not torch.allclose(lp_other, cold.logp, atol=1e-3)  # temperature is not ignored
    _, h_hot = pi.log_probs(cold, temperature=2.0)
    m = cold.mask
    assert h_cold[m].mean() < h_hot[m].mean() <= math.log(len(pi.tokenizer)) + 1e-5
    hot = pi.rollout(MIXED, prompts, 6, temperature=5.0, generator=_gen(0))
    assert len(set(hot.extra["completions"])) >= len(set(cold.extra["completions"]))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_log_probs_equal_rollout_logp_under_left_padding(arch, engine):
    """The off-by-one test: prompts of different lengths (left padding), scored by
    log_probs, by the rollout, and by the model run on each unpadded row alone."""
    pi = _policy(arch, engine=engine, max_new_tokens=6)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 3, temperature=0.8, generator=_gen(3))
    logp, entropy = pi.log_probs(r, temperature=0.8)
    assert logp.requires_grad and logp.dtype == torch.float32
    assert_close(logp, r.logp)
    assert (logp[~r.mask] == 0).all() and (entropy[~r.mask] == 0).all()
    assert (entropy[r.mask] > 0).all()
    # Oracle: each row without any padding, positions 0..L-1, no attention mask.
    Lp = r.extra["prompt_length"]
    with torch.no_grad():
        for row in range(len(r)):
            prompt = pi.encode_prompt(MIXED.prompt(r.prompts[row]))
            comp = r.actions[row][r.mask[row]].tolist()
            ids = torch.tensor([prompt + comp])
            logits = pi.model(input_ids=ids).logits[0, len(prompt) - 1:-1] / 0.8
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(comp)[:, None])[:, 0]
            assert_close(logp[row, :len(comp)], want)
    assert Lp > min(len(pi.encode_prompt(p)) for p in MIXED.prompts)  # padding was exercised
    # and gradients reach the model
    (logp.sum()).backward()
    assert pi.model.get_output_embeddings().weight.grad.abs().sum() > 0


def test_log_probs_without_shared_prompts_and_single_row_groups():
    """Rows that do not share their group's prompt are scored row by row (no prompt
    sharing); n=1 as well."""
    pi = _policy(max_new_tokens=5)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 1, generator=_gen(4))
    assert_close(pi.log_probs(r)[0], r.logp)
    r2 = pi.rollout(MIXED, torch.tensor([0, 3]), 2, generator=_gen(4))
    r2.group_size = 4  # a group of 4 rows holding two different prompts
    assert_close(pi.log_probs(r2)[0], r2.logp)


def test_uniform_model_entropy_is_log_vocab():
    pi = _policy()
    with torch.no_grad():
        pi.model.get_output_embeddings().weight.zero_()
    r = pi.rollout(MIXED, torch.tensor([0, 1]), 4, generator=_gen(0))
    logp, entropy = pi.log_probs(r)
    V = pi.model.config.vocab_size
    assert_close(entropy[r.mask], torch.full_like(entropy[r.mask], math.log(V)))
    assert_close(r.logp[r.mask], torch.full_like(r.logp[r.mask], -math.log(V)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_kv_cache_sampling_equals_no_cache_sampling(arch):
    """Same generator -> the same tokens whether the cache is ours, Hugging Face's, or none
    (the whole sequence re-run every token): proves the caches and position ids."""
    out = {}
    for engine in ("fast", "hf", "hf-nocache"):
        pi = _policy(arch, engine=engine, max_new_tokens=8)
        r = pi.rollout(MIXED, torch.tensor([3, 0, 2, 1]), 4, temperature=0.9, generator=_gen(7))
        out[engine] = r
    for engine in ("hf", "hf-nocache"):
        assert torch.equal(out[engine].actions, out["fast"].actions)
        assert torch.equal(out[engine].mask, out["fast"].mask)
        assert_close(out[engine].logp, out["fast"].logp)


def test_top_p_samples_inside_the_nucleus_and_logp_is_unfiltered():
    pi = _policy(top_p=1e-6)  # the nucleus is the single most likely token: greedy
    r = pi.rollout(MIXED, torch.tensor([1]), 4, generator=_gen(0))
    assert all(c == r.extra["completions"][0] for c in r.extra["completions"])
    logp, _ = pi.log_probs(r)
    assert_close(logp, r.logp)  # untruncated distribution
    greedy = _policy(max_new_tokens=8)
    g = greedy.rollout(MIXED, torch.tensor([1]), 1, temperature=1e-4, generator=_gen(1))
    assert g.extra["completions"][0] == r.extra["completions"][0]


def test_sample_texts_and_hidden_states_option():
    pi = _policy(max_new_tokens=5)
    texts = pi.sample_texts(["1+2=", "12+34="], 3, generator=_gen(0))
    assert len(texts) == 2 and all(len(t) == 3 for t in texts)
    assert texts == pi.sample_texts(["1+2=", "12+34="], 3, generator=_gen(0))
    with pytest.raises(TypeError, match="list of strings"):
        pi.sample_texts("1+2=", 2)
    pi2 = _policy(max_new_tokens=5, hidden_states=True)
    r = pi2.rollout(MIXED, torch.tensor([0, 1]), 2, generator=_gen(0))
    assert r.extra["hidden_states"]["layers.1.resid_post"].shape[:2] == r.extra["input_ids"].shape


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hidden_states_names_shapes_and_last_layer(arch):
    pi = _policy(arch, max_new_tokens=4)
    r = pi.rollout(MIXED, torch.tensor([0, 2]), 2, generator=_gen(0))
    hs = pi.hidden_states(r)
    N, L = r.extra["input_ids"].shape
    assert set(hs) == {"embed", "layers.0.resid_post", "layers.1.resid_post", "final_norm",
                       "attention_mask"}
    for name in ("embed", "layers.0.resid_post", "layers.1.resid_post", "final_norm"):
        assert hs[name].shape == (N, L, 64) and not hs[name].requires_grad
    # final_norm is the last residual stream after the final norm, and the LM head reads it
    norm = pi.model.model.norm if arch == "llama" else pi.model.transformer.ln_f
    with torch.no_grad():
        assert_close(norm(hs["layers.1.resid_post"]), hs["final_norm"])
        logits = pi.model.get_output_embeddings()(hs["final_norm"])
    Lp = r.extra["prompt_length"]
    lp = torch.log_softmax(logits[:, Lp - 1:-1], -1).gather(-1, r.actions[..., None])[..., 0]
    assert_close(lp[r.mask], r.logp[r.mask])
    only = pi.hidden_states(["1+2=", "99+1="], layers=[-1])
    assert set(only) == {"embed", "layers.1.resid_post", "final_norm", "attention_mask"}
    assert only["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1], [1] * 6]  # left padding


# --- persistence -----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_save_and_reload_gives_identical_log_probs(arch, tmp_path):
    pi = _policy(arch, max_new_tokens=6)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 3]), 2, generator=_gen(0))
    pi.save_pretrained(tmp_path / "m")
    back = LMPolicy(tmp_path / "m", device="cpu", max_new_tokens=6)
    assert back.engine == "fast" and back.model.config.model_type == arch
    with torch.no_grad():
        assert torch.equal(back.log_probs(r)[0], pi.log_probs(r)[0])
    again = back.rollout(MIXED, torch.tensor([0, 1, 3]), 2, generator=_gen(0))
    assert torch.equal(again.actions, r.actions)
    # the run-directory spec rebuilds it too (the trainer's path)
    rebuilt = build_component(back.spec())
    assert rebuilt.get_config() == back.get_config()
    assert torch.equal(rebuilt.rollout(MIXED, torch.tensor([0]), 2, generator=_gen(0)).actions,
                       back.rollout(MIXED, torch.tensor([0]), 2, generator=_gen(0)).actions)


def test_state_dict_without_tied_duplicates_round_trips_through_safetensors(tmp_path):
    model, tok = _model("gpt2")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.transformer.wte.weight
    pi = LMPolicy.from_model(model, tok)
    sd = pi.state_dict()
    assert "model.lm_head.weight" not in sd and "model.transformer.wte.weight" in sd
    atomic_save_safetensors(sd, tmp_path / "ckpt.safetensors")  # refuses shared tensors
    other = LMPolicy.from_model(tiny_model(model.config, seed=1), _tok())
    other.load_state_dict(sd)
    assert torch.equal(other.model.lm_head.weight, model.lm_head.weight)
    with pytest.raises(RuntimeError, match="missing keys"):
        other.load_state_dict({k: v for k, v in sd.items() if "wpe" not in k})


def test_policy_stays_in_eval_mode_under_train():
    pi = _policy("gpt2")
    pi.train()
    assert pi.training and not pi.model.training
    assert not any(m.training for m in pi.model.modules())


# --- errors ----------------------------------------------------------------------------
def test_missing_dir_and_dir_without_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*save_pretrained"):
        LMPolicy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        LMPolicy(tmp_path / "empty")


def test_prompt_too_long_names_the_prompt_and_lengths():
    model, tok = _model(max_len=16)
    pi = LMPolicy.from_model(model, tok, max_new_tokens=8)
    env = Prompts(["1+2=", "12345678+1="])  # 12 tokens with BOS; 12 + 8 > 16
    pi.rollout(env, torch.tensor([0]), 2, generator=_gen(0))  # 5 + 8 fits
    with pytest.raises(ValueError, match=r"prompt 1 .*12 tokens.*max_new_tokens=8.*20.*16"):
        pi.rollout(env, torch.tensor([0, 1]), 2, generator=_gen(0))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        pi.sample_texts(["12345678+1="], 1)


def test_tokenizer_without_pad_token():
    model, tok = _model()
    tok.pad_token = None
    with pytest.warns(UserWarning, match="no pad token.*EOS"):
        pi = LMPolicy.from_model(model, tok)
    assert pi.pad_id == tok.eos_token_id
    r = pi.rollout(MIXED, torch.tensor([0, 2]), 2, generator=_gen(0))
    assert_close(pi.log_probs(r)[0], r.logp)
    tok2 = _tok()
    tok2.pad_token = None
    tok2.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS.*add_special_tokens"):
        LMPolicy.from_model(model, tok2)


def test_bad_options():
    model, tok = _model()
    with pytest.raises(ValueError, match="engine must be one of"):
        LMPolicy.from_model(model, tok, engine="vllm")
    with pytest.raises(ValueError, match="top_p"):
        LMPolicy.from_model(model, tok, top_p=0.0)
    pi = LMPolicy.from_model(model, tok)
    with pytest.raises(ValueError, match="in-memory model.*save_pretrained"):
        pi.get_config()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pi.rollout(MIXED, torch.tensor([0]), 2, temperature=0.0)


def test_positions_under_left_padding():
    am = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions(am).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


# --- training --------------------------------------------------------------------------
def test_grpo_through_the_trainer_end_to_end(tmp_path):
    from rlnb.train import TrainConfig, Trainer, load_run

    task = make_task("addition", num_prompts=32, digits=2, seed=0)
    model, _ = _model()
    tok = char_tokenizer(task.alphabet)
    model.resize_token_embeddings(len(tok))
    LMPolicy.from_model(model, tok).save_pretrained(tmp_path / "base")
    pi = LMPolicy(tmp_path / "base", max_new_tokens=6)
    cfg = TrainConfig(num_prompts_per_step=4, num_generations=4, max_steps=3,
                      learning_rate=1e-3, progress_bar=False, log_rollouts_steps=1)
    trainer = Trainer(pi, task, cfg, run_dir=tmp_path / "run")
    history = trainer.train()
    trainer.close()
    assert len(history) == 3 and history["reward"].between(0, 1).all()
    assert history["entropy"].gt(0).all() and history["loss"].notna().all()
    assert "completion" in (tmp_path / "run" / "rollouts.jsonl").read_text()
    # the run directory rebuilds the trained policy
    policy, env, _ = load_run(tmp_path / "run")
    r = pi.rollout(task, torch.tensor([0, 1]), 2, generator=_gen(0))
    with torch.no_grad():
        assert_close(policy.log_probs(r)[0], pi.log_probs(r)[0])


def test_grpo_in_memory_learns_with_reference_and_mixed_prompt_lengths():
    from rlnb.train import TrainConfig, Trainer

    class EvenLength(ExactMatchTask):
        """Reward 1 for a completion of even length: rewards vary within every group."""

        def score(self, prompt, completion):
            return float(len(completion) % 2 == 0)

    task = EvenLength(prompts=MIXED.prompts, answers=["3", "46", "5", "199"],
                      alphabet=ALPHABET)
    pi = _eos_friendly(_policy(max_new_tokens=4), scale=0.3)
    before = {k: v.clone() for k, v in pi.state_dict().items()}
    cfg = TrainConfig(num_prompts_per_step=4, num_generations=4, max_steps=3,
                      learning_rate=1e-3, beta=0.05, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings from the policy during training
        history = Trainer(pi, task, cfg).train()
    assert len(history) == 3 and "kl" in history
    assert history["frac_reward_zero_std"].lt(1).all()
    after = pi.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_doctests():
    import doctest

    import rlnb.policies.lm.layout
    import rlnb.policies.lm.policy

    for module in (rlnb.policies.lm.policy, rlnb.policies.lm.layout):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0


def test_fused_attention_kernel_matches_the_cpu_one():
    """The GPU path (PyTorch's fused attention) computes what the CPU path computes,
    grouped-query heads and left padding included."""
    from rlnb.policies.lm.fast.attention import attend, attend_sdpa, attention_bias

    g = _gen(0)
    q = torch.randn(3, 5, 4, 8, generator=g)
    k, v = torch.randn(3, 2, 7, 8, generator=g), torch.randn(3, 2, 7, 8, generator=g)
    key_valid = torch.ones(3, 7, dtype=torch.bool)
    key_valid[0, :3] = False
    bias = attention_bias(key_valid, 5, torch.float32)
    assert_close(attend(q, k, v, bias), attend_sdpa(q, k, v, bias))


@pytest.mark.parametrize("variant", ["mistral", "llama-bias-rope-scaling", "llama-head-dim"])
def test_fast_engine_matches_the_model_on_llama_variants(variant):
    """Attention/MLP biases, RoPE scaling, a head_dim other than d/H, 4:1 grouped-query
    heads: the fast engine reads them from the model and agrees with its own forward."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    tok = _tok()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, initializer_range=0.3)
    cfg = {
        "mistral": lambda: MistralConfig(num_attention_heads=4, num_key_value_heads=1,
                                         sliding_window=None, **common),
        "llama-bias-rope-scaling": lambda: LlamaConfig(
            num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True,
            rope_scaling={"rope_type": "linear", "factor": 2.0}, **common),
        "llama-head-dim": lambda: LlamaConfig(num_attention_heads=2, num_key_value_heads=1,
                                              head_dim=16, **common),
    }[variant]()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.normal_(0, 0.3)  # biases and norm weights away from 0 and 1
    fast = LMPolicy.from_model(model, tok, engine="fast", max_new_tokens=6)
    ref = LMPolicy.from_model(model, tok, engine="hf", max_new_tokens=6)
    rf = fast.rollout(MIXED, torch.arange(4), 3, temperature=0.9, generator=_gen(0))
    rh = ref.rollout(MIXED, torch.arange(4), 3, temperature=0.9, generator=_gen(0))
    assert torch.equal(rf.actions, rh.actions)
    assert_close(rf.logp, rh.logp)
    assert_close(fast.log_probs(rh)[0], ref.log_probs(rh)[0])


# --- only the needed work: packed scoring, trimmed columns, rows leaving the batch ---------
def _plain_scores(pi, r, temperature=1.0):
    """The oracle: the model's own forward over every prompt + completion position (no
    shared prompt, no packing, no trimming), then log-softmax at every position."""
    ids = r.extra["input_ids"]
    Lp = r.extra["prompt_length"]
    N, T = r.actions.shape
    prompt_mask = r.extra["attention_mask"][:, :Lp]
    am = torch.cat([prompt_mask, torch.ones(N, T, dtype=torch.long)], 1)
    pos = torch.cat([positions(prompt_mask), prompt_mask.sum(1, keepdim=True) + torch.arange(T)], 1)
    logits = pi.model(input_ids=ids[:, :-1], attention_mask=am[:, :-1],
                      position_ids=pos[:, :-1], use_cache=False).logits[:, Lp - 1:]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays
    logp_all = torch.log_softmax(logits / temperature, -1)
    logp = logp_all.gather(-1, r.actions[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    zero = torch.zeros(())
    return torch.where(r.mask, logp, zero), torch.where(r.mask, entropy, zero)


def _grads(pi, logp, entropy, seed=0):
    """Gradients of a random mix of every log-prob and entropy."""
    g = _gen(seed)
    w1, w2 = torch.randn(logp.shape, generator=g), torch.randn(logp.shape, generator=g)
    pi.model.zero_grad(set_to_none=True)
    ((w1 * logp).sum() + 0.3 * (w2 * entropy).sum()).backward()
    grads = {k: p.grad.clone() for k, p in pi.model.named_parameters() if p.grad is not None}
    pi.model.zero_grad(set_to_none=True)
    return grads


def _assert_same_scores(pi, r, temperature=1.0):
    """Log-probs, entropies and gradients of ``pi``'s scoring path against the plain
    forward of a float64 copy of its model, each within float32 rounding at the scale of
    the tensor (``tests._numerics``)."""
    ref = in_float64(pi)
    want_lp, want_h = _plain_scores(ref, r, temperature)
    want_g = _grads(ref, want_lp, want_h)
    lp, h = pi.log_probs(r, temperature=temperature)
    assert_close(lp, want_lp, what="log-probs")
    assert_close(h, want_h, what="entropies")
    assert (lp[~r.mask] == 0).all() and (h[~r.mask] == 0).all()
    got_g = _grads(pi, lp, h)
    assert got_g.keys() == want_g.keys()
    for k in want_g:
        assert_close(got_g[k], want_g[k], what=f"gradient of {k}")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_scoring_equals_the_plain_forward_in_log_probs_and_gradients(arch, engine):
    """The shared-prompt, packed forward (fast) and the trimmed one (hf) give the
    log-probs, entropies and gradients of one plain forward over whole sequences: left
    padding, rows of different lengths, masks with holes, rows masked out entirely."""
    pi = _eos_friendly(_policy(arch, engine=engine, max_new_tokens=10), scale=0.2)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 3, temperature=0.9, generator=_gen(5))
    lengths = r.mask.sum(1)
    assert lengths.min() < lengths.max() and r.extra["prompt_length"] > 3
    _assert_same_scores(pi, r, temperature=0.9)
    holes = r.mask & (torch.rand(r.mask.shape, generator=_gen(6)) > 0.3)
    holes[2] = False  # a row with nothing to score
    r.mask = holes
    _assert_same_scores(pi, r, temperature=0.9)


def test_scoring_without_shared_prompts_equals_the_plain_forward():
    """Groups that do not share a prompt run each row's prompt on its own."""
    pi = _eos_friendly(_policy(max_new_tokens=6), scale=0.2)
    r = pi.rollout(MIXED, torch.tensor([0, 3]), 2, generator=_gen(4))
    r.group_size = 4  # a group of 4 rows holding two different prompts
    _assert_same_scores(pi, r)
    r1 = pi.rollout(MIXED, torch.tensor([1, 2, 3]), 1, generator=_gen(4))
    _assert_same_scores(pi, r1)


def test_trailing_masked_columns_give_the_same_losses():
    """Columns after every row's last masked token (the trainer masking truncated
    completions, or a mask cut short) are dropped before the forward; the losses and
    gradients are those of the whole sequence."""
    from rlnb.rl import agg_loss, get_policy_loss_fn

    pi = _eos_friendly(_policy(max_new_tokens=12), scale=0.2)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 4, generator=_gen(2))
    assert r.extra["truncated"].any()
    r.mask = r.mask & ~r.extra["truncated"][:, None]  # mask_truncated_completions
    r.mask[:, 6:] = False
    assert r.mask[:, 5].any() and r.mask.shape[1] == 12  # 6 trailing columns to drop
    _assert_same_scores(pi, r)
    adv = torch.randn(len(r), generator=_gen(3))
    loss_fn = get_policy_loss_fn("ppo_clip")
    for agg in ("token-mean", "seq-mean-token-sum"):
        want, _ = loss_fn(_plain_scores(pi, r)[0], r.logp, adv, r.mask, agg=agg)
        got, _ = loss_fn(pi.log_probs(r)[0], r.logp, adv, r.mask, agg=agg)
        assert_close(got, want)
    h_want = agg_loss(_plain_scores(pi, r)[1], r.mask, "token-mean")
    assert_close(agg_loss(pi.log_probs(r)[1], r.mask, "token-mean"), h_want)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_finished_rows_leave_the_batch_without_changing_the_samples(arch, monkeypatch):
    """Rows past their EOS are dropped from the fast engine's batch; the tokens and
    log-probs are those of the engine that computes every row to the end."""
    sent = []
    stepper = LMPolicy._stepper

    def spy(self, *args):
        gen = stepper(self, *args)
        logits = next(gen)
        while True:
            msg = yield logits
            sent.append(msg[1])
            logits = gen.send(msg)

    monkeypatch.setattr(LMPolicy, "_stepper", spy)
    out = {}
    for engine in ("fast", "hf-nocache"):
        pi = _eos_friendly(_policy(arch, engine=engine, max_new_tokens=14), scale=0.3)
        out[engine] = pi.rollout(MIXED, torch.tensor([3, 0, 2, 1]), 8, temperature=0.9,
                                 generator=_gen(11))
    assert any(k is not None for k in sent)  # some rows did leave the batch
    fast, ref = out["fast"], out["hf-nocache"]
    assert torch.equal(fast.actions, ref.actions) and torch.equal(fast.mask, ref.mask)
    assert torch.equal(fast.extra["truncated"], ref.extra["truncated"])
    assert_close(fast.logp, ref.logp)
    assert fast.extra["completions"] == ref.extra["completions"]
    lengths = fast.mask.sum(1)
    assert lengths.min() < lengths.max() and fast.extra["truncated"].any()


def test_one_step_attention_kernels_agree():
    """The decoding step's attention (batched matmuls on the CPU, the fused kernel
    elsewhere) equals the general one, with grouped-query heads and masked keys."""
    from rlnb.policies.lm.fast.attention import attend, attend_step

    g = _gen(0)
    B, H, KV, L, hd = 3, 4, 2, 9, 8
    q = torch.randn(B, H, hd, generator=g)
    k, v = torch.randn(B, KV, L, hd, generator=g), torch.randn(B, KV, L, hd, generator=g)
    bias = torch.zeros(B, 1, 1, L)
    bias[0, ..., :3] = float("-inf")  # left padding
    bias[..., 7:] = float("-inf")  # keys not written yet
    want = attend(q[:, None], k, v, bias)[:, 0]
    per_kv = bias[:, 0].repeat_interleave(KV, 0)  # (B * KV, 1, L)
    for fused in (False, True):
        assert_close(attend_step(q, k, v, per_kv, fused=fused), want)


def test_decoded_texts_match_the_tokenizer():
    pi = _eos_friendly(_policy(max_new_tokens=8), scale=0.3)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 4, generator=_gen(1))
    rows = [a[m].tolist() for a, m in zip(r.actions, r.mask)]
    assert r.extra["completions"] == pi.tokenizer.batch_decode(rows, skip_special_tokens=True)


# --- device and dtype ------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    model, tok = _model()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        LMPolicy(tmp_path / "m", device="cuda")
    with pytest.raises(ValueError, match="device must be a torch device"):
        LMPolicy(tmp_path / "m", device="gpu0")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mixed", [None, False], ids=["mixed", "pure"])
def test_bf16_policy_samples_scores_trains_and_reloads(arch, mixed, tmp_path):
    """The half-precision path a GPU uses by default, run on the CPU: by default (mixed
    precision) the weights stay float32 and the forward computes in bf16; with
    ``mixed_precision=False`` the model is held in bf16. Either way log-probs come back in
    float32 and equal the sampler's, a GRPO step updates the weights, and the saved model
    reloads with the same log-probs."""
    from rlnb.envs import addition
    from rlnb.train import TrainConfig, Trainer

    model, tok = _model(arch)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    pi = LMPolicy(tmp_path / "m", device="cpu", dtype="bf16", max_new_tokens=6,
                  mixed_precision=mixed)
    assert pi.model.dtype == (torch.float32 if mixed is None else torch.bfloat16)
    assert pi.compute_dtype == (torch.bfloat16 if mixed is None else None)
    assert pi.engine == ("hf" if mixed is None else pi.engine)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 3]), 2, generator=_gen(0))
    logp, ent = pi.log_probs(r)
    assert logp.dtype == torch.float32 and torch.isfinite(ent).all()
    assert_close(logp.detach(), r.logp)
    before = [p.detach().clone() for p in pi.parameters()]
    task = addition(32, digits=1, seed=0)
    cfg = TrainConfig(max_steps=2, num_prompts_per_step=4, num_generations=4, learning_rate=1e-2,
                      advantage="rloo", entropy_coef=0.1, progress_bar=False, seed=0)
    history = Trainer(pi, task, cfg).train()
    assert history["loss"].map(math.isfinite).all()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, pi.parameters()))
    pi.save_pretrained(tmp_path / "trained")
    back = LMPolicy(tmp_path / "trained", device="cpu", dtype="bf16", max_new_tokens=6,
                    mixed_precision=mixed)
    with torch.no_grad():
        assert torch.equal(back.log_probs(r)[0], pi.log_probs(r)[0])


# --- the update re-uses the sampler's activations (rlnb.policies.lm.fast.replay) -----------
@pytest.fixture
def replays(monkeypatch):
    """Counts the scoring calls served from the sampler's activations."""
    from rlnb.policies.lm.fast import replay as lm_replay

    calls = []
    original = lm_replay.replay

    def counting(tape, src):
        calls.append(len(src))
        return original(tape, src)

    monkeypatch.setattr(lm_replay, "replay", counting)
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen2", "llama-tied"])
def test_replayed_scores_equal_the_plain_forward_in_log_probs_and_gradients(arch, replays):
    """A rollout sampled with keep_activations=True is scored once without a forward pass;
    log-probs, entropies and the hand-written backward's gradients (q/k/v biases on qwen2,
    tied input and output embeddings) equal the model's own forward and autograd."""
    if arch == "llama-tied":
        tok = _tok()
        cfg = tiny_config("llama", len(tok))
        cfg.initializer_range, cfg.tie_word_embeddings = 0.3, True
        model = tiny_model(cfg, seed=0)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        pi = LMPolicy.from_model(model, tok, max_new_tokens=10)
    else:
        pi = _policy(arch, max_new_tokens=10)
    pi = _eos_friendly(pi, scale=0.2)
    assert pi.replay_supported
    for holes in (False, True):
        r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 3, temperature=0.9,
                       generator=_gen(5 + holes), keep_activations=True)
        lengths = r.mask.sum(1)
        assert lengths.min() < lengths.max()  # rows left the batch while sampling
        if holes:  # a mask the trainer may make (fewer tokens, a row dropped entirely)
            r.mask = r.mask & (torch.rand(r.mask.shape, generator=_gen(6)) > 0.3)
            r.mask[2] = False
        assert "activations" in r.extra
        n_calls = len(replays)
        _assert_same_scores(pi, r, temperature=0.9)
        assert len(replays) == n_calls + 1 and "activations" not in r.extra


def test_replay_serves_one_call_of_the_sampling_weights_only(replays):
    pi = _eos_friendly(_policy(max_new_tokens=6), scale=0.2)
    ref = _eos_friendly(_policy(max_new_tokens=6, seed=1), scale=0.2)

    def sample():
        return pi.rollout(MIXED, torch.tensor([0, 3]), 4, temperature=0.8, generator=_gen(2),
                          keep_activations=True)

    r = sample()
    plain = pi.log_probs(Rollout(**{**r.__dict__, "extra": {
        k: v for k, v in r.extra.items() if k != "activations"}}), temperature=0.8)[0]
    ref.log_probs(r, temperature=0.8)  # another policy's weights: not replayed, not consumed
    pi.log_probs(r, temperature=1.0)  # another temperature: likewise
    assert replays == [] and "activations" in r.extra
    first = pi.log_probs(r, temperature=0.8)[0]
    second = pi.log_probs(r, temperature=0.8)[0]  # the tape is gone: a forward pass
    assert len(replays) == 1
    assert_close(first, plain)
    assert_close(second, plain)
    r = sample()
    with torch.no_grad():
        pi.model.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # the weights moved since
    moved = pi.log_probs(r, temperature=0.8)[0]
    assert len(replays) == 1 and not torch.allclose(moved, plain, atol=1e-3)


@pytest.mark.parametrize("kind", ["gpt2", "bf16"])
def test_keep_activations_is_ignored_where_replay_does_not_apply(kind):
    if kind == "gpt2":
        pi = _policy("gpt2")
    else:
        model, tok = _model("llama")
        pi = LMPolicy.from_model(model.to(torch.bfloat16), tok, max_new_tokens=8)
    assert not pi.replay_supported
    r = pi.rollout(MIXED, torch.tensor([0, 1]), 2, generator=_gen(0), keep_activations=True)
    assert "activations" not in r.extra


@pytest.mark.parametrize("n", [1, 2])
def test_replayed_backward_uses_the_configured_thread_count_never_timing(n, monkeypatch):
    """The large products of the replayed backward run on exactly ``matmul_threads``
    threads, whatever the timing (a product is not bitwise the same on 1 and 2 threads):
    the same rollout gives bitwise the same gradients every time."""
    from rlnb import threads

    counts = []
    real = torch.set_num_threads
    monkeypatch.setattr(threads.torch, "set_num_threads",
                        lambda k: (counts.append(k), real(k))[1])
    grads = []
    before = torch.get_num_threads()
    real(1)
    try:
        for _ in range(3):
            pi = _eos_friendly(_policy(max_new_tokens=10), scale=0.2)
            r = pi.rollout(Prompts(["1+2=", "12+34="] * 8), torch.arange(16), 8,
                           generator=_gen(5), keep_activations=True)
            with threads.matmul_threads(n):
                lp, _ = pi.log_probs(r)
                (lp.sum()).backward()
            grads.append([p.grad.clone() for p in pi.model.parameters()])
    finally:
        real(before)
    assert set(counts) == ({2, 1} if n == 2 else set())  # switched to n and back, or never
    for g in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(g, grads[0], strict=True))


@pytest.mark.parametrize("T, n, prompts, top_p", [(1, 3, [0, 1], 1.0), (2, 1, [3], 1.0),
                                                  (5, 1, [0, 1, 2, 3], 0.8), (6, 4, [2], 1.0)])
def test_replay_at_edge_shapes(T, n, prompts, top_p, replays):
    """One new token (no decoding step to replay), groups of one, a single prompt, nucleus
    sampling: still the plain forward's log-probs and gradients."""
    pi = _eos_friendly(_policy(max_new_tokens=T, top_p=top_p), scale=0.2)
    r = pi.rollout(MIXED, torch.tensor(prompts), n, generator=_gen(3), keep_activations=True)
    _assert_same_scores(pi, r)
    assert len(replays) == 1


def test_weights_held_only_as_a_pickle_are_refused(tmp_path):
    """Checkpoints load as safetensors, never by unpickling: a model directory whose
    weights are only pytorch_model.bin is refused with the way to convert it."""
    model, tok = _model()
    d = tmp_path / "m"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"pytorch_model\.bin \(a pickle.*safetensors only"):
        LMPolicy(d)


def test_run_directories_written_before_the_package_split_name_lm_policy_by_its_old_key():
    from rlnb.serialization import resolve_class

    assert resolve_class("rlnb.policies.lm:LMPolicy") is LMPolicy
    assert resolve_class("rlnb.policies.lm.policy:LMPolicy") is LMPolicy
