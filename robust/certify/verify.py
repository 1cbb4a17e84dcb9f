"""Per-example verification under an L-inf threat: ``verified``, ``falsified`` or ``inconclusive``.

A bound method (IBP, or CROWN intersected with IBP) tries to *prove* each example robust; an
attack from the evaluation registry tries to *break* it. The two together bracket the true
robust accuracy::

    certified (verified share) <= true robust accuracy <= empirical (1 - falsified share) <= clean

so a PGD-trained network that no bound can prove is reported as mostly ``inconclusive`` with
its attack-based upper bound, never as a bare 0%. Every correctly classified example is
attacked, proved or not: an example that is both verified and broken would mean an unsound
bound (or an attack leaving the ball) and is flagged by :func:`consistency`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from robust.attacks.independent import build_attack
from robust.base import distributed
from robust.base.batching import collect
from robust.base.runtime import eval_mode, full_float32, model_device, num_classes
from robust.base.safe_load import check_finite_weights
from robust.base.stats import accuracy_record
from robust.base.threat import ThreatModel
from robust.certify.ibp import certified, elided_bounds

METHODS = ("ibp", "crown")
STATUSES = ("verified", "falsified", "inconclusive")
DEFAULT_ATTACK = "pgd"


def margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            method: str = "crown") -> dict[str, torch.Tensor]:
    """Lower bounds on ``z_y - z_j`` per method: ``{"ibp": ...}`` or ``{"ibp", "crown", "combined"}``.

    Computed without TF32 on CUDA. ``combined`` is the element-wise maximum of the IBP and CROWN bounds: both are sound lower
    bounds of the same quantity, so their maximum is sound and never looser than either.
    """
    if method not in METHODS:
        raise ValueError(f"unknown verification method {method!r}; choose from {', '.join(METHODS)}")
    with full_float32():
        out = {"ibp": elided_bounds(model, x, y, eps)}
        if method == "crown":
            from robust.certify.crown import crown_margins

            out["crown"] = crown_margins(model, x, y, eps)
            out["combined"] = torch.maximum(out["ibp"], out["crown"])
        else:
            out["combined"] = out["ibp"]
    return out


def verify(
    model: torch.nn.Module,
    data: Any,
    eps: float | str,
    method: str = "crown",
    attack: str | None = DEFAULT_ATTACK,
    attack_options: Mapping[str, Any] | None = None,
    n_examples: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Verify and attack every example of ``data`` at L-inf radius ``eps`` (pixel units).

    Returns a report dict: ``clean``, ``certified`` (verified share) and ``robust`` (correct
    and not broken by the attack) accuracy records, ``status_counts``, ``verified_by`` (examples each bound proves
    alone and combined), ``per_example`` rows (``idx label predict status``), the attack's
    settings and time, and a :func:`consistency` verdict. ``attack=None`` skips the attack: then
    only misclassified inputs are ``falsified``. Under torchrun the batches are shared out
    (:func:`robust.base.distributed.map_batches`) and every rank returns the same report.
    """
    threat = ThreatModel("linf", eps)
    if float(threat.eps) > 1:
        raise ValueError(f"eps {threat.eps!r} is above 1: an L-inf ball that large covers every image in [0, 1] "
                         "(eps is in pixel units, e.g. 8/255)")
    if method not in METHODS:
        raise ValueError(f"unknown verification method {method!r}; choose from {', '.join(METHODS)}")
    x, y = collect(data, n_examples)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_finite_weights(model, "certify")
    device = model_device(model)
    n_batches = (len(x) + batch_size - 1) // batch_size

    def compute(b: int) -> dict[str, Any]:
        first = b * batch_size
        bx, by_ = x[first:first + batch_size].to(device), y[first:first + batch_size].to(device)
        with torch.no_grad():
            logits = model(bx)
            bounds = margins(model, bx, by_, float(threat.eps), method)
        pred = logits.argmax(1)
        correct = pred == by_
        proved = {k: certified(v, by_) & correct for k, v in bounds.items()}
        broken, seconds, violations, rows = ~correct, 0.0, [], []
        if attacker is not None and bool(correct.any()):
            outcome = attacker.run(model, bx, by_, seed=seed + first)
            seconds = outcome.seconds
            broken = ~outcome.robust
        for i in range(len(bx)):
            if bool(proved["combined"][i]):
                status = "verified"
                if bool(broken[i]):
                    violations.append(first + i)
            elif bool(broken[i]):
                status = "falsified"
            else:
                status = "inconclusive"
            rows.append({"idx": first + i, "label": int(by_[i]), "predict": int(pred[i]), "status": status,
                         "broken": bool(broken[i])})
        return {"rows": rows, "proved": {k: int(v.sum()) for k, v in proved.items()}, "seconds": seconds,
                "violations": violations}

    start = time.perf_counter()
    with eval_mode(model):
        attacker = None if attack is None else build_attack(attack, threat, num_classes(model, x),
                                                            **dict(attack_options or {}))
        with tqdm(total=n_batches, desc=f"verify ({method})", unit="batch", leave=False,
                  disable=not (progress and distributed.is_main())) as bar:
            done = distributed.map_batches(n_batches, compute, on_round=lambda new: bar.update(len(new)))
    parts = [done[b] for b in range(n_batches)]
    rows = [row for part in parts for row in part["rows"]]
    by = {k: sum(part["proved"].get(k, 0) for part in parts) for k in ("ibp", "crown", "combined")}
    attack_seconds = sum(part["seconds"] for part in parts)
    violations = [i for part in parts for i in part["violations"]]
    n = len(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    clean = sum(r["label"] == r["predict"] for r in rows)
    report = {
        "kind": "certification",
        "method": method,
        "threat": threat.to_dict(),
        "n_examples": n,
        "clean": accuracy_record(clean, n),
        "certified": accuracy_record(counts["verified"], n),
        "robust": accuracy_record(sum(not r.pop("broken") for r in rows), n),
        "status_counts": counts,
        "verified_by": by if method == "crown" else {"ibp": by["ibp"]},
        "attack": None if attacker is None else {"name": attack, "settings": attacker.settings,
                                                 "seconds": attack_seconds},
        "seconds": time.perf_counter() - start,
        "per_example": rows,
        "soundness_violations": violations,
    }
    report["consistency"] = consistency(report["clean"], report["robust"], report["certified"],
                                        violations=violations, what=f"{method} at L-inf eps {threat.eps!r}")
    return report


def consistency(clean: Mapping, robust: Mapping | None, certified: Mapping, violations: Sequence[int] = (),
                tolerance: int = 0, what: str = "", radii: Sequence[float] = (),
                max_radius: float | None = None) -> dict[str, Any]:
    """Check ``certified <= robust <= clean`` (accuracy records on the same examples).

    ``tolerance`` examples of slack are allowed on each inequality (randomized smoothing's
    certificates hold with probability 1 - alpha, so a few failures are expected there; bound
    methods get none). ``violations`` are examples that were both certified and broken. With
    ``max_radius`` (randomized smoothing's largest certifiable radius) every one of ``radii`` (the
    per-example certified radii) must be a number in [0, max_radius]: no sample can certify more.
    Returns ``{"ok", "checks", "flags"}``; a flag names the inequality and the numbers.
    """
    checks = []
    if max_radius is not None:
        beyond = [r for r in radii if not 0 <= float(r) <= max_radius * (1 + 1e-9)]
        checks.append({"name": "radius <= largest certifiable", "passed": not beyond and math.isfinite(max_radius),
                       "message": f"{len(beyond)} of {len(radii)} radii outside [0, {max_radius:.6g}]"
                                  + (f": {beyond[:5]}" if beyond else "") + (" VIOLATED" if beyond else "")})

    def check(name: str, small: Mapping, large: Mapping, allowed: int) -> None:
        lhs, rhs = int(small["correct"]), int(large["correct"])
        passed = lhs <= rhs + allowed
        message = (f"{name}: {lhs}/{small['n']} vs {rhs}/{large['n']}"
                   + (f" (tolerance {allowed})" if allowed else "") + ("" if passed else " VIOLATED"))
        checks.append({"name": name, "passed": passed, "message": message})

    if robust is not None:
        check("certified <= robust", certified, robust, tolerance)
        check("robust <= clean", robust, clean, 0)
    check("certified <= clean", certified, clean, tolerance)
    if violations:
        checks.append({"name": "no certified example is broken", "passed": len(violations) <= tolerance,
                       "message": f"{len(violations)} example(s) certified and yet broken by the attack: "
                                  f"{list(violations)[:10]}" + (" ..." if len(violations) > 10 else "")})
    flags = [c for c in checks if not c["passed"]]
    return {"ok": not flags, "what": what, "checks": checks, "flags": flags}


def smoothing_tolerance(m: int, alpha: float, confidence: float = 1e-3) -> int:
    """How many of ``m`` independent certificates may fail by chance: the smallest k with
    ``P(Binomial(m, alpha) > k) <= confidence``."""
    from scipy.stats import binom

    if m <= 0:
        return 0
    return int(binom.ppf(1.0 - confidence, m, alpha)) if alpha > 0 and math.isfinite(alpha) else 0
