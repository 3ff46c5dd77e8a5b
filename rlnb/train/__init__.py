"""The one training loop, run directories, and loading runs back."""

from rlnb.train.callbacks import ExactSuccess
from rlnb.train.config import TrainConfig
from rlnb.train.rundir import RunDirLocked, load_runs, read_metrics
from rlnb.train.trainer import Trainer, load_run, resume

__all__ = [
    "ExactSuccess",
    "RunDirLocked",
    "TrainConfig",
    "Trainer",
    "load_run",
    "load_runs",
    "read_metrics",
    "resume",
]
