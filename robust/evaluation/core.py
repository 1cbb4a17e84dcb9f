"""``evaluate()``: empirical robust accuracy under a threat model, with the protocol attached.

The data are split into fixed batches; every batch is attacked with a seed derived from
``seed`` and the batch index, so a run is reproducible and an interrupted run resumed
from its state file (``state_path``) gives the report an uninterrupted one would.
Each named attack runs on every correctly classified example on its own, so
``per_attack`` holds stand-alone numbers; the robust accuracy is the per-example worst
case (an example is robust only if it survives every attack).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robust import distributed
from robust.attacks.evaluation import AttackOutcome, build_attack, check_images
from robust.evaluation.stats import accuracy_record
from robust.runtime import eval_mode, model_device, num_classes
from robust.threat import ThreatModel

STATE_FORMAT = 1
EXAMPLE_POOL = 32  # first-batch adversarial inputs kept (and stored in the state) for the example grid


class EvaluationStateError(ValueError):
    """A resume state file that belongs to another evaluation (or is not ours)."""


@dataclass
class RobustnessReport:
    """The result of :func:`evaluate`; ``to_json()`` gives the RobustBench-style record.

    Accuracies are fractions in [0, 1]; every accuracy record carries its ``correct``, ``n``
    and 95% Clopper-Pearson interval. ``masks`` (not serialised) holds the per-example
    robust masks of each attack, ``examples`` a few clean/adversarial pairs for plots.
    """

    threat: dict[str, Any]
    n_examples: int
    clean: dict[str, Any]
    robust: dict[str, Any]
    per_attack: dict[str, dict[str, Any]]
    per_class: dict[str, dict[str, Any]]
    confusion: list[dict[str, int]]
    audit: dict[str, Any]
    protocol: dict[str, Any]
    seconds: float = 0.0
    sweep: list[dict[str, Any]] | None = None
    class_names: list[str] | None = None
    corruptions: dict[str, Any] | None = None
    physical: dict[str, Any] | None = None
    per_example: dict[str, Any] | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    examples: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def clean_accuracy(self) -> float:
        return self.clean["accuracy"]

    @property
    def robust_accuracy(self) -> float:
        return self.robust["accuracy"]

    @property
    def unreliable(self) -> bool:
        return bool(self.audit.get("unreliable", False))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("masks", "examples")}
        out = {"kind": "robustness", **out, "clean_accuracy": self.clean_accuracy,
               "robust_accuracy": self.robust_accuracy, "unreliable": self.unreliable}
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustnessReport":
        names = set(cls.__dataclass_fields__) - {"masks", "examples"}
        return cls(**{k: v for k, v in d.items() if k in names})


def collect(data: Any, n_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors from a DataLoader (first ``n_examples`` in its order) or an ``(x, y)`` pair."""
    if n_examples is not None and n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"labels must be a 1-D integer tensor of class indices, got {type(y).__name__}")
    elif isinstance(data, Iterable):
        xs, ys, have = [], [], 0
        for batch in data:
            bx, by = batch[0], batch[1]
            xs.append(bx)
            ys.append(by)
            have += len(bx)
            if n_examples is not None and have >= n_examples:
                break
        if not xs:
            raise ValueError("the data loader yielded no batches")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ValueError(f"data must be a DataLoader or an (images, labels) pair, got {type(data).__name__}")
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    check_images(x, y)
    return x.detach().cpu(), y.detach().cpu()  # batches move to the model's device one at a time


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (a resume must attack the same weights)."""
    return _fingerprint(*[t.float() if t.is_floating_point() else t for t in model.state_dict().values()])


def versions() -> dict[str, str]:
    import torchattacks

    import robust

    return {"robust": getattr(robust, "__version__", "0"), "torch": torch.__version__,
            "torchattacks": torchattacks.__version__, "python": platform.python_version()}


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, key: str) -> dict[int, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused the same way
        raise EvaluationStateError(f"{path} is not a robust evaluation state file ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise EvaluationStateError(f"{path} is not a robust evaluation state file")
    if state.get("key") != key:
        raise EvaluationStateError(f"{path} was written by a different evaluation (other model, data, threat, "
                                   "attacks, seed or batch size); delete it or pass another state path")
    return state["batches"]


def attack_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Any],
    batch_size: int,
    seed: int,
    state_path: Path | None,
    key: str,
    progress: bool,
    desc: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run every attack on every batch; returns per-example tensors (cpu) for the whole set.

    ``attacks`` are objects with ``name`` and ``run(model, x, y, seed) -> AttackOutcome``. Under
    torchrun the batches are shared out (:func:`robust.distributed.map_batches`), every rank
    gets the whole result, and rank 0 alone reads and writes the state file.
    """
    device = model_device(model)
    n = len(x)
    records = distributed.run_on_main(lambda: _load_state(state_path, key)) if state_path is not None else {}
    n_batches = (n + batch_size - 1) // batch_size

    def size(b: int) -> int:
        return min(n, (b + 1) * batch_size) - b * batch_size

    def compute(b: int) -> dict[str, Any]:
        sl = slice(b * batch_size, b * batch_size + size(b))
        bx, by = x[sl].to(device), y[sl].to(device)
        with torch.no_grad():
            clean_pred = model(bx).argmax(1)
        rec: dict[str, Any] = {"clean_pred": clean_pred.cpu(), "robust": {}, "adv_pred": {}, "components": {},
                               "seconds": {}, "x_adv": {}}
        for i, attack in enumerate(attacks):
            out: AttackOutcome = attack.run(model, bx, by, seed=seed + 100_003 * b + 1009 * i)
            rec["robust"][attack.name] = out.robust.cpu()
            rec["adv_pred"][attack.name] = out.adv_pred.cpu()
            rec["components"][attack.name] = dict(out.components)
            rec["seconds"][attack.name] = out.seconds
            if b == 0:
                rec["x_adv"][attack.name] = out.x_adv[:EXAMPLE_POOL].detach().cpu()
        return rec

    bar = tqdm(total=n, desc=desc, unit="img", disable=not (progress and distributed.is_main()), leave=False)
    bar.update(sum(size(b) for b in records))

    def finished(new: dict[int, dict[str, Any]]) -> None:
        records.update(new)
        if state_path is not None and distributed.is_main():
            _save_atomic({"format": STATE_FORMAT, "key": key, "batches": records}, state_path)
        for b in new:
            bar.update(size(b))
            if on_batch is not None:
                on_batch(b, n_batches)

    distributed.map_batches(n_batches, compute, skip=records, on_round=finished)
    bar.close()
    names = [a.name for a in attacks]
    ordered = [records[b] for b in range(n_batches)]
    return {
        "clean_pred": torch.cat([r["clean_pred"] for r in ordered]),
        "robust": {a: torch.cat([r["robust"][a] for r in ordered]) for a in names},
        "adv_pred": {a: torch.cat([r["adv_pred"][a] for r in ordered]) for a in names},
        "components": {a: _sum_dicts(r["components"][a] for r in ordered) for a in names},
        "seconds": {a: sum(r["seconds"][a] for r in ordered) for a in names},
        "x_adv_first": {a: ordered[0]["x_adv"].get(a) for a in names} if ordered else {},
    }


