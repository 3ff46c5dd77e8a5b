"""The one training configuration: a flat dataclass, documented field by field.

Names follow TRL's ``GRPOConfig`` where the two overlap (``num_generations``, ``epsilon``,
``epsilon_high``, ``delta``, ``beta``, ``scale_rewards``, ``temperature``,
``learning_rate``, ``num_iterations``, ``max_grad_norm``, ``seed``, ``max_steps``,
``save_steps``, ``per_device_train_batch_size``, ``gradient_accumulation_steps``,
``gradient_checkpointing``), so a config moves between rlnb and TRL without a translation
table.

Where TRL has no name: TRL's batch is counted in completions
(``per_device_train_batch_size * gradient_accumulation_steps = num_prompts_per_step *
num_generations`` on one device); ``loss_agg_mode`` takes TRL's ``loss_type`` names
(``grpo``, ``bnpo``, ``dapo``, ``dr_grpo``) and verl's ``loss_agg_mode`` names, each
computing what its library computes (:mod:`rlnb.rl.aggregation`; the table of shared
names: docs/NAMES.md).

Every field is checked when a config is made (``TrainConfig(...)``, :meth:`from_dict`,
:meth:`replace`): a value of the wrong type is a ``TypeError`` naming the field, the type
given and the one expected (``max_steps=2.5`` is not an int, nor is ``True``); a value out
of range, an unknown estimator or loss name, or a combination that cannot train (``rloo``
with one completion per prompt) is a ``ValueError``; an unknown option names the valid ones
and the closest. A combination that trains but learns nothing (``grpo`` with groups of
one) is a warning.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import numbers
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlnb.rl import AGG_MODES, KL_ESTIMATORS
from rlnb.rl.advantages import SCALE_REWARDS
from rlnb.rl.registry import ADVANTAGES, POLICY_LOSSES, unknown_name_error
from rlnb.train.schedules import check_schedule

_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Everything one training run needs besides the policy and the sandbox."""

    # --- run ------------------------------------------------------------------------
    seed: int = 0
    """Seeds the sampling generator. Same seed, same metrics, bit for bit, on CPU."""
    max_steps: int = 100
    """Optimiser updates of the rollout batch (one rollout batch per step)."""

    # --- rollout --------------------------------------------------------------------
    num_prompts_per_step: int = 16
    """Distinct prompts per step. Completions per step = num_prompts_per_step * num_generations."""
    num_generations: int = 8
    """Group size G: completions per prompt (TRL default 8; card SB uses 4)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs in the loss use the same temperature, as in TRL."""
    temperature_schedule: dict | None = None
    """Per-position sampling temperatures instead of ``temperature``: None, or EAD's
    annealed schedule (Yang et al. arXiv:2510.05251) as ``{"name": "ead", "c": 10, "d0":
    ..., "tau_max": 1.2, "tau_min": 0.1, "d_rate": 5, "d_max": 40000, "is_cap": 2}``
    (missing keys take these defaults; :mod:`rlnb.train.schedules`): token ``t`` of step
    ``s`` is sampled at ``max(1 + tau_max - exp(t / d_s), tau_min)`` from ``t = c`` on
    (1 before), ``d_s = min(d0 + d_rate * s, d_max)``. The policy trained stays the one at
    ``temperature``; the loss weighs each token by the truncated importance weight
    ``min(pi / mu_t, is_cap)`` (TIS) for sampling off-policy. Tabular and MLP policies
    only (their sampler is called once per position)."""
    cure_branches: int = 0
    """CURE stage 1 (Li et al. arXiv:2508.11016): each prompt gets ``num_generations //
    (cure_branches + 1)`` sampled completions, each followed by ``cure_branches``
    regenerations from its highest-entropy position, all trained on together
    (:func:`rlnb.train.branching.branching_rollout`); 0 = plain sampling. Must divide
    ``num_generations`` as ``cure_branches + 1``. Tabular and MLP policies only."""
    cure_stage1_steps: int | None = None
    """Steps of CURE's stage 1; later steps sample plainly (stage 2). None = every step."""

    mask_truncated_completions: bool = False
    """DAPO's overlong filtering (TRL's name): completions that hit the length limit
    without an end-of-sequence token are left out of the loss (their reward still counts
    in the group baseline). Only policies that report truncation (language models)."""

    # --- advantage ------------------------------------------------------------------
    advantage: str = "grpo"
    """Advantage estimator from ``rlnb.rl``: reinforce, reinforce_baseline, rloo, grpo,
    psr, nsr, w_reinforce (Zhu et al. arXiv:2506.01347 for the last three)."""
    scale_rewards: str = "group"
    """GRPO only: "group" (GRPO, divide by the group std), "batch" (Lite PPO,
    arXiv:2508.08221), "none" (Dr.GRPO, arXiv:2503.20783)."""
    w_reinforce_lambda: float = 0.1
    """Weight of correct samples in W-REINFORCE (the paper recommends 0.1)."""

    # --- objective ------------------------------------------------------------------
    policy_loss: str = "ppo_clip"
    """Policy loss from ``rlnb.rl``: vanilla_pg, ppo_clip, clip_cov, kl_cov."""
    epsilon: float = 0.2
    """Lower PPO clip range: ratio >= 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip range (clip-higher, DAPO arXiv:2503.14476 uses 0.28). None = epsilon."""
    delta: float | None = None
    """Dual-clip bound for negative advantages (TRL's ``delta``, verl's clip_ratio_c);
    must exceed 1 + epsilon. None disables it."""
    loss_agg_mode: str = "token-mean"
    """How per-token losses become one number, under verl's names (token-mean,
    seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm) or TRL's
    ``loss_type`` names (grpo, bnpo, dapo, dr_grpo), each as its library computes it
    (:mod:`rlnb.rl.aggregation`). The constant normalisers divide by the policy's
    generation budget (``max_new_tokens``) where it has one."""
    num_iterations: int = 1
    """PPO epochs over each rollout batch (TRL's mu). 1 = on-policy, clipping inactive."""
    per_device_train_batch_size: int | None = None
    """Completions per micro-batch (TRL's name; TRL counts its batch in completions, not
    prompts). The step's batch of N = num_prompts_per_step * num_generations completions is
    split into contiguous micro-batches whose gradients add up before the one optimiser
    step (gradient accumulation): the same loss and gradient as the whole batch at once
    in every ``loss_agg_mode`` (each micro-batch is normalised by the whole batch's token
    or sequence count), with the memory of one micro-batch. Must divide N. None = derived
    from ``gradient_accumulation_steps``, or N (the whole batch at once) if both are None.
    A micro-batch of a multiple of num_generations holds whole groups (a language model
    then runs each group's shared prompt once). Not with ``clip_cov`` / ``kl_cov``, which
    pick tokens by a covariance over the whole batch."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimiser step (TRL's name). With ``per_device_train_batch_size``
    their product must be N = num_prompts_per_step * num_generations; alone it must divide
    N. None = N / per_device_train_batch_size, or 1. One micro-batch (the default) computes
    the step exactly as without micro-batching, bit for bit; more change the last bits
    (sums taken in another order). With ``num_iterations > 1`` every PPO epoch runs over
    all the micro-batches, then steps."""
    beta: float = 0.0
    """KL coefficient against the frozen initial policy (the reference). 0 = no reference."""
    kl_estimator: str = "k3"
    """KL estimator used as a loss term: k1, k2 or k3 (TRL uses k3). As a loss, k2's
    gradient is that of KL(pi||ref); k3's is that of KL(ref||pi); k1's is zero in
    expectation (see ``rlnb.rl.kl_penalty``)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient: loss -= entropy_coef * agg(entropy)."""
    clip_cov_ratio: float = 2e-4
    """Clip-Cov: fraction of tokens (with cov in the bounds) whose gradient is detached."""
    clip_cov_lb: float = 1.0
    """Clip-Cov: lower covariance bound."""
    clip_cov_ub: float = 5.0
    """Clip-Cov: upper covariance bound."""
    kl_cov_ratio: float = 2e-3
    """KL-Cov: fraction of tokens, highest covariance first, that get the KL penalty."""
    kl_cov_coef: float = 1.0
    """KL-Cov: coefficient of |logp - old_logp| on the selected tokens."""
    steer_weighting: str = "exp"
    """STEER (``policy_loss="steer"``): token weight from |Omega|, ``"exp"`` =
    exp(-steer_k |Omega|) (the paper), ``"linear"`` = the official code's map onto [0.8, 1.2]."""
    steer_k: float = 1.0
    """STEER: k of the weight exp(-k |Omega|)."""
    lp_reg_min_p: float = 0.02
    """Lp-Reg (``policy_loss="lp_reg"``): the proxy keeps tokens with pi_old >= min_p * max pi_old."""
    lp_reg_fraction: float = 0.01
    """Lp-Reg: fraction of negative-advantage tokens, lowest log-prob first, that may be regularised."""
    lp_reg_coef: float = 1.0
    """Lp-Reg: coefficient of KL_lowvar(pi_theta || pi_proxy) on the regularised tokens."""
    rover_rho: float = 1.0
    """ROVER (``policy_loss="rover"``, He et al. arXiv:2509.24981): rho of Q_hat = rho * (log pi -
    log pi_old), the official ``rover_t`` (1.0)."""

    # --- optimiser ------------------------------------------------------------------
    optimizer: str = "adam"
    """adam, adamw or sgd. Tabular toys in the cards use plain SGD with lr 1.0."""
    learning_rate: float = 1e-2
    """Step size. Toys: 1e-2..1 ; language models: ~1e-6 (TRL's default)."""
    weight_decay: float = 0.0
    """Weight decay (AdamW's decoupled form with optimizer="adamw")."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this value (TRL uses 1.0). None = no clipping."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of
    keeping them from the forward pass (TRL's name): less memory, ~30% more compute.
    Hugging Face language models only (``Policy.enable_gradient_checkpointing``); other
    policies refuse it when the Trainer is made."""

    # --- speed ----------------------------------------------------------------------
    torch_threads: int | None = None
    """CPU threads torch may use while training (restored afterwards). None = automatic:
    1 thread for policies under a million parameters, whose tiny tensor ops run many
    times slower when split across threads, and torch's own setting otherwise (a
    function of the policy's size and of the machine, never of its load). Float sums
    are split differently on another count, so runs compare bit for bit only at the
    same count."""
    matmul_threads: int = 1
    """Threads for the large matrix products (a million multiply-adds and more) of an
    update replayed from the sampler's activations (:mod:`rlnb.policies.lm.fast.replay`),
    while the rest of the step stays on ``torch_threads``. 1 (default) gives the same
    numbers on every machine whatever its load; 2 or more can be faster for models of
    hidden size 256 and up on idle cores (a product is not bitwise the same on 1 and 2
    threads, so this is a setting of the run, recorded in its config, never picked by
    timing)."""
    keep_freed_memory: bool = True
    """On the CPU under Linux, ask the C allocator (glibc) to keep freed memory for re-use
    instead of handing it back to the system after every step: the step's large
    temporaries are then not page-faulted in again each time (~10% of a tiny model's
    step), for policies of up to 100M parameters (``rlnb.allocator.MAX_PARAMS``);
    for a larger one the trainer instead hands the freed heap back after sampling and
    after the backward pass (``malloc_trim``), so that the peak does not carry the
    sampler's garbage. Process-wide; see :mod:`rlnb.allocator`. False leaves the C
    allocator alone."""
    fsync: bool = True
    """Flush each metrics line and checkpoint to the disk (``os.fsync``, and the directory
    after a rename) before the step counts as done, so a power cut or a kernel crash loses
    at most the step in flight, as a killed process does. Three fsyncs per step cost
    ~2-3 ms on an ext4 virtual disk: the README's 200-step strategy-bandit run took ~8
    ms per step with them, ~6 without (~3 in memory). False keeps the writes in the page
    cache (a killed process still loses nothing). Not part of what defines a run."""

    # --- logging and checkpoints ----------------------------------------------------
    save_steps: int | None = None
    """Write a checkpoint every this many steps, and always at the last step. A killed run
    loses at most the steps since its last checkpoint (a resume re-runs them, to the same
    numbers). None (default) = automatic: every step while one checkpoint (the policy's
    ``state_dict()`` plus the optimiser state, Adam's two moments counted as twice the
    trainable parameters) is at most 256 MiB, else every 100 steps
    (:func:`rlnb.train.checkpoint.auto_save_steps`); a LoRA policy saves only its adapters,
    so it checkpoints every step. Set save_steps=1 to checkpoint every step whatever the
    size. Not part of what defines a run: a run directory continues with another value."""
    log_rollouts_steps: int = 0
    """Every this many steps append a sample of completions to rollouts.jsonl. 0 = never."""
    log_rollouts_count: int = 8
    """How many completions each rollout log holds."""
    progress_bar: bool = True
    """Show a tqdm.auto progress bar (notebook widget or terminal)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and normalise it: numbers to int / float, ``adam_betas`` to a
        tuple); raise ``TypeError`` / ``ValueError`` naming the first bad one. Warns, once
        per config, about combinations that train but cannot learn."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked_type(f.name, getattr(self, f.name), f.type))
        self.adam_betas = _checked_betas(self.adam_betas)

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        def at_least(name: str, low: int | float, *, none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and none:
                return
            need(v >= low, f"{name} must be >= {low}{' or None' if none else ''}, got {v}")

        def positive(name: str, *, none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and none:
                return
            need(v > 0, f"{name} must be > 0{' or None' if none else ''}, got {v}")

        def one_of(name: str, valid: tuple[str, ...], why: str = "") -> None:
            v = getattr(self, name)
            if v not in valid:
                close = difflib.get_close_matches(v, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                need(False, f"{name} must be one of {list(valid)}, got {v!r}{hint}{why}")

        # --- run and rollout ------------------------------------------------------------
        need(-(2**63) <= self.seed < 2**64,
             f"seed must be in [-2**63, 2**64) (a torch.Generator seed), got {self.seed}")
        at_least("max_steps", 0)
        at_least("num_prompts_per_step", 1)
        at_least("num_generations", 1)
        positive("temperature")
        self.temperature_schedule = check_schedule(self.temperature_schedule)
        at_least("cure_branches", 0)
        at_least("cure_stage1_steps", 0, none=True)
        need(self.num_generations % (self.cure_branches + 1) == 0,
             f"cure_branches ({self.cure_branches}) + 1 must divide num_generations "
             f"({self.num_generations}): each prompt's completions are originals each followed "
             f"by cure_branches branches; e.g. num_generations="
             f"{(self.num_generations // (self.cure_branches + 1) + 1) * (self.cure_branches + 1)}")
        need(not (self.cure_branches and self.temperature_schedule is not None),
             "cure_branches and temperature_schedule are two rollout sources; set one of them "
             "(cure_branches=0 or temperature_schedule=None)")
        # --- advantage ------------------------------------------------------------------
        if self.advantage not in ADVANTAGES:
            need(False, f"advantage: {unknown_name_error('advantage method', self.advantage, _outcome_advantages())}")
        need(self.advantage != "gae",
             "advantage 'gae' needs a critic's values, which the Trainer does not learn; "
             f"use one of {', '.join(_outcome_advantages())} (or rlnb.rl.gae directly)")
        one_of("scale_rewards", SCALE_REWARDS,
               ": 'group' = GRPO, 'batch' = Lite PPO, 'none' = Dr.GRPO")
        at_least("w_reinforce_lambda", 0)
        need(self.advantage != "rloo" or self.num_generations >= 2,
             f"advantage 'rloo' needs num_generations >= 2 (its baseline is the mean of the "
             f"other completions of the same prompt), got num_generations="
             f"{self.num_generations}; raise num_generations, or use advantage="
             "'reinforce_baseline' (one baseline for the whole batch)")
        # --- objective ------------------------------------------------------------------
        if self.policy_loss not in POLICY_LOSSES:
            need(False, f"policy_loss: {unknown_name_error('policy loss', self.policy_loss, POLICY_LOSSES)}")
        positive("epsilon")
        positive("epsilon_high", none=True)
        positive("rover_rho")
        need(self.delta is None or self.delta > 1 + self.epsilon,
             f"delta (the dual clip) must be > 1 + epsilon = {1 + self.epsilon:g} or None, got "
             f"{self.delta}")
        one_of("loss_agg_mode", AGG_MODES)
        at_least("num_iterations", 1)
        self._check_micro_batches()
        at_least("beta", 0)
        one_of("kl_estimator", KL_ESTIMATORS)
        need(0 < self.clip_cov_ratio <= 1,
             f"clip_cov_ratio must be in (0, 1] (a fraction of tokens), got {self.clip_cov_ratio}")
        need(self.clip_cov_lb < self.clip_cov_ub,
             f"clip_cov_lb must be < clip_cov_ub, got clip_cov_lb={self.clip_cov_lb}, "
             f"clip_cov_ub={self.clip_cov_ub}")
        need(0 < self.kl_cov_ratio <= 1,
             f"kl_cov_ratio must be in (0, 1] (a fraction of tokens), got {self.kl_cov_ratio}")
        at_least("kl_cov_coef", 0)
        # --- optimiser, speed, logging --------------------------------------------------
        one_of("optimizer", _OPTIMIZERS)
        positive("learning_rate")
        at_least("weight_decay", 0)
        positive("max_grad_norm", none=True)
        at_least("torch_threads", 1, none=True)
        at_least("matmul_threads", 1)
        at_least("save_steps", 1, none=True)
        at_least("log_rollouts_steps", 0)
        at_least("log_rollouts_count", 1)
        self._warn_if_nothing_is_learned()

    def _check_micro_batches(self) -> None:
        """``per_device_train_batch_size`` and ``gradient_accumulation_steps`` split the
        step's N completions evenly (``ValueError`` naming the numbers and the fix)."""
        size, steps = self.per_device_train_batch_size, self.gradient_accumulation_steps
        P, G = self.num_prompts_per_step, self.num_generations
        n = P * G
        batch = f"num_prompts_per_step * num_generations = {P} * {G} = {n} completions"
        for name, v in (("per_device_train_batch_size", size),
                        ("gradient_accumulation_steps", steps)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")
        divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
        if size is not None and steps is not None:
            if size * steps != n:
                raise ValueError(
                    f"per_device_train_batch_size * gradient_accumulation_steps = {size} * "
                    f"{steps} = {size * steps} must equal the step's batch of {batch}; set "
                    "one of the two and leave the other None (it is derived)")
        elif size is not None and n % size:
            raise ValueError(
                f"per_device_train_batch_size ({size}) must divide the step's batch of "
                f"{batch} (every micro-batch holds the same number); choose one of "
                f"{divisors}")
        elif steps is not None and n % steps:
            raise ValueError(
                f"gradient_accumulation_steps ({steps}) must divide the step's batch of "
                f"{batch} into equal micro-batches; choose one of {divisors}")

    @property
    def micro_batch_size(self) -> int:
        """Completions per micro-batch, resolved: ``per_device_train_batch_size``, else
        N / ``gradient_accumulation_steps``, else N (one batch per step).

        >>> TrainConfig(num_prompts_per_step=4, num_generations=2,
        ...             gradient_accumulation_steps=4).micro_batch_size
        2
        """
        n = self.num_prompts_per_step * self.num_generations
        if self.per_device_train_batch_size is not None:
            return self.per_device_train_batch_size
        if self.gradient_accumulation_steps is not None:
            return n // self.gradient_accumulation_steps
        return n

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per optimiser step, resolved (1 = no gradient accumulation)."""
        return self.num_prompts_per_step * self.num_generations // self.micro_batch_size

    def _warn_if_nothing_is_learned(self) -> None:
        msg = None
        if self.advantage == "grpo" and self.num_generations == 1:
            msg = ("num_generations=1 with advantage 'grpo': every group holds one completion, "
                   "so every advantage (reward - group mean) is zero and nothing is learned; "
                   "set num_generations >= 2, or use advantage='reinforce_baseline' (one "
                   "baseline for the whole batch)")
        elif (self.advantage == "reinforce_baseline"
              and self.num_prompts_per_step * self.num_generations == 1):
            msg = ("num_prompts_per_step=1 and num_generations=1 with advantage "
                   "'reinforce_baseline': the batch holds one completion, so its advantage "
                   "(reward - batch mean) is zero and nothing is learned; raise "
                   "num_prompts_per_step or num_generations")
        shown = self.__dict__.setdefault("_warnings_shown", set())
        if msg is not None and msg not in shown:
            shown.add(msg)
            warnings.warn(msg, UserWarning, stacklevel=_caller_stacklevel())

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied; this config is left as it is.

        >>> TrainConfig(max_steps=5).replace(learning_rate=0.5).learning_rate
        0.5
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option's default, as :meth:`to_dict` writes it (a run directory written
        before an option existed ran with its default)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(d, Mapping):
            raise TypeError(f"TrainConfig.from_dict needs a dict of options, got "
                            f"{type(d).__name__}")
        unknown = sorted(set(d) - _field_names())
        if unknown:
            raise ValueError(_unknown_options_message(unknown))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --- checks ---------------------------------------------------------------------------
_EXPECTED = {"int": "an int", "float": "a float", "bool": "a bool (True or False)",
             "str": "a str"}

#: Names people reach for that TrainConfig spells differently.
_ALIASES = {
    "lr": "learning_rate", "betas": "adam_betas", "kl_coef": "beta", "steps": "max_steps",
    "group_size": "num_generations", "clip_range": "epsilon", "cliprange": "epsilon",
    "loss_type": "loss_agg_mode", "batch_size": "num_prompts_per_step",
    "gradient_clip": "max_grad_norm", "entropy_coeff": "entropy_coef",
    "micro_batch_size": "per_device_train_batch_size",
    "mini_batch_size": "per_device_train_batch_size",
    "grad_accum_steps": "gradient_accumulation_steps",
    "accumulation_steps": "gradient_accumulation_steps",
}


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _outcome_advantages() -> list[str]:
    """The advantage estimators the Trainer can use (GAE needs a critic)."""
    return [name for name in ADVANTAGES if name != "gae"]


def _closest_option(name: str, valid: set[str]) -> str | None:
    if name in _ALIASES and _ALIASES[name] in valid:
        return _ALIASES[name]
    initials = {"".join(w[0] for w in v.split("_") if w): v for v in valid}
    if name in initials:  # "lr" -> learning_rate
        return initials[name]
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_options_message(unknown: list[Any]) -> str:
    valid = _field_names()
    parts = []
    for name in unknown:
        close = _closest_option(str(name), valid)
        parts.append(f"{name!r}" + (f" (did you mean {close!r}?)" if close else ""))
    s = "s" if len(unknown) > 1 else ""
    return (f"unknown TrainConfig option{s} {', '.join(parts)}; valid options: "
            f"{', '.join(sorted(valid))}")


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _checked_type(name: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against the field's annotation (``"int"``, ``"float | None"``...)
    and normalised (numpy scalars to Python numbers, ints to float for float fields). An
    annotation this check does not know is left to ``validate``'s own rules."""
    kinds = {k.strip() for k in str(annotation).split("|")}
    optional = "None" in kinds
    kinds.discard("None")
    if len(kinds) != 1 or next(iter(kinds)) not in _EXPECTED:
        return value
    kind = next(iter(kinds))
    if value is None and optional:
        return None
    if kind == "bool" and _is_bool(value):
        return bool(value)
    if kind == "str" and isinstance(value, str):
        return str(value)
    if kind == "int" and isinstance(value, numbers.Integral) and not _is_bool(value):
        return int(value)
    if kind == "float" and isinstance(value, numbers.Real) and not _is_bool(value):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v}")
        return v
    expected = _EXPECTED[kind] + (" or None" if optional else "")
    hint = ""
    if isinstance(value, str) and kind in ("int", "float"):
        hint = f"; write {name}={value.strip()} without quotes"
    elif kind == "int" and isinstance(value, float) and value.is_integer():
        hint = f"; write {name}={int(value)}"
    raise TypeError(
        f"{name} must be {expected}, got {type(value).__name__} {value!r}{hint}")


