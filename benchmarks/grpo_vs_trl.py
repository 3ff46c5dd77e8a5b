"""GRPO steps per second: rlnb's Trainer + LMPolicy against TRL's GRPOTrainer, in one run.

Both train the same tiny Llama (same initial weights, loaded from the same directory) on
the same addition prompts with the same settings: 8 prompts x 8 generations, completions
of at most 16 tokens, temperature 1, learning rate 1e-6, AdamW, token-mean loss (TRL's
``loss_type="dapo"``), no KL term and no reference model, one update per batch. TRL runs
on the CPU with ``use_cpu=True, bf16=False`` and without gradient checkpointing.

    python benchmarks/grpo_vs_trl.py                           # 2 layers, hidden 64
    python benchmarks/grpo_vs_trl.py --layers 4 --hidden 256   # the larger check

How it is timed, so that a busy machine hurts neither side more than the other:

* each side trains ``--warmup`` steps first (excluded), then ``--steps`` timed steps;
* the runs are interleaved -- rlnb, TRL on 1 thread, TRL on 2 threads, then again --
  ``--repeats`` times, and the table reports the median of each (all runs are printed);
* TRL is timed with both 1 and 2 torch threads and its faster median is compared with
  rlnb as configured by default (it picks its thread count itself: 1 below a million
  parameters, all cores above); ``--rlnb-threads 1 2`` adds rows for rlnb with a fixed
  count;
* TRL's progress bar and log printing are off; both sides' mean completion length is
  printed, to show they generated the same amount of text;
* the load average before and after is printed: numbers taken on a loaded machine
  compare the two sides fairly but are not the machine's best;
* every timed run is a fresh Python process (the parent builds the model once and
  orchestrates), so no run inherits another's allocator state, thread pools or caches.

The C allocator. rlnb's trainer asks glibc to keep freed memory for re-use
(``TrainConfig.keep_freed_memory``, :mod:`rlnb.allocator`), which spares every
step the page faults of its large temporaries. TRL as shipped does not; the same setting
can be given to any process through ``GLIBC_TUNABLES``, so TRL is also timed with it
(rows marked "keep freed memory"). Two ratios are printed: against TRL's best setting as
shipped (the last line) and against TRL's best setting of all, allocator included.
``--ablations`` adds rlnb rows without the fused CPU kernels (:mod:`rlnb.policies.lm.fast.native`,
``RLNB_NATIVE=0``), without the activation replay (:mod:`rlnb.policies.lm.fast.replay`) and
without the allocator setting.

rlnb's median milliseconds per phase (sampling, rewards, update, whole step; the Trainer
logs them as ``time/*_seconds``) are printed under the table. The last line is
``speedup: <rlnb steps/s / TRL steps/s>`` (medians; TRL as shipped). Needs the
``scale`` extra (``pip install -e ".[scale]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def build_model(directory: Path, task, *, layers: int, hidden: int, heads: int,
                kv_heads: int, seed: int, base: str = "random") -> int:
    """Save the model both trainers start from in ``directory``; its parameter count.
    ``base="random"``: a random initialisation (every reward is 0, so GRPO's gradient is
    0 and completions run to the length cap: a measure of the machinery alone).
    ``base="pretrained"``: :func:`rlnb.policies.tiny.pretrain_base` on the task, stopped
    at its first evaluation with pass@1 >= 0.2 (cached on disk; ~30 s the first time; the
    mean reward is then ~0.7 on these 256 prompts): rewards vary, gradients are not 0 and
    completions stop at their EOS, as in a real GRPO run."""
    import shutil

    from transformers import AutoModelForCausalLM

    from rlnb.policies.tiny import char_tokenizer, pretrain_base, tiny_config, tiny_model

    if base == "pretrained":
        path = pretrain_base(task, n_layer=layers, d_model=hidden, n_head=heads,
                             n_kv_head=kv_heads, max_len=64, seed=seed, target_pass_at_1=0.2,
                             progress=False)
        shutil.copytree(path, directory)
        model = AutoModelForCausalLM.from_pretrained(directory)
        return sum(p.numel() for p in model.parameters())
    tok = char_tokenizer(task.alphabet, model_max_length=64)
    model = tiny_model(tiny_config("llama", len(tok), n_layer=layers, d_model=hidden,
                                   n_head=heads, n_kv_head=kv_heads, max_len=64), seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


# The same values as rlnb.allocator, for a process that is not rlnb's.
KEEP_FREED_TUNABLES = ("glibc.malloc.mmap_threshold=33554432:"
                       "glibc.malloc.trim_threshold=1073741824")


def time_rlnb(model_dir: Path, task, args, threads: int | None = None, *,
              replay: bool = True, keep_freed: bool = True) -> dict:
    """One rlnb run: steps/s over the timed steps, their mean completion length, threads
    (``threads=None``: rlnb's own choice, ``TrainConfig.torch_threads=None``).
    ``replay=False`` scores every update with a forward pass; ``keep_freed=False`` leaves
    the C allocator as it is."""
    from rlnb.policies.lm import LMPolicy
    from rlnb.train import TrainConfig, Trainer

    if not replay:
        LMPolicy.replay_supported = property(lambda self: False)
    policy = LMPolicy(model_dir, device="cpu", max_new_tokens=args.max_completion_length)
    config = TrainConfig(
        max_steps=args.steps + args.warmup, num_prompts_per_step=args.prompts,
        num_generations=args.generations, learning_rate=args.lr, optimizer="adamw",
        weight_decay=0.0, max_grad_norm=1.0, advantage="grpo", scale_rewards="group",
        policy_loss="ppo_clip", loss_agg_mode="token-mean", temperature=1.0, beta=0.0,
        num_iterations=1, progress_bar=False, seed=args.seed, torch_threads=threads,
        keep_freed_memory=keep_freed,
    )
    trainer = Trainer(policy, task, config)
    trainer.train(max_steps=args.warmup)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    timed = history.iloc[args.warmup:]
    phases = {k: 1000 * float(timed[f"time/{k}_seconds"].median())
              for k in ("rollout", "reward", "update", "step")}
    return {"steps_per_s": args.steps / seconds, "threads": trainer.threads(),
            "mean_length": float(timed["completions/mean_length"].mean()),
            "mean_reward": float(timed["reward"].mean()), "phases_ms": phases}


def time_trl(model_dir: Path, task, args, threads: int) -> dict:
    """One TRL run on ``threads`` torch threads: steps/s over the timed steps, and their
    mean completion length."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = [task.prompt(i) for i in range(task.num_prompts)]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])

    def reward(completions, prompts, **kwargs):
        return [task.score(p, c) for p, c in zip(prompts, completions)]

    class Clock(TrainerCallback):
        """Time and mean completion length at the end of every step."""

        def __init__(self):
            self.times, self.lengths, self.rewards, self.threads = [], [], [], set()

        def on_step_end(self, targs, state, control, **kwargs):
            self.times.append(time.perf_counter())
            self.threads.add(torch.get_num_threads())
            lengths = trainer._metrics["train"].get("completions/mean_length") or [float("nan")]
            self.lengths.append(lengths[-1])
            rewards = trainer._metrics["train"].get("reward") or [float("nan")]
            self.rewards.append(rewards[-1])

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.prompts * args.generations,
            num_generations=args.generations, max_completion_length=args.max_completion_length,
            learning_rate=args.lr, max_steps=args.steps + args.warmup, temperature=1.0,
            top_p=1.0, top_k=0, beta=0.0, num_iterations=1, gradient_accumulation_steps=1,
            loss_type="dapo", scale_rewards="group", max_grad_norm=1.0, weight_decay=0.0,
            use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=10_000, disable_tqdm=True, disable_dropout=True,
            seed=args.seed, lr_scheduler_type="constant", warmup_steps=0,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                              train_dataset=dataset, processing_class=tok, callbacks=[clock])
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        with contextlib.redirect_stdout(io.StringIO()):  # the end-of-training summary
            trainer.train()
    if clock.threads != {threads}:
        raise RuntimeError(f"TRL ran on {sorted(clock.threads)} threads, asked for {threads}")
    timed = clock.times[args.warmup - 1:]
    return {"steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]), "threads": threads,
            "mean_length": statistics.fmean(clock.lengths[args.warmup:]),
            "mean_reward": statistics.fmean(clock.rewards[args.warmup:])}


