"""GPU check on a Qwen2.5-0.5B-shaped model (random weights), in bf16 on CUDA: rlnb's
sampling speed against ``transformers.generate``, one GRPO step of rlnb's Trainer (its
seconds and peak GPU memory), and whether bf16 training moves the policy as much as
float32 does.

The model is the one of ``benchmarks/full_scale_memory.py`` (the published Qwen2.5-0.5B
config, 24 layers, vocabulary 151936, seeded random weights, the character tokenizer of
the addition task), built once into ``~/.cache/rlnb/benchmarks`` (or ``$RLNB_CACHE``).

(a) sampling: ``LMPolicy.sample_texts`` and ``model.generate(do_sample=True, top_k=0,
    top_p=1, temperature=1)`` on the same prompts (``--sample-prompts`` addition prompts),
    the same ``n`` completions each and the same ``max_new_tokens``; completion tokens per
    second, after one warm-up call each (CUDA kernels, allocator). ``generate`` runs on
    the model loaded in bf16; the policy as ``LMPolicy(dtype=bfloat16)`` trains it (its
    default: float32 master weights, bf16 compute). rlnb's token count is read from a
    rollout drawn with the same generator (the same sampler: the same tokens), so an early
    EOS is counted exactly on both sides; a random model almost never samples its EOS, so
    both run the full ``max_new_tokens``.
(b) one GRPO step of ``rlnb.train.Trainer`` with the settings of the memory benchmark
    (8 prompts x 4 generations, ``--new-tokens`` tokens, learning rate 1e-6, AdamW,
    micro-batches of 8 x 4 accumulation steps, beta 0), after one warm-up step: seconds;
(c) its peak GPU memory, ``torch.cuda.max_memory_allocated`` over the timed step (the
    memory of the weights and the optimiser state included; reserved memory beside it).
(d) bf16 against float32: ``--update-steps`` steps (10) at learning rate 1e-5 from the
    same initial weights with ``dtype=torch.bfloat16`` (mixed precision) and with
    ``torch.float32``; a fixed set of 32 completions (sampled once, by the float32 policy)
    is scored by each policy before and after, and the ratio of the mean |delta log p| over
    their tokens (bf16 / float32) must lie in [0.7, 1.4]. The reward of these steps is the
    share of even token ids in a completion (every addition reward of a random model is 0,
    and so would be every gradient): any reward that varies gives an update of the size
    the learning rate sets. With ``mixed_precision=False`` (bf16 weights, printed for
    contrast, not checked) most updates of 1e-5 round away and the ratio falls far below.

Prints one table; ``--json PATH`` writes it as JSON too. Exit status 1 when (d) fails.

    bash benchmarks/gpu_check.sh                  # fresh venv, CUDA torch, then this script
    python benchmarks/gpu_check.py                # in an environment that has them
    python benchmarks/gpu_check.py --device cpu --layers 2 --vocab 2048 --new-tokens 4 \\
        --update-steps 2 --sample-prompts 4 --n 2   # smoke test of the logic: ~3 min, 2 CPUs

Expected time on one modern GPU (H100/H200 class): building the model ~20 s (once),
(a) a few seconds, (b) under 10 s, (d) 3 x 10 steps, about 1-2 minutes: 2-4 minutes in
all, well under the 10 minutes ``gpu_check.sh`` allows.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _full_scale_common as common  # noqa: E402

RATIO_RANGE = (0.7, 1.4)


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def even_token_task(seed: int = 0):
    """The addition prompts, rewarded by the share of even token ids among a completion's
    tokens (a reward that varies between completions of a random model)."""
    import torch

    from rlnb.envs.text import ExactMatchTask

    base = common.task(seed)

    class EvenTokens(ExactMatchTask):
        def reward_rollout(self, rollout, generator=None):
            mask = rollout.mask
            even = ((rollout.actions % 2) == 0) & mask
            share = even.sum(1).float() / mask.sum(1).clamp(min=1).float()
            return share.to(dtype=torch.float32, device=rollout.prompts.device)

    return EvenTokens(base.prompts, base.answers, alphabet=base.alphabet)


def train_config(args, **changes):
    from rlnb.train import TrainConfig

    options = dict(
        max_steps=1, num_prompts_per_step=8, num_generations=4, learning_rate=1e-6,
        optimizer="adamw", weight_decay=0.0, max_grad_norm=1.0, advantage="grpo",
        scale_rewards="group", policy_loss="ppo_clip", loss_agg_mode="token-mean",
        temperature=1.0, beta=0.0, num_iterations=1, per_device_train_batch_size=8,
        gradient_accumulation_steps=4, gradient_checkpointing=False, progress_bar=False,
        seed=args.seed,
    )
    options.update(changes)
    return TrainConfig(**options)


# ------------------------------------------------------------------------------------------
# (a) sampling
# ------------------------------------------------------------------------------------------
def sample_hf(model_dir: Path, prompts: list[str], args, dtype) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rlnb.policies.lm.load import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    eos = tok.eos_token_id

    def generate(texts: list[str], n: int, T: int) -> tuple[int, int, float]:
        enc = tok(texts, return_tensors="pt", padding=True).to(args.device)
        sync(args.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, max_new_tokens=T, min_new_tokens=0,
                                 num_return_sequences=n, temperature=1.0, top_p=1.0, top_k=0,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos)
        sync(args.device)
        seconds = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        is_eos = new == eos
        stopped = is_eos.any(1)
        lengths = torch.where(stopped, is_eos.float().argmax(1) + 1,
                              torch.full_like(stopped, new.shape[1], dtype=torch.long))
        # generate() ends at the longest row: a row shorter than T stopped at its EOS
        truncated = int((~stopped).sum()) if new.shape[1] == T else 0
        return int(lengths.sum()), truncated, seconds

    torch.manual_seed(args.seed)
    generate(prompts[:2], 2, 4)  # warm-up
    tokens, truncated, seconds = generate(prompts, args.n, args.new_tokens)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "rows": len(prompts) * args.n, "truncated": truncated}


def sample_rlnb(policy, task, prompts: list[str], args) -> dict:
    import torch

    policy.sample_texts(prompts[:2], 2, max_new_tokens=4,
                        generator=torch.Generator().manual_seed(1))  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    texts, flags = policy.sample_with_flags(prompts, args.n,
                                            generator=torch.Generator().manual_seed(args.seed))
    sync(args.device)
    seconds = time.perf_counter() - t0
    # The same sampler and generator: the same tokens, whose count the rollout's mask gives.
    index = torch.tensor([task.index(p) for p in prompts])
    rollout = policy.rollout(task, index, args.n,
                             generator=torch.Generator().manual_seed(args.seed))
    truncated = sum(sum(f) for f in flags)
    if int(rollout.extra["truncated"].sum()) != truncated:
        raise RuntimeError("sample_texts and rollout drew different completions from the "
                           "same generator; the token count would be wrong")
    tokens = int(rollout.mask.sum())
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "rows": len(texts) * args.n, "truncated": truncated}


# ------------------------------------------------------------------------------------------
# (b, c) one GRPO step
# ------------------------------------------------------------------------------------------
def grpo_step(policy, task, args) -> dict:
    import torch

    from rlnb.train import Trainer

    trainer = Trainer(policy, task, train_config(args, max_steps=2))
    cuda = torch.device(args.device).type == "cuda"
    sync(args.device)
    t0 = time.perf_counter()
    trainer.train(max_steps=1)  # warm-up
    sync(args.device)
    warm = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    history = trainer.train(max_steps=2)
    sync(args.device)
    seconds = time.perf_counter() - t0
    out = {"warmup_step_s": warm, "step_s": seconds,
           "mean_length": float(history.iloc[-1]["completions/mean_length"])}
    if cuda:
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
        out["peak_reserved"] = torch.cuda.max_memory_reserved()
    del trainer
    return out


# ------------------------------------------------------------------------------------------
# (d) bf16 against float32
# ------------------------------------------------------------------------------------------
def logp_of(policy, rollout):
    import torch

    with torch.no_grad():
        logp, _ = policy.log_probs(rollout)
    return logp.float().cpu()


def update_size(model_dir: Path, task, fixed, args, dtype, mixed: bool | None) -> dict:
    """Train ``args.update_steps`` steps at ``args.update_lr``; the mean |delta log p| of the
    fixed completions, and the policy's weight dtype."""
    import torch

    from rlnb.policies import LMPolicy
    from rlnb.train import Trainer

    options = {} if mixed is None else {"mixed_precision": mixed}
    policy = LMPolicy(model_dir, device=args.device, dtype=dtype,
                      max_new_tokens=args.update_tokens, **options)
    before = logp_of(policy, fixed)
    trainer = Trainer(policy, task, train_config(args, max_steps=args.update_steps,
                                                 learning_rate=args.update_lr))
    t0 = time.perf_counter()
    history = trainer.train()
    sync(args.device)
    seconds = time.perf_counter() - t0
    after = logp_of(policy, fixed)
    mask = fixed.mask
    delta = (after - before).abs()[mask].mean().item()
    weights = next(policy.parameters()).dtype
    result = {"mean_abs_delta_logp": delta, "seconds": seconds,
              "weights": str(weights).removeprefix("torch."),
              "reward_first": float(history.iloc[0]["reward"]),
              "reward_last": float(history.iloc[-1]["reward"])}
    del trainer, policy
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--vocab", type=int, default=None,
                   help="vocabulary size (default 151936; smaller only for a CPU smoke test)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--sample-prompts", type=int, default=32, help="prompts of the sampling test")
    p.add_argument("--n", type=int, default=8, help="completions per prompt, sampling test")
    p.add_argument("--update-steps", type=int, default=10)
    p.add_argument("--update-lr", type=float, default=1e-5)
    p.add_argument("--update-tokens", type=int, default=None,
                   help="max new tokens of the update check (default: --new-tokens)")
    p.add_argument("--no-pure-bf16", dest="pure_bf16", action="store_false",
                   help="skip the bf16-weights (mixed_precision=False) contrast row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None)
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args()
    args.update_tokens = args.update_tokens or args.new_tokens
    common.quiet_transformers()
    import torch

    from rlnb.policies import LMPolicy

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA GPU; run on a GPU machine "
              "(benchmarks/gpu_check.sh) or pass --device cpu for a smoke test", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model_dir = common.model_dir(args.layers, vocab=args.vocab, seed=args.seed, cache=args.cache,
                                 log=lambda m: print(m, file=sys.stderr, flush=True))
    build_s = time.perf_counter() - t0
    bf16 = torch.bfloat16
    task = common.task(args.seed)
    prompts = task.prompts[:args.sample_prompts]
    gpu = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    has_mixed = "mixed_precision" in inspect.signature(LMPolicy.__init__).parameters

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"model {model_dir} ({build_s:.0f} s); (a) sampling ...")
    hf = sample_hf(model_dir, prompts, args, bf16)  # its model is freed on return
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
    policy = LMPolicy(model_dir, device=args.device, dtype=bf16, max_new_tokens=args.new_tokens)
    rl = sample_rlnb(policy, task, prompts, args)
    log("(b, c) one GRPO step ...")
    step = grpo_step(policy, task, args)
    policy_weights = str(next(policy.parameters()).dtype).removeprefix("torch.")
    del policy
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()

    log("(d) bf16 against float32 ...")
    upd_task = even_token_task(args.seed)
    ref = LMPolicy(model_dir, device=args.device, dtype=torch.float32,
                   max_new_tokens=args.update_tokens)
    fixed = ref.rollout(upd_task, torch.arange(8), 4,
                        generator=torch.Generator().manual_seed(args.seed + 1))
    del ref
    runs = {"float32": update_size(model_dir, upd_task, fixed, args, torch.float32, None),
            "bf16 (mixed precision)": update_size(model_dir, upd_task, fixed, args, bf16,
                                                  True if has_mixed else None)}
    if args.pure_bf16 and has_mixed:
        runs["bf16 weights (mixed_precision=False)"] = update_size(
            model_dir, upd_task, fixed, args, bf16, False)
    base = runs["float32"]["mean_abs_delta_logp"]
    for r in runs.values():
        r["ratio_to_float32"] = r["mean_abs_delta_logp"] / base if base else float("nan")
    ratio = runs["bf16 (mixed precision)"]["ratio_to_float32"]
    ok = RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]

    config = common.model_config(args.layers, args.vocab)
    n_params = common.parameter_count(config)
    print(f"model: Qwen2.5-0.5B shape, {args.layers} layers, vocabulary {config.vocab_size}, "
          f"{n_params:,} parameters, random weights; device {gpu}; torch {torch.__version__}")
    print()
    print("| check | rlnb | transformers | rlnb / transformers |")
    print("|---|---|---|---|")
    print(f"| (a) sampling tokens/s ({len(prompts)} prompts x {args.n}, {args.new_tokens} new "
          f"tokens, bf16) | {rl['tokens_per_s']:,.0f} | {hf['tokens_per_s']:,.0f} | "
          f"{rl['tokens_per_s'] / hf['tokens_per_s']:.2f} |")
    print(f"| (a) completion tokens (rows that hit the cap) | {rl['tokens']} ({rl['truncated']}) | "
          f"{hf['tokens']} ({hf['truncated']}) | |")
    print(f"| (b) one GRPO step s (8 x 4, warm; weights {policy_weights}) | "
          f"{step['step_s']:.2f} (first step {step['warmup_step_s']:.2f}) | | |")
    if "peak_allocated" in step:
        print(f"| (c) peak GPU memory of the step GiB (allocated / reserved) | "
              f"{step['peak_allocated'] / common.GIB:.2f} / "
              f"{step['peak_reserved'] / common.GIB:.2f} | | |")
    else:
        print("| (c) peak GPU memory of the step | - (not on CUDA) | | |")
    print()
    print(f"(d) {args.update_steps} steps at lr {args.update_lr:g}, mean |delta log p| of 32 "
          "fixed completions:")
    print()
    print("| dtype | weights | mean abs delta log p | ratio to float32 | reward first -> last "
          "| s |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['weights']} | {r['mean_abs_delta_logp']:.3e} | "
              f"{r['ratio_to_float32']:.3f} | {r['reward_first']:.3f} -> {r['reward_last']:.3f} | "
              f"{r['seconds']:.1f} |")
    print()
    if not has_mixed:
        print("note: LMPolicy has no mixed_precision option in this checkout")
    print(f"bf16/float32 update ratio: {ratio:.3f} "
          f"({'ok' if ok else 'FAIL'}: expected in [{RATIO_RANGE[0]}, {RATIO_RANGE[1]}])")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "device": gpu, "torch": torch.__version__,
            "parameters": n_params, "sampling": {"rlnb": rl, "transformers": hf},
            "grpo_step": step, "policy_weights": policy_weights, "update_check": runs,
            "ratio": ratio, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
