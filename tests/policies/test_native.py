"""The fused CPU kernels (rlnb.policies.lm.fast.native): built and checked on load, the same
samples and gradients as the PyTorch operations they replace, and a clean fallback."""

from __future__ import annotations

import shutil

import pytest
import torch

from rlnb.policies.lm.fast import native
from rlnb.policies.lm.fast.attention import completion_bias, row_keys
from rlnb.policies.lm.fast.replay import attend_backward
from tests._numerics import assert_close
from tests.policies.test_lm_policy import MIXED, _assert_same_scores, _eos_friendly, _gen, _policy

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="no C compiler on this machine")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state with no kernels loaded yet and its own build cache."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("RLNB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "native"


@needs_compiler
def test_kernels_build_once_check_themselves_and_say_where(fresh):
    k = native.kernels()
    assert k is not None, native.status()
    assert native.status() == f"loaded: {k.path}" and k.path.parent == fresh
    built = k.path.stat().st_mtime_ns
    native._state.clear()
    assert native.kernels().path == k.path and k.path.stat().st_mtime_ns == built  # cached


@needs_compiler
def test_kernels_load_when_first_asked_for_while_sampling(fresh):
    """The first call may come from the sampler, under inference mode."""
    with torch.inference_mode():
        assert native.kernels() is not None, native.status()


def test_disabled_or_without_a_compiler_everything_runs_on_pytorch(fresh, monkeypatch):
    monkeypatch.setenv("RLNB_NATIVE", "0")
    assert native.kernels() is None and native.status().startswith("disabled")
    want = _policy(max_new_tokens=6).rollout(MIXED, torch.tensor([0, 3]), 3, generator=_gen(1))
    monkeypatch.setenv("RLNB_NATIVE", "1")
    monkeypatch.setenv("CC", str(fresh / "no-such-compiler"))
    assert native.kernels() is None
    assert native.status().startswith("unavailable:") and "compiler" in native.status()
    got = _policy(max_new_tokens=6).rollout(MIXED, torch.tensor([0, 3]), 3, generator=_gen(1))
    assert torch.equal(got.actions, want.actions) and torch.equal(got.logp, want.logp)


def test_a_kernel_that_disagrees_with_pytorch_is_not_used(fresh, monkeypatch):
    if native.kernels() is None:
        pytest.skip(native.status())
    native._state.clear()
    monkeypatch.setattr(native.Kernels, "unit_rms", lambda self, x, c2: x)  # wrong
    assert native.kernels() is None and "unit_rms disagrees" in native.status()


@needs_compiler
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("temperature", [1.0, 0.9])
def test_native_and_pytorch_decoding_draw_the_same_tokens(arch, temperature, monkeypatch):
    """Same generator, same tokens, log-probs within float rounding, with left-padded
    prompts and rows leaving the batch at their EOS."""
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("RLNB_NATIVE", flag)
        pi = _eos_friendly(_policy(arch, max_new_tokens=12), scale=0.3)
        out[flag] = pi.rollout(MIXED, torch.tensor([3, 0, 2, 1]), 6, temperature=temperature,
                               generator=_gen(4))
    assert native.kernels() is None  # the second pass did run without them
    monkeypatch.setenv("RLNB_NATIVE", "1")
    assert native.kernels() is not None, native.status()
    lengths = out["1"].mask.sum(1)
    assert lengths.min() < lengths.max()
    assert torch.equal(out["1"].actions, out["0"].actions)
    assert torch.equal(out["1"].mask, out["0"].mask)
    assert_close(out["1"].logp, out["0"].logp)


@needs_compiler
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("flag", ["1", "0"])
def test_replayed_gradients_equal_the_forward_with_and_without_kernels(arch, flag, monkeypatch):
    monkeypatch.setenv("RLNB_NATIVE", flag)
    pi = _eos_friendly(_policy(arch, max_new_tokens=10), scale=0.2)
    r = pi.rollout(MIXED, torch.tensor([0, 1, 2, 3]), 3, temperature=0.9, generator=_gen(5),
                   keep_activations=True)
    assert (r.extra["activations"].fast.native is None) == (flag == "0")
    _assert_same_scores(pi, r, temperature=0.9)


