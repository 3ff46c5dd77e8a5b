"""Activation capture: both routes agree, no autograd graph survives, memory is bounded."""

from __future__ import annotations

import copy
import gc
import math
import weakref

import pytest
import torch
from torch import nn

from rlnb.probes import (
    ActivationCache,
    capture,
    cka_by_layer,
    effective_rank,
    entropy_summary,
    find_layers,
    from_hidden_states,
    linear_probe,
    pool_states,
    rank_by_layer,
    token_entropy,
)


def tiny_lm(arch: str, seed: int = 0) -> nn.Module:
    """A random-init causal LM: 2 layers, hidden 32, vocabulary 20 (no download)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=20, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=32, **ids)
    else:
        cfg = GPT2Config(vocab_size=20, n_embd=32, n_layer=2, n_head=4, n_positions=32, **ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine two threads contend and a
    forward pass of this 2-layer model goes from ~2 ms to ~250 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama():
    return tiny_lm("llama")


def batch(N: int = 4, L: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 20, (N, L), generator=g)
    am = torch.ones(N, L, dtype=torch.long)
    am[0, :3] = 0  # left padding, as rlnb tokenizers pad
    am[1, :1] = 0
    return {"input_ids": ids, "attention_mask": am}


# --- the two routes ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hooks_and_output_hidden_states_give_identical_tensors(arch, request):
    model = request.getfixturevalue("llama") if arch == "llama" else tiny_lm(arch)
    inputs = batch()
    hooked = capture(model, inputs)
    L = len(find_layers(model)[1])
    assert list(hooked) == ["embed", *[f"layers.{i}.resid_post" for i in range(L)], "final_norm"]
    assert all(v.shape == (4, 9, 32) for v in hooked.values())
    assert hooked.layer_names() == [f"layers.{i}.resid_post" for i in range(L)]
    native = capture(model, inputs, hooks=False)
    assert list(native) == ["embed", "layers.0.resid_post", "final_norm"]
    for name in native:
        assert torch.equal(hooked[name], native[name]), name
    # the same from the raw tuple, and resid_pre i == resid_post i-1
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    raw = from_hidden_states(hs, ["layers.1.resid_pre", "final_norm"])
    assert torch.equal(raw["layers.1.resid_pre"], hooked["layers.0.resid_post"])
    assert torch.equal(capture(model, inputs, ["layers.0.resid_pre"])["layers.0.resid_pre"], hooked["embed"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_policy_hidden_states_and_capture_give_identical_tensors(arch):
    """``LMPolicy.hidden_states`` and ``capture`` run on one implementation
    (rlnb.policies.layers): the same forward gives the same tensors, bit for bit."""
    from rlnb.policies.lm import LMPolicy, positions
    from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

    tok = char_tokenizer("+0123456789=")
    model = tiny_model(tiny_config(arch, len(tok), n_layer=3, d_model=32), seed=1)
    with torch.no_grad():  # break the init's symmetries (zero biases, unit norms)
        for q in model.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=torch.Generator().manual_seed(2)))
    policy = LMPolicy.from_model(model, tok, max_new_tokens=4)
    texts = ["1+2=", "12+34=", "5="]
    states = policy.hidden_states(texts)
    am = states.pop("attention_mask")
    ids = torch.full(am.shape, tok.pad_token_id)
    for i, t in enumerate(texts):
        enc = policy.encode_prompt(t)
        ids[i, am.shape[1] - len(enc):] = torch.tensor(enc)
    inputs = {"input_ids": ids, "attention_mask": am, "position_ids": positions(am)}
    hooked = capture(policy.model, inputs, dtype=torch.float32)
    assert list(hooked) == list(states) == [
        "embed", "layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_post", "final_norm"]
    for name in states:
        assert torch.equal(hooked[name], states[name]), name
    assert torch.equal(hooked.mask, am.bool())
    native = capture(policy.model, inputs, hooks=False)
    some = policy.hidden_states(texts, layers=[1, 0])
    assert list(some) == ["embed", "layers.1.resid_post", "layers.0.resid_post", "final_norm",
                          "attention_mask"]
    for name in native:
        assert torch.equal(native[name], states[name]) and torch.equal(some[name], states[name])


def test_last_hidden_state_is_after_the_final_norm(llama):
    """The footgun the names encode: hidden_states[-1] is final_norm, not the last layer."""
    cache = capture(llama, batch())
    with torch.no_grad():
        normed = llama.model.norm(cache["layers.1.resid_post"])
    torch.testing.assert_close(normed, cache["final_norm"])
    assert not torch.allclose(cache["layers.1.resid_post"], cache["final_norm"])
    with torch.no_grad():
        hs = llama(**batch(), output_hidden_states=True).hidden_states
    with pytest.raises(KeyError, match="final norm"):
        from_hidden_states(hs, ["layers.1.resid_post"])


def test_module_paths_and_user_mapping(llama):
    inputs = batch()
    cache = capture(llama, inputs, ["model.layers.0.mlp", "lm_head", "mlp1"],
                    modules={"mlp1": llama.model.layers[1].mlp})
    assert cache["lm_head"].shape == (4, 9, 20)
    with torch.no_grad():
        logits = llama(**inputs).logits
    torch.testing.assert_close(cache["lm_head"], logits)
    assert cache["mlp1"].shape == (4, 9, 32)
    with pytest.raises(KeyError, match="neither a stable name"):
        capture(llama, inputs, ["layers.0.nope"])
    with pytest.raises(KeyError, match="has 2 layers"):
        capture(llama, inputs, ["layers.7.resid_post"])


def test_mlp_policy_and_sequential():
    from rlnb.envs.tree_mdp import TreeMDP
    from rlnb.policies import MLPPolicy

    env = TreeMDP.random(num_prompts=3, branching=3, depth=4, generator=torch.Generator().manual_seed(0))
    policy = MLPPolicy.for_env(env, hidden=(16, 8))
    rollout = policy.rollout(env, torch.arange(3), n=2, generator=torch.Generator().manual_seed(1))
    cache = capture(policy, lambda: policy.log_probs(rollout), mask=rollout.mask)
    assert list(cache) == ["net.0", "net.1", "net.2", "net.3", "net.4"]
    N, T = rollout.actions.shape
    assert cache["net.1"].shape == (N, T, 16) and cache["net.4"].shape == (N, T, env.num_actions)
    with torch.no_grad():
        want = torch.tanh(policy.net[0](rollout.extra["features"]))
    torch.testing.assert_close(cache["net.1"], want)
    assert cache.pool("net.3").shape == (N, 8)

    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(7, 3)
    c2 = capture(seq, x, ["0", "output"])
    torch.testing.assert_close(c2["output"], seq(x).detach())
    assert c2.shapes == {"0": (7, 5), "output": (7, 2)}


# --- no autograd graph survives ---------------------------------------------------------


def test_stored_states_carry_no_graph_and_share_no_memory(llama):
    llama.train()
    try:
        seen = {}
        h = llama.model.layers[0].register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
        cache = capture(llama, batch(), grad=True)
        h.remove()
    finally:
        llama.eval()
    for name, v in cache.items():
        assert not v.requires_grad and v.grad_fn is None and v._base is None, name
    out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    assert out.requires_grad  # the forward did build a graph...
    assert cache["layers.0.resid_post"].data_ptr() != out.data_ptr()  # ...the cache holds a copy


def test_capture_in_train_mode_with_grad_enabled_does_not_leak_graphs(llama):
    """Every tensor the autograd graph saves is wrapped in a weakly referenced box: once
    capture returns, all boxes must be gone -- nothing the cache holds keeps the graph."""
    boxes: list[weakref.ref] = []

    class Box:
        def __init__(self, t):
            self.t = t.detach()  # holding t itself would make an uncollectable cycle t -> graph -> box -> t

    def pack(t):
        b = Box(t)
        boxes.append(weakref.ref(b))
        return b

    def unpack(b):
        return b.t

    def graph_survivors(run):
        boxes.clear()
        llama.train()
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                kept = run()
        finally:
            llama.eval()
        gc.collect()
        assert boxes, "the forward saved no tensors: the check would be vacuous"
        return kept, sum(r() is not None for r in boxes)

    inputs = batch()
    cache, alive = graph_survivors(lambda: capture(llama, inputs, grad=True))
    assert alive == 0 and len(cache) == 4
    cache, alive = graph_survivors(
        lambda: capture(llama, lambda: llama(**inputs).logits.logsumexp(-1).sum(), grad=True))
    assert alive == 0
    # negative control: keeping the model output does keep the graph, and the check sees it
    leaked, alive = graph_survivors(lambda: llama(**inputs).logits)
    assert alive > 0 and leaked.grad_fn is not None


def test_default_runs_the_forward_without_grad(llama):
    modes = []
    h = llama.model.layers[0].register_forward_hook(lambda m, a, o: modes.append(torch.is_grad_enabled()))
    try:
        capture(llama, batch())
        capture(llama, batch(), grad=True)
    finally:
        h.remove()
    assert modes == [False, True]


def test_hooks_are_removed_even_when_capture_fails(llama):
    def hooks():  # transformers installs hooks of its own: count, do not expect none
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in llama.modules()]

    before = hooks()
    with pytest.raises(MemoryError):
        capture(llama, batch(), max_bytes=10)
    assert hooks() == before
    capture(llama, batch())
    assert hooks() == before


# --- memory bounds, storage, pooling -------------------------------------------------------


def test_memory_bounds_fail_fast_with_advice(llama):
    with pytest.raises(MemoryError, match="max_bytes .* pool at capture"):
        capture(llama, batch(), max_bytes=4 * 9 * 32 * 4 * 2)  # room for two entries of four
    with pytest.raises(MemoryError, match="max_tokens"):
        capture(llama, batch(), max_tokens=35)  # 4 x 9 = 36 vectors per name
    half = capture(llama, batch(), dtype=torch.float16)
    full = capture(llama, batch())
    assert half["embed"].dtype == torch.float16 and half.nbytes * 2 == full.nbytes
    torch.testing.assert_close(half["final_norm"].float(), full["final_norm"], rtol=1e-2, atol=1e-2)
    pooled = capture(llama, batch(), pool="mean", max_tokens=4)  # (N, d): 4 vectors per name
    assert pooled.pooled == "mean" and pooled["embed"].shape == (4, 32)
    torch.testing.assert_close(pooled["layers.1.resid_post"], full.pool("layers.1.resid_post"))
    with pytest.raises(ValueError, match="pooled with 'mean'"):
        pooled.pool("embed", how="last")


def test_pool_respects_the_mask_and_padding_side():
    x = torch.arange(12.0).reshape(1, 4, 3).repeat(2, 1, 1)  # (2, 4, 3)
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    torch.testing.assert_close(pool_states(x, left, "last"), x[:, 3])
    torch.testing.assert_close(pool_states(x, left, "mean")[0], x[0, 2:].mean(0))
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    torch.testing.assert_close(pool_states(x, right, "last"), torch.stack([x[0, 1], x[1, 2]]))
    with pytest.raises(ValueError, match="row 1 has no valid position"):
        pool_states(x, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="how must be"):
        pool_states(x, None, "max")
    # the cache's own mask is the default: attention mask from the inputs
    cache = ActivationCache({"h": x}, left)
    torch.testing.assert_close(cache.pool("h"), pool_states(x, left))
    assert cache.to_numpy("h", how="last").shape == (2, 3)


def test_concat_pads_and_masks(llama):
    a = capture(llama, batch(N=2, L=5, seed=1))
    b = capture(llama, batch(N=3, L=8, seed=2))
    both = ActivationCache.concat([a, b])
    assert both["embed"].shape == (5, 8, 32) and both.mask.shape == (5, 8)
    assert not both.mask[:2, 5:].any()
    torch.testing.assert_close(both.pool("final_norm")[:2], a.pool("final_norm"))
    torch.testing.assert_close(both.pool("final_norm")[2:], b.pool("final_norm"))
    assert "ActivationCache(4 entries" in repr(both)


def test_module_that_runs_twice_is_an_error():
    lin = nn.Linear(2, 2)
    net = nn.Sequential(lin, nn.Tanh(), lin)  # the same module twice
    with pytest.raises(RuntimeError, match="more than once"):
        capture(net, torch.randn(3, 2), ["0"])
    with pytest.raises(TypeError, match="not a function"):
        capture(net, lambda: net(torch.randn(3, 2)), hooks=False)


# --- the probes run on a captured cache, on CPU, in seconds --------------------------------


def test_layers_are_found_inside_a_wrapper(llama):
    class Wrapper(nn.Module):  # e.g. a policy holding the causal LM as self.model
        def __init__(self, lm):
            super().__init__()
            self.model = lm

        def forward(self, **kw):
            return self.model(**kw)

    path, _ = find_layers(Wrapper(llama))
    assert path == "model.model.layers"
    inputs = batch()
    wrapped = capture(Wrapper(llama), inputs)
    direct = capture(llama, inputs)
    assert list(wrapped) == list(direct)
    for name in direct:
        assert torch.equal(wrapped[name], direct[name])


def test_probes_on_a_tiny_model_cache(llama):
    """Capture once, then every probe runs on the cache, on CPU, in about a second."""
    inputs = batch(N=96, L=12, seed=3)
    mask = inputs["attention_mask"].bool()
    cache = capture(llama, inputs, ["embed", "layers.0.resid_post", "layers.1.resid_post",
                                    "final_norm", "lm_head"])
    # entropy of the next-token distributions, under the mask
    h = token_entropy(cache["lm_head"], mask)
    summary = entropy_summary(h, mask)
    assert 0 < summary["mean"] <= math.log(20) and summary["tokens"] == mask.sum().item()
    # effective rank per layer, with ERV / ERA
    ranks = rank_by_layer(cache, names=["embed", "layers.1.resid_post"], stride=4)
    assert len(ranks) == 2 * 96 and (ranks["er"] >= 1).all()
    assert ranks.loc[0, "er"] == pytest.approx(effective_rank(cache["embed"][0][mask[0]]))
    # a linear probe reads the current token (parity of its id) off the last position
    y = (inputs["input_ids"][:, -1] % 2).numpy()
    result = linear_probe(cache.to_numpy("embed", how="last"), y, cv=3)
    assert result.test_score > 0.8
    # similarity to a checkpoint whose second layer changed
    perturbed = copy.deepcopy(llama)
    with torch.no_grad():
        for p in perturbed.model.layers[1].parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    other = capture(perturbed, inputs, ["embed", "layers.0.resid_post", "layers.1.resid_post"])
    assert cka_by_layer(cache, cache)["cka"].tolist() == pytest.approx([1.0] * len(cache))
    cka = cka_by_layer(cache, other).set_index("name")["cka"]
    assert cka["embed"] == pytest.approx(1.0) and cka["layers.0.resid_post"] == pytest.approx(1.0)
    assert cka["layers.1.resid_post"] < 1.0 - 1e-4  # only the changed layer moves
