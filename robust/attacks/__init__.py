"""Attacks. Training attacks are ours (fast, :mod:`robust.attacks.training`); evaluation attacks come
from torchattacks (:mod:`robust.attacks.independent`), named in :mod:`robust.attacks.registry`.

``pgd`` and ``fgsm_rs`` load on first use, so that the registry's names import without torch.
"""

from typing import Any

__all__ = ["fgsm_rs", "pgd"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from robust.attacks import training

        return getattr(training, name)
    raise AttributeError(f"module 'robust.attacks' has no attribute {name!r}")
