"""Tracking (Lightning layer): the wandb logger the recipes name, the run helpers of the measuring
commands, and a reader of offline wandb runs."""

from robust.tracking.logger import WandbLogger, finish_run, run_path, start_run, wandb_logger, wandb_mode
from robust.tracking.records import WandbRun, read_wandb_records, read_wandb_run

__all__ = ["WandbLogger", "WandbRun", "finish_run", "read_wandb_records", "read_wandb_run", "run_path", "start_run",
           "wandb_logger", "wandb_mode"]
