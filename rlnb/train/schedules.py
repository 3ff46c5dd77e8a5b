"""Per-position sampling temperatures: EAD's annealed schedule and the rollout it drives.

Exploratory Annealed Decoding (EAD; Yang, Gui, Yang et al., arXiv:2510.05251) samples the
early tokens of a response hot and the late ones cold ("explore at the beginning, exploit
at the end"). Token ``t`` (0-based position in the response) of training step ``s`` is
sampled at::

    tau_t = 1                                         for t < c  (template tokens)
    tau_t = max(1 + tau_max - exp(t / d_s), tau_min)  for t >= c
    d_s   = min(d0 + d_rate * s, d_max)               (the paper: d_rate = 5, d_max = 40000)

so the schedule starts near ``tau_max`` (at ``t = c`` when ``c << d_s``) and reaches
``tau_min`` at ``t = d_s * log(1 + tau_max - tau_min)``; ``d_s`` grows with the step so that the hot
part stretches as responses lengthen during training. The paper illustrates it with
``c = 10, tau_max = 1.2, tau_min = 0.1``.

Sampling at ``tau_t != 1`` is off-policy for the policy being trained (the policy at the
config's ``temperature``). :func:`scheduled_rollout` therefore keeps the trained policy's
log-probs as the rollout's "old" log-probs and adds the per-token truncated importance
weight ``min(pi(a|s) / mu_t(a|s), is_cap)`` (TIS, which EAD uses; ``mu_t`` is the tempered
sampler) as ``rollout.extra["is_weight"]``; the Trainer multiplies each token's advantage
by it. A weight that binds (``pi / mu > is_cap``) leaves a bias towards the sampler.

>>> import math
>>> ead_temperatures(6, 0, c=0, d0=5 / math.log(2.1)).round(decimals=3)  # a depth-6 tree
tensor([1.2000, 1.0400, 0.8540, 0.6390, 0.3900, 0.1000], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from rlnb.policies.base import Policy, Rollout

#: EAD's parameters and their defaults: the paper's illustration (c, tau_max, tau_min),
#: its step-aware decay (d_rate, d_max), TIS's usual cap (2, as verl's ``tis_imp_ratio_cap``).
#: ``d0`` has no paper default that transfers to another response length: pick it so the
#: schedule cools over the length of your responses (``t = d0 * log(1 + tau_max - tau_min)``
#: is where it reaches ``tau_min``).
EAD_DEFAULTS: dict[str, float] = {
    "c": 10, "d0": 1000.0, "tau_max": 1.2, "tau_min": 0.1, "d_rate": 5.0, "d_max": 40000.0,
    "is_cap": 2.0,
}
SCHEDULES = ("ead",)


def ead_decay(step: int, *, d0: float, d_rate: float = 5.0, d_max: float = 40000.0) -> float:
    """EAD's step-aware decay rate ``d_s = min(d0 + d_rate * step, d_max)``.

    >>> ead_decay(0, d0=100.0), ead_decay(10, d0=100.0), ead_decay(10**6, d0=100.0)
    (100.0, 150.0, 40000.0)
    """
    return float(min(d0 + d_rate * step, d_max))


def ead_temperatures(
    horizon: int,
    step: int,
    *,
    c: int = 10,
    d0: float = 1000.0,
    tau_max: float = 1.2,
    tau_min: float = 0.1,
    d_rate: float = 5.0,
    d_max: float = 40000.0,
) -> torch.Tensor:
    """EAD's sampling temperature of each position ``t = 0..horizon-1`` at training step
    ``step``: ``(horizon,)`` float64, ``1`` for ``t < c`` and
    ``max(1 + tau_max - exp(t / d_s), tau_min)`` from ``c`` on, ``d_s`` as in
    :func:`ead_decay`. Pure: the same arguments give the same numbers.

    Footgun: with the paper's ``c = 10`` a response of at most 10 tokens (a depth-6 tree)
    is sampled at temperature 1 throughout; scale ``c`` and ``d0`` to your lengths.

    >>> ead_temperatures(3, 0, c=0, d0=1.0).round(decimals=4)   # 2.2 - e^t, floored at 0.1
    tensor([1.2000, 0.1000, 0.1000], dtype=torch.float64)
    """
    d = ead_decay(step, d0=d0, d_rate=d_rate, d_max=d_max)
    t = torch.arange(horizon, dtype=torch.float64)
    tau = torch.clamp(1 + tau_max - torch.exp(t / d), min=tau_min)
    return torch.where(t < c, torch.ones_like(tau), tau)


def check_schedule(schedule: Any) -> dict[str, Any] | None:
    """A ``TrainConfig.temperature_schedule`` checked and completed with the defaults:
    None, or a dict ``{"name": "ead", ...}`` with any of :data:`EAD_DEFAULTS`' keys.
    ``TypeError`` for a non-dict or a non-number, ``ValueError`` naming the bad key and
    its range otherwise.

    >>> check_schedule({"name": "ead", "c": 0, "d0": 6.7})["tau_max"]
    1.2
    """
    if schedule is None:
        return None
    if not isinstance(schedule, Mapping):
        raise TypeError(
            f"temperature_schedule must be None or a dict such as {{'name': 'ead', 'c': 0, "
            f"'d0': 6.7}}, got {type(schedule).__name__} {schedule!r}")
    name = schedule.get("name")
    if name not in SCHEDULES:
        raise ValueError(
            f"temperature_schedule['name'] must be one of {list(SCHEDULES)} (EAD, "
            f"arXiv:2510.05251), got {name!r}")
    unknown = sorted(set(schedule) - set(EAD_DEFAULTS) - {"name"})
    if unknown:
        raise ValueError(
            f"unknown temperature_schedule key(s) {unknown}; EAD takes "
            f"{sorted(EAD_DEFAULTS)} (and 'name')")
    out: dict[str, Any] = {"name": name}
    for key, default in EAD_DEFAULTS.items():
        v = schedule.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"temperature_schedule[{key!r}] must be a finite number, got "
                            f"{type(v).__name__} {v!r}")
        out[key] = int(v) if key == "c" and float(v).is_integer() else float(v)
    if not isinstance(out["c"], int) or out["c"] < 0:
        raise ValueError(f"temperature_schedule['c'] (positions sampled at temperature 1 "
                         f"before the annealing starts) must be an integer >= 0, got {out['c']}")
    for key in ("d0", "tau_min", "d_max"):
        if out[key] <= 0:
            raise ValueError(f"temperature_schedule[{key!r}] must be > 0, got {out[key]}")
    if out["d_rate"] < 0:
        raise ValueError(f"temperature_schedule['d_rate'] (growth of d per step) must be "
                         f">= 0, got {out['d_rate']}")
    if not out["tau_min"] <= out["tau_max"]:
        raise ValueError(f"temperature_schedule: tau_min ({out['tau_min']}) must be <= tau_max "
                         f"({out['tau_max']}); the schedule cools from tau_max to tau_min")
    if out["d0"] > out["d_max"]:
        raise ValueError(f"temperature_schedule: d0 ({out['d0']}) must be <= d_max "
                         f"({out['d_max']})")
    if out["is_cap"] < 1:
        raise ValueError(f"temperature_schedule['is_cap'] (the truncated importance weight's "
                         f"cap) must be >= 1, got {out['is_cap']}; TIS uses 2")
    return out


def schedule_temperatures(schedule: Mapping[str, Any], horizon: int, step: int) -> torch.Tensor:
    """The per-position temperatures ``(horizon,)`` of a checked schedule at ``step``."""
    s = check_schedule(schedule)
    assert s is not None
    return ead_temperatures(horizon, step, c=s["c"], d0=s["d0"], tau_max=s["tau_max"],
                            tau_min=s["tau_min"], d_rate=s["d_rate"], d_max=s["d_max"])


@torch.no_grad()
def scheduled_rollout(
    policy: Policy,
    env: Any,
    prompts: torch.Tensor,
    n: int,
    schedule: Mapping[str, Any],
    *,
    step: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """``n`` completions per prompt, position ``t`` sampled at the schedule's ``tau_t`` of
    training step ``step``, in the trainer's layout (groups contiguous).

    ``rollout.logp`` holds the log-probs of the policy being trained (at ``temperature``,
    the config's), so PPO's ratio starts at 1; ``extra["behaviour_logp"]`` the sampler's;
    ``extra["is_weight"]`` ``(N, T)`` the truncated importance weights
    ``min(exp(logp - behaviour_logp), is_cap)`` (0 outside the mask), which the Trainer
    multiplies into each token's advantage.

    Needs a policy that samples through the sandbox's states (TabularPolicy, MLPPolicy):
    the sampler takes one temperature per call, so positions are sampled one call each
    (:func:`rlnb.train.branching.stepwise_rollout`)."""
    from rlnb.train.branching import stepwise_rollout

    s = check_schedule(schedule)
    assert s is not None
    taus = schedule_temperatures(s, env.horizon, step)  # (T,)
    rollout = stepwise_rollout(policy, env, prompts, n, temperatures=taus.tolist(),
                               generator=generator)
    behaviour = rollout.logp  # (N, T) log mu_t(a_t | s_t)
    target, _ = policy.log_probs(rollout, temperature=temperature)  # (N, T) log pi(a_t | s_t)
    target = target.detach()
    weight = torch.exp(torch.clamp(target - behaviour, -20.0, 20.0)).clamp(max=s["is_cap"])
    weight = torch.where(rollout.mask, weight, torch.zeros_like(weight))
    rollout.logp = target
    rollout.extra.update(behaviour_logp=behaviour, is_weight=weight)
    return rollout
