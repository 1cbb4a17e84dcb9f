"""RobustClassifier: training, robust validation, checkpoints that load safely and resume."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from robust.callbacks import CatastrophicOverfitting
from robust.methods import PGD, Method, Standard
from robust.models import CNNSmall
from robust.module import CheckpointError, RobustClassifier

EPS = {"norm": "linf", "eps": 0.2}


def _trainer(tmp_path: Path, epochs: int, **kw) -> pl.Trainer:
    kw.setdefault("callbacks", [ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/robust_acc", mode="max"),
                                ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", enable_version_counter=False)])
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False, default_root_dir=tmp_path, **kw)


def _last(trainer: pl.Trainer) -> str:
    return trainer.checkpoint_callbacks[-1].best_model_path


def _tiny(method: Method | None = None, **kw) -> RobustClassifier:
    torch.manual_seed(0)
    return RobustClassifier(CNNSmall(num_classes=10, input_size=8), method or PGD(EPS, steps=3),
                            optimizer="adam", lr=3e-3, weight_decay=0.0, val_attack_steps=5, test_attack_steps=10, **kw)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, digits):
    """A CNN-small PGD-trained for 4 epochs on digits; its checkpoint folder."""
    tmp = tmp_path_factory.mktemp("fit")
    model = _tiny()
    trainer = _trainer(tmp, 4)
    trainer.fit(model, datamodule=digits)
    return model, trainer, tmp


def test_training_learns_and_logs_robust_metrics(fitted):
    # 4 epochs of PGD-3 on 1,197 digits take the net well above chance (10%) on clean
    # validation data, and the PGD accuracy never exceeds the clean accuracy.
    _, trainer, _ = fitted
    m = trainer.callback_metrics
    assert float(m["val/clean_acc"]) > 0.6
    assert 0.0 <= float(m["val/robust_acc"]) <= float(m["val/clean_acc"])
    assert {"train/loss", "train/adv_acc", "train/eps"} <= set(m)


def test_checkpoint_is_plain_data_and_round_trips(fitted, digits):
    model, trainer, tmp = fitted
    path = _last(trainer)
    raw = torch.load(path, weights_only=True)
    hp = raw["hyper_parameters"]
    assert hp["model"] == {"class_path": "robust.models.CNNSmall",
                           "init_args": {"num_classes": 10, "in_channels": 1, "input_size": 8, "mean": None, "std": None}}
    assert hp["method"]["class_path"] == "robust.methods.PGD"
    assert hp["method"]["init_args"]["threat"] == {"class_path": "robust.base.threat.ThreatModel", "init_args": {"norm": "linf", "eps": 0.2}} \
        or hp["method"]["init_args"]["threat"] == EPS
    loaded = RobustClassifier.load_from_checkpoint(path)
    x, _ = digits.test_tensors()
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x[:64]), loaded(x[:64]))
    assert isinstance(loaded.method, PGD) and loaded.method.steps == 3 and float(loaded.method.threat.eps) == 0.2


def test_resume_continues_from_checkpoint(fitted, digits, tmp_path):
    _, trainer, _ = fitted
    steps_per_epoch = trainer.num_training_batches
    resumed = _tiny()
    t2 = _trainer(tmp_path, 5)
    t2.fit(resumed, datamodule=digits, ckpt_path=_last(trainer))
    assert t2.global_step == 5 * steps_per_epoch  # 4 epochs restored + 1 more, not 5 from scratch
    assert t2.current_epoch == 5


class UserNet(nn.Module):
    """A user's own module: not a registry entry, so not storable as a spec."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def test_user_module_is_handed_back_at_load(tmp_path, digits):
    module = RobustClassifier(UserNet(), Standard(), optimizer="adam", lr=1e-2)
    assert module.hparams["model"] is None
    trainer = _trainer(tmp_path, 1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "c")])
    trainer.fit(module, datamodule=digits)
    path = _last(trainer)
    with pytest.raises(CheckpointError, match="model=YourModel"):
        RobustClassifier.load_from_checkpoint(path)
    loaded = RobustClassifier.load_from_checkpoint(path, model=UserNet())
    assert torch.equal(loaded.model.net[1].weight, module.model.net[1].weight)


