"""TRL as the trainer at scale, rlnb's probes in its loop.

TRL's ``GRPOTrainer`` trains a language model on an rlnb text task; rlnb supplies the task,
the names, the probes and the run directory:

- :func:`task_dataset` -- a :class:`~rlnb.envs.text.TextTask` as TRL's training data (a
  ``datasets.Dataset`` with a ``prompt`` column, plain text or chat messages);
- :class:`TaskReward` (:func:`task_reward`) -- the task's verifier as a TRL reward
  function, ``reward(prompts, completions, **kwargs) -> list[float]``;
- :func:`grpo_options` / :func:`to_grpo_config` -- a :class:`~rlnb.train.TrainConfig` as
  the ``GRPOConfig`` that computes the same step; a setting TRL has no equivalent for
  (verl's ``seq-mean-token-sum``, an ``rloo`` advantage, the ``k2`` KL estimator, ...) is
  a ``ValueError`` that names it and the nearest TRL setting, before anything runs.
  :func:`train_config_from_grpo` goes the other way, for a run configured in TRL;
- :class:`RlnbCallback` -- a ``transformers.TrainerCallback`` that writes an rlnb run
  directory while TRL trains: ``config.json`` (the TrainConfig), ``env.json`` (the task),
  ``trl_config.json`` (every GRPOConfig field), ``runtime.json``, and ``metrics.jsonl``
  with every metric TRL logs under TRL's name plus rlnb's probes (``probe/...``: pass@k on
  held-out problems, the token-entropy distribution and forking share, the effective rank
  of hidden states at chosen layers) every ``probe_steps`` steps. ``rlnb.train.load_runs``
  and the figures read it like any rlnb run. Only the main process (rank 0) writes;
- a command line, ``python -m rlnb.integrations.trl --model DIR --task NAME --max-steps N
  --run-dir OUT``, one process or several under ``torchrun`` / ``accelerate launch``.

The names TrainConfig and GRPOConfig do not share, and the launch on GPUs (DeepSpeed,
FSDP, vLLM generation), are in docs/INTEGRATIONS.md.

Footguns:

* TRL counts its batch in completions per process: ``per_device_train_batch_size x
  world_size x gradient_accumulation_steps = num_prompts_per_step x num_generations``.
  :func:`grpo_options` keeps rlnb's micro-batch (completions per forward/backward on one
  device) where it fits in a process's share, and derives the accumulation steps;
* a TRL step is an optimiser step: with ``num_iterations = mu > 1`` one rollout batch
  serves ``mu`` TRL steps, so TRL's ``max_steps`` is ``mu`` times rlnb's, and the rows of
  ``metrics.jsonl`` are TRL's (optimiser) steps;
* the probes sample the model of the main process on its own: they need the whole model
  there (one process, DDP, DeepSpeed ZeRO-1/2). Under ZeRO-3 or FSDP, which shard the
  weights, :class:`RlnbCallback` refuses ``probe_steps > 0`` when training starts.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from rlnb.rl.aggregation import TRL_AGG_MODES
from rlnb.serialization import atomic_write_bytes, save_component
from rlnb.train.config import TrainConfig
from rlnb.train.files import CONFIG, METRICS, RUNTIME
from rlnb.train.lock import RunDirLock
from rlnb.train.metrics import MetricsWriter
from rlnb.train.rundir import RunResources

__all__ = [
    "TRL_CONFIG",
    "RlnbCallback",
    "TaskReward",
    "build_parser",
    "grpo_options",
    "main",
    "task_dataset",
    "task_reward",
    "to_grpo_config",
    "train_config_from_grpo",
    "unmapped_grpo_settings",
]

#: The file of a run directory that holds every field of the GRPOConfig TRL ran with.
TRL_CONFIG = "trl_config.json"

#: verl's ``loss_agg_mode`` names that a TRL ``loss_type`` computes exactly.
VERL_TO_TRL = {"token-mean": "dapo", "seq-mean-token-mean": "grpo"}

# GRPOConfig fields that say how TRL logs, saves and shows progress, not what it computes:
# a given TrainConfig is not compared against them.
_NOT_COMPUTED = frozenset({"save_strategy", "save_steps", "disable_tqdm", "logging_steps",
                           "report_to"})
# GRPOConfig fields grpo_options sets to what rlnb computes though TrainConfig has no field
# for them: an override may change them (the callback then warns that config.json cannot
# record it, and trl_config.json does).
_TRL_ONLY = frozenset({"top_p", "top_k", "lr_scheduler_type", "warmup_steps"})


# ======================================================================================
# The task as TRL's data and reward
# ======================================================================================
def _check_task(task: Any, what: str = "task") -> None:
    missing = [a for a in ("prompts", "num_prompts", "prompt", "score", "to_dataset")
               if not hasattr(task, a)]
    if missing:
        raise TypeError(
            f"{what} must be an rlnb text task (rlnb.envs.TextTask, e.g. "
            f"rlnb.envs.text_tasks.make_task('addition', num_prompts=256)), got "
            f"{type(task).__name__}, which lacks {', '.join(missing)}")


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return [*head, {"role": "user", "content": prompt}]


def task_dataset(task: Any, *, conversational: bool = False,
                 system_prompt: str | None = None) -> Any:
    """The task as TRL's training data: :meth:`TextTask.to_dataset` (columns ``prompt``,
    ``answer`` and the task's metadata, one row per prompt, the task's spec in
    ``ds.info.description``). ``conversational``: ``prompt`` holds chat messages (a user
    message with the task's prompt, after a system message ``system_prompt`` if given),
    which TRL renders with the tokenizer's chat template; else the plain text, which TRL
    tokenizes as it is (with the tokenizer's special tokens, as ``LMPolicy`` does).

    >>> from rlnb.envs.text import ExactMatchTask
    >>> ds = task_dataset(ExactMatchTask(["1+1="], ["2"]))
    >>> ds.column_names, ds[0]["prompt"]
    (['prompt', 'answer'], '1+1=')
    >>> task_dataset(ExactMatchTask(["1+1="], ["2"]), conversational=True)[0]["prompt"]
    [{'role': 'user', 'content': '1+1='}]
    """
    _check_task(task)
    if not isinstance(conversational, bool):
        raise TypeError(f"conversational must be True or False, got {conversational!r}")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
    if system_prompt is not None and not conversational:
        raise ValueError("system_prompt needs conversational=True: a plain-text prompt has no "
                         "place for a system message")
    ds = task.to_dataset()
    if not conversational:
        return ds
    from datasets import Dataset, DatasetInfo

    columns = ds.to_dict()
    columns["prompt"] = [_messages(p, system_prompt) for p in columns["prompt"]]
    # the spec travels; the features do not (the prompt column changes type)
    return Dataset.from_dict(columns, info=DatasetInfo(description=ds.info.description))


class TaskReward:
    """The task's verifier as a TRL reward function: called by ``GRPOTrainer`` with
    ``prompts`` and ``completions`` (and the dataset's other columns, which it ignores), it
    returns ``task.score(prompt, completion)`` for each pair, as floats.

    A prompt is plain text, or chat messages whose last user message is the task's prompt
    (:func:`task_dataset` with ``conversational=True``); a completion is text, or the list
    of messages TRL decodes for a conversational prompt (their contents are joined). TRL
    names its reward metrics after ``__name__``: ``rewards/<name>/mean`` and ``/std``;
    the default name is the task's ``reward_name`` (``"score"``).

    A prompt that is not one of the task's, or a score that is not a finite number, is a
    ``ValueError`` naming the row: a wrong reward would otherwise train silently.

    >>> from rlnb.envs.text import ExactMatchTask
    >>> reward = TaskReward(ExactMatchTask(["1+1=", "2+2="], ["2", "4"]))
    >>> reward(prompts=["1+1=", "2+2="], completions=["2", " 5"], completion_ids=None)
    [1.0, 0.0]
    >>> reward.__name__
    'score'
    """

    def __init__(self, task: Any, *, name: str | None = None) -> None:
        _check_task(task)
        if name is None:
            name = str(getattr(task, "reward_name", "score"))
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.task = task
        self.__name__ = name

    @staticmethod
    def _text(prompt: Any) -> str:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
            users = [m.get("content") for m in prompt if m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                return users[-1]
        raise TypeError(
            f"a prompt must be the task's text or chat messages with a user message, got "
            f"{type(prompt).__name__} {prompt!r}"[:200])

    @staticmethod
    def _completion(completion: Any) -> str:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, Sequence) and all(isinstance(m, Mapping) for m in completion):
            return "".join(str(m.get("content") or "") for m in completion)
        raise TypeError(f"a completion must be text or chat messages, got "
                        f"{type(completion).__name__} {completion!r}"[:200])

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; "
                             "a reward function scores one completion per prompt")
        out = []
        for k, (prompt, completion) in enumerate(zip(prompts, completions)):
            text = self._text(prompt)
            value = self.task.score(text, self._completion(completion))
            ok = isinstance(value, (numbers.Real, np.bool_)) and math.isfinite(float(value))
            if not ok:
                raise ValueError(
                    f"{type(self.task).__name__}.score returned {value!r} for row {k} (prompt "
                    f"{text!r}); a task's score must return a finite float such as 1.0 or 0.0")
            out.append(float(value))
        return out


def task_reward(task: Any, *, name: str | None = None) -> TaskReward:
    """:class:`TaskReward` of ``task``: pass it as ``GRPOTrainer(reward_funcs=...)``."""
    return TaskReward(task, name=name)


# ======================================================================================
# TrainConfig <-> GRPOConfig
# ======================================================================================
def _loss_type(c: TrainConfig) -> tuple[str | None, str | None]:
    """``(TRL loss_type, None)`` computing ``c.loss_agg_mode``'s loss, or ``(None, why)``."""
    mode = c.loss_agg_mode
    if mode in TRL_AGG_MODES:
        return mode, None
    if mode == "seq-mean-token-mean" and c.mask_truncated_completions:
        return None, (
            "loss_agg_mode 'seq-mean-token-mean' with mask_truncated_completions=True: verl "
            "leaves the completions the mask empties out of its mean, TRL's 'grpo' counts "
            "them as 0, and no TRL loss_type computes verl's value; use loss_agg_mode='grpo' "
            "(TRL's formula) or mask_truncated_completions=False")
    if mode in VERL_TO_TRL:
        return VERL_TO_TRL[mode], None
    if mode == "seq-mean-token-sum":
        return None, (
            "loss_agg_mode 'seq-mean-token-sum' (verl: sum of each completion's token losses, "
            "averaged over completions) has no TRL loss_type: TRL's 'dr_grpo' also divides by "
            "max_completion_length; use loss_agg_mode='dr_grpo' (the same direction, a "
            "learning rate max_completion_length times smaller)")
    return None, (
        f"loss_agg_mode {mode!r} (verl: the token losses' sum divided by max_len) has no TRL "
        "loss_type: TRL's 'dr_grpo' divides by N * max_completion_length, N times more; use "
        "loss_agg_mode='dr_grpo' (the same direction, a learning rate N times smaller)")


def _world_size(world_size: int | None) -> int:
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1 (processes), got {world_size!r}")
    return world_size


def grpo_options(config: TrainConfig, *, max_completion_length: int,
                 world_size: int | None = None) -> dict[str, Any]:
    """The ``GRPOConfig`` keyword arguments that compute ``config``'s step with
    ``world_size`` processes (default: ``$WORLD_SIZE``, else 1) and completions of at most
    ``max_completion_length`` tokens (the generation budget, rlnb's
    ``LMPolicy.max_new_tokens``).

    Every setting TRL cannot compute the same way is a ``ValueError`` listing all of them,
    each with the nearest TRL setting. The table of names is docs/INTEGRATIONS.md; in short:
    TrainConfig's names are TRL's where they exist; ``loss_agg_mode`` becomes ``loss_type``
    (TRL's names as they are, verl's ``token-mean`` -> ``dapo``, ``seq-mean-token-mean``
    -> ``grpo``); the batch becomes TRL's per-process micro-batch and accumulation steps;
    ``adam`` / ``adamw`` become ``optim="adamw_torch"``, ``sgd`` ``optim="sgd"``; the
    learning rate is constant (``lr_scheduler_type="constant"``, TRL's default decays it
    linearly to 0); ``max_grad_norm=None`` becomes ``0.0`` (no clipping); TRL logs every
    step (``logging_steps=1``).

    >>> opts = grpo_options(TrainConfig(num_prompts_per_step=4, num_generations=4),
    ...                     max_completion_length=8, world_size=2)
    >>> opts["per_device_train_batch_size"], opts["gradient_accumulation_steps"], opts["loss_type"]
    (8, 1, 'dapo')
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an rlnb.train.TrainConfig, got {type(config).__name__}")
    from rlnb.checks import check_int

    max_completion_length = check_int(max_completion_length, "max_completion_length", 1,
                                      meaning="generation budget in tokens")
    W = _world_size(world_size)
    c = config
    problems: list[str] = []
    if c.max_steps < 1:
        problems.append(f"max_steps={c.max_steps}: TRL trains max_steps >= 1 steps")
    if c.num_generations < 2:
        problems.append(f"num_generations={c.num_generations}: TRL's GRPOTrainer needs at "
                        "least 2 completions per prompt (its advantage is relative to the group)")
    if c.advantage != "grpo":
        problems.append(f"advantage {c.advantage!r}: TRL's GRPOTrainer computes the group-"
                        "relative advantage 'grpo' only (scale_rewards picks its scaling); "
                        "TRL's RLOOTrainer is another trainer")
    if c.policy_loss != "ppo_clip":
        hint = (" (with num_iterations=1 its gradient is vanilla policy gradient's)"
                if c.policy_loss == "vanilla_pg" else "")
        problems.append(f"policy_loss {c.policy_loss!r}: TRL's GRPOTrainer computes the "
                        f"clipped PPO loss 'ppo_clip'{hint}; use policy_loss='ppo_clip'")
    loss_type, why = _loss_type(c)
    if why is not None:
        problems.append(why)
    if c.beta > 0 and c.kl_estimator != "k3":
        problems.append(f"kl_estimator {c.kl_estimator!r} with beta={c.beta:g}: TRL's KL "
                        "term is the k3 estimator only; use kl_estimator='k3'")
    if c.entropy_coef and loss_type not in (None, "dapo", "bnpo"):
        problems.append(
            f"entropy_coef={c.entropy_coef:g} with loss_agg_mode {c.loss_agg_mode!r}: TRL's "
            "entropy bonus is the token mean of the entropy whatever its loss_type, rlnb "
            "aggregates it like the loss; use a token-mean loss_agg_mode (token-mean, dapo, "
            "bnpo) or entropy_coef=0")
    if c.optimizer == "adam" and c.weight_decay > 0:
        problems.append(f"optimizer 'adam' with weight_decay={c.weight_decay:g} (L2 added to "
                        "the gradient): TRL's Adam decouples weight decay; use optimizer='adamw'")
    N = c.num_prompts_per_step * c.num_generations
    per_device = accumulation = None
    if N % W:
        problems.append(
            f"the step's {N} completions (num_prompts_per_step * num_generations = "
            f"{c.num_prompts_per_step} * {c.num_generations}) cannot be shared equally by "
            f"{W} processes; make their number a multiple of {W}")
    else:
        share = N // W
        per_device = min(c.micro_batch_size, share)
        if share % per_device:
            problems.append(
                f"micro-batches of {per_device} completions (per_device_train_batch_size) do "
                f"not divide each process's share of {share} completions ({N} over {W} "
                "processes); choose a micro-batch that divides it")
        else:
            accumulation = share // per_device
    if problems:
        raise ValueError("this TrainConfig has no TRL equivalent: " + "; ".join(problems))
    mu = c.num_iterations
    options: dict[str, Any] = {
        "seed": c.seed,
        "max_steps": c.max_steps * mu,
        "num_generations": c.num_generations,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "max_completion_length": max_completion_length,
        "temperature": c.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "mask_truncated_completions": c.mask_truncated_completions,
        "scale_rewards": c.scale_rewards,
        "loss_type": loss_type,
        "epsilon": c.epsilon,
        "epsilon_high": c.epsilon_high,
        "delta": c.delta,
        "num_iterations": mu,
        "beta": c.beta,
        "entropy_coef": c.entropy_coef,
        "optim": "sgd" if c.optimizer == "sgd" else "adamw_torch",
        "learning_rate": c.learning_rate,
        "weight_decay": c.weight_decay,
        "adam_beta1": c.adam_betas[0],
        "adam_beta2": c.adam_betas[1],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": 0.0 if c.max_grad_norm is None else c.max_grad_norm,
        _checkpointing_field(): c.gradient_checkpointing,
        "logging_steps": 1,
        "disable_tqdm": not c.progress_bar,
    }
    if c.save_steps is None:
        options["save_strategy"] = "no"
    else:
        options.update(save_strategy="steps", save_steps=c.save_steps * mu)
    return options


def _checkpointing_field() -> str:
    """transformers 5 renamed ``gradient_checkpointing`` ``activation_checkpointing``."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names \
        else "gradient_checkpointing"


def to_grpo_config(config: TrainConfig, *, output_dir: str | os.PathLike,
                   max_completion_length: int, world_size: int | None = None,
                   **overrides: Any) -> Any:
    """``trl.GRPOConfig(output_dir=..., **grpo_options(config, ...), **overrides)``.

    ``overrides`` are GRPOConfig fields that TrainConfig does not hold (``bf16``,
    ``use_cpu``, ``use_vllm``, ``vllm_mode``, ``report_to``, ``deepspeed``, and the
    sampling and schedule settings ``top_p``, ``top_k``, ``lr_scheduler_type``,
    ``warmup_steps``, which rlnb fixes to plain sampling and a constant rate); one that
    :func:`grpo_options` derives from a TrainConfig field (``learning_rate``,
    ``loss_type``...) is a ``ValueError``: set it in the TrainConfig, so that the run
    directory records it. ``report_to`` defaults to none (``[]``)."""
    from trl import GRPOConfig

    options = grpo_options(config, max_completion_length=max_completion_length,
                           world_size=world_size)
    clash = sorted(k for k in overrides
                   if k in options and k not in _NOT_COMPUTED | _TRL_ONLY)
    if clash:
        raise ValueError(
            f"{', '.join(clash)} come(s) from the TrainConfig (grpo_options); set them there "
            "(config.replace(...)) rather than as GRPOConfig overrides, so that config.json "
            "records what TRL runs")
    options.update(overrides)
    options.setdefault("report_to", [])
    return GRPOConfig(output_dir=str(output_dir), **options)


def _value(v: Any) -> Any:
    return getattr(v, "value", v)  # transformers' enums (optim, lr_scheduler_type) -> str


def train_config_from_grpo(args: Any, *, max_steps: int | None = None) -> TrainConfig:
    """The TrainConfig of a run that TRL trains with ``args`` (a ``GRPOConfig``), for the
    run directory's ``config.json``: the inverse of :func:`grpo_options` (``max_steps``,
    default ``args.max_steps``, counts TRL steps). Its settings without a TrainConfig name
    (a learning-rate schedule, top-p...) are :func:`unmapped_grpo_settings`. A setting
    TrainConfig has a field for but no value naming TRL's (``loss_type='cispo'``, an
    optimiser other than AdamW or SGD, a generation batch spanning several optimiser
    steps) is a ``ValueError``."""
    W = int(args.world_size)
    mu = int(args.num_iterations)
    problems = []
    if args.loss_type not in TRL_AGG_MODES:
        problems.append(f"loss_type {args.loss_type!r} (rlnb's loss_agg_mode knows TRL's "
                        f"{', '.join(TRL_AGG_MODES)})")
    optim = _value(args.optim)
    if optim not in ("adamw_torch", "adamw_torch_fused", "sgd"):
        problems.append(f"optim {optim!r} (rlnb names adamw_torch as 'adamw' and sgd)")
    accumulation = int(args.gradient_accumulation_steps)
    if args.steps_per_generation not in (None, accumulation):
        problems.append(f"steps_per_generation={args.steps_per_generation} with "
                        f"gradient_accumulation_steps={accumulation}: one generation batch per "
                        "optimiser step is rlnb's step")
    if problems:
        raise ValueError("this GRPOConfig has no TrainConfig equivalent: " + "; ".join(problems)
                         + "; pass RlnbCallback(config=TrainConfig(...)) describing the run")
    steps = int(args.max_steps if max_steps is None else max_steps)
    per_device = int(args.per_device_train_batch_size)
    N = per_device * W * accumulation
    G = int(args.num_generations)
    save = None
    if _value(args.save_strategy) == "steps":
        save = max(1, int(args.save_steps) // mu)
    return TrainConfig(
        seed=int(args.seed), max_steps=max(0, math.ceil(steps / mu)),
        num_prompts_per_step=N // G, num_generations=G, temperature=float(args.temperature),
        mask_truncated_completions=bool(args.mask_truncated_completions),
        advantage="grpo", scale_rewards=str(args.scale_rewards), policy_loss="ppo_clip",
        epsilon=float(args.epsilon), epsilon_high=args.epsilon_high, delta=args.delta,
        loss_agg_mode=str(args.loss_type), num_iterations=mu,
        per_device_train_batch_size=per_device, beta=float(args.beta), kl_estimator="k3",
        entropy_coef=float(args.entropy_coef), optimizer="sgd" if optim == "sgd" else "adamw",
        learning_rate=float(args.learning_rate), weight_decay=float(args.weight_decay),
        adam_betas=(float(args.adam_beta1), float(args.adam_beta2)),
        max_grad_norm=float(args.max_grad_norm) if args.max_grad_norm else None,
        gradient_checkpointing=bool(args.gradient_checkpointing), save_steps=save,
        progress_bar=not args.disable_tqdm)


def unmapped_grpo_settings(args: Any) -> dict[str, Any]:
    """The settings of ``args`` (a ``GRPOConfig``) that change what TRL computes and that a
    TrainConfig cannot record (``trl_config.json`` holds them): those where ``args``
    differs from what :func:`grpo_options` sets or from TRL's plain GRPO."""
    checks = {
        "lr_scheduler_type": (_value(args.lr_scheduler_type), "constant"),
        "warmup_steps": (args.warmup_steps, 0),
        "warmup_ratio": (getattr(args, "warmup_ratio", 0) or 0, 0),
        "top_p": (args.top_p, 1.0),
        "top_k": (args.top_k or 0, 0),
        "min_p": (args.min_p, None),
        "repetition_penalty": (args.repetition_penalty, 1.0),
        "importance_sampling_level": (args.importance_sampling_level, "token"),
        "top_entropy_quantile": (args.top_entropy_quantile, 1.0),
        "use_adaptive_entropy": (args.use_adaptive_entropy, False),
        "off_policy_mask_threshold": (args.off_policy_mask_threshold, None),
        "sync_ref_model": (args.sync_ref_model, False),
        "vllm_importance_sampling_correction": (
            bool(args.use_vllm and args.vllm_importance_sampling_correction), False),
    }
    return {k: have for k, (have, plain) in checks.items() if have != plain}


# ======================================================================================
# The callback: an rlnb run directory written while TRL trains
# ======================================================================================
def _rank_from_env() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _check_run_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"run_dir {path} is a file, not a directory: pass the path "
                                 "of a directory (it is created when missing)")
    if (path / CONFIG).exists():
        raise FileExistsError(
            f"{path} already holds a run ({CONFIG}); TRL runs are not continued in place: "
            "choose a new run_dir")


def _sharded(model: Any) -> str | None:
    """Why the probes cannot read ``model``'s weights in one process, or None."""
    if type(model).__name__.startswith("FullyShardedDataParallel"):
        return "FSDP wraps it"
    for p in model.parameters():
        if hasattr(p, "ds_id") and p.numel() == 0:
            return "DeepSpeed ZeRO-3 shards its weights"
        if type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor":
            return "FSDP2 shards its weights"
    return None


def _plain(value: Any) -> Any:
    """A logged value as JSON takes it (numbers, strings), or None to leave it out."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


class RlnbCallback(TrainerCallback):
    """Write an rlnb run directory while TRL trains, and run rlnb's probes every N steps.

    Args:
        run_dir: the run directory (created; one that already holds a run is refused).
        task: the training task, saved as ``env.json`` (``rlnb.train.load_run`` rebuilds
            it); optional.
        config: the TrainConfig the GRPOConfig was made from (:func:`to_grpo_config`),
            written as ``config.json``. Default: :func:`train_config_from_grpo` of TRL's
            arguments. A given config whose :func:`grpo_options` differ from the arguments
            TRL runs with is warned about, field by field.
        probe_task: the held-out problems the probes sample (``task.split(...)[1]``);
            needed when ``probe_steps > 0``.
        probe_steps: probe at the start (step 0), every this many steps and at the last
            step; 0 = never.
        probe_samples: completions per held-out problem for pass@k (``probe/pass@k``, the
            unbiased estimator of :func:`rlnb.probes.pass_at_k` over
            :func:`rlnb.probes.sample_counts`' counts).
        probe_ks: the k of ``probe/pass@k`` (each at most ``probe_samples``).
        entropy_samples: completions per held-out problem for the token entropies
            (``probe/entropy_mean``, ``_q10``, ``_q50``, ``_q90``), the forking share
            (``probe/forking_share``: the share of tokens above the threshold the first
            probe measured, its 80th percentile by default; ``probe/forking_threshold``)
            and the effective rank (``probe/effective_rank/layers.{i}.resid_post``: the
            mean over completions of the effective rank of their token states at layer i,
            :func:`rlnb.probes.rank_by_layer`).
        probe_layers: decoder layers for the effective rank (negative from the end).
        probe_max_new_tokens: the probes' generation budget; default TRL's
            ``max_completion_length``.
        probe_temperature: default TRL's ``temperature``.
        probe_seed: seeds the probes' sampling (the same draws at every probe).
        top_fraction: the share of the first probe's tokens that count as forking.
        fsync: flush each metrics line to the disk (``TrainConfig.fsync``).

    ``metrics.jsonl`` gets one row per ``on_log`` of TRL: ``step`` (TRL's global step) and
    every metric TRL logs, under TRL's name (``loss``, ``reward``, ``rewards/score/mean``,
    ``entropy``, ``kl``, ``completions/mean_length``, ``learning_rate``...), with the
    probes of that step when there are any; a probe row of its own at step 0. The last
    step's row is written when training ends, with TRL's summary in it (``train_runtime``,
    ``train_loss``...).

    Only the main process writes (``state.is_world_process_zero``) and probes; the others
    wait for it at their next collective. The directory is locked (``.rlnb.lock``) from
    the start of training to its end.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        task: Any = None,
        config: TrainConfig | None = None,
        probe_task: Any = None,
        probe_steps: int = 0,
        probe_samples: int = 16,
        probe_ks: Sequence[int] = (1, 4, 16),
        entropy_samples: int = 4,
        probe_layers: Sequence[int] = (-1,),
        probe_max_new_tokens: int | None = None,
        probe_temperature: float | None = None,
        probe_seed: int = 0,
        top_fraction: float = 0.2,
        fsync: bool = True,
    ) -> None:
        from rlnb.checks import check_int, check_number

        self.run_dir = Path(run_dir).expanduser()
        if task is not None:
            _check_task(task)
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an rlnb.train.TrainConfig or None, got "
                            f"{type(config).__name__}")
        self.probe_steps = check_int(probe_steps, "probe_steps", 0,
                                     meaning="steps between probes, 0 for none")
        self.probe_samples = check_int(probe_samples, "probe_samples", 1,
                                       meaning="completions per problem for pass@k")
        self.entropy_samples = check_int(entropy_samples, "entropy_samples", 1,
                                         meaning="completions per problem for entropy and rank")
        if isinstance(probe_ks, (int, str)):
            probe_ks = [probe_ks]  # type: ignore[list-item]
        self.probe_ks = [check_int(k, "probe_ks", 1, meaning="a pass@k budget")
                         for k in probe_ks]
        too_big = [k for k in self.probe_ks if k > self.probe_samples]
        if too_big:
            raise ValueError(f"probe_ks {too_big} exceed probe_samples ({self.probe_samples}): "
                             "pass@k needs at least k samples per problem; raise probe_samples")
        self.probe_layers = [check_int(i, "probe_layers", -(2**31), meaning="a layer index")
                             for i in probe_layers]
        self.probe_max_new_tokens = None if probe_max_new_tokens is None else check_int(
            probe_max_new_tokens, "probe_max_new_tokens", 1, meaning="generation budget")
        self.probe_temperature = None if probe_temperature is None else check_number(
            probe_temperature, "probe_temperature", 0, low_open=True,
            meaning="sampling temperature")
        self.probe_seed = check_int(probe_seed, "probe_seed", 0, meaning="a seed")
        self.top_fraction = check_number(top_fraction, "top_fraction", 0, 1, low_open=True,
                                         high_open=True, meaning="share of forking tokens")
        if self.probe_steps:
            if probe_task is None:
                raise ValueError("probe_steps > 0 needs probe_task: the held-out problems the "
                                 "probes sample (e.g. task.split(32)[1])")
            _check_task(probe_task, "probe_task")
        elif probe_task is not None:
            _check_task(probe_task, "probe_task")
        self.task, self.config, self.probe_task = task, config, probe_task
        self.fsync = bool(fsync)
        if _rank_from_env() == 0:  # the others never write; rank 0 may already have
            _check_run_dir(self.run_dir)
        self._files = RunResources()  # the run directory's lock and metrics file
        self._pending: dict[str, Any] = {}  # probes of this step, for TRL's log of it
        self._held: dict[str, Any] | None = None  # the last step's row, until TRL's summary
        self._probed_step: int | None = None
        self._forking_threshold: float | None = None

    # --- events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None,
                       **kwargs):
        if not state.is_world_process_zero:
            return
        if self.probe_steps:
            why = _sharded(model) if model is not None else "the trainer handed no model"
            if why is not None:
                raise ValueError(f"RlnbCallback(probe_steps={self.probe_steps}) samples the "
                                 f"model in the main process alone, but {why}; use DDP or "
                                 "ZeRO-1/2, or probe_steps=0")
            if processing_class is None:
                raise ValueError("RlnbCallback's probes need the tokenizer: pass "
                                 "processing_class to the trainer")
        config = self._train_config(args, state)
        d = self.run_dir
        _check_run_dir(d)
        d.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(d)
        lock.acquire(create=True)
        lock.mark()
        self._files.lock = lock
        try:
            atomic_write_bytes(d / TRL_CONFIG, args.to_json_string().encode(), fsync=self.fsync)
            if self.task is not None:
                save_component(self.task, d, "env", fsync=self.fsync)
            atomic_write_bytes(d / RUNTIME, json.dumps(self._runtime(args), indent=2).encode(),
                               fsync=self.fsync)
            atomic_write_bytes(d / CONFIG, config.to_json().encode(), fsync=self.fsync)
            self._files.metrics = MetricsWriter(d / METRICS, fsync=self.fsync)
            if self.probe_steps:
                self._write({"step": int(state.global_step),
                             **self._probe(args, model, processing_class)})
                self._probed_step = int(state.global_step)
        except BaseException:
            self._files.close()
            raise

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or not self.probe_steps or self._files.metrics is None:
            return
        step = int(state.global_step)
        due = step % self.probe_steps == 0 or step == int(state.max_steps)
        if not due or step == self._probed_step:
            return
        probes = self._probe(args, model, processing_class)
        self._probed_step = step
        if control.should_log:  # TRL logs this step next: one row for both
            self._pending = probes
        else:
            self._write({"step": step, **probes})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self._files.metrics is None:
            return
        row: dict[str, Any] = {"step": int(state.global_step)}
        for key, value in (logs or {}).items():
            value = _plain(value)
            if value is not None and key != "step":
                row[key] = value
        row.update(self._pending)
        self._pending = {}
        held, self._held = self._held, None
        if held is not None:
            if held["step"] == row["step"]:  # TRL's summary after the last step's log
                row = {**held, **row}
            else:
                self._write(held)
        if row["step"] == int(state.max_steps):  # TRL's summary follows: one row for both
            self._held = row
        else:
            self._write(row)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._files.metrics is not None:
            held, self._held = self._held, None
            if self._pending:
                step = int(state.global_step)
                if held is not None and held["step"] == step:
                    held.update(self._pending)
                else:
                    if held is not None:
                        self._write(held)
                    held = {"step": step, **self._pending}
                self._pending = {}
            if held is not None:
                self._write(held)
        self._files.close()

    # --- internals -----------------------------------------------------------------------
    def _train_config(self, args: Any, state: Any) -> TrainConfig:
        if self.config is None:
            config = train_config_from_grpo(args, max_steps=int(state.max_steps))
        else:
            config = self.config
            expected = grpo_options(config, max_completion_length=int(args.max_completion_length),
                                    world_size=int(args.world_size))
            differ = {k: (v, _value(getattr(args, k, None))) for k, v in expected.items()
                      if k not in _NOT_COMPUTED | _TRL_ONLY
                      and _value(getattr(args, k, None)) != v}
            if differ:
                shown = ", ".join(f"{k}: config {a!r}, TRL {b!r}" for k, (a, b) in differ.items())
                warnings.warn(f"the TrainConfig given to RlnbCallback is not the one TRL runs "
                              f"({shown}); {CONFIG} records the TrainConfig, "
                              f"{TRL_CONFIG} what TRL ran", stacklevel=2)
        unmapped = unmapped_grpo_settings(args)
        if unmapped:
            shown = ", ".join(f"{k}={v!r}" for k, v in unmapped.items())
            warnings.warn(f"TRL runs with settings a TrainConfig has no name for ({shown}): "
                          f"{CONFIG} cannot record them, {TRL_CONFIG} does", stacklevel=2)
        return config

    def _runtime(self, args: Any) -> dict[str, Any]:
        import transformers
        import trl

        return {"trainer": "trl.GRPOTrainer", "trl": trl.__version__,
                "transformers": transformers.__version__, "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "torch_threads": torch.get_num_threads(), "world_size": int(args.world_size),
                "device": str(args.device), "bf16": bool(args.bf16)}

    def _write(self, row: dict[str, Any]) -> None:
        assert self._files.metrics is not None
        self._files.metrics.write(row)

    def _probe(self, args: Any, model: Any, tokenizer: Any) -> dict[str, float]:
        """pass@k, token entropies, forking share and effective ranks of the model as it
        is now, on the held-out problems (the model's train/eval mode is restored)."""
        from rlnb.policies import LMPolicy
        from rlnb.probes import entropy_summary, pass_at_k, rank_by_layer, sample_counts

        t0 = time.perf_counter()
        task = self.probe_task
        budget = self.probe_max_new_tokens or int(args.max_completion_length)
        temperature = self.probe_temperature or float(args.temperature)
        was_training = model.training
        try:
            policy = LMPolicy.from_model(model, tokenizer, max_new_tokens=budget)
            counts = sample_counts(policy, task, n=self.probe_samples, temperature=temperature,
                                   seed=self.probe_seed, progress=False)
            out: dict[str, float] = {}
            c = counts["c"].to_numpy()
            for k in self.probe_ks:
                out[f"probe/pass@{k}"] = float(np.mean(pass_at_k(self.probe_samples, c, k)))
            generator = torch.Generator().manual_seed(self.probe_seed)
            rollout = policy.rollout(task, torch.arange(task.num_prompts), self.entropy_samples,
                                     temperature=temperature, generator=generator)
            with torch.no_grad():
                _, entropy = policy.log_probs(rollout, temperature=temperature)
            summary = entropy_summary(entropy, rollout.mask,
                                      forking_threshold=self._forking_threshold,
                                      top_fraction=self.top_fraction)
            if self._forking_threshold is None:
                self._forking_threshold = summary["forking_threshold"]
            for key in ("mean", "q10", "q50", "q90"):
                out[f"probe/entropy_{key}"] = summary[key]
            out["probe/forking_share"] = summary["forking_share"]
            out["probe/forking_threshold"] = summary["forking_threshold"]
            states = policy.hidden_states(rollout, self.probe_layers)
            Lp = int(rollout.extra["prompt_length"])
            names = [k for k in states if k.startswith("layers.")]
            cache = {k: states[k][:, Lp:] for k in names}  # the completions' own tokens
            ranks = rank_by_layer(cache, rollout.mask, names=names)
            for name, er in ranks.groupby("name", sort=False)["er"].mean().items():
                out[f"probe/effective_rank/{name}"] = float(er)
        finally:
            model.train(was_training)
        out["probe/seconds"] = round(time.perf_counter() - t0, 3)
        return out


# ======================================================================================
# The command line
# ======================================================================================
class UsageError(Exception):
    """A bad argument: one line on standard error, exit status 2."""


def _key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["digits=1", "name=abc"]`` -> ``{"digits": 1, "name": "abc"}`` (Python literals
    where they parse as one, strings otherwise)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{flag} {item!r} must look like key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r} must be integers separated by commas, e.g. 1,4,16") \
            from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rlnb.integrations.trl",
        description="Train a language model on an rlnb text task with TRL's GRPOTrainer, "
                    "writing an rlnb run directory (TRL's metrics and rlnb's probes).")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a Hugging Face model directory (save_pretrained: model and tokenizer)")
    p.add_argument("--task", required=True,
                   help="a task of rlnb.envs.make_task: addition, countdown, factor, "
                        "modular_sum, reasoning_gym:<dataset>")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the task, e.g. digits=1 (repeatable)")
    p.add_argument("--num-problems", type=int, default=256,
                   help="problems the task is made of, held-out ones included (default 256)")
    p.add_argument("--held-out", type=int, default=16,
                   help="problems held out of training for the probes (default 16; 0 = none)")
    p.add_argument("--max-steps", type=int, required=True, help="rlnb steps (rollout batches)")
    p.add_argument("--run-dir", required=True, metavar="OUT", help="the run directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt")
    p.add_argument("--prompts-per-step", type=int, default=16, help="prompts per step")
    p.add_argument("--max-completion-length", type=int, default=16,
                   help="generation budget in tokens (default 16)")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--loss-agg-mode", default="token-mean",
                   help="rlnb's loss_agg_mode: TRL's loss_type names (grpo, bnpo, dapo, "
                        "dr_grpo) or verl's with a TRL equivalent (token-mean = dapo, "
                        "seq-mean-token-mean = grpo); default token-mean")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (default 0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--config-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig option, e.g. epsilon_high=0.28 (repeatable)")
    p.add_argument("--trl-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a GRPOConfig field TrainConfig does not hold, e.g. use_vllm=True, "
                        "vllm_mode=colocate, bf16=True (repeatable)")
    p.add_argument("--probe-steps", type=int, default=0,
                   help="run rlnb's probes every this many steps (0 = never; default)")
    p.add_argument("--probe-samples", type=int, default=16,
                   help="completions per held-out problem for pass@k (default 16)")
    p.add_argument("--probe-ks", default="1,4,16", help="the k of probe/pass@k (default 1,4,16)")
    p.add_argument("--entropy-samples", type=int, default=4,
                   help="completions per held-out problem for entropy and rank (default 4)")
    p.add_argument("--probe-layers", default="-1",
                   help="decoder layers for the effective rank (default -1: the last)")
    p.add_argument("--no-save-model", action="store_true",
                   help="do not save the trained model into RUN_DIR/model (nor policy.json)")
    return p


def _fail(message: str) -> int:
    print(f"python -m rlnb.integrations.trl: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (docs/INTEGRATIONS.md). Every argument is checked on every process,
    and the model loaded and checked against the task's prompts, before anything is
    written; rank 0 alone writes the run directory. Exit status 0, or 2 with a one-line
    message for a bad argument."""
    args = build_parser().parse_args(argv)
    try:
        prepared = _prepare(args)
    except (UsageError, ValueError, TypeError, OSError, KeyError, ImportError) as e:
        text = str(e.args[0]) if e.args else ""
        return _fail(text.strip().splitlines()[0] if text.strip() else type(e).__name__)
    _train(args, *prepared)
    return 0


def _distributed() -> bool:
    return "LOCAL_RANK" in os.environ or _world_size(None) > 1


def _prepare(args: argparse.Namespace) -> tuple:
    """Everything :func:`main` checks and builds before training: ``(trainer arguments,
    callback, tasks, model, tokenizer)``."""
    from transformers import AutoModelForCausalLM

    from rlnb.envs.text_tasks import make_task
    from rlnb.policies import LMPolicy
    from rlnb.policies.lm.load import load_tokenizer
    from rlnb.threads import default_threads

    model_dir = Path(args.model).expanduser()
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"--model {str(model_dir)!r} is not a model directory (no config.json)")
    run_dir = Path(args.run_dir).expanduser()
    _check_run_dir(run_dir)
    for flag, v, low in (("--max-steps", args.max_steps, 1),
                         ("--num-problems", args.num_problems, 2),
                         ("--held-out", args.held_out, 0), ("--probe-steps", args.probe_steps, 0),
                         ("--max-completion-length", args.max_completion_length, 1)):
        if v < low:
            raise UsageError(f"{flag} must be >= {low}, got {v}")
    if args.probe_steps and not args.held_out:
        raise UsageError("--probe-steps needs held-out problems: set --held-out >= 1")
    options = {"seed": args.seed, "max_steps": args.max_steps,
               "num_prompts_per_step": args.prompts_per_step,
               "num_generations": args.num_generations, "learning_rate": args.learning_rate,
               "loss_agg_mode": args.loss_agg_mode, "beta": args.beta,
               "temperature": args.temperature, "progress_bar": False,
               **_key_values(args.config_arg, "--config-arg")}
    config = TrainConfig.from_dict(options)
    overrides = _key_values(args.trl_arg, "--trl-arg")
    grpo_options(config, max_completion_length=args.max_completion_length)  # refuse early
    task_args = _key_values(args.task_arg, "--task-arg")
    size_key = "size" if args.task.startswith("reasoning_gym:") else "num_prompts"
    task = make_task(args.task, **{size_key: args.num_problems, "seed": args.seed, **task_args})
    train_task, held_out = (task.split(args.held_out, seed=args.seed) if args.held_out
                            else (task, None))
    callback = RlnbCallback(
        run_dir, task=train_task, config=config, probe_task=held_out,
        probe_steps=args.probe_steps, probe_samples=args.probe_samples,
        probe_ks=_int_list(args.probe_ks, "--probe-ks"), entropy_samples=args.entropy_samples,
        probe_layers=_int_list(args.probe_layers, "--probe-layers"), probe_seed=args.seed)
    if _distributed():
        torch.set_num_threads(1)  # one process per core
    on_gpu = torch.cuda.is_available()
    tokenizer = load_tokenizer(model_dir)
    # float32 master weights; with bf16 TRL computes under autocast (mixed precision)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    checker = LMPolicy.from_model(model, tokenizer, max_new_tokens=args.max_completion_length)
    checker.check_prompts(train_task.prompts + (held_out.prompts if held_out else []))
    del checker
    if not _distributed():
        threads = config.torch_threads or default_threads(
            sum(p.numel() for p in model.parameters()))
        torch.set_num_threads(threads)
    overrides = {"bf16": on_gpu, "use_cpu": not on_gpu, **overrides}
    grpo = to_grpo_config(config, output_dir=run_dir / "trl",
                          max_completion_length=args.max_completion_length, **overrides)
    return grpo, callback, train_task, model, tokenizer, run_dir


def _train(args, grpo, callback, train_task, model, tokenizer, run_dir) -> None:
    from trl import GRPOTrainer

    from rlnb.policies import LMPolicy

    conversational = getattr(tokenizer, "chat_template", None) is not None
    trainer = GRPOTrainer(model=model, reward_funcs=task_reward(train_task), args=grpo,
                          train_dataset=task_dataset(train_task, conversational=conversational),
                          processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    if args.no_save_model:
        return
    trainer.save_model(str(run_dir / "model"))
    if trainer.is_world_process_zero():
        if not (run_dir / "model" / "tokenizer_config.json").exists():
            tokenizer.save_pretrained(run_dir / "model")
        policy = LMPolicy(run_dir / "model", device="cpu", dtype="float32",
                          max_new_tokens=args.max_completion_length)
        save_component(policy, run_dir, "policy")


if __name__ == "__main__":
    sys.exit(main())
