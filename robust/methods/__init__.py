"""Training methods: each has ``loss(model, x, y) -> (loss, logs)``."""

from robust.methods.base import Method
from robust.methods.adversarial import FGSM, MART, PGD, TRADES, Standard

__all__ = ["FGSM", "MART", "Method", "PGD", "Standard", "TRADES"]