def test_checkpoint_naming_code_outside_allowlist_is_refused(fitted, tmp_path):
    _, trainer, _ = fitted
    ckpt = torch.load(_last(trainer), weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["hyper_parameters"]["model"] = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="allowlist"):
        RobustClassifier.load_from_checkpoint(bad)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        RobustClassifier.load_from_checkpoint(bad)
    assert not marker.exists()


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"class_path": "robust.models.CNNSmall",
                                                                "init_args": {"input_size": 8}}}}, path)
    with pytest.raises(CheckpointError, match="not a robust checkpoint"):
        RobustClassifier.load_from_checkpoint(path)


def test_validation_works_even_under_inference_mode(digits):
    # Lightning's default inference_mode=True would break attacks; the module leaves it locally.
    model = _tiny()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=True,
                         enable_model_summary=False, limit_val_batches=2)
    (metrics,) = trainer.validate(model, datamodule=digits, verbose=False)
    assert 0.0 <= metrics["val/robust_acc"] <= metrics["val/clean_acc"]


class _NaNMethod(Standard):
    def loss(self, model, x, y):
        loss, logs = super().loss(model, x, y)
        return loss * float("nan"), logs


def test_non_finite_loss_stops_with_step_and_cause(digits, tmp_path):
    module = RobustClassifier(CNNSmall(num_classes=10, input_size=8), _NaNMethod())
    with pytest.raises(FloatingPointError, match=r"step 0.*learning rate"):
        _trainer(tmp_path, 1, callbacks=[]).fit(module, datamodule=digits)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"optimizer": "rmsprop"}, "optimizer"), ({"scheduler": "linear"}, "scheduler"), ({"lr": 0}, "lr"),
     ({"ema_decay": 1.5}, "ema_decay"), ({"val_attack_steps": 0}, "val_attack_steps"),
     ({"val_eval_attack": "pgd100", "eval_threat": EPS}, "unknown attack 'pgd100'"),
     ({"val_eval_attack": "pgd"}, "val_eval_attack needs a threat model"),
     ({"val_eval_attack": "pgd", "eval_threat": EPS, "val_eval_examples": 0}, "val_eval_examples")],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RobustClassifier(CNNSmall(num_classes=10, input_size=8), Standard(), **kwargs)


def test_ema_weights_are_used_and_checkpoint_loads(digits, tmp_path):
    module = _tiny(ema_decay=0.9)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=digits)
    assert any(type(cb).__name__ == "EMAWeightAveraging" for cb in trainer.callbacks)
    loaded = RobustClassifier.load_from_checkpoint(_last(trainer))
    assert loaded.hparams.ema_decay == 0.9


def test_eps_warmup_ramps_inside_training(digits, tmp_path):
    module = _tiny(PGD(EPS, steps=2, warmup=2))
    trainer = _trainer(tmp_path, 1, callbacks=[], limit_val_batches=0)
    trainer.fit(module, datamodule=digits)
    # After one of two warm-up epochs the last batch trained at ~half the budget.
    n = trainer.num_training_batches
    assert module.method.current_eps == pytest.approx(0.2 * (n - 1) / n / 2, rel=1e-6)


