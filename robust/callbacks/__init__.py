"""Lightning callbacks for robust training."""

from robust.callbacks.overfitting import CatastrophicOverfitting

__all__ = ["CatastrophicOverfitting"]
