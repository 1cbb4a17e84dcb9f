"""``evaluate()``: empirical robust accuracy under a threat model, with the protocol attached.

The data are split into fixed batches; every batch is attacked with a seed derived from
``seed`` and the batch index, so a run is reproducible and an interrupted run resumed
from its state file (``state_path``) gives the report an uninterrupted one would.
Each named attack runs on every correctly classified example on its own, so
``per_attack`` holds stand-alone numbers; the robust accuracy is the per-example worst
case (an example is robust only if it survives every attack).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robust.attacks.independent import build_attack
from robust.attacks.registry import check_attack_options
from robust.base import distributed
from robust.base.batching import check_images, collect
from robust.base.provenance import describe_run
from robust.base.runtime import check_fits, eval_mode, model_device
from robust.base.state import digest, fingerprint, model_fingerprint
from robust.base.stats import accuracy_record
from robust.base.threat import ThreatModel
from robust.evaluation.masking import run_audit
from robust.evaluation.results import RobustnessReport
from robust.evaluation.runner import attack_batches, summarise


def _bits(mask: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def evaluate(
    model: nn.Module,
    data: Any,
    threat: ThreatModel | dict | str,
    attacks: Sequence[str] = ("autoattack",),
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    audit: bool = True,
    *,
    attack_options: dict[str, dict[str, Any]] | None = None,
    sweep: Sequence[float | str] | None = None,
    state_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    audit_options: dict[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> RobustnessReport:
    """Robust accuracy of ``model`` (which maps [0, 1] images to logits) under ``threat``.

    ``attacks`` are registry names (``robust.attacks.independent.list_attacks()``), run
    independently on the correctly classified examples; ``attack_options`` overrides their
    settings by name (e.g. ``{"pgd": {"steps": 100}}``). ``sweep`` is a list of further eps
    values: robust accuracy at each, where a larger eps only re-attacks examples that
    survived the smaller ones (an adversarial example inside a small ball lies in every
    larger one). ``audit`` runs the gradient-masking checks of
    :mod:`robust.evaluation.masking` and marks the report ``unreliable`` if any fires.
    ``state_path`` makes the run resumable: finished batches are stored there and skipped
    when the same evaluation is started again, once they are checked against the model
    (:func:`robust.evaluation.runner.check_records`: an edited state is refused). Attack options
    are checked before any work (:func:`robust.attacks.registry.check_attack_options`), one image
    goes through the model before the attacks start (a shape mismatch names both shapes), and
    the report's numbers are checked for consistency before it is returned. The model is put
    in eval mode and its mode restored afterwards; the global RNG is left untouched. Under
    torchrun every rank calls this:
    the attacks of the main pass, the sweep and the audit share their batches across ranks
    (:func:`attack_batches`) and every rank returns the same report.
    """
    threat = ThreatModel.coerce(threat)
    if isinstance(attacks, str):
        attacks = [attacks]
    attacks = list(dict.fromkeys(attacks))
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    options = check_attack_options(attacks, attack_options)
    for e in sweep or ():
        try:
            ThreatModel(threat.norm, e)
        except ValueError as err:
            raise ValueError(f"sweep: {err}") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = collect(data, n_examples)
    start = time.perf_counter()
    with eval_mode(model):
        n_classes = check_fits(model, x)  # one image through the model: a shape mismatch is named here
        if int(y.max()) >= n_classes or int(y.min()) < 0:
            raise ValueError(f"labels must lie in [0, {n_classes - 1}] for a model with {n_classes} outputs, "
                             f"got {int(y.min())}..{int(y.max())}")
        built = [build_attack(a, threat, n_classes, **options.get(a, {})) for a in attacks]
        settings = {a.name: a.settings for a in built}
        model_sha256 = model_fingerprint(model)
        path = Path(state_path) if state_path is not None else None
        key = None if path is None else digest(fingerprint(x, y), model_sha256, json.dumps(
            {"threat": threat.to_dict(), "attacks": settings, "seed": seed, "batch_size": batch_size},
            sort_keys=True, default=str))  # what a resume state must match; only a resumable run needs it
        res = attack_batches(model, x, y, built, batch_size, seed, path, key, progress,
                             f"{'+'.join(attacks)} @ {threat.norm} {threat.eps!r}", on_batch)
        robust, adv_pred, clean, per_class, confusion = summarise(
            y, res["clean_pred"], res["robust"], res["adv_pred"], n_classes)
        n = len(y)
        per_attack = {
            a.name: {"robust": accuracy_record(int(res["robust"][a.name].sum()), n), "settings": a.settings,
                     "seconds": res["seconds"][a.name],
                     **({"components": {c: {"broken": k} for c, k in res["components"][a.name].items()}}
                        if len(res["components"][a.name]) > 1 else {})}
            for a in built
        }
        report = RobustnessReport(
            threat=threat.to_dict(), n_examples=n, clean=clean,
            robust=accuracy_record(int(robust.sum()), n), per_attack=per_attack, per_class=per_class,
            confusion=confusion, audit={"ran": False, "unreliable": False, "flags": [], "checks": [],
                                        "zero_gradient_share": None},
            protocol=_protocol(threat, settings, n, seed, batch_size, model, checkpoint, n_classes, model_sha256),
            class_names=list(class_names) if class_names is not None else None,
            per_example={"label": y.tolist(), "clean_pred": res["clean_pred"].tolist(),
                         "adv_pred": adv_pred.tolist(),
                         "robust": {a: _bits(m) for a, m in res["robust"].items()}},
            masks=dict(res["robust"]),
        )
        report.examples = _examples(x, y, res, robust, adv_pred, attacks)
        if sweep:
            report.sweep = eps_sweep(model, x, y, threat, sweep, built, report, options, batch_size, seed,
                                     n_classes, progress)
        if audit:
            report.audit = run_audit(model, x, y, threat, report, n_classes=n_classes, seed=seed,
                                     batch_size=batch_size, progress=progress, **(audit_options or {}))
        report.seconds = time.perf_counter() - start
        report.check()
        return report


def _protocol(threat, settings, n, seed, batch_size, model, checkpoint, n_classes, model_sha256) -> dict[str, Any]:
    return {"threat": threat.to_dict(), "attacks": settings, "n_examples": n, "seed": seed,
            "batch_size": batch_size, "num_classes": n_classes, **describe_run(model, checkpoint, model_sha256),
            "worst_case": "an example is robust only if every attack fails on it",
            "success_rule": "misclassified, inside [0, 1] and inside the eps-ball (checked by us)"}


def _examples(x, y, res, robust, adv_pred, attacks, k: int = 8) -> dict[str, torch.Tensor] | None:
    """Up to ``k`` broken examples of the first batch with the adversarial input that broke them."""
    first = res.get("x_adv_first") or {}
    avail = {a: t for a, t in first.items() if t is not None}
    if not avail:
        return None
    m = min(len(t) for t in avail.values())
    clean_ok = res["clean_pred"][:m] == y[:m]
    idx = (clean_ok & ~robust[:m]).nonzero().flatten()[:k]
    if idx.numel() == 0:
        return None
    x_adv = x[:m].clone()
    for a in reversed(attacks):  # the first breaking attack wins, as in ``summarise``
        if a in avail:
            broke = ~res["robust"][a][:m] & clean_ok
            x_adv[broke] = avail[a][:m][broke].to(x_adv.dtype)
    return {"x": x[idx], "x_adv": x_adv[idx], "y": y[idx], "pred_clean": res["clean_pred"][idx],
            "pred_adv": adv_pred[idx]}


def eps_sweep(model, x, y, threat, eps_values, built, report, options, batch_size, seed, n_classes,
              progress) -> list[dict[str, Any]]:
    """Robust accuracy at each eps in ``eps_values`` (plus the report's own eps), reusing work.

    Ascending in eps; at each eps only the examples that survived the previous (smaller)
    eps are attacked, since a perturbation found inside a smaller ball lies in the larger
    one. This makes the curve non-increasing by construction, which is why the audit's
    monotonicity check uses independent runs instead.
    """
    from robust.base.threat import parse_eps

    values = sorted({float(parse_eps(e)) for e in eps_values} | {float(threat.eps)})
    main_eps = float(threat.eps)
    alive = torch.stack(list(report.masks.values())).all(0)
    clean_ok = torch.tensor(report.per_example["clean_pred"]) == y
    results: dict[float, torch.Tensor] = {main_eps: alive.clone()}
    below = [e for e in values if e < main_eps]
    above = [e for e in values if e > main_eps]
    survivors = clean_ok.clone()
    for e in below:
        survivors = _attack_survivors(model, x, y, survivors, ThreatModel(threat.norm, e), built, options,
                                      batch_size, seed, n_classes, progress)
        results[e] = survivors.clone()
    survivors = alive.clone()
    for e in above:
        survivors = _attack_survivors(model, x, y, survivors, ThreatModel(threat.norm, e), built, options,
                                      batch_size, seed, n_classes, progress)
        results[e] = survivors.clone()
    n = len(y)
    clean = accuracy_record(int(clean_ok.sum()), n)
    return [{"eps": e, "eps_str": repr(ThreatModel(threat.norm, e).eps), "clean": clean,
             "robust": accuracy_record(int(results[e].sum()), n)} for e in values]


def _attack_survivors(model, x, y, survivors, threat, built, options, batch_size, seed, n_classes, progress):
    idx = survivors.nonzero().flatten()
    out = survivors.clone()
    if idx.numel() == 0:
        return out
    attacks = [build_attack(a.name, threat, n_classes, **options.get(a.name, {})) for a in built]
    res = attack_batches(model, x[idx], y[idx], attacks, batch_size, seed, None, "", progress,
                         f"sweep @ {threat.norm} {threat.eps!r}")
    keep = torch.stack(list(res["robust"].values())).all(0)
    out[idx] = keep
    return out


def summarise_threat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, batch_size: int = 256,
                     seed: int = 0, progress: bool = True, **options: Any) -> dict[str, Any]:
    """A physical/spatial threat (``"patch"`` or ``"spatial"``) reported like the L-p ones.

    Returns a report-shaped dict: ``threat`` (the settings), ``clean``, ``robust``,
    ``per_class``, ``confusion``, ``seconds``. ``options`` go to
    :func:`robust.evaluation.physical.patch_attack` / ``spatial_attack``. Under torchrun its
    batches are shared across ranks as in :func:`attack_batches`.
    """
    from robust.evaluation import physical

    check_images(x, y)
    if kind == "patch":
        describe = physical.describe_patch(image_size=tuple(x.shape[-2:]), seed=seed, **options)
        attack = lambda bx, by, b: physical.patch_attack(model, bx, by, seed=seed + b, **options)  # noqa: E731
    elif kind == "spatial":
        describe = physical.describe_spatial(**options)
        attack = lambda bx, by, b: physical.spatial_attack(model, bx, by, **options)  # noqa: E731
    else:
        raise ValueError(f"unknown threat kind {kind!r}; choose patch or spatial")
    start = time.perf_counter()
    device = model_device(model)
    n_batches = (len(x) + batch_size - 1) // batch_size

    def compute(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sl = slice(b * batch_size, (b + 1) * batch_size)
        bx, by = x[sl].to(device), y[sl].to(device)
        with torch.no_grad():
            clean = model(bx).argmax(1).cpu()
        res = attack(bx, by, b)
        return clean, res.correct.cpu(), res.adv_pred.cpu()

    with eval_mode(model):
        n_classes = check_fits(model, x)
        with tqdm(total=n_batches, desc=kind, disable=not (progress and distributed.is_main()), leave=False) as bar:
            done = distributed.map_batches(n_batches, compute, on_round=lambda new: bar.update(len(new)))
    clean_pred, robust_mask, adv_pred = (torch.cat([done[b][k] for b in range(n_batches)]) for k in range(3))
    robust, _, clean_rec, per_class, confusion = summarise(y, clean_pred, {kind: robust_mask}, {kind: adv_pred},
                                                           n_classes)
    return {"threat": describe, "n_examples": len(y), "clean": clean_rec,
            "robust": accuracy_record(int(robust.sum()), len(y)), "per_class": per_class, "confusion": confusion,
            "seconds": time.perf_counter() - start}
