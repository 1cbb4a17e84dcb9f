"""``RobustClassifier``: a LightningModule that hardens any ``nn.Module`` it is given.

The wrapped network (``.model``) maps images in [0, 1] to logits; the training
objective comes from a ``robust.methods`` method. Each validation epoch logs clean
accuracy and robust accuracy under our PGD (for checkpoint selection); the test
loop measures robust accuracy through :func:`robust.evaluation.evaluate` with the
registry's ``pgd`` (torchattacks-based), an attack independent of the one used in training.

Hyperparameters are stored as plain specs (``class_path`` + ``init_args``), so
checkpoints load with ``weights_only=True``; specs are rebuilt only within the roles of
:mod:`robust.base.spec` (a model, a training method, a threat model), checked before anything is
imported, from the checkpoint and from an ``hparams_file`` alike. A model that cannot be described
as a spec (a user's own module object) is handed back at load time:
``RobustClassifier.load_from_checkpoint(path, model=MyNet())``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from typing_extensions import override

from robust.attacks.independent import build_attack
from robust.attacks.training import pgd
from robust.base import distributed
from robust.base import spec as specs
from robust.base.errors import InputError
from robust.base.runtime import ModelDataMismatch, check_fits, to_channels_last
from robust.base.safe_load import StateDictMismatchError, check_checkpoint, check_hyper_parameters, state_dict_mismatch
from robust.base.threat import Eps, ThreatModel
from robust.evaluation import evaluate
from robust.methods import Method, Standard

Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["none", "multistep", "cosine", "onecycle"]


class CheckpointError(InputError, ValueError):
    """A checkpoint that is not ours, or that cannot be rebuilt safely."""


class DataMismatchError(InputError, ValueError):
    """A model that cannot take the data module's images or has another number of classes."""


def _resolve(value: Any, field: str) -> tuple[Any, Any]:
    """Return ``(object, spec)`` for a constructor argument given as object or spec; a spec is built
    within the role of ``field`` (``model`` or ``method``, :data:`robust.base.spec.ROLES`)."""
    if specs.is_spec(value):
        try:
            return specs.build(value, role=field), copy.deepcopy(value)
        except specs.SpecError as exc:
            message = str(exc)
            raise CheckpointError(message if message.startswith(field) else f"{field}: {message}") from exc
    if specs.describable(value):
        return value, specs.to_spec(value)
    return value, None


