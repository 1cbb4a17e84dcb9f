"""Results of a training run in wandb: a per-epoch validation table, the accuracy curves as a
plot and the test metrics as a table, next to Lightning's scalar history."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from robust.tracking import WandbLogger

ACCURACIES = ("clean_acc", "robust_acc", "verified_acc", "noisy_acc")


class WandbResults(pl.Callback):
    """Does nothing unless the trainer logs to a :class:`robust.tracking.WandbLogger`.

    At the end of fit: ``results/validation`` (a table: epoch and every ``val/*`` accuracy) and
    ``results/accuracy_curves`` (a PNG of those accuracies against the epoch). At the end of
    test: ``results/test`` (a table of the ``test/*`` metrics). ``robust fit|test`` add it.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    @staticmethod
    def _logger(trainer: pl.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._logger(trainer) is None:
            return
        metrics = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and k.removeprefix("val/") in ACCURACIES}
        if metrics:
            self.rows.append({"epoch": trainer.current_epoch, **metrics})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is None or not self.rows or not trainer.is_global_zero:
            return
        import wandb

        columns = ["epoch", *[k for k in ACCURACIES if any(k in r for r in self.rows)]]
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in self.rows])
        logger.experiment.log({"results/validation": table, "results/accuracy_curves": wandb.Image(self._plot(columns))})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        import wandb

        rows = [[k, float(v)] for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")]
        if rows:
            logger.experiment.log({"results/test": wandb.Table(columns=["metric", "value"], data=rows)})

    def _plot(self, columns: list[str]) -> Any:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5), dpi=100, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        epochs = [r["epoch"] for r in self.rows]
        for name in columns[1:]:
            ax.plot(epochs, [100 * r.get(name, float("nan")) for r in self.rows], marker="o", label=f"val/{name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
