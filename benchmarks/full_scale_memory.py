"""Peak memory and time of one GRPO step on a Qwen2.5-0.5B-shaped model: rlnb's Trainer +
LMPolicy against TRL's GRPOTrainer, full fine-tuning and LoRA, with and without gradient
checkpointing, in one run.

The model: Qwen2ForCausalLM with the published Qwen2.5-0.5B config (hidden 896, MLP 4864,
24 layers, 14 heads, 2 KV heads, vocabulary 151936, tied embeddings, q/k/v biases, RoPE
theta 1e6, no sliding window; 494M parameters), random weights (seeded), float32, built
once by ``save_pretrained`` into ``~/.cache/rlnb/benchmarks`` (or ``$RLNB_CACHE``) with
rlnb's character tokenizer over the task's alphabet (ids 0-15; the vocabulary and so the
embedding and the logits keep their full size). Both trainers load it from that directory.

The step, the same on both sides: rlnb's addition task (``addition(256, digits=2)``),
8 prompts x 4 generations, at most 64 new tokens, temperature 1, learning rate 1e-6,
AdamW (no weight decay), gradient norm clipped at 1.0, token-mean loss (TRL's
``loss_type="dapo"``), beta 0 (no reference model, TRL's default), one update per batch.
The 32 completions are one generation batch and one optimizer step, taken as
``per_device_train_batch_size=8`` x ``gradient_accumulation_steps=4`` (TRL's
``steps_per_generation`` defaults to the accumulation steps, so its generation batch is
8 x 4 = 32: one generation, one optimizer step, ``max_steps=1``; both are checked). TRL
runs with ``use_cpu=True, bf16=False``. A random model almost never samples its EOS (1 id
in 151936), so every completion runs the full 64 tokens, and every reward is 0 (GRPO's
advantages and so its gradients are 0; the backward pass and the optimizer step run all
the same, so memory and time are those of a real step). Mean completion lengths and
rewards are printed for both sides.

LoRA: ``peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0, target_modules=q,k,v,o,gate,
up,down)`` (8.8M trainable parameters), ``LMPolicy(lora=...)`` and TRL's ``peft_config``.
Gradient checkpointing: ``TrainConfig(gradient_checkpointing=True)`` and TRL's
``activation_checkpointing=True``.

Every row runs in a fresh Python process, so each peak is that row's alone: the peak
resident memory is the process's ``VmHWM`` (``/proc/self/status``; ``ru_maxrss`` where
there is no /proc) read after the step; the resident memory after loading (model, policy
or trainer built, before the step) is printed beside it, so the step's own cost shows.
"step s" is the wall time of the one step -- sampling, rewards, scoring, backward passes
and the optimizer step: rlnb's ``Trainer.train()``, TRL from ``on_train_begin`` (after
its optimizer and data loader are set up) to ``on_step_end``; loading (weights, LoRA
injection, trainer set-up) is timed apart ("load s"). Both sides run on ``--threads``
torch threads (rlnb's ``torch_threads`` and ``matmul_threads`` both set to it). Ratios are
rlnb / TRL for each (mode, checkpointing) pair: below 1 means rlnb uses less.

    python benchmarks/full_scale_memory.py                      # the full table (8 rows)
    python benchmarks/full_scale_memory.py --json results.json  # also written as JSON
    python benchmarks/full_scale_memory.py --layers 2 --new-tokens 8   # quick check, ~12 min
    python benchmarks/full_scale_memory.py --rows rlnb-full-nockpt,trl-full-nockpt
    python benchmarks/full_scale_memory.py --rows rlnb-full-ckpt,trl-full-ckpt --repeats 3

Time, on the project's 2-core machine (estimated for the full model, which was not run
while this was written): the cut-down command above took 11.5 minutes for its 8 rows
(50-75 s a step under a load average of 4-5 from other work); with ``--new-tokens 4`` at
load 1 a step took 14-15 s on both sides. The full model does 20-40 times the work of
the latter (3x the parameters per token, 16x the sampling steps, ~6x the scored tokens):
expect 5-10 minutes a row and 1-1.5 hours for the 8 rows on a quiet machine, several
times that under load (``--rows`` runs a subset). Building the model takes ~20 s once
(2.0 GB on disk). Expected memory (24 layers, float32; first-order terms):
weights 1.98 GB; full fine-tuning adds gradients 1.98 GB and AdamW's two moments 3.95 GB
(~7.9 GB before activations), plus per micro-batch of 8 rows the logits 8 x ~70 x 151936
x 4 B = 0.34 GB with their log-softmax and gradient (about 1 GB), plus ~1.5 GB of layer
activations without checkpointing: roughly 9-13 GB peak. LoRA keeps the 2 GB of weights,
adds 0.1 GB of adapters, gradients and moments, and the same activations and logits:
roughly 3-6 GB. Every row fits in 24 GiB. (The cut-down run, 2 layers and 8 tokens:
2.5 GiB of weights, gradients and moments, 3.0-3.6 GiB peak full, 1.3-1.5 GiB LoRA.) A
row that fails (an option this checkout lacks, a crash, memory) is printed as an error in
its row; the other rows still run.

"RSS after load" counts the weight pages read so far: safetensors maps the file, and a
page is resident once touched, so this figure can be below the weights' size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _full_scale_common as common  # noqa: E402

SYSTEMS = ("rlnb", "trl")
MODES = ("full", "lora")
CKPTS = ("nockpt", "ckpt")
ALL_ROWS = [f"{s}-{m}-{c}" for m in MODES for c in CKPTS for s in SYSTEMS]

PROMPTS, GENERATIONS = 8, 4
MICRO_BATCH, ACCUMULATION = 8, 4  # 8 x 4 = 32 = PROMPTS x GENERATIONS completions per step
LEARNING_RATE = 1e-6


class MissingOption(RuntimeError):
    """An option the row needs is not in this checkout's rlnb."""