def _spec_from_cli(field: str) -> Any:
    """The allowlisted ``class_path`` spec LightningCLI was given for ``field``, if any.

    A ``torchvision.models.resnet18`` named in a recipe is not a ``Recorded`` object, but its
    config is a spec that can be rebuilt; LightningCLI exposes it while it builds the module.
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        return None
    value = (_given_hyperparameters.get() or {}).get(field)
    if not specs.is_spec(value):
        return None
    try:
        specs.check_role(value, field, field)
    except specs.SpecError:
        return None
    return copy.deepcopy(value)


def _hparams_file(cls: type, path: Any) -> dict[str, Any]:
    """The hyperparameters of ``hparams_file`` as keyword arguments that replace all of the
    checkpoint's (as Lightning's ``hparams_file`` does: a field the file lacks takes its default).
    YAML is read with ``yaml.safe_load`` (Lightning's reader would build tagged Python objects) and the
    result is checked like a checkpoint's hyperparameters before anything is built."""
    import yaml

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".yaml", ".yml", ".csv"):
        raise CheckpointError(f"hparams_file {file}: a .yaml, .yml or .csv file is required")
    if not file.is_file():
        raise FileNotFoundError(f"hparams_file not found: {file.resolve()}")
    if suffix == ".csv":
        from lightning.pytorch.core.saving import load_hparams_from_tags_csv

        hparams: Any = load_hparams_from_tags_csv(str(file))
    else:
        try:
            hparams = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"hparams_file {file}: not valid YAML ({first})") from None
    hparams = {} if hparams is None else hparams
    if not isinstance(hparams, Mapping):
        raise CheckpointError(f"hparams_file {file}: expected a mapping of hyperparameters, got "
                              f"{type(hparams).__name__}")
    check_hyper_parameters(hparams, file)
    parameters = {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
    replaced = {name: (None if p.default is p.empty else p.default) for name, p in parameters.items()}
    return {**replaced, **{k: v for k, v in hparams.items() if k in parameters}}


class RobustClassifier(pl.LightningModule):
    """Wrap ``model`` with a training ``method``, optimiser, LR schedule and robust metrics.

    Args:
        model: any ``nn.Module`` mapping [0, 1] images to logits, or its spec.
        method: training objective (default :class:`robust.methods.Standard`), or its spec.
        eval_threat: threat model for validation/test attacks; defaults to the method's.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: (peak) learning rate. momentum / nesterov apply to SGD only.
        weight_decay: L2 penalty (decoupled for AdamW).
        scheduler: ``none``; ``multistep`` (multiply by ``gamma`` at each epoch in
            ``milestones``); ``cosine`` (per step to 0); ``onecycle`` (linear up to ``lr`` over the
            first ``pct_start`` of training, then linear down to 0: the cyclic schedule of Wong et al. 2020).
        val_attack_steps: steps of our PGD for validation robust accuracy (step ``2.5 eps / steps``).
        val_eval_attack: a registry attack (``robust.attacks.independent.list_attacks()``, e.g.
            ``apgd-ce`` or ``autoattack``) also run at every validation on the first
            ``val_eval_examples`` validation examples (a fixed subset: validation loaders do not
            shuffle); logged as ``val/<attack>_acc``. ``val_eval_options`` override its settings.
        test_attack_steps / test_attack_restarts / test_attack_step_size: the test loop's PGD (the
            registry's ``pgd``, run through :func:`robust.evaluation.evaluate` on each test batch with
            seed ``seed + 1000 * batch_idx``; step default ``eps / 10``).
        ema_decay: keep an exponential moving average of the weights (Lightning's
            ``EMAWeightAveraging``) with this decay; validation and checkpoints use the average.
        seed: seed of the test attack's random starts.
        channels_last: keep the weights and the batches in NHWC memory order (faster convolutions
            with cuDNN's tensor cores and with oneDNN on CPU; the same results up to float rounding).
        compile: run the model's forward and backward through ``torch.compile`` (training, training
            attacks and validation; the test loop's independent attack uses the plain model). The
            checkpoint holds the plain model's weights. ``compile_mode`` is passed on
            (``default``, ``reduce-overhead``, ``max-autotune``, ...).

    Mixed precision is the trainer's: ``trainer.precision: bf16-mixed`` runs training, the training
    attacks and validation under bf16 autocast; ``32-true`` is the float32 fallback.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method | None = None,
        eval_threat: ThreatModel | None = None,
        optimizer: Optimizer = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        scheduler: Scheduler = "none",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        pct_start: float = 0.4,
        val_attack_steps: int = 10,
        val_eval_attack: str | None = None,
        val_eval_examples: int = 256,
        val_eval_options: dict[str, Any] | None = None,
        test_attack_steps: int = 50,
        test_attack_restarts: int = 1,
        test_attack_step_size: Eps | None = None,
        ema_decay: float | None = None,
        seed: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            raise CheckpointError(
                "no model: this checkpoint was trained on a module that is not a registry or class_path "
                "spec; pass it back with RobustClassifier.load_from_checkpoint(path, model=YourModel(...))"
            )
        self.model, model_spec = _resolve(model, "model")
        if model_spec is None:
            model_spec = _spec_from_cli("model")
        model_spec = specs.without_downloads(model_spec)  # the checkpoint holds the weights
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"model must be an nn.Module (or its spec), got {type(self.model).__name__}")
        method = Standard() if method is None else method
        self.method, method_spec = _resolve(method, "method")
        if not isinstance(self.method, Method):
            raise ValueError(f"method must be a robust.methods.Method (or its spec), got {type(self.method).__name__}")
        if method_spec is None:
            raise ValueError(f"method {self.method!r} cannot be stored as a spec; subclass robust.methods.Method")
        threat = eval_threat if eval_threat is not None else self.method.threat
        self.eval_threat = None if threat is None else ThreatModel.coerce(threat)
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {optimizer!r}")
        if scheduler not in ("none", "multistep", "cosine", "onecycle"):
            raise ValueError(f"scheduler must be none, multistep, cosine or onecycle, got {scheduler!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
        for name, value in (("val_attack_steps", val_attack_steps), ("test_attack_steps", test_attack_steps),
                            ("test_attack_restarts", test_attack_restarts)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if val_eval_attack is not None:
            if self.eval_threat is None:
                raise ValueError("val_eval_attack needs a threat model: give eval_threat or a method that has one")
            if int(val_eval_examples) < 1:
                raise ValueError(f"val_eval_examples must be >= 1, got {val_eval_examples}")
            build_attack(val_eval_attack, self.eval_threat, 10, **(val_eval_options or {}))  # fail early
        self.save_hyperparameters(
            {
                "model": model_spec,
                "method": method_spec,
                "eval_threat": specs.to_spec(self.eval_threat),
                "optimizer": optimizer,
                "lr": float(lr),
                "momentum": float(momentum),
                "nesterov": bool(nesterov),
                "weight_decay": float(weight_decay),
                "scheduler": scheduler,
                "milestones": [int(m) for m in milestones],
                "gamma": float(gamma),
                "pct_start": float(pct_start),
                "val_attack_steps": int(val_attack_steps),
                "val_eval_attack": val_eval_attack,
                "val_eval_examples": int(val_eval_examples),
                "val_eval_options": dict(val_eval_options or {}),
                "test_attack_steps": int(test_attack_steps),
                "test_attack_restarts": int(test_attack_restarts),
                "test_attack_step_size": None if test_attack_step_size is None else float(test_attack_step_size),
                "ema_decay": None if ema_decay is None else float(ema_decay),
                "seed": int(seed),
                "channels_last": bool(channels_last),
                "compile": bool(compile),
                "compile_mode": compile_mode,
            }
        )
        self.__dict__["_compiled"] = None  # not a submodule: the checkpoint holds ``self.model`` only

    def check_data(self, datamodule: Any) -> None:
        """Refuse, before any training or testing, a data module whose images the model cannot take or
        whose number of classes differs from the model's outputs (one forward pass of a blank image in
        eval mode, without gradients, and with the random state left as it was)."""
        shape = [getattr(datamodule, name, None) for name in ("num_classes", "in_channels", "image_size")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
            return
        classes, channels, size = shape
        param = next(iter(self.model.parameters()), None)
        if param is not None and param.device.type == "meta":
            return
        name = type(datamodule).__name__
        try:
            with torch.random.fork_rng(devices=[]):
                outputs = check_fits(self.model, torch.zeros(1, channels, size, size), data=name)
        except ModelDataMismatch as exc:
            raise DataMismatchError(
                f"the model ({type(self.model).__name__}) does not take the images of {name} "
                f"({channels}x{size}x{size}): {str(exc)[:300]}; set the model's in_channels/input_size to match"
            ) from None
        if outputs != classes:
            raise DataMismatchError(
                f"the model ({type(self.model).__name__}) has {outputs} outputs but {name} has {classes} "
                f"classes: set num_classes: {classes} in the model's init_args")

    @property
    def net(self) -> nn.Module:
        """The network training and validation run: ``self.model``, or its compiled version."""
        return self._compiled if self._compiled is not None else self.model

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(x) if self.hparams.get("channels_last") else x

    @override
    def setup(self, stage: str) -> None:
        self.check_data(getattr(self._trainer, "datamodule", None) if self._trainer is not None else None)
        if self.hparams.get("channels_last"):
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.get("compile") and self._compiled is None:
            self.__dict__["_compiled"] = torch.compile(self.model, mode=self.hparams.get("compile_mode"))

    @classmethod
    @override
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = True, **kwargs: Any) -> "RobustClassifier":
        """Load with ``weights_only=True`` by default: a checkpoint cannot run code, and nothing it (or
        ``hparams_file``) names is imported or built unless it is a model, a method or a threat model
        (:func:`robust.base.spec.check_stored`). A corrupt file (bad CRC, non-finite weights) or weights
        that do not fit the model are refused with :class:`CheckpointError` naming the file."""
        try:
            if hparams_file is not None:
                kwargs = {**_hparams_file(cls, hparams_file), **kwargs}
            if weights_only is not False:  # verified, and class paths checked, before Lightning can import anything
                checkpoint = check_checkpoint(checkpoint_path)
                if not checkpoint.get("hyper_parameters") and "model" not in kwargs:
                    raise CheckpointError(f"{checkpoint_path}: not a robust checkpoint: it has no hyper_parameters "
                                          f"(was it written by RobustClassifier?)")
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=None,
                                                strict=strict, weights_only=weights_only, **kwargs)
        except Exception as exc:  # re-raised with the reason a user can act on
            if isinstance(exc, FileNotFoundError):
                raise
            if isinstance(exc, (InputError, ValueError)):
                message = str(exc)
                if str(checkpoint_path) not in message and not (hparams_file and str(hparams_file) in message):
                    message = f"{checkpoint_path}: {message}"
                raise CheckpointError(message) from None
            if isinstance(exc, KeyError):
                raise CheckpointError(f"{checkpoint_path}: not a robust checkpoint (no {exc})") from None
            if isinstance(exc, TypeError):  # hyperparameters of the wrong type or number for RobustClassifier
                raise CheckpointError(f"{checkpoint_path}: cannot rebuild RobustClassifier from its hyperparameters "
                                      f"({exc})") from None
            raise

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, refusing weights that do not fit with one line that names the
        missing, unexpected and wrongly shaped keys (:class:`StateDictMismatchError`)."""
        problem = state_dict_mismatch(self.state_dict(), state_dict)
        if problem is not None and (strict or "shape" in problem or not isinstance(state_dict, Mapping)):
            raise StateDictMismatchError(
                f"the weights do not fit the model ({type(self.model).__name__}): {problem}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(x))

    # --- training -----------------------------------------------------------------
    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        n = self.trainer.num_training_batches
        epoch = self.current_epoch + (batch_idx / n if n and n != float("inf") else 0.0)
        self.method.update_schedule(epoch, self.global_step)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logs = self.method.loss(self.net, self._layout(x), y)
        self._watch(loss, 1)
        logs = {f"train/{k}": v for k, v in logs.items() if k != "loss"}
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    # --- numerical guard: non-finite loss or gradient, found without a host sync per step -----------
    NONFINITE_CHECK_EVERY = 50
    """Training steps between the host's looks at the device-side non-finite record (each look
    waits for the GPU; the record itself keeps the exact first bad step)."""

    def _watch(self, value: torch.Tensor, kind: int) -> None:
        """Record on the device the first step at which ``value`` was not finite (kind 1: loss, 2: gradient)."""
        bad = ~torch.isfinite(value.detach()).all()
        if self.__dict__.get("_bad_step") is None or self._bad_step.device != bad.device:
            self.__dict__["_bad_step"] = torch.full((), -1, dtype=torch.long, device=bad.device)
            self.__dict__["_bad_kind"] = torch.zeros((), dtype=torch.long, device=bad.device)
        first = bad & (self._bad_step < 0)
        self._bad_step.copy_(torch.where(first, self.global_step, self._bad_step))
        self._bad_kind.copy_(torch.where(first, kind, self._bad_kind))

    def check_finite(self) -> None:
        """Raise ``FloatingPointError`` naming the first step with a non-finite loss or gradient, if any."""
        if self.__dict__.get("_bad_step") is None or int(self._bad_step) < 0:
            return
        step, what = int(self._bad_step), ("loss", "gradient")[int(self._bad_kind) - 1]
        raise FloatingPointError(
            f"non-finite training {what} at step {step}: lower the learning rate ({self.hparams.lr}) or lengthen "
            f"the eps warm-up of the method (warmup=...); no checkpoint was written after that step"
        )

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.trainer.precision == "16-mixed":
            return  # float16's loss scaler expects inf gradients now and then and skips those steps itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self._watch(torch.nn.utils.get_total_norm(grads, norm_type=2.0), 2)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.NONFINITE_CHECK_EVERY == 0:
            self.check_finite()

    @override
    def on_train_epoch_end(self) -> None:
        self.check_finite()

    @override
    def on_validation_start(self) -> None:
        self.check_finite()

    # --- evaluation -----------------------------------------------------------------
    def _eval_batch(self, batch: Any, batch_idx: int, stage: str) -> None:
        x, y = batch
        with torch.inference_mode(False), torch.enable_grad():
            x, y = self._layout(x.clone()), y.clone()
            with torch.no_grad():
                logits = self.net(x)
            clean = logits.argmax(1) == y
            self.log(f"{stage}/clean_acc", clean.float().mean(), prog_bar=True, batch_size=len(y), sync_dist=True)
            self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(y), sync_dist=True)
            for name, value in self.method.eval_metrics(self.net, x, y, logits).items():
                self.log(f"{stage}/{name}", value, prog_bar=True, batch_size=len(y), sync_dist=True)
            if self.eval_threat is None:
                return
            if stage == "val":
                x_adv = pgd(self.net, x, y, self.eval_threat, steps=self.hparams.val_attack_steps)
                with torch.no_grad():
                    robust = self.net(x_adv).argmax(1) == y
            else:
                robust = self._test_attack(x, y, batch_idx)
            self.log(f"{stage}/robust_acc", (robust & clean).float().mean(), prog_bar=True, batch_size=len(y), sync_dist=True)
            if stage == "val" and self.hparams.get("val_eval_attack"):
                self._registry_attack(x, y)

    def _measure(self, x: torch.Tensor, y: torch.Tensor, attack: str, options: dict[str, Any],
                 seed: int) -> torch.Tensor:
        """Per-example bool: still correct under the registry ``attack`` on the plain model, measured by
        :func:`robust.evaluation.evaluate` with ``(x, y)`` as its one batch (so ``seed`` is the attack's
        seed); under DDP each rank measures its own batch."""
        with distributed.local():
            report = evaluate(self.model, (x, y), self.eval_threat, attacks=(attack,), batch_size=len(y), seed=seed,
                              audit=False, attack_options={attack: options}, progress=False)
        return report.masks[attack].to(y.device)

    def _test_attack(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """The test PGD on one test batch, seeded ``seed + 1000 * batch_idx``."""
        hp = self.hparams
        step = float(self.eval_threat.eps) / 10 if hp.test_attack_step_size is None else hp.test_attack_step_size
        options = {"steps": hp.test_attack_steps, "step_size": step, "restarts": hp.test_attack_restarts}
        return self._measure(x, y, "pgd", options, hp.seed + 1000 * batch_idx)

    def _registry_attack(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run the configured registry attack on the part of this batch inside the fixed validation subset."""
        if self.trainer.sanity_checking:
            return
        left = self.hparams.val_eval_examples - self._val_eval_seen
        if left <= 0:
            return
        x, y = x[:left], y[:left]
        name = self.hparams.val_eval_attack
        robust = self._measure(x, y, name, self.hparams.val_eval_options, self.hparams.seed + self._val_eval_seen)
        self._val_eval_seen += len(y)
        self.log(f"val/{name}_acc", robust.float().mean(), batch_size=len(y), sync_dist=True)

    @override
    def on_validation_epoch_start(self) -> None:
        self._val_eval_seen = 0

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_batch(batch, batch_idx, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_batch(batch, batch_idx, "test")

    # --- optimisation ------------------------------------------------------------
    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = int(self.trainer.estimated_stepping_batches)
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=hp.lr, total_steps=max(total, 2), pct_start=hp.pct_start, anneal_strategy="linear",
                div_factor=1e4, final_div_factor=1e4, cycle_momentum=False,
            )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @override
    def configure_callbacks(self) -> list[pl.Callback]:
        if self.hparams.ema_decay is None:
            return []
        return [EMAWeightAveraging(decay=self.hparams.ema_decay)]

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # before anything is written: never a checkpoint of diverged weights
        checkpoint["robust"] = {"format": 1}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "robust" not in checkpoint:
            raise CheckpointError("not a robust checkpoint: it has no 'robust' section (was it written by RobustClassifier?)")
