"""``robust audit``: one document for a safety reviewer about one checkpoint on one data set.

Runs, on the same examples and with one seed:

1. the empirical evaluation (AutoAttack under the RobustBench protocol with the
   gradient-masking audit, per-class figures) at the checkpoint's threat model;
2. the certification that applies to the model: randomized smoothing for a noise-trained model,
   CROWN ∩ IBP (with an attack falsifying what is not proven) for a feed-forward ReLU network
   under L-inf, IBP alone for other graphs whose layers it supports; otherwise it says why no
   certificate could be computed;
3. common corruptions (15 types x 5 severities);

and writes ``audit.json`` and ``audit.md`` (what is *proven*, what is only *measured*, what
could *not be checked*, full provenance) with the underlying reports and plots in
``evaluation/`` and ``certification/``, plus its leaderboard entry (``entry.json``; added to a
board with ``--leaderboard``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from robust.cli import ArgumentParser
from robust.evaluate_cli import (
    UsageError, _json_arg, add_run_arguments, add_source_arguments, check_run_arguments, describe_model, load_data,
    load_model, wandb_project,
)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="robust audit", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--norm", choices=("linf", "l2"), help="default: the checkpoint's threat model")
    p.add_argument("--eps", help="default: the checkpoint's")
    p.add_argument("--attacks", default="autoattack", help="comma-separated registry attacks")
    p.add_argument("--attack-options", default="{}", help="JSON overrides per attack")
    p.add_argument("--smoothing-n", type=int, default=10_000, help="Monte Carlo samples per smoothing certificate")
    p.add_argument("--no-corruptions", action="store_true")
    add_run_arguments(p, "audit", "runs/audit", fresh=False)
    p.add_argument("--name", help="model name for the leaderboard entry")
    p.add_argument("--leaderboard", help="also add the entry to this board (SQLite file or SQLAlchemy URL)")
    return p


def _certification(args: argparse.Namespace, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   threat: Any, method: Any, progress: bool) -> tuple[dict | None, str]:
    """The certification report that applies, or None and the reason none does."""
    from robust.certify import report as certification
    from robust.certify.crown import crown_margins
    from robust.certify.ibp import UnsupportedLayerError, elided_bounds

    sigma = getattr(method, "sigma", None)
    if sigma is not None:
        return certification.smoothing_report(
            model, (x, y), sigma, n=args.smoothing_n, batch_size=10_000 if x.is_cuda else 1000,
            radii=[r * sigma for r in (0.0, 0.5, 1.0, 1.5, 2.0)], seed=args.seed, progress=progress,
            checkpoint=args.checkpoint), f"randomized smoothing (the model was trained with noise, sigma {sigma:g})"
    if threat.norm != "linf":
        return None, ("no certificate: interval and CROWN bounds certify L-inf balls, and this deterministic model "
                      "has no randomized-smoothing certificate (train it with GaussianNoise for L2 certificates)")
    device = next(model.parameters()).device
    probe_x, probe_y = x[:2].to(device), y[:2].to(device)
    try:
        crown_margins(model, probe_x, probe_y, float(threat.eps))
        method_name, why = "crown", "CROWN ∩ IBP (a feed-forward ReLU network)"
    except UnsupportedLayerError:
        try:
            elided_bounds(model, probe_x, probe_y, float(threat.eps))
            method_name, why = "ibp", "interval bound propagation (CROWN does not apply to this graph)"
        except UnsupportedLayerError as err:
            return None, f"no certificate: {err}"
    report = certification.verification_report(model, (x, y), [threat.eps], method=method_name,
                                               batch_size=min(args.batch_size, 128), seed=args.seed,
                                               progress=progress, checkpoint=args.checkpoint)
    return report, why


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    args.prog = "robust audit"
    from robust.distributed import launched

    if launched():  # every process would run the whole audit and write the same files
        raise UsageError("robust audit runs in one process: start it without torchrun "
                         "(robust evaluate and robust certify share their work across torchrun's processes)")
    from robust.certify.report import write_certification
    from robust.evaluation.core import _fingerprint, evaluate
    from robust.evaluation.corruptions import evaluate_corruptions
    from robust.evaluation.render import write_report
    from robust.leaderboard.entry import from_report
    from robust.threat import ThreatModel

    x, y, num_classes, data_desc = load_data(args)
    model, ckpt_threat, method = load_model(args, num_classes)
    device = check_run_arguments(args)
    if args.n_examples is not None:
        x, y = x[:args.n_examples], y[:args.n_examples]
    if args.eps is None and ckpt_threat is None:
        raise UsageError("no threat model: give --norm and --eps (this model carries none)")
    threat = ThreatModel(args.norm or (ckpt_threat.norm if ckpt_threat else "linf"),
                         args.eps if args.eps is not None else ckpt_threat.eps)
    model = model.to(device).eval()
    out = Path(args.out)
    progress = not args.no_progress
    provenance = {"data": data_desc, "data_sha256": _fingerprint(x, y.to(torch.int64)), **describe_model(args, model, method)}
    print(f"auditing {args.checkpoint or args.model} on {data_desc}: {len(y)} images, {threat.norm} eps {threat.eps!r}",
          file=sys.stderr)
    evaluation = evaluate(model, (x, y), threat, [a.strip() for a in args.attacks.split(",") if a.strip()],
                          batch_size=args.batch_size, seed=args.seed, audit=True,
                          attack_options=_json_arg(args.attack_options, "--attack-options"),
                          checkpoint=args.checkpoint, progress=progress)
    evaluation.protocol.update(provenance)
    if not args.no_corruptions:
        evaluation.corruptions = evaluate_corruptions(model, (x, y), batch_size=args.batch_size, seed=args.seed,
                                                      progress=progress)
    run_ = None
    if wandb_project(args):
        from robust.tracking import run_path, start_run

        run_ = start_run(args.wandb_project, out, "audit", evaluation.protocol)
        evaluation.protocol["wandb_run"] = run_path(run_)
    evaluation_dict = evaluation.to_dict()
    written = write_report(evaluation_dict, out / "evaluation", examples=evaluation.examples)
    certificate, why = _certification(args, model, x, y, threat, method, progress)
    if certificate is not None:
        certificate["protocol"].update(provenance)
        if certificate["method"] != "smoothing":  # the evaluation's attacks also falsify, per example
            from robust.certify.report import compare_with_evaluation

            compare_with_evaluation(certificate, evaluation_dict)
        written.update({f"certification_{k}": v for k, v in write_certification(certificate, out / "certification").items()})
    audit = build(evaluation_dict, certificate, why, provenance)
    entry = from_report(evaluation_dict, name=args.name)
    if certificate is not None:
        entry["certified"] = from_report(certificate)["certified"]
    audit["leaderboard_entry"] = entry
    from robust.evaluation.render import write_json, write_staged

    def render(stage: Path) -> dict[str, Path]:
        (stage / "audit.md").write_text(render_markdown(audit, written, out), encoding="utf-8")
        return {"entry": write_json(entry, stage / "entry.json"), "markdown": stage / "audit.md",
                "json": write_json(audit, stage / "audit.json")}

    files = write_staged(out, render)
    if run_ is not None:
        from robust.certify.report import log_certification
        from robust.evaluation.render import log_to_wandb
        from robust.tracking import finish_run

        log_to_wandb(evaluation_dict, run_, images={k: v for k, v in written.items() if "certification" not in k})
        if certificate is not None:
            log_certification(certificate, run_, images={k: v for k, v in written.items() if "certification" in k})
        finish_run(run_)
    if args.leaderboard:
        from robust.leaderboard.store import Store

        entry_id, added = Store(args.leaderboard).add(entry)
        print(f"leaderboard: {'added' if added else 'already there'} {entry_id} in {args.leaderboard}")
    for line in audit["statement"]:
        print(line)
    print("written: " + ", ".join(str(p) for p in files.values()))
    return 0


def build(evaluation: dict, certificate: dict | None, why: str, provenance: dict) -> dict[str, Any]:
    """The audit document: the underlying reports and a plain statement of proven / measured / unchecked."""
    from robust.evaluation.render import fmt_accuracy, threat_label

    label = threat_label(evaluation["threat"])
    proven, measured, unchecked = [], [], []
    measured.append(f"clean accuracy {fmt_accuracy(evaluation['clean'])}")
    measured.append(f"robust accuracy under {', '.join(evaluation['per_attack'])} at {label}: "
                    f"{fmt_accuracy(evaluation['robust'])} (an upper bound: a stronger attack may find more)")
    audit = evaluation.get("audit") or {}
    if audit.get("unreliable"):
        measured.append("the gradient-masking audit flagged the evaluation as UNRELIABLE: "
                        + "; ".join(f["name"] for f in audit.get("flags") or []))
    if evaluation.get("corruptions"):
        measured.append(f"mean accuracy under common corruptions: "
                        f"{fmt_accuracy(evaluation['corruptions']['mean_corruption_accuracy'])}")
    else:
        unchecked.append("common corruptions (skipped with --no-corruptions)")
    if certificate is None:
        unchecked.append(why)
    elif certificate["method"] == "smoothing":
        for m in certificate["certified_accuracy"][1:]:
            proven.append(f"the smoothed classifier (sigma {certificate['sigma']:g}) keeps its prediction within L2 "
                          f"radius {m['radius']:g} on {fmt_accuracy(m['certified'])} of the examples, each with "
                          f"probability >= {1 - certificate['settings']['alpha']:g}")
        unchecked.append("randomized-smoothing certificates are about the smoothed classifier, not the base model "
                         "used for the attacks above")
    else:
        proven.append(f"certified accuracy at {label} by {why}: {fmt_accuracy(certificate['certified'])} "
                      f"(a lower bound, exact arithmetic up to float32 rounding)")
        bits = (evaluation.get("per_example") or {}).get("robust") or {}
        open_ = [r for i, r in enumerate(certificate["per_example"]) if r["status"] == "inconclusive"
                 and all(b[i] == "1" for b in bits.values())]
        if open_:
            unchecked.append(f"{len(open_)} example(s) are neither proven nor broken (by "
                             f"{', '.join([*evaluation['per_attack'], certificate['attack']['name']])}) at {label}")
        if not certificate["consistency"]["ok"]:
            measured.append("INCONSISTENT: " + "; ".join(f["message"] for f in certificate["consistency"]["flags"]))
    if evaluation.get("physical") is None:
        unchecked.append("adversarial patches and spatial transformations (run robust evaluate --patch/--spatial)")
    statement = (["PROVEN:"] + [f"  - {p}" for p in proven or ["nothing: no certificate applies"]]
                 + ["MEASURED:"] + [f"  - {m}" for m in measured]
                 + ["NOT CHECKED:"] + [f"  - {u}" for u in unchecked])
    return {"kind": "audit", "threat": evaluation["threat"], "provenance": {**provenance, **evaluation["protocol"]},
            "proven": proven, "measured": measured, "not_checked": unchecked, "statement": statement,
            "evaluation": evaluation, "certification": certificate, "certification_method": why}


def render_markdown(audit: dict, written: dict[str, Path], out: Path) -> str:
    from robust.evaluation.render import _md_per_class, _md_protocol, fmt_accuracy, threat_label

    evaluation, certificate = audit["evaluation"], audit["certification"]
    lines = [f"# Robustness audit: {threat_label(audit['threat'])}", ""]
    for title, items in (("Proven (certificates)", audit["proven"]), ("Measured (attacks; upper bounds)",
                                                                     audit["measured"]),
                         ("Not checked", audit["not_checked"])):
        lines += [f"## {title}", ""] + [f"- {i}" for i in items or ["nothing"]] + [""]
    lines += ["## Empirical evaluation", "", f"- clean accuracy: {fmt_accuracy(evaluation['clean'])}",
              f"- robust accuracy: {fmt_accuracy(evaluation['robust'])}"]
    for name, rec in evaluation["per_attack"].items():
        lines.append(f"  - {name}: {fmt_accuracy(rec['robust'])}")
    audit_part = evaluation.get("audit") or {}
    verdict = "UNRELIABLE" if audit_part.get("unreliable") else "reliable"
    lines += [f"- gradient-masking audit: {verdict} ({len(audit_part.get('checks') or [])} checks)"]
    lines += [f"  - {f['name']}: {f['message']}" for f in audit_part.get("flags") or []]
    lines += ["", "Full report: `evaluation/report.md`.", ""]
    lines += _md_per_class(evaluation.get("per_class"), evaluation.get("class_names"))
    lines += ["## Certification", "", f"Method: {audit['certification_method']}.", ""]
    if certificate is not None:
        if certificate["method"] == "smoothing":
            lines += [f"- L2 radius {m['radius']:g}: {fmt_accuracy(m['certified'])}" for m in
                      certificate["certified_accuracy"]]
        else:
            lines += [f"- certified: {fmt_accuracy(certificate['certified'])}",
                      "- statuses: " + ", ".join(f"{k} {v}" for k, v in certificate["status_counts"].items())]
        consistent = certificate["consistency"]["ok"]
        lines += ["", f"certified <= robust <= clean: {'holds' if consistent else 'VIOLATED'}.",
                  "Full report: `certification/report.md`.", ""]
    if evaluation.get("corruptions"):
        lines += ["## Common corruptions", "",
                  f"- mean accuracy: {fmt_accuracy(evaluation['corruptions']['mean_corruption_accuracy'])}", ""]
    for name, path in written.items():
        if Path(path).suffix == ".png":
            lines += [f"![{name.replace('_', ' ')}]({Path(path).relative_to(out)})", ""]
    prov = audit["provenance"]
    lines += ["## Provenance", "", f"- data: {prov.get('data')} (sha256 `{prov.get('data_sha256')}`)",
              f"- model: {(prov.get('model') or {}).get('architecture')}, trained with "
              f"{(prov.get('model') or {}).get('training')}"]
    lines += _md_protocol({"protocol": evaluation["protocol"]})[2:]
    return "\n".join(lines).rstrip() + "\n"
