"""Lightning callbacks for robust training."""

from robust.callbacks.overfitting import CatastrophicOverfitting
from robust.callbacks.resume import ResumeState
from robust.callbacks.wandb_results import WandbResults

__all__ = ["CatastrophicOverfitting", "ResumeState", "WandbResults"]
