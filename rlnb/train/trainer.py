"""The one training loop: rollout -> reward -> advantage -> loss -> step -> log -> callbacks.

It trains every rlnb policy on every rlnb sandbox with every objective in ``rlnb.rl``;
algorithms differ only in their ``TrainConfig`` (advantage estimator, policy loss,
aggregation, KL, entropy bonus), never in a subclass.

Each step logs TRL's metric names where they exist (``reward``, ``reward_std``,
``frac_reward_zero_std``, ``entropy``, ``kl``, ``clip_ratio/...``,
``completions/mean_length``, ...) and where its wall-clock time went:
``time/rollout_seconds`` (sampling), ``time/reward_seconds`` (scoring the completions),
``time/update_seconds`` (advantages, loss, backward, optimizer) and
``time/step_seconds`` (all of it, with logging and callbacks).

With ``per_device_train_batch_size`` / ``gradient_accumulation_steps`` the update runs
micro-batch by micro-batch (:func:`rollout_rows`), each normalised by the whole batch
(:func:`rlnb.rl.agg_weights`), and steps once: the loss, the gradient and the logged
``loss``, ``pg_loss``, ``entropy`` and ``kl`` are the whole batch's.

>>> import torch
>>> from rlnb.envs import StrategyBandit
>>> from rlnb.policies import TabularPolicy
>>> from rlnb.train import Trainer, TrainConfig
>>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
>>> pi = TabularPolicy.for_env(env, shared=True)
>>> cfg = TrainConfig(max_steps=5, num_generations=4, optimizer="sgd", learning_rate=1.0,
...                   progress_bar=False)
>>> history = Trainer(pi, env, cfg).train()
>>> len(history)
5
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rlnb import allocator, rl
from rlnb import threads as thread_rules
from rlnb.policies.base import Policy, Rollout
from rlnb.train import branching, hinting, rundir, schedules
from rlnb.train.checkpoint import auto_save_steps, checkpoint_bytes
from rlnb.train.compat import check_pair
from rlnb.train.config import TrainConfig
from rlnb.train.micro_batches import combine_loss_metrics, rollout_rows

Callback = Callable[["Trainer", dict[str, Any]], "dict[str, Any] | None"]
"""A callback sees the trainer and the step's metrics after the update; a dict it returns
is merged into the metrics before they are logged. ``trainer.stop()`` ends training after
the current step."""

StopCheck = Callable[[], bool]
"""Asked before each step of :meth:`Trainer.run`; True ends the run there."""

#: Policy losses that cannot run micro-batch by micro-batch, and why.
_WHOLE_BATCH_LOSSES = {
    "clip_cov": "picks the tokens it detaches by a covariance over all the batch's tokens",
    "kl_cov": "picks the tokens it penalises by a covariance over all the batch's tokens",
}


class Trainer:
    """Trains ``policy`` on ``env`` with ``config``.

    Args:
        policy: any :class:`rlnb.policies.Policy`.
        env: a sandbox (``sample_prompts`` and ``reward``).
        config: a :class:`TrainConfig` (defaults if None).
        run_dir: where the run is written (config, metrics, checkpoints). None keeps
            everything in memory. If ``run_dir`` already holds a checkpoint of the same
            config, sandbox and policy, training continues from it (as :func:`resume`
            does); another config, sandbox or policy is refused before anything is written.
            The Trainer holds the directory's lock (one writer per run directory, see
            :mod:`rlnb.train.rundir`) until :meth:`close` -- or the end of a ``with
            Trainer(...) as trainer:`` block, or its garbage collection.
        callbacks: functions ``f(trainer, metrics) -> dict | None`` called every step.
        allow_metrics_gap: continue a run whose ``metrics.jsonl`` lacks rows of steps its
            checkpoint covers (e.g. after a disk error); by default that is an error.
    """

    def __init__(
        self,
        policy: Policy,
        env: Any,
        config: TrainConfig | None = None,
        *,
        run_dir: str | os.PathLike | None = None,
        callbacks: Sequence[Callback] = (),
        allow_metrics_gap: bool = False,
    ) -> None:
        self.policy, self.env = policy, env
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(
                f"config must be a TrainConfig, got {type(config).__name__}; build one with "
                "TrainConfig(**options) (or TrainConfig.from_dict(d) from a dict)")
        self.config = config if config is not None else TrainConfig()
        self.config.validate()
        check_pair(policy, env)
        if self.config.gradient_checkpointing:
            policy.enable_gradient_checkpointing()
        self.callbacks = list(callbacks)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._stop = False
        self._trim = False  # hand freed heap memory back between phases (large models)
        self._trim_micro = False  # ... and between micro-batches (large models, adapters)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = self._build_optimizer()
        self.reference = self._build_reference() if self.config.beta > 0 else None
        self._loss_fn = rl.get_policy_loss_fn(self.config.policy_loss)
        self._loss_options = self._select_loss_options()
        self._advantage_options = rl.options_of(rl.get_advantage_fn(self.config.advantage))
        self._check_micro_batching()
        self._auto_save_steps = auto_save_steps(checkpoint_bytes(self.policy, self.optimizer))
        rl.get_advantage_fn(self.config.advantage)  # fail now on a typo, not at step 1
        #: The run directory (:class:`rlnb.train.rundir.RunDir`), or None in memory.
        self.directory = (rundir.RunDir(run_dir, fsync=self.config.fsync)
                          if run_dir is not None else None)
        if self.directory is not None:
            self.step, self.history = self.directory.open(
                config=self.config, env=self.env, policy=self.policy,
                optimizer=self.optimizer, generator=self.generator, reference=self.reference,
                runtime=self.runtime(), allow_metrics_gap=allow_metrics_gap)

    @property
    def run_dir(self) -> Path | None:
        """The run directory's path (None when the run lives in memory only)."""
        return self.directory.path if self.directory is not None else None

    # --- set-up -------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters")
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        # The fused kernel: one op for all parameters instead of ~10 per tensor (several
        # times faster for small models), where every parameter allows it.
        fused = all(p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
                    and p.device.type in ("cpu", "cuda") for p in params)
        return cls(params, lr=c.learning_rate, betas=c.adam_betas, weight_decay=c.weight_decay,
                   fused=fused or None)

    def _build_reference(self) -> Policy:
        ref = self.policy.reference_policy()
        if not callable(getattr(ref, "log_probs", None)) or not callable(
                getattr(ref, "state_dict", None)):
            raise TypeError(
                f"{type(self.policy).__name__}.reference_policy() must return a policy (with "
                f"log_probs and state_dict), got {type(ref).__name__}")
        return ref

    def _check_micro_batching(self) -> None:
        """With more than one micro-batch, the policy loss must take ``weights`` (its share
        of the whole batch's normaliser) and must not need the whole batch at once."""
        c = self.config
        k = c.num_micro_batches
        if k == 1:
            return
        split = (f"per_device_train_batch_size={c.per_device_train_batch_size}, "
                 f"gradient_accumulation_steps={c.gradient_accumulation_steps}")
        whole = ("leave per_device_train_batch_size and gradient_accumulation_steps None "
                 "(the whole batch at once)")
        if c.policy_loss in _WHOLE_BATCH_LOSSES:
            raise ValueError(
                f"policy_loss {c.policy_loss!r} {_WHOLE_BATCH_LOSSES[c.policy_loss]}, which "
                f"no micro-batch sees, so it cannot be accumulated over {k} micro-batches "
                f"({split}); {whole}, or use a loss that takes weights (ppo_clip, vanilla_pg)")
        if "weights" not in inspect.signature(self._loss_fn).parameters:
            raise ValueError(
                f"policy loss {c.policy_loss!r} ({getattr(self._loss_fn, '__qualname__', '?')}) "
                f"takes no `weights` argument, so it cannot be accumulated over {k} "
                f"micro-batches ({split}): each micro-batch's loss must be normalised by the "
                "whole batch. Give it a keyword `weights: Tensor | None = None` passed on to "
                f"rlnb.rl.agg_loss(..., weights=weights), or {whole}")

    def _select_loss_options(self) -> dict[str, Any]:
        """Pass each policy loss the config options it declares, by name."""
        c = self.config
        available = {
            "epsilon": c.epsilon,
            "epsilon_high": c.epsilon_high,
            "delta": c.delta,
            "clip_cov_ratio": c.clip_cov_ratio,
            "clip_cov_lb": c.clip_cov_lb,
            "clip_cov_ub": c.clip_cov_ub,
            "kl_cov_ratio": c.kl_cov_ratio,
            "kl_coef": c.kl_cov_coef,
            "steer_weighting": c.steer_weighting,
            "steer_k": c.steer_k,
            "lp_reg_fraction": c.lp_reg_fraction,
            "lp_reg_coef": c.lp_reg_coef,
            "rho": c.rover_rho,
            "generator": self.generator,
        }
        accepted = inspect.signature(self._loss_fn).parameters
        self._loss_takes_max_len = "max_len" in accepted
        return {k: v for k, v in available.items() if k in accepted}

    def _max_len(self) -> dict[str, Any]:
        """``max_len`` for the aggregation: a language model's generation budget
        (``max_new_tokens``, TRL's ``max_completion_length``), so that the constant
        normalisers (``dr_grpo``, ``seq-mean-token-sum-norm``) are one constant over the
        run; nothing (the batch's T) for a policy without one."""
        budget = getattr(self.policy, "max_new_tokens", None)
        return {} if budget is None else {"max_len": int(budget)}

    def runtime(self) -> dict[str, Any]:
        """What a step's numbers depend on besides the config and the weights, resolved on
        this machine: thread counts, torch's CPU kernel set and version, the policy's
        engine and kernels (:meth:`rlnb.policies.Policy.runtime_info`). Same config, same
        runtime, same numbers, bit for bit."""
        return {
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": self.threads(),
            "matmul_threads": self.config.matmul_threads,
            **self.policy.runtime_info(),
        }

    def _writable(self) -> rundir.RunDir:
        """The run directory, when this Trainer holds its lock (else a clear error)."""
        if self.directory is None:
            raise ValueError("this trainer has no run_dir; pass run_dir=... to save checkpoints")
        self.directory.writable()
        return self.directory

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to stop after the step in flight (safe from a callback or widget)."""
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` was called and the loop has not restarted since."""
        return self._stop

    #: Options that may change between two steps of a run; the others define what a step
    #: is (estimator, group size, optimiser, seed, ...) and need a new run.
    LIVE_OPTIONS = frozenset({
        "learning_rate", "temperature", "beta", "epsilon", "epsilon_high", "delta",
        "entropy_coef", "max_steps", "clip_cov_ratio", "clip_cov_lb", "clip_cov_ub",
        "kl_cov_ratio", "kl_cov_coef", "max_grad_norm", "progress_bar",
    })

    def update_config(self, **changes: Any) -> None:
        """Change options between steps (dashboards call this from their worker thread).

        Applied at the next step: ``LIVE_OPTIONS`` (the learning rate goes straight into
        the optimiser). Anything else raises, as does turning a KL penalty on in a run
        that started without a reference policy (``beta`` from 0).
        """
        unknown = sorted(set(changes) - self.LIVE_OPTIONS)
        if unknown:
            raise ValueError(
                f"options {unknown} cannot change during a run (they define what a step is); "
                f"start a new run. Live options: {sorted(self.LIVE_OPTIONS)}"
            )
        candidate = self.config.replace(**changes)  # validates types and ranges first
        if candidate.beta > 0 and self.reference is None:
            raise ValueError("this run started with beta = 0 and has no reference policy; "
                             "start a new run with beta > 0 to add a KL penalty")
        for name in changes:
            setattr(self.config, name, getattr(candidate, name))
        if "learning_rate" in changes:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.learning_rate
        self._loss_options = self._select_loss_options()
        self._advantage_options = rl.options_of(rl.get_advantage_fn(self.config.advantage))

    def metrics_frame(self, *, wide: bool = True) -> pd.DataFrame:
        """The metrics so far: wide (one column per metric) or tidy (step, metric, value)."""
        df = pd.DataFrame(self.history)
        if wide or df.empty:
            return df
        return df.melt(id_vars="step", var_name="metric", value_name="value")

    # --- stepping ---------------------------------------------------------------------
    def steps(self, until: int | None = None) -> Iterator[dict[str, Any]]:
        """Step the run, yielding each step's metrics, until step ``until`` (default: the
        config's ``max_steps``, read before every step, so a live change counts) or
        :meth:`stop`.

        The run's thread settings (:meth:`thread_settings`) hold from the first step until
        the iterator ends or is closed; between two steps the caller may read the Trainer
        and :meth:`update_config` it. This is the loop :meth:`run` and the dashboards
        drive; close an iterator left unfinished (``contextlib.closing``) to restore the
        thread settings at once.

        >>> import torch
        >>> from rlnb.envs import StrategyBandit
        >>> from rlnb.policies import TabularPolicy
        >>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
        >>> t = Trainer(TabularPolicy.for_env(env, shared=True), env,
        ...             TrainConfig(max_steps=3, num_generations=4, progress_bar=False))
        >>> [m["step"] for m in t.steps()]
        [1, 2, 3]
        """
        self._stop = False
        self._trim = self._trim_micro = False
        if self.config.keep_freed_memory and _on_cpu(self.policy):
            params = list(self.policy.parameters())
            total = sum(p.numel() for p in params)
            if total <= allocator.MAX_PARAMS:
                allocator.keep_freed_memory()
            else:  # a large model: hand the freed heap back after sampling and backward
                self._trim = True
                # and between micro-batches when few parameters train (adapters): the peak
                # is then the activations, which glibc's heap otherwise keeps one
                # micro-batch's worth of per micro-batch; with full fine-tuning the
                # optimiser state is the peak and the trims only cost page faults
                # (measured on Qwen2.5-0.5B: LoRA 7.76 -> 6.01 GiB, full 7.84 either way
                # and 6 s slower with them)
                trainable = sum(p.numel() for p in params if p.requires_grad)
                self._trim_micro = trainable < total // 2
        with self.thread_settings():
            while not self._stop and self.step < (self.config.max_steps if until is None
                                                  else until):
                yield self.train_step()

    def run(self, until: int | None = None, *, should_stop: StopCheck | None = None
            ) -> pd.DataFrame:
        """Train until step ``until`` (default: the config's ``max_steps``), :meth:`stop`,
        or ``should_stop()`` returning True before a step; returns the wide metrics. A
        progress bar shows when ``config.progress_bar`` is on."""
        from tqdm.auto import tqdm

        total = self.config.max_steps if until is None else until
        bar = tqdm(total=total, initial=self.step, disable=not self.config.progress_bar,
                   desc="training", unit="step", leave=True)
        try:
            with contextlib.closing(self.steps(until)) as steps:
                while should_stop is None or not should_stop():
                    metrics = next(steps, None)
                    if metrics is None:
                        break
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward']:.3f}",
                                    entropy=f"{metrics['entropy']:.3f}", refresh=False)
        finally:
            bar.close()
        return self.metrics_frame()

    def train(self, max_steps: int | None = None) -> pd.DataFrame:
        """Run until ``max_steps`` (default: the config's) and return the wide metrics."""
        return self.run(max_steps)

    @contextlib.contextmanager
    def thread_settings(self) -> Iterator[None]:
        """The thread counts of the run while stepping (``torch_threads`` resolved,
        ``matmul_threads``), restored afterwards. Settings of the run, never chosen by
        timing or load (:mod:`rlnb.threads`)."""
        with thread_rules.torch_threads(self.threads()), \
                thread_rules.matmul_threads(self.config.matmul_threads):
            yield

    @property
    def save_steps(self) -> int:
        """Steps between checkpoints in force: ``config.save_steps``, or where it is None
        the automatic choice for this policy's checkpoint size (:func:`auto_save_steps`)."""
        c = self.config.save_steps
        return c if c is not None else self._auto_save_steps

    def threads(self) -> int:
        """The CPU thread count training uses (``TrainConfig.torch_threads``, else
        :func:`rlnb.threads.default_threads` for the policy's size and device)."""
        if self.config.torch_threads is not None:
            return self.config.torch_threads
        params = list(self.policy.parameters())
        device = params[0].device if params else "cpu"
        return thread_rules.default_threads(sum(p.numel() for p in params), device)

    # --- one step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        if self.run_dir is not None:
            self._writable()  # a closed Trainer must not compute a step it cannot log
        c, t0 = self.config, time.perf_counter()
        G = c.num_generations

        # --- ROLLOUT ---
        prompts = self.env.sample_prompts(c.num_prompts_per_step, self.generator)
        self.policy.eval()
        # What training_rollout keeps to spare the update (a language model's sampler
        # activations) serves the whole batch only: micro-batches sample plainly.
        sample = self.policy.training_rollout if c.num_micro_batches == 1 else self.policy.rollout
        rollout = self._sample(sample, prompts, G)
        self.policy.train()
        if self._trim:
            allocator.trim()  # the sampler's freed temporaries, before the update's peak
        t_rollout = time.perf_counter()
        lengths = rollout.mask.sum(dim=1).float()  # (N,) before any masking below
        truncated = rollout.extra.get("truncated")  # (N,) bool, language models only
        if c.mask_truncated_completions and truncated is not None:
            rollout.mask = rollout.mask & ~truncated.to(rollout.mask.device)[:, None]

        # --- REWARD ---
        rewards = self._rewards(rollout)  # (N,)
        t_reward = time.perf_counter()

        # --- ADVANTAGE ---
        advantages = rl.compute_advantages(
            rewards, G, method=c.advantage, scale_rewards=c.scale_rewards,
            **({"lam": c.w_reinforce_lambda} if c.advantage == "w_reinforce" else {}),
            # a method that declares a mask option (REINFORCE++: token-level whitening) gets it
            **({"mask": rollout.mask} if "mask" in self._advantage_options else {}),
        )  # (N,)
        # Off-policy samples (a temperature schedule) carry truncated IS weights (N, T):
        # each token's advantage is scaled by its weight (TIS, rlnb.train.schedules).
        is_weight = rollout.extra.get("is_weight")
        loss_adv = advantages if is_weight is None else advantages[:, None] * is_weight
        micro = self._micro_batches(rollout)  # None: the whole batch at once
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                if micro is None:
                    ref_logp, _ = self.reference.log_probs(rollout, temperature=c.temperature)
                else:
                    ref_logp = torch.cat([self.reference.log_probs(b, temperature=c.temperature)[0]
                                          for _, b, _ in micro])  # (N, T)

        # --- OBJECTIVE and UPDATE (num_iterations PPO epochs over the batch) ---
        for _ in range(c.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            if micro is None:
                loss, pg_loss, entropy, loss_metrics = self._objective(
                    rollout, loss_adv, ref_logp)
                loss.backward()
            else:  # gradient accumulation: each backward adds its share of the batch's loss
                loss, pg_loss, entropy, loss_metrics = self._accumulate(
                    micro, loss_adv, ref_logp)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]],
                c.max_grad_norm if c.max_grad_norm is not None else float("inf"),
            )
            if self._trim:
                allocator.trim()  # the backward's, before the optimiser state's
            self.optimizer.step()
        self.policy.after_update(rollout)  # e.g. drop what the old weights computed
        self.step += 1
        t_update = time.perf_counter()

        # --- LOGGING ---
        metrics = self._step_metrics(rollout, lengths, rewards, advantages, entropy, loss,
                                     pg_loss, grad_norm, loss_metrics)
        if ref_logp is not None:
            metrics["kl"] = float(rl.masked_mean(
                rl.kl_penalty(rollout.logp, ref_logp, estimator=c.kl_estimator), rollout.mask))
        for cb in self.callbacks:
            extra = cb(self, metrics)
            if extra:
                metrics.update(extra)
        metrics["time/rollout_seconds"] = t_rollout - t0
        metrics["time/reward_seconds"] = t_reward - t_rollout
        metrics["time/update_seconds"] = t_update - t_reward  # advantages, loss, backward, step
        metrics["time/step_seconds"] = time.perf_counter() - t0
        self.history.append(metrics)
        if self.run_dir is not None:
            self._persist(metrics, rollout, rewards, advantages)
        return metrics

    def _sample(self, sample: Callable[..., Rollout], prompts: torch.Tensor, G: int) -> Rollout:
        """The step's rollout: ``sample`` (the policy's sampler) at ``temperature``, or the
        config's rollout source: EAD's per-position temperatures (``temperature_schedule``,
        :func:`rlnb.train.schedules.scheduled_rollout`) or CURE's stage-1 branching
        (``cure_branches``, :func:`rlnb.train.branching.branching_rollout`); for a
        :class:`~rlnb.envs.HintedTask`, its hinted rollout (:mod:`rlnb.train.hinting`)."""
        c = self.config
        if hinting.is_hinted(self.env):
            return hinting.hinted_rollout(
                sample, self.policy, self.env, prompts, G, step=self.step,
                max_steps=c.max_steps, temperature=c.temperature, generator=self.generator,
                temperature_schedule=c.temperature_schedule, cure_branches=c.cure_branches)
        if c.temperature_schedule is not None:
            return schedules.scheduled_rollout(
                self.policy, self.env, prompts, G, c.temperature_schedule, step=self.step,
                temperature=c.temperature, generator=self.generator)
        if c.cure_branches and (c.cure_stage1_steps is None or self.step < c.cure_stage1_steps):
            return branching.branching_rollout(
                self.policy, self.env, prompts, G, branches=c.cure_branches,
                temperature=c.temperature, generator=self.generator)
        return sample(self.env, prompts, G, temperature=c.temperature, generator=self.generator)

    def _objective(self, batch: Rollout, advantages: torch.Tensor,
                   ref_logp: torch.Tensor | None, weights: torch.Tensor | None = None):
        """``(loss, pg_loss, entropy (n, T), loss metrics)`` of ``batch`` (``n`` rows): the
        policy loss, plus ``beta`` times the KL to the reference, minus ``entropy_coef``
        times the entropy. ``weights`` ``(n, T)``: the batch's rows of the whole step's
        aggregation weights (a micro-batch); None aggregates over ``batch`` alone."""
        c = self.config
        w = {} if weights is None else {"weights": weights}
        max_len = self._max_len()
        logp, entropy = self.policy.log_probs(batch, temperature=c.temperature)  # (n, T)
        tokens = rl.token_inputs(  # the per-token tensors the loss declares (STEER, Lp-Reg, ROVER)
            self._loss_fn, self.policy, batch, entropy, temperature=c.temperature,
            min_p=c.lp_reg_min_p)
        loss, loss_metrics = self._loss_fn(
            logp, batch.logp, advantages, batch.mask,
            agg=c.loss_agg_mode, **self._loss_options, **w, **tokens,
            **(max_len if self._loss_takes_max_len else {}),
        )
        pg_loss = loss
        if ref_logp is not None:
            kl_tok = rl.kl_penalty(logp, ref_logp, estimator=c.kl_estimator)  # (n, T)
            kl = rl.agg_loss(kl_tok, batch.mask, c.loss_agg_mode, **max_len, **w)
            loss = loss + c.beta * kl
        mean_entropy = rl.agg_loss(entropy, batch.mask, c.loss_agg_mode, **max_len, **w)
        if c.entropy_coef:
            loss = loss - c.entropy_coef * mean_entropy
        return loss, pg_loss, entropy, loss_metrics

    def _micro_batches(self, rollout: Rollout
                       ) -> list[tuple[slice, Rollout, torch.Tensor]] | None:
        """``(rows, micro-batch, its weights (n, T))`` for each micro-batch of the step,
        the weights being those rows of the whole batch's :func:`rlnb.rl.agg_weights`;
        None with one micro-batch (the whole batch, computed as it always was)."""
        c = self.config
        if c.num_micro_batches == 1:
            return None
        weights = rl.agg_weights(rollout.mask, c.loss_agg_mode, dtype=rollout.logp.dtype,
                                 **self._max_len())  # (N, T)
        size, n = c.micro_batch_size, len(rollout)
        rows = [slice(i, min(i + size, n)) for i in range(0, n, size)]
        return [(r, rollout_rows(rollout, r), weights[r]) for r in rows]

    def _accumulate(self, micro: list[tuple[slice, Rollout, torch.Tensor]],
                    advantages: torch.Tensor, ref_logp: torch.Tensor | None):
        """Backward of each micro-batch's share of the loss (the gradients add up to the
        whole batch's); returns the whole batch's ``(loss, pg_loss, entropy (N, T), loss
        metrics)``: losses summed, metrics combined by :func:`combine_loss_metrics`."""
        loss = pg_loss = None
        entropies, parts = [], []
        for i, (rows, batch, weights) in enumerate(micro):
            b_loss, b_pg, b_entropy, b_metrics = self._objective(
                batch, advantages[rows], None if ref_logp is None else ref_logp[rows], weights)
            b_loss.backward()
            if self._trim_micro and i < len(micro) - 1:
                # each backward's freed activations, before the next forward: glibc's heap
                # otherwise grows by about one micro-batch of activations per micro-batch
                # (measured: 2.4 -> 6.9 GiB over 4 micro-batches, Qwen2.5-0.5B with LoRA)
                allocator.trim()
            b_loss, b_pg = b_loss.detach(), b_pg.detach()
            loss = b_loss if loss is None else loss + b_loss
            pg_loss = b_pg if pg_loss is None else pg_loss + b_pg
            entropies.append(b_entropy.detach())
            parts.append((int(batch.mask.sum()), b_metrics))
        return loss, pg_loss, torch.cat(entropies), combine_loss_metrics(parts)

    def _rewards(self, rollout: Rollout) -> torch.Tensor:
        rewards = self.env.reward_rollout(rollout, self.generator)
        if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point():
            raise TypeError(
                f"{type(self.env).__name__}.reward_rollout must return a float tensor, got "
                f"{type(rewards).__name__}{'' if not isinstance(rewards, torch.Tensor) else ' of ' + str(rewards.dtype)}"
            )
        if rewards.shape != (len(rollout),):
            raise ValueError(
                f"{type(self.env).__name__}.reward_rollout returned shape {tuple(rewards.shape)}; "
                f"expected ({len(rollout)},), one reward per completion"
            )
        return rewards

    def _step_metrics(self, rollout, lengths, rewards, advantages, entropy, loss, pg_loss,
                      grad_norm, loss_metrics) -> dict[str, Any]:
        G = rollout.group_size
        grouped = rewards.view(-1, G)
        group_std = grouped.std(dim=1) if G > 1 else torch.zeros(grouped.shape[0])
        metrics: dict[str, Any] = {
            "step": self.step,
            "reward": float(rewards.mean()),
            "reward_std": float(group_std.mean()),
            "frac_reward_zero_std": float((group_std == 0).float().mean()),
            "entropy": float(rl.masked_mean(entropy.detach(), rollout.mask)),
            "loss": float(loss.detach()),
            "pg_loss": float(pg_loss.detach()),
            "grad_norm": float(grad_norm),
            "advantage_abs_mean": float(advantages.abs().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }
        truncated = rollout.extra.get("truncated")
        if truncated is not None:
            metrics["completions/clipped_ratio"] = float(truncated.float().mean())
        for k, v in loss_metrics.items():
            metrics.setdefault(k, float(v))
        return metrics

    def _persist(self, metrics, rollout, rewards, advantages) -> None:
        c, d = self.config, self._writable()
        d.append(metrics)  # first the metrics line, then the checkpoint
        if c.log_rollouts_steps and self.step % c.log_rollouts_steps == 0:
            d.append_rollouts(self._rollout_rows(rollout, rewards, advantages))
        if self.step % self.save_steps == 0 or self.step == c.max_steps:
            self.save_checkpoint()

    def _rollout_rows(self, rollout: Rollout, rewards, advantages) -> list[dict[str, Any]]:
        """The first ``log_rollouts_count`` completions of a step, as rows to log."""
        k = min(self.config.log_rollouts_count, len(rollout))
        decode = getattr(self.policy, "decode", None)
        texts = decode(rollout)[:k] if callable(decode) else None
        rows = []
        for i in range(k):
            row = {
                "step": self.step,
                "prompt": int(rollout.prompts[i]),
                "actions": rollout.actions[i][rollout.mask[i]].tolist(),
                "reward": float(rewards[i]),
                "advantage": float(advantages[i]),
            }
            if texts is not None:
                row["completion"] = texts[i]
            rows.append(row)
        return rows

    def save_checkpoint(self) -> None:
        """Checkpoint the current step (policy, optimiser and sampler state)."""
        self._writable().save_checkpoint(self.step, self.policy, self.optimizer, self.generator)

    def save_config(self) -> None:
        """Write the config in force (live changes included) to the run's config.json."""
        self._writable().save_config(self.config)

    def save(self) -> None:
        """Leave the run directory able to resume exactly here: the checkpoint of this
        step and the config in force (live changes included). Dashboards call it when
        they pause or stop a run."""
        self.save_checkpoint()
        self.save_config()

    def close(self) -> None:
        """Close the metrics file and release the run directory (idempotent). The Trainer
        can still be inspected; writing to the run needs ``rlnb.train.resume``."""
        if self.directory is not None:
            self.directory.close()


def _on_cpu(policy: Policy) -> bool:
    """Whether the policy's parameters live on the CPU (all of them, or it has none)."""
    return all(p.device.type == "cpu" for p in policy.parameters())
