"""Lightning callbacks and plugins for robust training: exact resume, catastrophic-overfitting
detection, wandb results, atomic checkpoint writes."""

from robust.callbacks.checkpoint_io import AtomicCheckpointIO
from robust.callbacks.overfitting import CatastrophicOverfitting
from robust.callbacks.resume import ResumeState
from robust.callbacks.wandb_results import WandbResults

__all__ = ["AtomicCheckpointIO", "CatastrophicOverfitting", "ResumeState", "WandbResults"]
