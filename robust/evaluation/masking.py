"""Gradient-masking audit: the checks that make an attack-based number trustworthy.

A defence that hides its gradients (quantised inputs, saturated softmax outputs,
randomness) makes gradient attacks fail without being robust (Athalye, Carlini &
Wagner 2018; Carlini et al. 2019, "On Evaluating Adversarial Robustness"). Each
check below states its threshold; a report with any failed check is marked
``unreliable`` (the RobustBench field) and lists why.

Comparisons between two accuracies allow ``tolerance`` (one percentage point by default,
and never less than one example) for the noise of attacks that are not monotone per
example. The checks that compare attacks of different strength or eps run each attack
independently on the same audit subset, so a check can fire. The evaluation's own attacks, with the
options they were given, are held against a default PGD on the same examples
(``configured_attacks_not_weaker_than_pgd``): a crippled attack (a step size of 1e-9, one step) or
weak attacks alone would read as robustness, and are flagged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.attacks.independent import build_attack
from robust.base.runtime import batched_logits, eval_mode, model_device
from robust.base.threat import ThreatModel
from robust.evaluation.results import RobustnessReport
from robust.evaluation.runner import attack_batches

DEFAULTS = {
    "n_examples": 500,        # audit subset: the first n examples
    "steps": 20,              # PGD steps of the audit's own attacks
    "strong_steps": 100,      # "more steps" attack: 5x the steps ...
    "strong_restarts": 3,     # ... and 3 restarts
    "eps_factors": (0.25, 0.5, 1.0, 2.0),
    "tolerance": 0.01,        # accuracy slack for comparisons (fraction), at least one example
    "unbounded_max": 0.02,    # robust accuracy allowed at an eps covering the whole image box
    "square_queries": 1000,   # when the evaluation ran no Square attack of its own
    "square_max": 0.02,       # share of examples Square may break that white-box attacks could not
    "zero_grad_max": 0.05,    # share of examples with an all-zero input gradient
    "determinism_rtol": 1e-2,  # |logits1 - logits2| <= rtol * max(1, max|logits|): bf16 / cuDNN noise passes
}


def _check(name: str, passed: bool, message: str, threshold: str, value: Any) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "message": message, "threshold": threshold, "value": value}


def _robust_mask(model, x, y, threat, name, n_classes, seed, batch_size, progress, **options) -> torch.Tensor:
    attack = build_attack(name, threat, n_classes, **options)
    res = attack_batches(model, x, y, [attack], batch_size, seed, None, "", progress,
                         f"audit {name} @ {threat.norm} {threat.eps!r}")
    return res["robust"][name]


def _max_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    """An eps whose ball covers the whole [0, 1] box: 1 for L-inf, sqrt(dimension) for L2."""
    return 1.0 if threat.norm == "linf" else float(x[0].numel()) ** 0.5


def run_audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    report: RobustnessReport | None = None,
    *,
    n_classes: int,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Run every check on the first ``n_examples`` of ``(x, y)``; returns the report's ``audit`` dict.

    ``report`` (the evaluation's own results) lets the Square check reuse the evaluation's
    white-box and black-box attacks when it ran them.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown audit option(s) {sorted(unknown)}; choose from {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    with eval_mode(model):
        return _run(model, x[:o["n_examples"]], y[:o["n_examples"]], threat, report, n_classes, seed,
                    batch_size, progress, o)


def _run(model, x, y, threat, report, n_classes, seed, batch_size, progress, o) -> dict[str, Any]:
    n = len(y)
    tol = max(o["tolerance"], 1.0 / n + 1e-12)
    tol_txt = f"{100 * tol:.2f} points (max of {100 * o['tolerance']:g} points and one example)"
    eps = float(threat.eps)
    steps = o["steps"]
    checks = []

    def mask(name: str, e: float, **kw: Any) -> torch.Tensor:
        return _robust_mask(model, x, y, ThreatModel(threat.norm, e), name, n_classes, seed, batch_size,
                            progress, **kw)

    def acc(name: str, e: float, **kw: Any) -> float:
        robust = mask(name, e, **kw)
        return int(robust.sum()) / len(robust)

    logits = batched_logits(model, x, batch_size)
    rows_sum = logits.sum(1)
    is_prob = bool((logits >= 0).all() and (logits <= 1).all() and ((rows_sum - 1).abs() < 1e-3).all())
    checks.append(_check(
        "outputs_are_logits", not is_prob,
        "The model outputs probabilities (rows are non-negative and sum to 1): cross-entropy on softmax "
        "outputs saturates and gradient attacks stall; return logits." if is_prob else
        "The model's outputs are not probability vectors (logits expected).",
        "flag if every output lies in [0, 1] and every row sums to 1 within 1e-3", float(rows_sum.mean())))

    again = batched_logits(model, x, batch_size)
    scale = max(1.0, float(logits.abs().max()))
    diff = float((again - logits).abs().max())
    label_flips = float((again.argmax(1) != logits.argmax(1)).float().mean())
    deterministic = diff <= o["determinism_rtol"] * scale
    checks.append(_check(
        "deterministic_forward", deterministic,
        "Two forward passes on the same inputs agree." if deterministic else
        f"Two forward passes on the same inputs differ by up to {diff:.3g} in the logits "
        f"({100 * label_flips:.1f}% of predictions change): a randomised model needs an EOT attack "
        "(attacks=('autoattack-rand',)) and deterministic attacks overstate its robustness.",
        f"max |logits_1 - logits_2| <= {o['determinism_rtol']:g} * max(1, max |logits|)", diff))

    zero_share = _zero_gradient_share(model, x, y, batch_size)
    checks.append(_check(
        "zero_input_gradients", zero_share <= o["zero_grad_max"],
        f"{100 * zero_share:.1f}% of examples have an all-zero input gradient of the cross-entropy"
        + ("; gradient attacks cannot move them (quantised or saturated inputs mask gradients)."
           if zero_share > o["zero_grad_max"] else "."),
        f"share of examples with an all-zero gradient <= {o['zero_grad_max']:g}", zero_share))

    pgd_mask = mask("pgd", eps, steps=steps)
    pgd = int(pgd_mask.sum()) / n
    fgsm = acc("fgsm", eps)
    checks.append(_check(
        "fgsm_not_stronger_than_pgd", fgsm >= pgd - tol,
        f"Single-step FGSM leaves {100 * fgsm:.2f}% robust, PGD-{steps} {100 * pgd:.2f}%"
        + (": an iterative attack losing to a single step means its gradients mislead it." if fgsm < pgd - tol
           else "."),
        f"FGSM accuracy >= PGD accuracy - {tol_txt}", {"fgsm": fgsm, "pgd": pgd}))

    strong_mask = mask("pgd", eps, steps=o["strong_steps"], restarts=o["strong_restarts"])
    strong = int(strong_mask.sum()) / n
    checks.append(_check(
        "more_steps_not_weaker", strong <= pgd + tol,
        f"PGD-{o['strong_steps']} with {o['strong_restarts']} restarts leaves {100 * strong:.2f}%, "
        f"PGD-{steps} {100 * pgd:.2f}%" + (": more iterations should never help the model." if strong > pgd + tol
                                             else "."),
        f"accuracy(PGD-{o['strong_steps']} x{o['strong_restarts']}) <= accuracy(PGD-{steps}) + {tol_txt}",
        {"weak": pgd, "strong": strong}))

    if report is not None and report.masks:
        checks.append(_baseline_check(report, pgd_mask & strong_mask, n, tol, tol_txt, steps, o))

    factors = sorted(o["eps_factors"])
    curve = [(f * eps, pgd if f == 1.0 else acc("pgd", f * eps, steps=steps)) for f in factors]
    rises = [(a, b) for a, b in zip(curve, curve[1:]) if b[1] > a[1] + tol]
    checks.append(_check(
        "monotone_in_eps", not rises,
        "Robust accuracy (independent PGD runs) " + ("rises with eps: " + "; ".join(
            f"{100 * a[1]:.2f}% at {a[0]:.4g} -> {100 * b[1]:.2f}% at {b[0]:.4g}" for a, b in rises)
            if rises else "does not increase with eps: " + ", ".join(f"{100 * v:.1f}% at {e:.4g}" for e, v in curve)),
        f"accuracy at a larger eps <= accuracy at a smaller eps + {tol_txt}",
        [{"eps": e, "accuracy": v} for e, v in curve]))

    big = _max_eps(threat, x)
    unbounded = acc("pgd", big, steps=max(steps, 50), random_start=False)
    checks.append(_check(
        "unbounded_eps_breaks_all", unbounded <= o["unbounded_max"],
        f"PGD-{max(steps, 50)} from the clean point (a random start alone would scramble the image) at "
        f"eps = {big:.4g}, a ball covering the whole image box, leaves "
        f"{100 * unbounded:.2f}% robust" + ("; with an unbounded budget every image can be changed into another "
                                             "class, so gradients are not guiding the attack." if
                                             unbounded > o["unbounded_max"] else "."),
        f"accuracy at eps {big:.4g} <= {o['unbounded_max']:g}", unbounded))

    share, how = _square_only_share(model, x, y, threat, report, n_classes, seed, batch_size, progress, o)
    checks.append(_check(
        "black_box_not_stronger", share <= max(o["square_max"], 1.0 / n + 1e-12),
        f"Square (black-box) broke {100 * share:.2f}% of the examples that the white-box attacks could not "
        f"({how})" + ("; black-box beating white-box points at masked gradients."
                     if share > max(o["square_max"], 1.0 / n + 1e-12) else "."),
        f"share of examples broken only by Square <= {o['square_max']:g} (or a single example)", share))

    flags = [{k: c[k] for k in ("name", "message", "threshold", "value")} for c in checks if not c["passed"]]
    return {"ran": True, "unreliable": bool(flags), "flags": flags, "checks": checks,
            "zero_gradient_share": zero_share, "n_examples": n, "settings": {k: (list(v) if isinstance(v, tuple)
                                                                               else v) for k, v in o.items()}}


def _baseline_check(report: RobustnessReport, baseline: torch.Tensor, n: int, tol: float, tol_txt: str,
                    steps: int, o: dict[str, Any]) -> dict[str, Any]:
    """The configured attacks against a default PGD on the same examples: the audit's PGD-``steps`` and
    PGD-``strong_steps`` with restarts, at the registry's default step size, with a random start. Options
    that cripple an attack (a step size of 1e-9, one step) or only weak attacks leave examples robust that
    this baseline breaks, and the reported robust accuracy then overstates robustness."""
    configured = torch.stack([m[:n].bool() for m in report.masks.values()]).all(0)
    only = configured & ~baseline
    share = int(only.sum()) / n
    names = ", ".join(report.masks)
    baseline_txt = f"a default PGD (PGD-{steps} and PGD-{o['strong_steps']} x{o['strong_restarts']})"
    passed = share <= tol
    message = (f"{baseline_txt} breaks {int(only.sum())} of {n} example(s) that the configured attacks ({names}) "
               f"left robust; robust accuracy {100 * float(configured.float().mean()):.2f}% configured, "
               f"{100 * float(baseline.float().mean()):.2f}% under the baseline")
    message += "." if passed else (": the configured attacks are weaker than the default, so the reported robust "
                                   "accuracy overstates robustness; check the attack options (step size, steps, "
                                   "random start) or use the defaults.")
    return _check("configured_attacks_not_weaker_than_pgd", passed, message,
                  f"share of examples broken only by the baseline <= {tol_txt}",
                  {"configured": float(configured.float().mean()), "baseline": float(baseline.float().mean()),
                   "broken_only_by_baseline": int(only.sum())})


def _zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    device = model_device(model)
    zero = 0
    with torch.enable_grad():
        for i in range(0, len(x), batch_size):
            bx = x[i:i + batch_size].to(device).clone().requires_grad_(True)
            loss = F.cross_entropy(model(bx).float(), y[i:i + batch_size].to(device), reduction="sum")
            grad, = torch.autograd.grad(loss, bx, allow_unused=True)
            if grad is None:
                zero += len(bx)
            else:
                zero += int((grad.flatten(1) == 0).all(1).sum())
    return zero / len(x)


def _square_only_share(model, x, y, threat, report, n_classes, seed, batch_size, progress, o):
    """Share of audit examples Square breaks although every white-box attack failed on them."""
    n = len(y)
    if report is not None and "autoattack" in report.per_attack:
        comp = report.per_attack["autoattack"].get("components", {})
        broken = comp.get("square", {}).get("broken", 0)
        return broken / report.n_examples, "Square inside autoattack, after APGD-CE, APGD-T and FAB-T"
    masks = report.masks if report is not None else {}
    white = [m for a, m in masks.items() if a not in ("square", "fgsm")]
    if "square" in masks and white:
        white_robust = torch.stack(white).all(0)
        only = white_robust & ~masks["square"]
        return float(only.float().mean()), "the evaluation's Square against its white-box attacks"
    attacks = [build_attack("pgd", threat, n_classes, steps=o["steps"]),
               build_attack("pgd-cw", threat, n_classes, steps=o["steps"]),
               build_attack("square", threat, n_classes, queries=o["square_queries"])]
    res = attack_batches(model, x, y, attacks, batch_size, seed, None, "", progress,
                         f"audit square @ {threat.norm} {threat.eps!r}")
    white_robust = res["robust"]["pgd"] & res["robust"]["pgd-cw"]
    only = white_robust & ~res["robust"]["square"]
    return float(only.sum()) / n, f"Square-{o['square_queries']} against PGD-{o['steps']} (CE and CW loss)"
