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
import copy
import inspect
import json
import os
import shutil
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import rlnb.envs  # noqa: F401 - defines (registers) rlnb's sandboxes before load_component
import rlnb.policies  # noqa: F401 - and its policies
from rlnb import rl
from rlnb.policies.base import Policy, Rollout
from rlnb.policies.lm.fast import replay as lm_replay
from rlnb.serialization import (
    atomic_save_safetensors,
    atomic_write_bytes,
    load_component,
    read_spec,
    read_tensors,
    save_component,
)
from rlnb.train import allocator, rundir
from rlnb.train.compat import check_pair
from rlnb.train.config import TrainConfig

Callback = Callable[["Trainer", dict[str, Any]], "dict[str, Any] | None"]
"""A callback sees the trainer and the step's metrics after the update; a dict it returns
is merged into the metrics before they are logged. ``trainer.stop()`` ends training after
the current step."""


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
        # What a run directory needs closed (its lock, the metrics file) lives apart from
        # the Trainer, so that garbage collection of the Trainer releases it too.
        self._resources = _RunResources()
        self._finalizer = weakref.finalize(self, self._resources.close)
        self.policy, self.env = policy, env
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(
                f"config must be a TrainConfig, got {type(config).__name__}; build one with "
                "TrainConfig(**options) (or TrainConfig.from_dict(d) from a dict)")
        self.config = config if config is not None else TrainConfig()
        self.config.validate()
        check_pair(policy, env)
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._stop = False
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = self._build_optimizer()
        self.reference = self._build_reference() if self.config.beta > 0 else None
        self._loss_fn = rl.get_policy_loss_fn(self.config.policy_loss)
        self._loss_options = self._select_loss_options()
        rl.get_advantage_fn(self.config.advantage)  # fail now on a typo, not at step 1
        if self.run_dir is not None:
            self._open_run_dir(allow_metrics_gap)

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
        ref = copy.deepcopy(self.policy)
        ref.requires_grad_(False)
        return ref.eval()

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
            "generator": self.generator,
        }
        accepted = inspect.signature(self._loss_fn).parameters
        return {k: v for k, v in available.items() if k in accepted}

    #: Config options that do not define a run: a run directory continues with others.
    NOT_COMPARED = frozenset({"max_steps", "progress_bar", "torch_threads",
                              "keep_freed_memory", "fsync"})

    def _open_run_dir(self, allow_metrics_gap: bool) -> None:
        """Lock the run directory, check everything in it, then write (in that order: a
        refused directory is left exactly as it was found)."""
        d = self.run_dir
        assert d is not None
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(
                f"run_dir {d} is a file, not a directory: pass the path of a directory "
                "(it is created when missing)")
        lock = rundir.RunDirLock(d)
        self._resources.lock = lock
        made: Path | None = None  # the top directory this call created
        marked = False
        try:
            # An existing lock file is taken without writing to it; a new one is made only
            # once every check has passed.
            held = d.is_dir() and lock.acquire(create=False)
            plan = self._inspect_run_dir(allow_metrics_gap)
            if not held:
                made = _first_missing(d)
                try:
                    d.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    made = None
                    raise NotADirectoryError(
                        f"cannot create run_dir {d}: {err.strerror or err} (is a parent "
                        "folder a file?); pass the path of a directory") from None
                lock.acquire(create=True)
                marked = True  # from here on the lock file is this call's to remove
                if rundir.fingerprint(d) != plan["fingerprint"]:  # changed meanwhile
                    plan = self._inspect_run_dir(allow_metrics_gap)
            lock.mark()
            marked = True
            rundir.remove_stale_temporaries(d)
            self._apply_run_dir(plan)
        except BaseException:
            metrics, self._resources.metrics = self._resources.metrics, None
            if metrics is not None:
                metrics.close()
            lock.release(remove=marked)
            self._resources.lock = None
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise

    def _inspect_run_dir(self, allow_metrics_gap: bool) -> dict[str, Any]:
        """Every check of an existing run directory, reading only."""
        d = self.run_dir
        assert d is not None
        plan: dict[str, Any] = {"fingerprint": rundir.fingerprint(d) if d.is_dir() else None}
        if not (d / rundir.CONFIG).exists():
            # A new run (or one killed before its config was written: started again).
            for obj in (self.env, self.policy):
                json.dumps(obj.spec())  # a component that cannot be saved fails here
            plan["fresh"] = True
            return plan
        # Options added to TrainConfig after the run was made take their defaults.
        saved = {**TrainConfig.defaults(), **rundir.read_config(d)}
        mine = self.config.to_dict()
        diff = sorted(k for k in set(saved) | set(mine)
                      if k not in self.NOT_COMPARED and saved.get(k) != mine.get(k))
        if diff:
            raise ValueError(
                f"{d} already holds a run with a different config (options {diff} differ); "
                "choose a new run_dir, or continue that run with rlnb.train.resume(run_dir)"
            )
        self._check_components(d)
        checkpoint = None
        if (d / rundir.CHECKPOINT).exists():
            checkpoint = rundir.Checkpoint(d / rundir.CHECKPOINT)
            checkpoint.check_fits(self.policy)
        reference = None
        if self.reference is not None and checkpoint is not None:
            reference = read_tensors(d / rundir.REFERENCE) if (d / rundir.REFERENCE).exists() \
                else None
            if reference is None:
                raise FileNotFoundError(
                    f"{d / rundir.REFERENCE} is missing: this run (beta > 0) needs its "
                    "reference policy; restore the file, or start a new run directory")
        step = checkpoint.step if checkpoint is not None else 0
        metrics_path = d / rundir.METRICS
        rows = [r for r in rundir.read_metrics(metrics_path) if r["step"] <= step]
        missing = rundir.missing_steps(rows, step)
        if missing and not allow_metrics_gap:
            raise ValueError(
                f"{metrics_path} lacks the rows of step(s) {rundir.describe_steps(missing)}, "
                f"which the checkpoint (step {step}) already covers (a failed write?): "
                "continuing would log a run with those steps missing. Pass "
                "allow_metrics_gap=True (to Trainer or rlnb.train.resume) to continue "
                "anyway, or start a new run directory")
        plan.update(fresh=False, write_config=saved.get("max_steps") != mine.get("max_steps"),
                    checkpoint=checkpoint, reference=reference, rows=rows)
        return plan

    def _check_components(self, d: Path) -> None:
        """The sandbox and the policy given must be the ones the directory holds."""
        for name, obj, what in (("env", self.env, "sandbox"), ("policy", self.policy, "policy")):
            path = d / f"{name}.json"
            saved = read_spec(path)
            mine = json.loads(json.dumps(obj.spec()))
            ignore = ("device",) if name == "policy" else ()  # where it runs, not what it is
            if saved["class"] != mine["class"]:
                problem = f"{path} holds a {saved['class']}, the {what} given is a {mine['class']}"
            else:
                a, b = saved.get("config", {}), mine.get("config", {})
                keys = sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))
                problem = f"its options {keys} differ from {path}" if keys else ""
            if not problem and name == "env":
                tensor_path = d / "env.safetensors"
                held = read_tensors(tensor_path) if tensor_path.exists() else {}
                given = obj.get_tensors()
                differ = sorted(k for k in set(held) | set(given)
                                if k not in held or k not in given
                                or not torch.equal(held[k], given[k].detach().cpu()))
                if differ:
                    problem = f"its data {differ} differ from {tensor_path}"
            if problem:
                raise ValueError(
                    f"{d} holds a run on another {what} than the one given ({problem}); "
                    f"continue that run with rlnb.train.resume({str(d)!r}), which rebuilds "
                    f"its sandbox and policy from the directory, or choose a new run_dir for "
                    f"this {what}")

    def _apply_run_dir(self, plan: dict[str, Any]) -> None:
        """Write a new run's files or load an existing run's state (under the lock)."""
        d, fsync = self.run_dir, self.config.fsync
        assert d is not None
        config_path, metrics_path = d / rundir.CONFIG, d / rundir.METRICS
        if plan["fresh"]:
            save_component(self.env, d, "env", fsync=fsync)
            save_component(self.policy, d, "policy", fsync=fsync)
            if self.reference is not None:
                atomic_save_safetensors(self.reference.state_dict(), d / rundir.REFERENCE,
                                        fsync=fsync)
            atomic_write_bytes(config_path, self.config.to_json().encode(), fsync=fsync)
            self.save_checkpoint()  # step 0: the initial weights, so a resume never re-inits
            checkpoint = rundir.Checkpoint(d / rundir.CHECKPOINT)
            reference = read_tensors(d / rundir.REFERENCE) if self.reference is not None else None
            rows: list[dict[str, Any]] = []
        else:
            if plan["write_config"]:
                atomic_write_bytes(config_path, self.config.to_json().encode(), fsync=fsync)
            checkpoint, reference, rows = plan["checkpoint"], plan["reference"], plan["rows"]
        if checkpoint is not None:
            self.step = checkpoint.apply(policy=self.policy, optimizer=self.optimizer,
                                         generator=self.generator)
            if self.reference is not None and reference is not None:
                self.reference.load_state_dict(reference)
        # Drop a partial last line and the rows of steps the checkpoint does not hold.
        if metrics_path.exists():
            atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in rows).encode(),
                               fsync=fsync)
        self.history = rows
        self._resources.metrics = rundir.MetricsWriter(metrics_path, fsync=fsync)
        self._record_runtime(d)

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

    def _record_runtime(self, d: Path) -> None:
        """Write runtime.json; warn when a run continues under another runtime (its later
        steps then differ in the last bits from those of a run that never stopped)."""
        now, path = self.runtime(), d / rundir.RUNTIME
        try:
            before = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            before = None
        if isinstance(before, dict) and self.step > 0:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if changed:
                warnings.warn(
                    f"{d} continues at step {self.step} under another runtime than it ran "
                    f"with ({', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in changed)}); "
                    "the following steps will not be bitwise those of an uninterrupted run. "
                    "Set TrainConfig.torch_threads (or RLNB_NATIVE, ATEN_CPU_CAPABILITY) as "
                    "before to repeat its numbers exactly", stacklevel=3)
        atomic_write_bytes(path, json.dumps(now, indent=2).encode(), fsync=self.config.fsync)

    def _writable(self) -> Path:
        """The run directory, when this Trainer holds its lock (else a clear error)."""
        if self.run_dir is None:
            raise ValueError("this trainer has no run_dir; pass run_dir=... to save checkpoints")
        lock = self._resources.lock
        if lock is None or not lock.held:
            raise RuntimeError(
                f"this Trainer was closed and no longer holds the lock of {self.run_dir}, so "
                f"it cannot write there; continue the run with "
                f"rlnb.train.resume({str(self.run_dir)!r})")
        return self.run_dir

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

    def metrics_frame(self, *, wide: bool = True) -> pd.DataFrame:
        """The metrics so far: wide (one column per metric) or tidy (step, metric, value)."""
        df = pd.DataFrame(self.history)
        if wide or df.empty:
            return df
        return df.melt(id_vars="step", var_name="metric", value_name="value")

    def train(self, max_steps: int | None = None) -> pd.DataFrame:
        """Run until ``max_steps`` (default: the config's) and return the wide metrics."""
        from tqdm.auto import tqdm

        total = self.config.max_steps if max_steps is None else max_steps
        self._stop = False
        bar = tqdm(total=total, initial=self.step, disable=not self.config.progress_bar,
                   desc="training", unit="step", leave=True)
        if self.config.keep_freed_memory and _on_cpu(self.policy):
            allocator.keep_freed_memory()
        try:
            with self.thread_settings():
                while self.step < total and not self._stop:
                    metrics = self.train_step()
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward']:.3f}",
                                    entropy=f"{metrics['entropy']:.3f}", refresh=False)
        finally:
            bar.close()
        return self.metrics_frame()

    @contextlib.contextmanager
    def thread_settings(self):
        """The thread counts of the run while stepping (``torch_threads`` resolved,
        ``matmul_threads``), restored afterwards. Settings of the run, never chosen by
        timing or load: :meth:`train` and the dashboards step inside it."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads())
        try:
            with lm_replay.matmul_threads(self.config.matmul_threads):
                yield
        finally:
            torch.set_num_threads(before)

    def threads(self) -> int:
        """The CPU thread count training uses (``TrainConfig.torch_threads``, resolved)."""
        if self.config.torch_threads is not None:
            return self.config.torch_threads
        n_params = sum(p.numel() for p in self.policy.parameters())
        return 1 if n_params < 1_000_000 else torch.get_num_threads()

    # --- one step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        if self.run_dir is not None:
            self._writable()  # a closed Trainer must not compute a step it cannot log
        c, t0 = self.config, time.perf_counter()
        G = c.num_generations

        # --- ROLLOUT ---
        prompts = self.env.sample_prompts(c.num_prompts_per_step, self.generator)
        self.policy.eval()
        # A policy that can keep its sampler's activations spares the first update of the
        # batch its forward pass (same weights: rlnb.policies.lm_replay).
        keep = {"keep_activations": True} if getattr(self.policy, "replay_supported", False) else {}
        rollout = self.policy.rollout(
            self.env, prompts, G, temperature=c.temperature, generator=self.generator, **keep
        )
        self.policy.train()
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
        )  # (N,)
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logp, _ = self.reference.log_probs(rollout, temperature=c.temperature)

        # --- OBJECTIVE and UPDATE (num_iterations PPO epochs over the batch) ---
        for _ in range(c.num_iterations):
            logp, entropy = self.policy.log_probs(rollout, temperature=c.temperature)  # (N, T)
            loss, loss_metrics = self._loss_fn(
                logp, rollout.logp, advantages, rollout.mask,
                agg=c.loss_agg_mode, **self._loss_options,
            )
            pg_loss = loss
            if ref_logp is not None:
                kl_tok = rl.kl_penalty(logp, ref_logp, estimator=c.kl_estimator)  # (N, T)
                kl = rl.agg_loss(kl_tok, rollout.mask, c.loss_agg_mode)
                loss = loss + c.beta * kl
            mean_entropy = rl.agg_loss(entropy, rollout.mask, c.loss_agg_mode)
            if c.entropy_coef:
                loss = loss - c.entropy_coef * mean_entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]],
                c.max_grad_norm if c.max_grad_norm is not None else float("inf"),
            )
            self.optimizer.step()
        rollout.extra.pop("activations", None)  # the weights have changed: of no more use
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
        c = self.config
        self._writable()
        self._resources.metrics.write(metrics)  # first the metrics line, then the checkpoint
        if c.log_rollouts_steps and self.step % c.log_rollouts_steps == 0:
            self._log_rollouts(rollout, rewards, advantages)
        if self.step % c.save_steps == 0 or self.step == c.max_steps:
            self.save_checkpoint()

    def _log_rollouts(self, rollout: Rollout, rewards, advantages) -> None:
        assert self.run_dir is not None
        k = min(self.config.log_rollouts_count, len(rollout))
        decode = getattr(self.policy, "decode", None)
        texts = decode(rollout)[:k] if callable(decode) else None
        lines = []
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
            lines.append(json.dumps(row) + "\n")
        with open(self.run_dir / rundir.ROLLOUTS, "a", encoding="utf-8") as f:
            f.write("".join(lines))

    def save_checkpoint(self) -> None:
        """Checkpoint the current step (policy, optimiser and sampler state)."""
        d = self._writable()
        rundir.save_checkpoint(d / rundir.CHECKPOINT, step=self.step,
                               policy=self.policy, optimizer=self.optimizer,
                               generator=self.generator, fsync=self.config.fsync)

    def save_config(self) -> None:
        """Write the config in force (live changes included) to the run's config.json."""
        d = self._writable()
        atomic_write_bytes(d / rundir.CONFIG, self.config.to_json().encode(),
                           fsync=self.config.fsync)

    def close(self) -> None:
        """Close the metrics file and release the run directory (idempotent). The Trainer
        can still be inspected; writing to the run needs ``rlnb.train.resume``."""
        self._finalizer()


