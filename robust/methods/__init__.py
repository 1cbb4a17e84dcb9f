"""Training methods: each has ``loss(model, x, y) -> (loss, logs)``."""

from robust.methods.adversarial import FGSM, MART, PGD, TRADES, Standard
from robust.methods.base import Method
from robust.methods.certified import IBP
from robust.methods.masked import MaskedTraining
from robust.methods.noise import GaussianNoise

__all__ = ["FGSM", "IBP", "MART", "GaussianNoise", "MaskedTraining", "Method", "PGD", "Standard", "TRADES"]