def _sum_dicts(ds: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def summarise(
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    robust_masks: dict[str, torch.Tensor],
    adv_preds: dict[str, torch.Tensor],
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, dict, dict, list]:
    """Worst case over attacks, per-class accuracies and where adversarial examples land.

    Returns ``(robust, adv_pred, clean_record, per_class, confusion)``; ``adv_pred`` is the
    prediction under the first attack (in the given order) that broke the example.
    """
    clean_ok = clean_pred == y
    robust = clean_ok.clone()
    for mask in robust_masks.values():
        robust &= mask
    adv_pred = clean_pred.clone()
    assigned = ~clean_ok
    for name, mask in robust_masks.items():
        newly = ~mask & ~assigned
        adv_pred[newly] = adv_preds[name][newly]
        assigned |= newly
    per_class = {}
    for c in range(n_classes):
        sel = y == c
        k = int(sel.sum())
        if k == 0:
            continue
        per_class[str(c)] = {"n": k, "clean": accuracy_record(int(clean_ok[sel].sum()), k),
                             "robust": accuracy_record(int(robust[sel].sum()), k)}
    broken = clean_ok & ~robust
    pairs = y[broken] * n_classes + adv_pred[broken]
    counts = torch.bincount(pairs, minlength=n_classes * n_classes)
    confusion = [{"true": int(i) // n_classes, "adversarial": int(i) % n_classes, "count": int(counts[i])}
                 for i in counts.nonzero().flatten()]
    confusion.sort(key=lambda d: (-d["count"], d["true"], d["adversarial"]))
    return robust, adv_pred, accuracy_record(int(clean_ok.sum()), len(y)), per_class, confusion


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

    ``attacks`` are registry names (``robust.attacks.evaluation.list_attacks()``), run
    independently on the correctly classified examples; ``attack_options`` overrides their
    settings by name (e.g. ``{"pgd": {"steps": 100}}``). ``sweep`` is a list of further eps
    values: robust accuracy at each, where a larger eps only re-attacks examples that
    survived the smaller ones (an adversarial example inside a small ball lies in every
    larger one). ``audit`` runs the gradient-masking checks of
    :mod:`robust.evaluation.audit` and marks the report ``unreliable`` if any fires.
    ``state_path`` makes the run resumable: finished batches are stored there and skipped
    when the same evaluation is started again. The model is put in eval mode and its mode
    restored afterwards; the global RNG is left untouched. Under torchrun every rank calls this:
    the attacks of the main pass, the sweep and the audit share their batches across ranks
    (:func:`attack_batches`) and every rank returns the same report.
    """
    threat = ThreatModel.coerce(threat)
    if isinstance(attacks, str):
        attacks = [attacks]
    attacks = list(dict.fromkeys(attacks))
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = collect(data, n_examples)
    start = time.perf_counter()
    with eval_mode(model):
        n_classes = num_classes(model, x)
        if int(y.max()) >= n_classes or int(y.min()) < 0:
            raise ValueError(f"labels must lie in [0, {n_classes - 1}] for a model with {n_classes} outputs, "
                             f"got {int(y.min())}..{int(y.max())}")
        options = attack_options or {}
        built = [build_attack(a, threat, n_classes, **options.get(a, {})) for a in attacks]
        settings = {a.name: a.settings for a in built}
        key = _fingerprint(x, y) + model_fingerprint(model) + json.dumps(
            {"threat": _threat_dict(threat), "attacks": settings, "seed": seed, "batch_size": batch_size},
            sort_keys=True, default=str)
        key = hashlib.sha256(key.encode()).hexdigest()
        path = Path(state_path) if state_path is not None else None
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
            threat=_threat_dict(threat), n_examples=n, clean=clean,
            robust=accuracy_record(int(robust.sum()), n), per_attack=per_attack, per_class=per_class,
            confusion=confusion, audit={"ran": False, "unreliable": False, "flags": [], "checks": [],
                                        "zero_gradient_share": None},
            protocol=_protocol(threat, settings, n, seed, batch_size, model, checkpoint, n_classes),
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
            from robust.evaluation.audit import run_audit

            report.audit = run_audit(model, x, y, threat, report, n_classes=n_classes, seed=seed,
                                     batch_size=batch_size, progress=progress, **(audit_options or {}))
        report.seconds = time.perf_counter() - start
        return report


def _threat_dict(threat: ThreatModel) -> dict[str, Any]:
    return {"kind": threat.norm, "norm": threat.norm, "eps": float(threat.eps), "eps_str": repr(threat.eps)}


def describe_run(model: nn.Module, checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """Versions, device, the model's sha256 and the checkpoint file's path and sha256."""
    ckpt = None
    if checkpoint is not None:
        p = Path(checkpoint)
        ckpt = {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None}
    device = model_device(model)
    return {"versions": versions(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "model_sha256": model_fingerprint(model), "checkpoint": ckpt,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}


def _protocol(threat, settings, n, seed, batch_size, model, checkpoint, n_classes) -> dict[str, Any]:
    return {"threat": _threat_dict(threat), "attacks": settings, "n_examples": n, "seed": seed,
            "batch_size": batch_size, "num_classes": n_classes, **describe_run(model, checkpoint),
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
    from robust.threat import parse_eps

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
        n_classes = num_classes(model, x)
        with tqdm(total=n_batches, desc=kind, disable=not (progress and distributed.is_main()), leave=False) as bar:
            done = distributed.map_batches(n_batches, compute, on_round=lambda new: bar.update(len(new)))
    clean_pred, robust_mask, adv_pred = (torch.cat([done[b][k] for b in range(n_batches)]) for k in range(3))
    robust, _, clean_rec, per_class, confusion = summarise(y, clean_pred, {kind: robust_mask}, {kind: adv_pred},
                                                           n_classes)
    return {"threat": describe, "n_examples": len(y), "clean": clean_rec,
            "robust": accuracy_record(int(robust.sum()), len(y)), "per_class": per_class, "confusion": confusion,
            "seconds": time.perf_counter() - start}
