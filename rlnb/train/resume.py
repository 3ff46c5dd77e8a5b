"""Back from a run directory: rebuild a run's pieces, or continue training it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rlnb.envs  # noqa: F401 - defines (registers) rlnb's sandboxes before load_component
import rlnb.policies  # noqa: F401 - and its policies
from rlnb.policies.base import Policy
from rlnb.serialization import load_component
from rlnb.train import rundir
from rlnb.train.config import TrainConfig
from rlnb.train.trainer import Callback, Trainer


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
