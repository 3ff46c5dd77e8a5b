"""Bad inputs of the policies (``rlnb.policies``): tabular, MLP and language models.

The language-model rows share one tiny Llama saved once per test run, outside the rows'
working directories, plus damaged copies of it (truncated weights, garbage config, ...).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlnb.envs import Bandit, ExactMatchTask
from rlnb.policies import LMPolicy, MLPPolicy, TabularPolicy
from tests.bad_inputs import row_maker

T = torch.tensor
ALPHABET = "+0123456789="


@functools.cache
def _models() -> dict[str, str]:
    """Directories of a tiny model (``"ok"``) and of damaged copies, made once."""
    root = Path(tempfile.mkdtemp(prefix="rlnb-bad-inputs-"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(root / "hf_home")
    from tests._models import saved_tiny_lm

    ok = root / "ok"
    shutil.copytree(saved_tiny_lm(ALPHABET, "llama", max_len=16), ok)
    dirs = {"ok": str(ok)}

    def variant(name, damage):
        d = root / name
        shutil.copytree(ok, d)
        damage(d)
        dirs[name] = str(d)

    def truncate(d):
        with open(d / "model.safetensors", "r+b") as f:
            f.truncate(100)

    variant("truncated", truncate)
    variant("garbage_weights", lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 10))
    variant("garbage_config", lambda d: (d / "config.json").write_text("{not json"))
    variant("list_config", lambda d: (d / "config.json").write_text("[1, 2]"))
    variant("no_model_type", lambda d: (d / "config.json").write_text("{}"))
    variant("no_weights", lambda d: (d / "model.safetensors").unlink())
    return dirs


@functools.cache
def _policy() -> LMPolicy:
    return LMPolicy(_models()["ok"], max_new_tokens=4)


def _task() -> ExactMatchTask:
    return ExactMatchTask(["1+1=", "abc", "1" * 20], ["2", "x", "1"])


row = row_maker("policies")


def _bandit() -> Bandit:
    return Bandit(T([0.1, 0.8]))


CASES = [
    # --- TabularPolicy
    row("tabular-nan-logits", lambda: TabularPolicy(1, 3, logits=T([[0.0, float("nan"), 0.0]])),
        ValueError, "logits", "finite", "nan", "(0, 1)"),
    row("tabular-inf-logits", lambda: TabularPolicy(1, 3, logits=T([[0.0, float("inf"), 0.0]])),
        ValueError, "logits", "inf", "-1e9"),
    row("tabular-load-nan-logits",
        lambda: TabularPolicy(1, 2).load_state_dict({"logits": T([[0.0, float("nan")]])}),
        ValueError, "logits", "nan"),
    row("tabular-logits-shape", lambda: TabularPolicy(2, 3, logits=torch.zeros(3, 3)), ValueError,
        "logits", "(2, 3)", "(3, 3)"),
    row("tabular-logits-string", lambda: TabularPolicy(1, 3, logits="abc"), TypeError, "logits"),
    row("tabular-num-states-zero", lambda: TabularPolicy(0, 3), ValueError, "num_states", ">= 1"),
    row("tabular-num-states-string", lambda: TabularPolicy("a", 3), TypeError, "num_states",
        "'a'"),
    row("tabular-num-states-float", lambda: TabularPolicy(2.5, 3), TypeError, "num_states",
        "2.5"),
    row("tabular-states-not-multiple", lambda: TabularPolicy(5, 3, states_per_prompt=2),
        ValueError, "num_states (5)", "states_per_prompt (2)", "for_env"),
    row("tabular-shared-string", lambda: TabularPolicy(1, 3, shared="yes"), TypeError, "shared",
        "'yes'"),
    row("tabular-for-env-not-a-sandbox", lambda: TabularPolicy.for_env("env"), TypeError,
        "sandbox", "num_states"),
    row("tabular-rollout-n-zero",
        lambda: TabularPolicy(1, 2).rollout(_bandit(), T([0]), 0), ValueError, "n", ">= 1"),
    row("tabular-rollout-temperature-zero",
        lambda: TabularPolicy(1, 2).rollout(_bandit(), T([0]), 2, temperature=0), ValueError,
        "temperature", "> 0", "1e-3"),
    row("tabular-rollout-temperature-string",
        lambda: TabularPolicy(1, 2).rollout(_bandit(), T([0]), 2, temperature="1"), TypeError,
        "temperature", "'1'"),
    row("tabular-rollout-prompt-out-of-range",
        lambda: TabularPolicy(1, 2).rollout(_bandit(), T([5]), 2), ValueError, "prompts",
        "[0, 0]", "5"),
    row("tabular-probs-temperature-zero", lambda: TabularPolicy(1, 2).probs(0), ValueError,
        "temperature", "> 0"),
    # --- MLPPolicy
    row("mlp-hidden-negative", lambda: MLPPolicy(3, 2, hidden=(-1,)), ValueError, "hidden[0]",
        ">= 1", "-1"),
    row("mlp-hidden-zero", lambda: MLPPolicy(3, 2, hidden=(64, 0)), ValueError, "hidden[1]",
        ">= 1"),
    row("mlp-hidden-int", lambda: MLPPolicy(3, 2, hidden=64), TypeError, "hidden", "(64,)"),
    row("mlp-hidden-string", lambda: MLPPolicy(3, 2, hidden="64"), TypeError, "hidden", "'64'"),
    row("mlp-activation", lambda: MLPPolicy(3, 2, activation="gelu"), ValueError, "activation",
        "'gelu'", "tanh"),
    row("mlp-feature-dim-float", lambda: MLPPolicy(2.5, 2), TypeError, "feature_dim", "2.5"),
    row("mlp-seed-string", lambda: MLPPolicy(3, 2, seed="x"), TypeError, "seed", "'x'"),
    row("mlp-for-env-not-a-sandbox", lambda: MLPPolicy.for_env(object()), TypeError, "sandbox",
        "feature_dim"),
    # --- LMPolicy: loading
    row("lm-truncated-weights", lambda: LMPolicy(_models()["truncated"]), ValueError,
        "model.safetensors", "truncated", "save_pretrained"),
    row("lm-garbage-weights", lambda: LMPolicy(_models()["garbage_weights"]), ValueError,
        "model.safetensors", "corrupt", "save_pretrained"),
    row("lm-garbage-config", lambda: LMPolicy(_models()["garbage_config"]), ValueError,
        "config.json", "not valid JSON", "save_pretrained"),
    row("lm-list-config", lambda: LMPolicy(_models()["list_config"]), ValueError, "config.json",
        "list", "save_pretrained"),
    row("lm-config-without-model-type", lambda: LMPolicy(_models()["no_model_type"]), ValueError,
        "config.json", "model_type"),
    row("lm-no-weights", lambda: LMPolicy(_models()["no_weights"]), FileNotFoundError,
        "no weights", "model.safetensors"),
    row("lm-missing-directory", lambda: LMPolicy("/nonexistent/rlnb-model"), FileNotFoundError,
        "/nonexistent/rlnb-model", "does not exist"),
    row("lm-model-not-a-path", lambda: LMPolicy(3), TypeError, "model", "from_model"),
    row("lm-max-new-tokens-zero", lambda: LMPolicy(_models()["ok"], max_new_tokens=0), ValueError,
        "max_new_tokens", ">= 1"),
    row("lm-top-p-string", lambda: LMPolicy(_models()["ok"], top_p="x"), TypeError, "top_p",
        "'x'"),
    row("lm-top-p-zero", lambda: LMPolicy(_models()["ok"], top_p=0), ValueError, "top_p",
        "(0, 1]"),
    row("lm-engine", lambda: LMPolicy(_models()["ok"], engine="turbo"), ValueError, "engine",
        "'turbo'", "fast"),
    row("lm-device", lambda: LMPolicy(_models()["ok"], device="tpu"), ValueError, "device",
        "'tpu'"),
    row("lm-dtype", lambda: LMPolicy(_models()["ok"], dtype="int8"), ValueError, "dtype",
        "'int8'"),
    row("lm-from-model-tokenizer-string",
        lambda: LMPolicy.from_model(_policy().model, "tok"), TypeError, "tokenizer", "str"),
    # --- LMPolicy: prompts
    row("lm-check-prompts-unknown-chars", lambda: _policy().check_prompts(["1+1=", "ab+1="]),
        ValueError, "prompt 1", "'ab+1='", "'a', 'b'", "unknown token"),
    row("lm-check-prompts-too-long", lambda: _policy().check_prompts(["1" * 20]), ValueError,
        "prompt 0", "21 tokens", "max_new_tokens=4", "16", "shorter prompts"),
    row("lm-check-prompts-single-string", lambda: _policy().check_prompts("1+1="), TypeError,
        "list of strings"),
    row("lm-check-prompts-not-str", lambda: _policy().check_prompts(["1+1=", 5]), TypeError,
        "prompt 1", "int"),
    row("lm-sample-unknown-chars", lambda: _policy().sample_texts(["abc"], 2), ValueError,
        "'abc'", "unknown token"),
    row("lm-rollout-unknown-chars", lambda: _policy().rollout(_task(), T([1]), 2), ValueError,
        "prompt 1", "'abc'", "unknown token"),
    row("lm-rollout-over-context", lambda: _policy().rollout(_task(), T([2]), 2), ValueError,
        "prompt 2", "21 tokens", "context of 16", "max_position_embeddings"),
    row("lm-sample-budget-over-context",
        lambda: _policy().sample_texts(["1+1="], 2, max_new_tokens=100), ValueError,
        "max_new_tokens=100", "context of 16"),
    row("lm-sample-max-new-tokens-zero",
        lambda: _policy().sample_texts(["1+1="], 2, max_new_tokens=0), ValueError,
        "max_new_tokens", ">= 1"),
    row("lm-sample-batch-size-zero", lambda: _policy().sample_texts(["1+1="], 2, batch_size=0),
        ValueError, "batch_size", ">= 1"),
    row("lm-hidden-states-unknown-chars", lambda: _policy().hidden_states(["abc"]), ValueError,
        "'abc'", "unknown token"),
    row("lm-rollout-prompt-index", lambda: _policy().rollout(_task(), T([7]), 2), IndexError,
        "prompt index 7", "0..2"),
    # --- full-scale options
    row("lm-mixed-precision-string",
        lambda: LMPolicy(_models()["ok"], dtype="bfloat16", mixed_precision="yes"), TypeError,
        "mixed_precision", "'yes'"),
    row("lm-mixed-precision-fast-engine",
        lambda: LMPolicy(_models()["ok"], dtype="bfloat16", engine="fast"), ValueError,
        "engine='fast'", "autocast", "engine='hf'"),
    row("lm-lora-unknown-field", lambda: LMPolicy(_models()["ok"], lora={"rank": 4}),
        ValueError, "unknown LoraConfig fields", "'rank'", "lora_alpha"),
    row("lm-lora-not-a-config", lambda: LMPolicy(_models()["ok"], lora=4), TypeError,
        "peft.LoraConfig", "int"),
    row("lm-lora-imports-a-module",
        lambda: LMPolicy(_models()["ok"], lora={"r": 4, "megatron_core": "os"}), ValueError,
        "megatron_core", "import"),
    row("lm-lora-fast-engine",
        lambda: LMPolicy(_models()["ok"], lora={"r": 4}, engine="fast"), ValueError,
        "engine='fast'", "LoRA", "engine='hf'"),
    row("lm-no-adapters-to-disable", lambda: _policy().adapters_disabled().__enter__(),
        ValueError, "no LoRA adapters"),
    row("lm-chat-template-string", lambda: LMPolicy(_models()["ok"], chat_template="auto"),
        TypeError, "chat_template", "'auto'"),
    row("lm-system-prompt-without-template",
        lambda: LMPolicy(_models()["ok"], system_prompt="Be brief."), ValueError,
        "system", "chat template"),
]
