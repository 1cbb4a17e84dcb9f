"""Shared helpers for the threat-model, attack and method tests (not a conftest: import explicitly).

The networks here are tiny (CNNSmall on 8x8 digits: ~60k weights, 1.5 ms per Adam step on
one core), so every test file trains its own models for real in a module-scoped fixture.
Tiny convolutions run several times *slower* with two intra-op threads on a loaded 2-core
machine than with one, hence ``one_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust.data import Digits
from robust.models import CNNSmall

BATCH = 64
LR = 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run the module's tests on one intra-op thread, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=1)
def _digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    dm = Digits()
    return {"train": dm.train_tensors(), "val": dm.val_tensors(), "test": dm.test_tensors()}


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed Digits split (1197 / 300 / 300 images of 1x8x8 in [0, 1]) as fresh tensors."""
    x, y = _digits()[split]
    return x.clone(), y.clone()


def tiny_cnn(seed: int = 0) -> nn.Module:
    """CNNSmall (Gowal et al. 2018) sized for 8x8 digits, initialised from ``seed``."""
    torch.manual_seed(seed)
    return CNNSmall(num_classes=10, in_channels=1, input_size=8)


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] | None = None,
    epochs: int = 8,
    seed: int = 0,
    on_step: Callable[[float, int], Any] | None = None,
) -> nn.Module:
    """Plain Adam(1e-3) loop over the Digits train split, batch 64, seeded shuffle and attack RNG.

    ``loss_fn(model, x, y)`` returns a loss or a ``(loss, logs)`` pair (the method contract);
    default cross-entropy. ``on_step(epoch_fraction, global_step)`` runs before every batch
    (``method.update_schedule``). Returns the model in eval mode with ``.grad`` cleared.
    """
    x, y = digits("train")
    shuffle = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # random starts of the training attacks
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batches = (len(x) + BATCH - 1) // BATCH
    step = 0
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=shuffle)
        for b in range(batches):
            if on_step is not None:
                on_step(epoch + b / batches, step)
            idx = perm[b * BATCH:(b + 1) * BATCH]
            if loss_fn is None:
                loss = F.cross_entropy(model(x[idx]), y[idx])
            else:
                out = loss_fn(model, x[idx], y[idx])
                loss = out[0] if isinstance(out, tuple) else out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


# --- bound soundness (IBP, CROWN): points of the L-inf ball intersected with [0, 1] -------------


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine weights of both signs, then eval mode."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(0, 1.0)
            m.bias.data.normal_(0, 0.3)
    return model.eval()