# ------------------------------------------------------------------------------------------
# one row, in its own process
# ------------------------------------------------------------------------------------------
def rlnb_row(model_dir: Path, task, args, mode: str, ckpt: bool) -> dict:
    from rlnb.policies import LMPolicy
    from rlnb.train import TrainConfig, Trainer

    policy_options = set(inspect.signature(LMPolicy.__init__).parameters)
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = ["LMPolicy(lora=...)"] if mode == "lora" and "lora" not in policy_options else []
    missing += [f"TrainConfig({name}=...)" for name in
                ("per_device_train_batch_size", "gradient_accumulation_steps",
                 "gradient_checkpointing") if name not in config_fields]
    if missing:
        raise MissingOption("missing option: " + ", ".join(missing) + " not in this checkout")

    t0 = time.perf_counter()
    policy = LMPolicy(model_dir, device="cpu", dtype="float32", max_new_tokens=args.new_tokens,
                      lora=common.lora_config() if mode == "lora" else None)
    config = TrainConfig(
        max_steps=1, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
        learning_rate=LEARNING_RATE, optimizer="adamw", weight_decay=0.0, max_grad_norm=1.0,
        advantage="grpo", scale_rewards="group", policy_loss="ppo_clip",
        loss_agg_mode="token-mean", temperature=1.0, beta=0.0, num_iterations=1,
        per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=ACCUMULATION,
        gradient_checkpointing=ckpt, progress_bar=False, seed=args.seed,
        torch_threads=args.threads, matmul_threads=args.threads,
    )
    trainer = Trainer(policy, task, config)
    load_s = time.perf_counter() - t0
    ckpt_on = bool(getattr(policy, "gradient_checkpointing", False))
    if ckpt_on != ckpt:
        raise RuntimeError(f"rlnb's policy has gradient checkpointing {ckpt_on}, asked {ckpt}")
    loaded = common.rss_bytes()
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    history = trainer.train()
    step_s = time.perf_counter() - t0
    peak = common.peak_rss_bytes()
    if len(history) != 1:
        raise RuntimeError(f"rlnb ran {len(history)} steps, expected 1")
    row = history.iloc[0]
    return {"load_s": load_s, "step_s": step_s, "rss_loaded": loaded, "peak_rss": peak,
            "trainable": trainable, "mean_length": float(row["completions/mean_length"]),
            "reward": float(row["reward"]), "threads": trainer.threads(),
            "engine": getattr(policy, "engine", None),
            "phases_s": {k: float(row[f"time/{k}_seconds"])
                         for k in ("rollout", "reward", "update", "step")
                         if f"time/{k}_seconds" in row}}