RLNB_RUNS = {
    # key: (label, options of time_rlnb, extra environment of the timed process)
    "rlnb": ("rlnb Trainer + LMPolicy", {}, None),
    "rlnb-nonative": ("rlnb, PyTorch ops only", {}, {"RLNB_NATIVE": "0"}),
    "rlnb-noreplay": ("rlnb, forward-pass scoring", {"replay": False}, None),
    "rlnb-nofreed": ("rlnb, allocator as is", {"keep_freed": False}, None),
}


def child(spec: dict) -> dict:
    """One timed run, in this (fresh) process: ``spec`` from :func:`main`."""
    args = argparse.Namespace(**spec["args"])
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside TRL
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars
    hf_logging.set_verbosity_error()
    from rlnb.envs import addition

    task = addition(256, digits=2, seed=args.seed)
    model_dir = Path(spec["model_dir"])
    if spec["kind"] == "rlnb":
        return time_rlnb(model_dir, task, args, spec.get("threads"), **spec.get("options", {}))
    return time_trl(model_dir, task, args, spec["threads"])


def run_child(spec: dict, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(f"timed run {spec['kind']} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved repeats (TRL's speed can move +-15%% between runs on a shared machine)")
    p.add_argument("--trl-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-trl-keep-freed", dest="trl_keep_freed", action="store_false",
                   help="do not also time TRL with the allocator setting rlnb uses")
    p.add_argument("--rlnb-threads", type=int, nargs="*", default=[],
                   help="also time rlnb with these TrainConfig.torch_threads (extra rows)")
    p.add_argument("--ablations", action="store_true",
                   help="also time rlnb without the fused CPU kernels, without the "
                        "activation replay and without the allocator setting")
    p.add_argument("--base", choices=("random", "pretrained"), default="random",
                   help="the starting model: a random initialisation (every reward 0) or "
                        "a base model pre-trained on the task (pretrain_base)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (TRL's clock starts at the end of a step)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from rlnb.envs import addition

    task = addition(256, digits=2, seed=args.seed)
    labels = {key: label for key, (label, _, _) in RLNB_RUNS.items()}
    plan: list[tuple[str, dict, dict | None]] = []  # (key, spec, extra environment)
    for key in RLNB_RUNS if args.ablations else ["rlnb"]:
        _, options, env = RLNB_RUNS[key]
        plan.append((key, {"kind": "rlnb", "options": options}, env))
    for t in args.rlnb_threads:
        labels[f"rlnb-t{t}"] = f"rlnb, torch_threads={t}"
        plan.append((f"rlnb-t{t}", {"kind": "rlnb", "threads": t}, None))
    for t in args.trl_threads:
        labels[f"trl{t}"] = "TRL GRPOTrainer"
        plan.append((f"trl{t}", {"kind": "trl", "threads": t}, None))
    if args.trl_keep_freed:
        for t in args.trl_threads:
            labels[f"trl{t}-freed"] = "TRL, keep freed memory"
            plan.append((f"trl{t}-freed", {"kind": "trl", "threads": t},
                         {"GLIBC_TUNABLES": KEEP_FREED_TUNABLES}))
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model(model_dir, task, layers=args.layers, hidden=args.hidden,
                               heads=args.heads, kv_heads=args.kv_heads, seed=args.seed,
                               base=args.base)
        for rep in range(args.repeats):
            for key, spec, env in plan:
                spec = {**spec, "args": vars(args), "model_dir": str(model_dir)}
                result = run_child(spec, env)
                runs.setdefault(key, []).append(result)
                print(f"repeat {rep + 1}/{args.repeats}: {key} {result['steps_per_s']:.2f} steps/s "
                      f"(load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    def median(key: str) -> float:
        return statistics.median(r["steps_per_s"] for r in runs[key])

    print(f"model: llama ({args.base}), {args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
          f"{args.kv_heads} KV heads, {n_params:,} parameters; {args.prompts} prompts x "
          f"{args.generations} generations, max completion {args.max_completion_length}; "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} interleaved "
          f"repeats, each run a fresh process; {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'trainer':<28}{'threads':>8}{'steps/s':>10}{'mean length':>13}{'reward':>8}"
          "  runs (steps/s)")
    for key, rs in runs.items():
        each = " ".join(f"{r['steps_per_s']:.2f}" for r in rs)
        threads = "/".join(str(t) for t in sorted({r["threads"] for r in rs}))
        length = statistics.fmean(r["mean_length"] for r in rs)
        reward = statistics.fmean(r["mean_reward"] for r in rs)
        print(f"{labels[key]:<28}{threads:>8}{median(key):>10.2f}{length:>13.2f}{reward:>8.3f}"
              f"  {each}")
    phases = {k: statistics.median(r["phases_ms"][k] for r in runs["rlnb"])
              for k in ("rollout", "reward", "update", "step")}
    print("rlnb per step (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    shipped = max((k for k in runs if k.startswith("trl") and not k.endswith("-freed")),
                  key=median)
    if args.trl_keep_freed:
        best = max((k for k in runs if k.startswith("trl")), key=median)
        print(f"speedup against TRL's best setting, allocator included: "
              f"{median('rlnb') / median(best):.2f}")
    if args.rlnb_threads:
        best_rlnb = max((k for k in runs if k.startswith("rlnb")), key=median)
        print(f"best rlnb setting / best TRL setting as shipped: "
              f"{median(best_rlnb) / median(shipped):.2f}")
    print(f"speedup: {median('rlnb') / median(shipped):.2f}")


if __name__ == "__main__":
    main()