def box_pgd(model: nn.Module, x: torch.Tensor, eps: float, weights: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Signed-gradient descent on ``(model(x') * weights).sum(1)`` inside the ball ∩ [0, 1], one row per x."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    x_adv = lo + (hi - lo) * torch.rand_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad((model(x_adv) * weights).sum(), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() - eps / 4 * grad.sign(), lo), hi)
    return x_adv.detach()


def ball_points(x: torch.Tensor, eps: float, n: int) -> torch.Tensor:
    """``n`` uniform points and ``n`` corners of the ball ∩ [0, 1] around each image, shape (N, 2n, ...)."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    shape = (x.shape[0], n, *x.shape[1:])
    uniform = lo[:, None] + (hi - lo)[:, None] * torch.rand(shape)
    corners = torch.where(torch.rand(shape) < 0.5, lo[:, None], hi[:, None])
    return torch.cat([uniform, corners], 1)


def tol(*bounds: torch.Tensor) -> float:
    return 1e-5 * (1.0 + max(float(b.detach().abs().max()) for b in bounds))


def logits_of(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(points.flatten(0, 1)).view(points.shape[0], points.shape[1], -1)


# --- checkpoints for the command-line tests --------------------------------------------------------


def fit_checkpoint(method: Any, datamodule: Any, path: Any, epochs: int = 3) -> Any:
    """Train a registry CNN-small on 8x8 digits with ``method`` (Adam 3e-3, no validation) through
    Lightning, save the checkpoint at ``path`` and the weights at ``path`` with suffix ``.pt``."""
    import lightning.pytorch as pl

    from robust.models import create
    from robust.module import RobustClassifier

    torch.manual_seed(0)
    module = RobustClassifier(create("cnn_small", 10, in_channels=1, input_size=8), method, optimizer="adam",
                              lr=3e-3, weight_decay=0.0)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, inference_mode=False,
                         limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(path)
    torch.save(module.model.state_dict(), path.with_suffix(".pt"))
    return path


def assert_audit_matches_reports(out: Any, name: str | None = None) -> dict:
    """Every section of a ``robust audit`` folder agrees with the evaluation and certification
    reports beside it (IBP/CROWN certification); returns the evaluation report."""
    import json

    from robust.leaderboard import from_report
    from robust.reports.format import fmt_accuracy

    audit = json.loads((out / "audit.json").read_text())
    evaluation = json.loads((out / "evaluation/report.json").read_text())
    certification = json.loads((out / "certification/report.json").read_text())
    assert audit["evaluation"] == evaluation and audit["certification"] == certification
    assert evaluation["threat"]["eps"] == certification["threat"]["eps"]
    assert certification["method"] == "crown" and "CROWN" in audit["certification_method"]
    assert audit["provenance"]["checkpoint"]["sha256"] == evaluation["protocol"]["checkpoint"]["sha256"]
    assert len(audit["provenance"]["data_sha256"]) == 64 and audit["provenance"]["dataset"] == "digits"
    md = (out / "audit.md").read_text()
    for needle in (fmt_accuracy(evaluation["clean"]), fmt_accuracy(evaluation["robust"]),
                   fmt_accuracy(certification["certified"]), "## Proven", "## Measured", "## Not checked",
                   "per_class.png"):
        assert needle in md, needle
    assert any(fmt_accuracy(evaluation["robust"]) in m for m in audit["measured"])
    assert any(fmt_accuracy(certification["certified"]) in p for p in audit["proven"])
    # the evaluation's attacks falsify too: checked per example against the certificate
    assert any("(evaluation report)" in c["name"] for c in certification["consistency"]["checks"])
    assert certification["consistency"]["ok"]
    entry = json.loads((out / "entry.json").read_text())
    expected = from_report(evaluation, name=name)
    assert {k: v for k, v in entry.items() if k not in ("certified", "timestamp")} == \
        {k: v for k, v in expected.items() if k not in ("certified", "timestamp")}
    assert entry["certified"][0]["correct"] == certification["certified"]["correct"]
    return evaluation


def tiny_fit_config(path: Any, epochs: int = 2, scheduler: str = "onecycle", checkpoint: dict | None = None,
                    data: dict | None = None, **trainer: Any) -> Any:
    """Write a `robust fit` config for PGD training of CNN-small on the digits (seed 0, Adam 3e-3,
    2-step attacks, a ``last.ckpt`` ModelCheckpoint with ``checkpoint`` settings) to ``path``."""
    import yaml

    config = {
        "seed_everything": 0,
        "model": {
            "model": {"class_path": "robust.models.CNNSmall", "init_args": {"num_classes": 10, "input_size": 8}},
            "method": {"class_path": "robust.methods.PGD",
                       "init_args": {"threat": {"norm": "linf", "eps": 0.2}, "steps": 2, "warmup": 1}},
            "optimizer": "adam", "lr": 3.0e-3, "weight_decay": 0.0, "scheduler": scheduler, "val_attack_steps": 2,
        },
        "data": {"class_path": "robust.data.Digits", "init_args": {"batch_size": 64, **(data or {})}},
        "trainer": {
            "max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"filename": "last", "enable_version_counter": False, **(checkpoint or {})}}],
            **trainer,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path
