"""LoRA through peft: only the adapters train, the KL reference is the same model with the
adapters off, adapters save and load through save_pretrained and merge on request."""

import json

import pytest
import torch
from peft import LoraConfig

from rlnb.envs.text import ExactMatchTask
from rlnb.policies import LMPolicy
from rlnb.policies.lm import lora as adapters
from rlnb.train import TrainConfig, Trainer, resume

ALPHABET = "0123456789+="
TASK = ExactMatchTask(["1+2=", "12+3=", "7+7=", "3+40="], ["3", "15", "14", "43"])
LORA = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "gate_proj"]}


def _scale_close(a, b, rel=1e-5):
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max()) / scale


def _rollout(pi, seed=0):
    return pi.rollout(TASK, torch.arange(4), 3, generator=torch.Generator().manual_seed(seed))


def _perturb_adapters(pi, seed=1):
    """LoRA starts as the identity (B = 0): give the adapters weights, so that they matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pi.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture
def base_dir(tiny_lm_dir):
    return tiny_lm_dir(ALPHABET)


def test_only_the_adapters_train_and_are_the_state(base_dir):
    pi = LMPolicy(base_dir, max_new_tokens=4, lora=LoraConfig(**LORA))
    assert pi.engine == "hf" and pi.runtime_info()["lora"]
    trainable = [n for n, p in pi.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert set(pi.state_dict()) == set(trainable)
    frozen = {n: p.detach().clone() for n, p in pi.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in pi.named_parameters() if p.requires_grad}
    cfg = TrainConfig(max_steps=3, num_prompts_per_step=4, num_generations=4,
                      learning_rate=1e-2, entropy_coef=0.1, progress_bar=False)  # a gradient
    trainer = Trainer(pi, TASK, cfg)
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(trainable)
    trainer.train()
    for n, p in pi.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in pi.named_parameters()
               if n in lora_before)
    with pytest.raises(ValueError, match="LoRA layers run only in the model's own forward"):
        LMPolicy(base_dir, lora=LORA, engine="fast")


def test_kl_reference_is_the_model_with_adapters_disabled(base_dir):
    pi = LMPolicy(base_dir, max_new_tokens=4, lora=LORA)
    _perturb_adapters(pi)
    cfg = TrainConfig(max_steps=1, num_prompts_per_step=4, num_generations=4, beta=0.1,
                      progress_bar=False)
    trainer = Trainer(pi, TASK, cfg)
    ref = trainer.reference
    assert isinstance(ref, adapters.AdaptersDisabled)
    assert list(ref.parameters()) == [] and ref.state_dict() == {}  # no copy of the weights
    r = _rollout(pi)
    plain = LMPolicy(base_dir, max_new_tokens=4, engine="hf")
    with torch.no_grad():
        _scale_close(ref.log_probs(r)[0], plain.log_probs(r)[0])
        assert not torch.allclose(pi.log_probs(r)[0], plain.log_probs(r)[0], atol=1e-3)
    history = trainer.train()
    assert history["kl"].notna().all() and history["kl"].iloc[-1] > 0


def test_adapters_save_load_and_merge(base_dir, tmp_path):
    pi = LMPolicy(base_dir, max_new_tokens=4, lora=LORA)
    _perturb_adapters(pi)
    r = _rollout(pi)
    with torch.no_grad():
        want = pi.log_probs(r)[0]
    out = pi.save_pretrained(tmp_path / "adapters")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert "model.safetensors" not in names  # the adapters only, not the base weights
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == str(base_dir.resolve())
    back = LMPolicy(out, max_new_tokens=4)
    assert back.lora is not None and back.get_config()["model"] == str(out.resolve())
    with torch.no_grad():
        _scale_close(back.log_probs(r)[0], want)
    merged_dir = pi.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert (merged_dir / "model.safetensors").exists()
    merged = LMPolicy(merged_dir, max_new_tokens=4)
    assert merged.lora is None
    with torch.no_grad():
        _scale_close(merged.log_probs(r)[0], want, rel=1e-4)
    assert pi.lora is not None  # merging wrote a copy; the policy keeps its adapters
    with pytest.raises(ValueError, match="do not pass lora= as well"):
        LMPolicy(out, lora=LORA)


def test_adapter_directory_checks(base_dir, tmp_path):
    pi = LMPolicy(base_dir, max_new_tokens=4, lora=LORA)
    out = pi.save_pretrained(tmp_path / "a")
    (out / "adapter_model.safetensors").rename(out / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="never a pickle"):
        LMPolicy(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="LoRA adapters only"):
        LMPolicy(out)


def test_lora_settings_are_json_and_refuse_imports(base_dir):
    pi = LMPolicy(base_dir, lora=LoraConfig(**LORA))
    spec = pi.get_config()["lora"]
    assert spec == {"r": 4, "lora_alpha": 16, "target_modules": ["gate_proj", "q_proj", "v_proj"]}
    assert json.loads(json.dumps(spec)) == spec
    again = LMPolicy(**pi.get_config())
    assert set(again.state_dict()) == set(pi.state_dict())
    with pytest.raises(ValueError, match="import"):
        LMPolicy(base_dir, lora={**LORA, "megatron_core": "os"})
    with pytest.raises(ValueError, match="unknown LoraConfig fields"):
        LMPolicy(base_dir, lora={**LORA, "rank": 3})
    with pytest.raises(TypeError, match="peft.LoraConfig or a dict"):
        LMPolicy(base_dir, lora=4)


def test_a_lora_run_checkpoints_adapters_and_resumes(base_dir, tmp_path):
    torch.manual_seed(0)  # peft draws the adapters' initial A matrices from torch's RNG
    pi = LMPolicy(base_dir, max_new_tokens=4, lora=LORA)
    cfg = TrainConfig(max_steps=2, num_prompts_per_step=4, num_generations=4, beta=0.05,
                      entropy_coef=0.1, learning_rate=1e-2, progress_bar=False)
    with Trainer(pi, TASK, cfg, run_dir=tmp_path / "run") as t:
        t.train()
    adapter_bytes = sum(p.numel() * 4 for p in pi.state_dict().values())
    # policy (adapters) + Adam's two moments + the sampler state, nothing of the base
    assert (tmp_path / "run" / "checkpoint.safetensors").stat().st_size < 4 * adapter_bytes + 65536
    t2 = resume(tmp_path / "run", max_steps=3)
    assert t2.step == 3 and t2.policy.lora is not None
    assert len(t2.history) == 3
    # The resumed run continues from the adapters of step 2: a fresh run of 3 steps
    # gives the same step 3.
    torch.manual_seed(0)
    fresh = LMPolicy(base_dir, max_new_tokens=4, lora=LORA)
    with Trainer(fresh, TASK, cfg.replace(max_steps=3)) as t3:
        t3.train()
    assert t3.history[-1]["loss"] == t2.history[-1]["loss"] != t3.history[0]["loss"]
    for a, b in zip(t3.policy.state_dict().values(), t2.policy.state_dict().values()):
        assert torch.equal(a, b)