class _Scripted(pl.LightningModule):
    """Logs a scripted 'robust accuracy' per epoch; its weight records the epoch it was trained in."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.w.fill_(float(self.current_epoch))
        return (self.w * 0).sum() + batch[0].sum() * 0

    def validation_step(self, batch, batch_idx):
        self.log("val/robust_acc", self.script[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_catastrophic_overfitting_rolls_back_and_stops():
    # PGD accuracy 0.40, 0.45, then collapse to 0.05 (drop 0.40 > 0.2): stop after epoch 2
    # and restore the weights of epoch 1, the best one.
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), batch_size=2)
    module = _Scripted([0.40, 0.45, 0.05, 0.5, 0.5])
    guard = CatastrophicOverfitting(drop=0.2)
    trainer = pl.Trainer(max_epochs=5, callbacks=[guard], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data, data)
    assert guard.collapsed_epoch == 2 and guard.best_epoch == 1
    assert trainer.current_epoch == 3  # stopped after the third epoch instead of running five
    assert float(module.w) == 1.0


def test_validation_runs_a_registry_attack_on_a_fixed_subset(fitted, digits):
    # APGD-CE (5 steps) on the first 40 validation images; the same 40 at every validation.
    model, _, _ = fitted
    model.hparams.val_eval_attack, model.hparams.val_eval_examples = "apgd-ce", 40
    model.hparams.val_eval_options = {"steps": 5}
    try:
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=False,
                             enable_model_summary=False)
        (first,) = trainer.validate(model, datamodule=digits, verbose=False)
        assert model._val_eval_seen == 40
        (second,) = trainer.validate(model, datamodule=digits, verbose=False)
    finally:
        model.hparams.val_eval_attack = None
    assert first["val/apgd-ce_acc"] == second["val/apgd-ce_acc"]  # fixed subset, seeded attack
    x, y = digits.val_tensors()
    from robust.attacks.independent import build_attack

    direct = build_attack("apgd-ce", model.eval_threat, 10, steps=5).run(model.model.eval(), x[:40], y[:40], seed=0)
    assert first["val/apgd-ce_acc"] == pytest.approx(float(direct.robust.float().mean()))
    assert first["val/apgd-ce_acc"] <= first["val/clean_acc"] + 0.1


class _InfGrad(torch.autograd.Function):
    """Zero in the forward pass, an infinite gradient in the backward pass."""

    @staticmethod
    def forward(ctx, t):
        return t * 0

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class _ExplodingGradMethod(Standard):
    """A finite loss whose gradient is infinite from the fourth call (step 3) on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def loss(self, model, x, y):
        loss, logs = super().loss(model, x, y)
        self.calls += 1
        return (loss + _InfGrad.apply(loss) if self.calls > 3 else loss), logs


def test_non_finite_gradient_stops_with_its_step_and_writes_no_checkpoint(digits, tmp_path):
    # The record is kept on the device (no host sync per step) and looked at every
    # NONFINITE_CHECK_EVERY steps and before any checkpoint is written: the checkpoint callback
    # would save at step 5, after the first bad step (3), so nothing may be written.
    module = RobustClassifier(CNNSmall(num_classes=10, input_size=8), _ExplodingGradMethod(), optimizer="adam", lr=1e-3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    with pytest.raises(FloatingPointError, match=r"non-finite training gradient at step 3: lower the learning rate"):
        _trainer(tmp_path, 1, callbacks=[ckpt]).fit(module, datamodule=digits)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_test_loop_measures_through_evaluate_with_the_old_numbers(fitted, digits):
    # The test step runs robust.evaluation.evaluate on each batch; it must give, example for example,
    # what the test loop measured before (the registry's PGD run on the batch with step eps/10 and
    # seed `seed + 1000 * batch_idx`), and the logged metric is their mean over the test split.
    from robust.attacks.independent import build_attack

    trained, _, _ = fitted
    module = _tiny(test_attack_restarts=2, seed=3)
    module.load_state_dict(trained.state_dict())
    module.eval()
    x, y = digits.test_tensors()
    before, kept = 0, 0
    for b, (bx, by) in enumerate(zip(x.split(64), y.split(64))):
        old = build_attack("pgd", module.eval_threat, 2, steps=10, step_size=0.2 / 10, restarts=2).run(
            module.model, bx, by, seed=3 + 1000 * b).robust
        assert torch.equal(module._test_attack(bx, by, b), old)
        before, kept = before + len(by), kept + int(old.sum())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(module, datamodule=digits, verbose=False)
    assert before == len(y) and metrics["test/robust_acc"] == pytest.approx(kept / len(y), abs=1e-6)


def test_each_ddp_rank_measures_its_own_test_batch(fitted, digits, monkeypatch):
    # Under DDP a process group is up, and evaluate() alone would share its batches across ranks:
    # rank 1 would compute nothing and receive rank 0's results. The test step measures inside
    # distributed.local(): here, as "rank 1 of 2", no collective runs and the batch is its own.
    import torch.distributed as dist

    from robust.base import distributed

    module, _, _ = fitted
    x, y = digits.test_tensors()
    x, y = x[64:96], y[64:96]
    alone = module._test_attack(x, y, 1)

    def collective(*args, **kwargs):
        raise AssertionError("the test step ran a collective")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    for name in ("all_gather_object", "broadcast_object_list", "all_gather", "barrier"):
        monkeypatch.setattr(dist, name, collective)
    assert distributed.world() == (1, 2)
    assert torch.equal(module._test_attack(x, y, 1), alone)
    with distributed.local():
        assert distributed.world() == (0, 1)
    assert distributed.world() == (1, 2)
