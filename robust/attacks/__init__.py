"""Attacks. Training attacks are ours (fast); evaluation attacks come from torchattacks."""

from robust.attacks.training import fgsm_rs, pgd

__all__ = ["fgsm_rs", "pgd"]