class _RunResources:
    """A Trainer's open run directory: the lock and the metrics file."""

    def __init__(self) -> None:
        self.lock: rundir.RunDirLock | None = None
        self.metrics: rundir.MetricsWriter | None = None

    def close(self) -> None:
        metrics, self.metrics = self.metrics, None
        lock, self.lock = self.lock, None
        try:
            if metrics is not None:
                metrics.close()
        finally:
            if lock is not None:
                lock.release()


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    top = None
    while not path.exists():
        top, parent = path, path.parent
        if parent == path:
            break
        path = parent
    return top


def _on_cpu(policy: Policy) -> bool:
    """Whether the policy's parameters live on the CPU (all of them, or it has none)."""
    return all(p.device.type == "cpu" for p in policy.parameters())


def load_run(run_dir: str | os.PathLike) -> tuple[Policy, Any, TrainConfig]:
    """Rebuild ``(policy, env, config)`` of a run directory, with the policy's weights
    from its last checkpoint (or its initial weights when it has none)."""
    d = Path(run_dir)
    config = rundir.load_config(d)
    env = load_component(d, "env")
    policy = load_component(d, "policy")
    if (d / rundir.CHECKPOINT).exists():
        rundir.load_checkpoint(d / rundir.CHECKPOINT, policy=policy)
    return policy, env, config