def trl_row(model_dir: Path, task, args, mode: str, ckpt: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin = self.end = None
            self.steps = 0
            self.metrics: dict[str, list] = {}

        def on_train_begin(self, targs, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            self.end = time.perf_counter()
            self.steps += 1
            # read before the step's log() clears them
            self.metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}

    def reward(completions, prompts, **kwargs):
        return [task.score(p, c) for p, c in zip(prompts, completions)]

    dataset = Dataset.from_list([{"prompt": task.prompt(i)} for i in range(task.num_prompts)])
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=ACCUMULATION, num_generations=GENERATIONS,
            max_completion_length=args.new_tokens, learning_rate=LEARNING_RATE, max_steps=1,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1,
            loss_type="dapo", scale_rewards="group", max_grad_norm=1.0, weight_decay=0.0,
            use_cpu=True, bf16=False, activation_checkpointing=ckpt, report_to=[],
            save_strategy="no", logging_steps=10_000, disable_tqdm=True, disable_dropout=True,
            seed=args.seed, lr_scheduler_type="constant", warmup_steps=0,
        )
        if (config.steps_per_generation, config.generation_batch_size) != (
                ACCUMULATION, PROMPTS * GENERATIONS):
            raise RuntimeError(
                f"TRL would generate {config.generation_batch_size} completions every "
                f"{config.steps_per_generation} micro-batches, expected "
                f"{PROMPTS * GENERATIONS} every {ACCUMULATION}")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                              train_dataset=dataset, processing_class=tok, callbacks=[clock],
                              peft_config=common.lora_config() if mode == "lora" else None)
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        generations = []
        generate = trainer._generate_and_score_completions

        def counted(inputs):
            generations.append(len(inputs))
            return generate(inputs)

        trainer._generate_and_score_completions = counted
        load_s = time.perf_counter() - t0
        loaded = common.rss_bytes()
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the end-of-training summary
            trainer.train()
        train_call_s = time.perf_counter() - t0
        peak = common.peak_rss_bytes()
    if trainer.state.global_step != 1 or clock.steps != 1:
        raise RuntimeError(f"TRL took {trainer.state.global_step} optimizer steps, expected 1")
    if generations != [PROMPTS * GENERATIONS]:
        raise RuntimeError(f"TRL generated batches of {generations} rows, expected one of "
                           f"{PROMPTS * GENERATIONS}")
    ckpt_on = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    if ckpt_on != ckpt:
        raise RuntimeError(f"TRL's model has gradient checkpointing {ckpt_on}, asked {ckpt}")
    metrics = clock.metrics
    lengths = metrics.get("completions/mean_length") or [float("nan")]
    rewards = metrics.get("reward") or [float("nan")]
    return {"load_s": load_s, "step_s": clock.end - clock.begin, "train_call_s": train_call_s,
            "rss_loaded": loaded, "peak_rss": peak, "trainable": trainable,
            "mean_length": float(lengths[-1]), "reward": float(rewards[-1]),
            "threads": torch.get_num_threads()}


