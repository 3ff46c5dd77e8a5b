"""The one training configuration: a flat dataclass, documented field by field.

Names follow TRL's ``GRPOConfig`` where the two overlap (``num_generations``, ``epsilon``,
``epsilon_high``, ``delta``, ``beta``, ``scale_rewards``, ``temperature``,
``learning_rate``, ``num_iterations``, ``max_grad_norm``, ``seed``, ``max_steps``,
``save_steps``), so a config moves between rlnb and TRL without a translation table.

Where TRL has no name: TRL's batch is counted in completions
(``per_device_train_batch_size * gradient_accumulation_steps = num_prompts_per_step *
num_generations``); TRL's ``loss_type`` maps to ``loss_agg_mode`` as
``grpo -> seq-mean-token-mean``, ``dapo``/``bnpo -> token-mean``,
``dr_grpo -> seq-mean-token-sum-norm``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

_OPTIMIZERS = ("adam", "adamw", "sgd")
_KL_ESTIMATORS = ("k1", "k2", "k3")
_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


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
    """How per-token losses become one number (verl names): token-mean,
    seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm."""
    num_iterations: int = 1
    """PPO epochs over each rollout batch (TRL's mu). 1 = on-policy, clipping inactive."""
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

    # --- speed ----------------------------------------------------------------------
    torch_threads: int | None = None
    """CPU threads torch may use while training (restored afterwards). None = automatic:
    1 thread for policies under a million parameters, whose tiny tensor ops run many
    times slower when split across threads, and torch's own setting otherwise; the large
    matrix products of an update replayed from the sampler's activations
    (:mod:`rlnb.policies.lm_replay`) then run on torch's own count (up to 4) whenever
    timing shows it is faster than one thread (it is not when another process holds the
    cores). An explicit count applies to everything."""
    keep_freed_memory: bool = True
    """On the CPU under Linux, ask the C allocator (glibc) to keep freed memory for re-use
    instead of handing it back to the system after every step: the step's large
    temporaries are then not page-faulted in again each time (~10% of a tiny model's
    step). Process-wide, for the rest of the process; see :mod:`rlnb.train.allocator`."""

    # --- logging and checkpoints ----------------------------------------------------
    save_steps: int = 1
    """Write a checkpoint every this many steps. 1 (default) means a killed process
    loses at most the step in flight; raise it for large models where a checkpoint is
    expensive (a resume then re-runs, identically, the steps after the last checkpoint)."""
    log_rollouts_steps: int = 0
    """Every this many steps append a sample of completions to rollouts.jsonl. 0 = never."""
    log_rollouts_count: int = 8
    """How many completions each rollout log holds."""
    progress_bar: bool = True
    """Show a tqdm.auto progress bar (notebook widget or terminal)."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # JSON round trip gives a list
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        need(self.num_prompts_per_step >= 1,
             f"num_prompts_per_step must be >= 1, got {self.num_prompts_per_step}")
        need(self.num_generations >= 1, f"num_generations must be >= 1, got {self.num_generations}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.optimizer in _OPTIMIZERS,
             f"optimizer must be one of {list(_OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.kl_estimator in _KL_ESTIMATORS,
             f"kl_estimator must be one of {list(_KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        need(self.loss_agg_mode in _AGG_MODES,
             f"loss_agg_mode must be one of {list(_AGG_MODES)}, got {self.loss_agg_mode!r}")
        need(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        need(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        need(self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}")
        need(self.epsilon_high is None or self.epsilon_high > 0,
             f"epsilon_high must be > 0 or None, got {self.epsilon_high}")
        need(self.save_steps >= 1, f"save_steps must be >= 1, got {self.save_steps}")
        need(self.log_rollouts_steps >= 0,
             f"log_rollouts_steps must be >= 0, got {self.log_rollouts_steps}")
        need(self.torch_threads is None or self.torch_threads >= 1,
             f"torch_threads must be >= 1 or None, got {self.torch_threads}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig option(s) {unknown}; valid options: {sorted(names)}"
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
