"""Sampling throughput: vLLM (through rlnb's ``VLLMSampler``) against rlnb's own sampler and
plain ``transformers.generate``, on the same model and prompts, in one run.

The workload is pass@k's: ``--prompts`` prompts of the addition task, ``--n`` samples each,
at most ``--new-tokens`` new tokens, temperature 1. Tokens are counted as generated (up to
and including each row's EOS); "tokens/s" excludes loading and vLLM's start-up, which is
printed apart. Ratios are vLLM / the other: above 1 means vLLM is faster.

Models: ``--model tiny`` (default) a random 2-layer Llama, hidden 128, 4 heads (head size
32, which vLLM's CPU attention serves), over the task's character vocabulary;
``--model qwen0.5b`` the Qwen2.5-0.5B shape of ``benchmarks/full_scale_memory.py`` (its
published config, random weights, vocabulary 151,936; ``--layers`` cuts its depth).

Run it where vLLM is installed (``make vllm`` builds ``.venv-vllm`` on the CPU; on a GPU,
an environment with the ``vllm`` package)::

    .venv-vllm/bin/python benchmarks/vllm_sampling.py                          # tiny, ~2 min
    .venv-vllm/bin/python benchmarks/vllm_sampling.py --prompts 64 --n 256     # card 1's n
    .venv-vllm/bin/python benchmarks/vllm_sampling.py --model qwen0.5b --prompts 4 --n 8

``transformers.generate`` samples each batch of ``--hf-batch`` rows with its KV cache; it
has no EOS-aware early exit per row (it runs until every row has stopped), which is what a
user of plain ``generate`` gets.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_dir(root: Path, alphabet: str) -> Path:
    from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

    tok = char_tokenizer(alphabet)
    model = tiny_model(tiny_config("llama", len(tok), n_layer=2, d_model=128, n_head=4,
                                   n_kv_head=2, max_len=128), seed=0)
    path = root / "tiny-llama-h128"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rlnb_run(path: Path, task, prompts, n: int, T: int, threads: int) -> dict:
    import torch

    from rlnb.policies import LMPolicy

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pi = LMPolicy(path, max_new_tokens=T)
    load = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    pi.rollout(task, prompts[:1], 2, generator=g)  # warm-up (kernels, caches)
    tokens, t0 = 0, time.perf_counter()
    chunk = max(1, 4096 // n)
    for i in range(0, len(prompts), chunk):
        ro = pi.rollout(task, prompts[i:i + chunk], n, generator=g)
        tokens += int(ro.mask.sum())
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "load_s": load,
            "engine": pi.engine}


def hf_run(path: Path, task, prompts, n: int, T: int, threads: int, batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rlnb.policies.lm.load import load_tokenizer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = load_tokenizer(path)
    load = time.perf_counter() - t0
    eos = tok.eos_token_id
    rows = [tok(task.prompt(int(i)))["input_ids"] for i in prompts for _ in range(n)]
    torch.manual_seed(0)
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        L = max(map(len, part))
        ids = torch.tensor([[tok.pad_token_id] * (L - len(r)) + r for r in part])
        mask = (torch.arange(L)[None] >= torch.tensor([L - len(r) for r in part])[:, None])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id)
        for row in out[:, L:].tolist():
            k = next((j + 1 for j, t in enumerate(row) if t == eos), len(row))
            tokens += k
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "load_s": load}


def vllm_run(path: Path, task, prompts, n: int, T: int, kv_gib: float) -> dict:
    import torch

    from rlnb.policies.lm.vllm_engine import VLLMSampler

    t0 = time.perf_counter()
    engine = VLLMSampler(path, max_new_tokens=T, kv_cache_gib=kv_gib).start()
    start = time.perf_counter() - t0
    try:
        g = torch.Generator().manual_seed(0)
        engine.rollout(task, prompts[:1], 2, generator=g)  # warm-up
        tokens, t0 = 0, time.perf_counter()
        chunk = max(1, 4096 // n)
        for i in range(0, len(prompts), chunk):
            ro = engine.rollout(task, prompts[i:i + chunk], n, generator=g)
            tokens += int(ro.mask.sum())
        return {"seconds": time.perf_counter() - t0, "tokens": tokens, "load_s": start}
    finally:
        engine.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("tiny", "qwen0.5b"), default="tiny")
    p.add_argument("--layers", type=int, default=None, help="qwen0.5b: decoder layers (24)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=64, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of rlnb and transformers (vLLM uses its own)")
    p.add_argument("--hf-batch", type=int, default=512, help="rows per generate() call")
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--rows", default="vllm,rlnb,hf",
                   help="which systems to run, of vllm,rlnb,hf (default all)")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import _full_scale_common as common
    import torch

    task = common.task()
    prompts = torch.arange(args.prompts) % task.num_prompts
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            path = tiny_dir(Path(tmp), task.alphabet)
        else:
            path = common.model_dir(args.layers, log=lambda m: print(m, file=sys.stderr))
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        results = {}
        for row in rows:
            if row == "vllm":
                results[row] = vllm_run(path, task, prompts, args.n, args.new_tokens,
                                        args.kv_cache_gib)
            elif row == "rlnb":
                results[row] = rlnb_run(path, task, prompts, args.n, args.new_tokens,
                                        args.threads)
            elif row == "hf":
                results[row] = hf_run(path, task, prompts, args.n, args.new_tokens,
                                      args.threads, args.hf_batch)
            else:
                p.error(f"unknown row {row!r}; rows are vllm, rlnb, hf")
            r = results[row]
            print(f"{row}: {r['tokens']:,} tokens in {r['seconds']:.2f} s", file=sys.stderr)
    import vllm

    from rlnb.policies.lm.vllm_engine import VLLMSampler  # noqa: F401 - the engine measured

    print(f"model: {args.model}" + (f" ({args.layers} layers)" if args.layers else "")
          + f"; {args.prompts} prompts x {args.n} samples, <= {args.new_tokens} new tokens, "
          f"T=1; torch threads {args.threads}; vLLM {vllm.__version__}, "
          f"{'CPU' if not torch.cuda.is_available() else torch.cuda.get_device_name()}; "
          f"{os.cpu_count()} CPUs")
    print()
    print("| system | tokens | seconds | tokens/s | load / start-up s |")
    print("|---|---|---|---|---|")
    names = {"vllm": "vLLM (VLLMSampler)", "rlnb": "rlnb LMPolicy.rollout",
             "hf": "transformers.generate"}
    for row, r in results.items():
        extra = f" ({r['engine']} engine)" if "engine" in r else ""
        print(f"| {names[row]}{extra} | {r['tokens']:,} | {r['seconds']:.2f} | "
              f"{r['tokens'] / r['seconds']:,.0f} | {r['load_s']:.1f} |")
    if "vllm" in results:
        v = results["vllm"]["tokens"] / results["vllm"]["seconds"]
        for row in ("rlnb", "hf"):
            if row in results:
                o = results[row]["tokens"] / results[row]["seconds"]
                print(f"\nvLLM / {names[row]} tokens/s: {v / o:.2f}")


if __name__ == "__main__":
    main()