def child(spec: dict) -> dict:
    """One row in this (fresh) process: ``spec`` from :func:`main`."""
    args = argparse.Namespace(**spec["args"])
    import torch

    torch.set_num_threads(args.threads)
    common.quiet_transformers()
    task = common.task(args.seed)
    system, mode, ckpt = spec["row"].split("-")
    fn = rlnb_row if system == "rlnb" else trl_row
    try:
        result = fn(Path(spec["model_dir"]), task, args, mode, ckpt == "ckpt")
    except MissingOption as err:
        return {"error": str(err)}
    except Exception as err:  # reported in its row; the other rows still run
        tb = traceback.format_exc()
        return {"error": f"{type(err).__name__}: {err}", "traceback": tb[-3000:]}
    if result["threads"] != args.threads:
        result["note"] = f"ran on {result['threads']} threads, asked {args.threads}"
    return result


def run_child(spec: dict, env: dict | None = None) -> dict:
    """Run ``spec`` in a fresh interpreter; a crash (killed for memory, ...) becomes a row
    error."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        why = f"exit status {out.returncode}" + (" (killed: out of memory?)"
                                                 if out.returncode in (-9, 137) else "")
        return {"error": f"process failed, {why}: {out.stderr.strip()[-600:]}"}
    return json.loads(lines[-1])


def build_child(spec: dict) -> dict:
    """Build (or find) the model directory, in its own process so that the parent stays
    small."""
    import torch

    torch.set_num_threads(spec["threads"])
    common.quiet_transformers()
    path = common.model_dir(spec["layers"], seed=spec["seed"], cache=spec["cache"],
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    return {"model_dir": str(path)}


# ------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------
def gib(x: float | None) -> str:
    return "-" if x is None else f"{x / common.GIB:.2f}"


def table(results: dict[str, dict]) -> str:
    lines = ["| system | mode | grad ckpt | peak RSS GiB | RSS after load GiB | step s | "
             "load s | mean length | trainable params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        system, mode, ckpt = key.split("-")
        name = {"rlnb": "rlnb Trainer", "trl": "TRL GRPOTrainer"}[system]
        mode_s = {"full": "full", "lora": "LoRA"}[mode]
        ckpt_s = {"ckpt": "on", "nockpt": "off"}[ckpt]
        if "error" in r:
            lines.append(f"| {name} | {mode_s} | {ckpt_s} | error: {r['error'][:300]} "
                         "| | | | | |")
            continue
        lines.append(f"| {name} | {mode_s} | {ckpt_s} | {gib(r['peak_rss'])} | "
                     f"{gib(r['rss_loaded'])} | {r['step_s']:.1f} | {r['load_s']:.1f} | "
                     f"{r['mean_length']:.1f} | {r['trainable']:,} |")
    lines += ["", "| mode | grad ckpt | memory rlnb/TRL | step time rlnb/TRL |",
              "|---|---|---|---|"]
    for mode in MODES:
        for ckpt in CKPTS:
            a = results.get(f"rlnb-{mode}-{ckpt}")
            b = results.get(f"trl-{mode}-{ckpt}")
            if a is None or b is None:
                continue
            if "error" in a or "error" in b:
                mem = time_ = "-"
            else:
                mem = f"{a['peak_rss'] / b['peak_rss']:.2f}"
                time_ = f"{a['step_s'] / b['step_s']:.2f}"
            lines.append(f"| {'LoRA' if mode == 'lora' else 'full'} | "
                         f"{'on' if ckpt == 'ckpt' else 'off'} | {mem} | {time_} |")
    return "\n".join(lines)


def median_row(rs: list[dict]) -> dict:
    """One row's result over its repeats: the median step time, load time and peak (each
    the median on its own); the first error if any repeat failed."""
    errors = [r for r in rs if "error" in r]
    if errors:
        return errors[0]
    if len(rs) == 1:
        return rs[0]
    out = dict(rs[0])
    for k in ("step_s", "load_s", "train_call_s", "peak_rss", "rss_loaded"):
        if all(k in r for r in rs):
            out[k] = statistics.median(r[k] for r in rs)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--child", "--build"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        spec = json.loads(sys.argv[2])
        print(json.dumps(child(spec) if sys.argv[1] == "--child" else build_child(spec)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=24,
                   help="decoder layers (24: Qwen2.5-0.5B; fewer for a quick check, same widths)")
    p.add_argument("--new-tokens", type=int, default=64, help="max new tokens per completion")
    p.add_argument("--rows", default="all",
                   help=f"comma-separated rows to run, of {','.join(ALL_ROWS)} (default all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None,
                   help="where the model directory is kept (default ~/.cache/rlnb/benchmarks)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the rows this many times, interleaved (row a, row b, row a, ...), "
                        "and report each row's median step time and peak (default 1)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = (ALL_ROWS if args.rows == "all"
            else [r.strip() for r in args.rows.split(",") if r.strip()])
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; rows are {','.join(ALL_ROWS)}")
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    built = subprocess.run(
        [sys.executable, __file__, "--build",
         json.dumps({"layers": args.layers, "seed": args.seed, "cache": args.cache,
                     "threads": args.threads})],
        capture_output=True, text=True, env={**os.environ, **env})
    if built.returncode:
        sys.exit(f"building the model failed:\n{built.stderr[-3000:]}")
    model_dir = json.loads(built.stdout.strip().splitlines()[-1])["model_dir"]
    if built.stderr.strip():
        print(built.stderr.strip(), file=sys.stderr)
    config = common.model_config(args.layers)
    n_params = common.parameter_count(config)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {key: [] for key in rows}
    for repeat in range(args.repeats):
        for key in rows:
            spec = {"row": key, "args": vars(args), "model_dir": model_dir}
            t0 = time.perf_counter()
            r = run_child(spec, env)
            runs[key].append(r)
            what = (f"error: {r['error'][:200]}" if "error" in r else
                    f"peak {gib(r['peak_rss'])} GiB, step {r['step_s']:.1f} s")
            print(f"{key} [{repeat + 1}/{args.repeats}]: {what} "
                  f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})",
                  file=sys.stderr, flush=True)
    results = {key: median_row(rs) for key, rs in runs.items()}
    load_after = os.getloadavg()
    header = (f"model: Qwen2.5-0.5B shape, {args.layers} layers, {n_params:,} parameters, "
              f"random weights, float32, CPU; {PROMPTS} prompts x {GENERATIONS} generations, "
              f"max {args.new_tokens} new tokens, micro-batch {MICRO_BATCH} x "
              f"{ACCUMULATION} accumulation, lr {LEARNING_RATE:g}, beta 0; {args.threads} "
              f"torch threads; each row a fresh process"
              + (f", {args.repeats} interleaved repeats, medians" if args.repeats > 1 else "")
              + f"; {os.cpu_count()} CPUs, load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(header)
    print()
    print(table(results))
    engines = [f"{key} {r['engine']}" for key, r in results.items() if r.get("engine")]
    if engines:
        print("\nrlnb's engine (fast: its own forward; hf: the model's, as with LoRA or "
              "checkpointing): " + ", ".join(engines))
    if args.repeats > 1:
        print("\nstep s of each repeat: " + "; ".join(
            f"{key} " + ", ".join(f"{r['step_s']:.1f}" if "error" not in r else "error"
                                  for r in rs) for key, rs in runs.items()))
    for key, r in results.items():
        if "traceback" in r:
            print(f"\n{key} traceback:\n{r['traceback']}", file=sys.stderr)
        if "note" in r:
            print(f"{key}: {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "header": header, "args": vars(args), "parameters": n_params,
            "model_dir": model_dir, "load_average": [load_before[0], load_after[0]],
            "rows": results, "repeats": runs}, indent=2))


if __name__ == "__main__":
    main()