def resume(
    run_dir: str | os.PathLike,
    *,
    max_steps: int | None = None,
    callbacks: Sequence[Callback] = (),
    progress_bar: bool | None = None,
    allow_metrics_gap: bool = False,
) -> Trainer:
    """Continue a run from its directory after a crash or a stop, and return its trainer
    (closed: the run directory's lock is released).

    The sandbox, policy, config, optimiser state and sampler state all come from
    ``run_dir``; the step counter continues where the last checkpoint left it, and the
    steps after it are re-run to the same numbers. ``max_steps`` extends the run.
    ``allow_metrics_gap`` continues even when ``metrics.jsonl`` lacks rows of steps the
    checkpoint covers. Only classes rlnb defines, or that were registered with
    :func:`rlnb.serialization.register_serializable`, are rebuilt: nothing is imported
    because the directory names it.
    """
    d = Path(run_dir)
    config = rundir.load_config(d)
    if max_steps is not None:
        config.max_steps = max_steps
    if progress_bar is not None:
        config.progress_bar = progress_bar
    env = load_component(d, "env")
    policy = load_component(d, "policy")
    with Trainer(policy, env, config, run_dir=d, callbacks=callbacks,
                 allow_metrics_gap=allow_metrics_gap) as trainer:
        trainer.train()
    return trainer
