"""GRPO steps per second: rlnb's Trainer + LMPolicy against TRL's GRPOTrainer, in one run.

Both train the same tiny Llama (same initial weights, loaded from the same directory) on
the same addition prompts with the same settings: 8 prompts x 8 generations, completions
of at most 16 tokens, temperature 1, learning rate 1e-6, AdamW, token-mean loss (TRL's
``loss_type="dapo"``), no KL term, one update per batch. TRL runs on the CPU with
``use_cpu=True, bf16=False`` and without gradient checkpointing.

    python benchmarks/grpo_vs_trl.py                           # 2 layers, hidden 64
    python benchmarks/grpo_vs_trl.py --layers 4 --hidden 256   # the larger check

The first ``--warmup`` steps of each side are excluded from the timing. TRL is timed with
both 1 and 2 torch threads and its faster setting is the one compared (rlnb picks its
thread count itself). The last line is ``speedup: <rlnb steps/s / TRL steps/s>``.
Needs the ``scale`` extra (``pip install -e ".[scale]"``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def build_model(directory: Path, task, *, layers: int, hidden: int, heads: int,
                kv_heads: int, seed: int) -> int:
    from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

    tok = char_tokenizer(task.alphabet, model_max_length=64)
    model = tiny_model(tiny_config("llama", len(tok), n_layer=layers, d_model=hidden,
                                   n_head=heads, n_kv_head=kv_heads, max_len=64), seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def time_rlnb(model_dir: Path, task, args) -> float:
    from rlnb.policies.lm import LMPolicy
    from rlnb.train import TrainConfig, Trainer

    policy = LMPolicy(model_dir, device="cpu", max_new_tokens=args.max_completion_length)
    config = TrainConfig(
        max_steps=args.steps + args.warmup, num_prompts_per_step=args.prompts,
        num_generations=args.generations, learning_rate=args.lr, optimizer="adamw",
        weight_decay=0.0, max_grad_norm=1.0, advantage="grpo", scale_rewards="group",
        policy_loss="ppo_clip", loss_agg_mode="token-mean", temperature=1.0,
        progress_bar=False, seed=args.seed,
    )
    trainer = Trainer(policy, task, config)
    trainer.train(max_steps=args.warmup)
    start = time.perf_counter()
    trainer.train()
    return args.steps / (time.perf_counter() - start)


def time_trl(model_dir: Path, task, args, threads: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = [task.prompt(i) for i in range(task.num_prompts)]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])

    def reward(completions, prompts, **kwargs):
        return [task.score(p, c) for p, c in zip(prompts, completions)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, targs, state, control, **kwargs):
            self.times.append(time.perf_counter())

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.prompts * args.generations,
            num_generations=args.generations, max_completion_length=args.max_completion_length,
            learning_rate=args.lr, max_steps=args.steps + args.warmup, temperature=1.0,
            beta=0.0, loss_type="dapo", scale_rewards="group", max_grad_norm=1.0,
            use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
            save_strategy="no", logging_steps=10_000, disable_dropout=True, seed=args.seed,
            lr_scheduler_type="constant", warmup_steps=0,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                              train_dataset=dataset, processing_class=tok, callbacks=[clock])
        trainer.train()
    timed = clock.times[args.warmup - 1:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def main() -> None:
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
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rlnb.envs import addition

    task = addition(256, digits=2, seed=args.seed)
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model(model_dir, task, layers=args.layers, hidden=args.hidden,
                               heads=args.heads, kv_heads=args.kv_heads, seed=args.seed)
        rlnb_sps = time_rlnb(model_dir, task, args)
        trl_sps = {}
        for threads in (1, 2):
            trl_sps[threads] = time_trl(model_dir, task, args, threads)
            torch.set_num_threads(threads_before)
    best = max(trl_sps, key=trl_sps.get)
    print(f"model: llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
          f"{args.kv_heads} KV heads; {args.prompts} prompts x {args.generations} generations, "
          f"max completion {args.max_completion_length}; {args.steps} timed steps; "
          f"{n_params:,} parameters")
    print(f"{'trainer':<28}{'steps/s':>10}")
    print(f"{'rlnb Trainer + LMPolicy':<28}{rlnb_sps:>10.2f}")
    for threads, sps in trl_sps.items():
        print(f"{f'TRL GRPOTrainer ({threads} thread' + ('s)' if threads > 1 else ')'):<28}"
              f"{sps:>10.2f}")
    print(f"speedup: {rlnb_sps / trl_sps[best]:.2f}")


if __name__ == "__main__":
    main()
