"""The training engine shared by every model kind: loop, AMP, accumulation, DDP, checkpoints, tracking."""

from mot.training.config import TrainingConfig
from mot.training.distributed import (
    DistEnv,
    init_distributed,
    launch_torchrun,
    mot_argv,
    relaunch,
    torchrun_command,
    under_torchrun,
)
from mot.training.optim import build_optimizer, build_scheduler, warmup_cosine_factor
from mot.training.task import TrainTask
from mot.training.trainer import Trainer, TrainResult

__all__ = [
    "DistEnv",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "TrainingConfig",
    "build_optimizer",
    "build_scheduler",
    "init_distributed",
    "launch_torchrun",
    "mot_argv",
    "relaunch",
    "torchrun_command",
    "under_torchrun",
    "warmup_cosine_factor",
]
