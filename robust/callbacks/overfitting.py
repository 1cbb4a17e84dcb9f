"""Catastrophic-overfitting guard for FGSM training (Wong, Rice & Kolter 2020, Sec. 5.3).

FGSM training can collapse within an epoch: robust accuracy against PGD falls to
near zero while FGSM accuracy soars. The paper's remedy is early stopping on a
held-out PGD measurement; this callback watches the validation PGD accuracy
logged by ``RobustClassifier`` and, when it drops more than ``drop`` below its best,
stops training and (``action="rollback"``) restores the best weights.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


class CatastrophicOverfitting(pl.Callback):
    """Stop (and optionally roll back) when held-out PGD accuracy collapses.

    Args:
        monitor: logged metric of robust accuracy (a fraction in [0, 1]).
        drop: absolute fall below the best value that counts as a collapse (0.2 = 20 points).
        action: ``"rollback"`` restores the best weights before stopping; ``"stop"`` only stops.
    """

    def __init__(self, monitor: str = "val/robust_acc", drop: float = 0.2,
                 action: Literal["rollback", "stop"] = "rollback") -> None:
        if not 0 < drop <= 1:
            raise ValueError(f"drop must be in (0, 1], got {drop}")
        if action not in ("rollback", "stop"):
            raise ValueError(f"action must be 'rollback' or 'stop', got {action!r}")
        self.monitor, self.drop, self.action = monitor, float(drop), action
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.collapsed_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            if self.action == "rollback":
                self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            return
        if self.best - value > self.drop:
            self.collapsed_epoch = trainer.current_epoch
            message = (f"catastrophic overfitting: {self.monitor} fell from {self.best:.3f} (epoch {self.best_epoch}) "
                       f"to {value:.3f} (epoch {trainer.current_epoch}); stopping")
            if self.action == "rollback" and self._best_state is not None:
                pl_module.load_state_dict(self._best_state)
                message += f" and restoring the weights of epoch {self.best_epoch}"
            rank_zero_warn(message)
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "collapsed_epoch": self.collapsed_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_epoch = state_dict.get("best_epoch")
        self.collapsed_epoch = state_dict.get("collapsed_epoch")
        self._best_state = None
