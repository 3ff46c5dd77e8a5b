"""Seconds to score hostile completions: rlnb's verifiers against reasoning-gym's.

    python benchmarks/adversarial_scoring.py [--size 1000000] [--task countdown]

A policy early in training (or a broken sampler) can emit a megabyte of digits, of
opening brackets or of ``1+1+...``. A verifier must answer such a completion at once, not
parse it. rlnb's text tasks cap what they read before parsing; this script times each of
rlnb's built-in tasks on the hostile completions below, and reasoning-gym's ``countdown``
verifier (``score_answer``, which a user would otherwise pick for countdown) on the same
strings, side by side. The last line is ``speedup: <reasoning-gym seconds / rlnb
seconds>`` on countdown, the task both verify. Needs ``reasoning-gym`` (the ``tasks``
extra) for the comparison row.
"""

from __future__ import annotations

import argparse
import time


def hostile(size: int, answer: str) -> dict[str, str]:
    return {
        "digits": "7" * size,
        "brackets": "(" * size,
        "sum chain": "1+" * (size // 2) + "1",
        "answer + spaces": answer + " " * size,
        "answer repeated": answer * max(1, size // max(1, len(answer))),
    }


def seconds(fn, completion: str) -> float:
    t0 = time.perf_counter()
    fn(completion)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="characters per completion")
    ap.add_argument("--rg-size", type=int, default=100_000,
                    help="characters per completion for reasoning-gym (it parses them)")
    args = ap.parse_args()

    from rlnb.envs.text_tasks import make_task

    print(f"{'task':<14}{'completion':<18}{'chars':>10}{'seconds':>10}")
    rlnb_countdown = 0.0
    for name in ("addition", "modular_sum", "countdown", "factor"):
        task = make_task(name, num_prompts=4, seed=0)
        p = task.prompt(0)
        for kind, c in hostile(args.size, task.answer(0)).items():
            s = seconds(lambda c, p=p, task=task: task.score(p, c), c)
            if name == "countdown":
                rlnb_countdown += s
            print(f"{name:<14}{kind:<18}{len(c):>10}{s:>10.4f}")
    try:
        import reasoning_gym
    except ImportError:
        print("reasoning-gym is not installed (pip install reasoning-gym): no comparison row")
        return
    ds = reasoning_gym.create_dataset("countdown", size=1, seed=0)
    entry = ds[0]
    rg = 0.0
    rlnb_small = 0.0
    task = make_task("countdown", num_prompts=4, seed=0)
    for kind, c in hostile(args.rg_size, entry["answer"]).items():
        s = seconds(lambda c: ds.score_answer(c, entry), c)
        rg += s
        rlnb_small += seconds(lambda c: task.score(task.prompt(0), c), c)
        print(f"{'reasoning-gym':<14}{kind:<18}{len(c):>10}{s:>10.4f}")
    print(f"countdown at {args.rg_size} characters: rlnb {rlnb_small:.4f} s, "
          f"reasoning-gym {rg:.4f} s (rlnb at {args.size} characters: {rlnb_countdown:.4f} s)")
    print(f"speedup: {rg / max(rlnb_small, 1e-9):.0f}")


if __name__ == "__main__":
    main()