def _checked_betas(value: Any) -> tuple[float, float]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):  # a JSON round trip gives a list
        raise TypeError(f"adam_betas must be a pair (beta1, beta2) such as (0.9, 0.999), got "
                        f"{type(value).__name__} {value!r}")
    if len(value) != 2:
        raise ValueError(f"adam_betas must be a pair (beta1, beta2) such as (0.9, 0.999), got "
                         f"{len(value)} value(s): {tuple(value)!r}")
    out = []
    for i, b in enumerate(value):
        if _is_bool(b) or not isinstance(b, numbers.Real):
            raise TypeError(f"adam_betas[{i}] must be a float in [0, 1), got "
                            f"{type(b).__name__} {b!r}")
        b = float(b)
        if not 0 <= b < 1:  # NaN fails this too
            raise ValueError(f"adam_betas[{i}] (beta{i + 1}) must be in [0, 1), got {b}")
        out.append(b)
    return out[0], out[1]


_HERE = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside rlnb.train (the
    user's ``TrainConfig(...)`` or ``Trainer(...)`` line), for the function calling this."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(_HERE)
                                 or frame.f_code.co_filename == "<string>"  # dataclass code
                                 or frame.f_code.co_filename == dataclasses.__file__):
        frame, level = frame.f_back, level + 1
    return level


def _with_option_names(init: Any) -> Any:
    """Wrap the dataclass ``__init__``: an unknown keyword names the valid options and the
    closest one (the plain dataclass error names neither)."""

    @functools.wraps(init)
    def __init__(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _field_names())
        if unknown:
            raise TypeError(_unknown_options_message(unknown))
        init(self, *args, **kwargs)

    return __init__


TrainConfig.__init__ = _with_option_names(TrainConfig.__init__)  # type: ignore[method-assign]
