"""The one training loop, run directories, and loading runs back."""

from rlnb.train.branching import branching_rollout
from rlnb.train.callbacks import ExactSuccess
from rlnb.train.config import TrainConfig
from rlnb.train.resume import load_run, resume
from rlnb.train.rundir import RunDirLocked, load_runs, read_metrics
from rlnb.train.schedules import ead_temperatures, scheduled_rollout
from rlnb.train.sweep import ray_session, sweep
from rlnb.train.trainer import Trainer

__all__ = [
    "ExactSuccess",
    "RunDirLocked",
    "TrainConfig",
    "Trainer",
    "branching_rollout",
    "ead_temperatures",
    "load_run",
    "load_runs",
    "read_metrics",
    "ray_session",
    "resume",
    "scheduled_rollout",
    "sweep",
]