@needs_compiler
@pytest.mark.parametrize("hd", [16, 8, 32])
def test_completion_attention_backward_equals_the_grid_computation(hd):
    """The per-cell kernel against the padded-grid backward it replaces: groups of rows
    with left-padded prompts, rows of different lengths, head sizes with and without a
    compile-time path."""
    k = native.kernels()
    assert k is not None, native.status()
    g = _gen(hd)
    G, n, J, H, KV, Lp = 3, 4, 7, 4, 2, 5
    R, W = G * n, H + 2 * KV
    lengths = torch.randint(1, J + 1, (R,), generator=g)
    lengths[0] = J
    valid = torch.ones(G, Lp, dtype=torch.bool)
    valid[1, :2] = False  # left padding
    valid[2, :4] = False
    slots = torch.cat([(lengths > j).nonzero().squeeze(1) * J + j for j in range(J)])
    C = len(slots)
    cells = torch.full((R * J,), -1, dtype=torch.long).index_copy_(0, slots, torch.arange(C))
    q, kc, vc = (torch.randn(C, h, hd, generator=g) for h in (H, KV, KV))
    kp, vp = torch.randn(G, KV, Lp, hd, generator=g), torch.randn(G, KV, Lp, hd, generator=g)
    dout = torch.randn(C, H * hd, generator=g)
    cos, sin = torch.randn(C, 1, hd, generator=g), torch.randn(C, 1, hd, generator=g)

    dqkv = torch.empty(C, W, hd)
    dkp, dvp = k.attend_cells_backward(q, kc, vc, kp, vp, dout, cos[:, 0], sin[:, 0],
                                       cells.view(R, J), Lp - valid.sum(1), dqkv, n)

    # the grid computation (rlnb.policies.lm.fast.replay before the kernel)
    grid = torch.zeros(R * J, W, hd)
    grid.index_copy_(0, slots, torch.cat([q, kc, vc], 1))
    qg, kg, vg = grid.view(R, J, W, hd).split([H, KV, KV], dim=2)
    keys, vals = row_keys(kp, kg, n), row_keys(vp, vg, n)
    bias = completion_bias(valid, n, J, torch.float32)
    d_grid = torch.zeros(R * J, H * hd).index_copy_(0, slots, dout).view(R, J, H * hd)
    dq, dk, dv = attend_backward(qg, keys, vals, bias, d_grid)
    dk, dv = dk.view(G, n, KV, Lp + J, hd), dv.view(G, n, KV, Lp + J, hd)
    cell = lambda x: x.reshape(R * J, -1, hd).index_select(0, slots)  # noqa: E731
    d_raw = torch.cat([cell(dq), cell(dk[:, :, :, Lp:].transpose(2, 3)),
                       cell(dv[:, :, :, Lp:].transpose(2, 3))], 1)
    rot = d_raw[:, :H + KV]
    want = torch.cat([rot * cos + (rot * sin).roll(hd // 2, -1), d_raw[:, H + KV:]], 1)
    assert_close(dqkv, want)
    assert_close(dkp, dk[:, :, :, :Lp].sum(1))
    assert_close(dvp, dv[:, :, :, :Lp].sum(1))


@needs_compiler
def test_a_tensor_of_the_wrong_dtype_is_a_clear_error():
    k = native.kernels()
    assert k is not None, native.status()
    with pytest.raises(ValueError, match="x must be a torch.float32 CPU tensor, got torch.float64"):
        k.unit_rms(torch.ones(2, 4, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="start must be a torch.int64"):
        k.decode_attend(torch.zeros(1, 32), torch.ones(1, 4), torch.zeros(1, 4),
                        torch.zeros(2, 1, 2, 3, 4), torch.zeros(1, dtype=torch.int32), 0, 4, 2)
