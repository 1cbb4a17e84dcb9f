"""The audit document's ``audit.md``: what is proven, measured and not checked, then each part in brief.

:func:`audit_document` states an :class:`robust.evaluation.audit.Audit` as that document (``audit.json``);
:func:`render_markdown` writes it; the full evaluation and certification reports are written beside it
(``evaluation/``, ``certification/``) and linked from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust.reports.format import fmt_accuracy, threat_label
from robust.reports.markdown import image, per_class_section, protocol_section
from robust.reports.safety import safety_lines, safety_section

if TYPE_CHECKING:
    from robust.evaluation.audit import Audit

__all__ = ["audit_document", "render_markdown"]


def audit_document(result: Audit) -> dict[str, Any]:
    """The audit document: the underlying reports and a plain statement of what is proven (certificates),
    measured (attacks: upper bounds) and not checked."""
    evaluation, certificate, why = result.evaluation.to_dict(), result.certification, result.certification_method
    label = threat_label(evaluation["threat"])
    proven, measured, unchecked = [], [], []
    measured.append(f"clean accuracy {fmt_accuracy(evaluation['clean'])}")
    measured.append(f"robust accuracy under {', '.join(evaluation['per_attack'])} at {label}: "
                    f"{fmt_accuracy(evaluation['robust'])} (an upper bound: a stronger attack may find more)")
    masking = evaluation.get("audit") or {}
    if masking.get("unreliable"):
        measured.append("the gradient-masking audit flagged the evaluation as UNRELIABLE: "
                        + "; ".join(f["name"] for f in masking.get("flags") or []))
    if evaluation.get("corruptions"):
        measured.append(f"mean accuracy under common corruptions: "
                        f"{fmt_accuracy(evaluation['corruptions']['mean_corruption_accuracy'])}")
    else:
        unchecked.append("common corruptions (skipped with --no-corruptions)")
    weather = evaluation.get("weather")
    if weather:
        worst = min(((n, s, r) for n, w in weather["per_weather"].items() for s, r in w["per_severity"].items()),
                    key=lambda t: t[2]["accuracy"])
        measured.append(f"mean accuracy under driving weather and light: "
                        f"{fmt_accuracy(weather['mean_weather_accuracy'])}; worst {worst[0]} at severity "
                        f"{worst[1]}: {fmt_accuracy(worst[2])}")
    else:
        unchecked.append("driving weather and light: rain, snow, fog, sun flare, shadow, night (run with --weather)")
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
    safety = safety_lines(evaluation.get("safety"), evaluation.get("class_names"))
    if safety:  # the safety-critical classes lead (issue 15)
        statement = ["SAFETY-CRITICAL CLASSES:"] + [f"  - {s}" for s in safety] + statement
    return {"kind": "audit", "threat": evaluation["threat"],
            "provenance": {**result.provenance, **evaluation["protocol"]}, "safety": safety,
            "proven": proven, "measured": measured, "not_checked": unchecked, "statement": statement,
            "evaluation": evaluation, "certification": certificate, "certification_method": why}


def render_markdown(audit: Mapping, written: Mapping[str, Path], out: Path) -> str:
    """``audit.md``; ``written`` maps a name to the files of the underlying reports (PNGs are embedded,
    linked relative to ``out``, the audit's folder)."""
    evaluation, certificate = audit["evaluation"], audit["certification"]
    lines = [f"# Robustness audit: {threat_label(audit['threat'])}", ""]
    lines += safety_section(evaluation.get("safety"), evaluation.get("class_names"))  # leads when present
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
    lines += per_class_section(evaluation.get("per_class"), evaluation.get("class_names"))
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
    if evaluation.get("weather"):
        lines += ["## Driving weather and light", "",
                  f"- mean accuracy: {fmt_accuracy(evaluation['weather']['mean_weather_accuracy'])}"]
        for name, w in evaluation["weather"]["per_weather"].items():
            top = max(w["per_severity"], key=int)
            lines.append(f"  - {name}: mean {fmt_accuracy(w['mean'])}, severity {top} "
                         f"{fmt_accuracy(w['per_severity'][top])}")
        lines += ["", "Full table: `evaluation/report.md`.", ""]
    for name, path in written.items():
        if Path(path).suffix == ".png":
            lines += image(name, str(Path(path).relative_to(out)))
    prov = audit["provenance"]
    lines += ["## Provenance", "", f"- data: {prov.get('data')} (sha256 `{prov.get('data_sha256')}`)",
              f"- model: {(prov.get('model') or {}).get('architecture')}, trained with "
              f"{(prov.get('model') or {}).get('training')}"]
    lines += protocol_section({"protocol": evaluation["protocol"]})[2:]
    return "\n".join(lines).rstrip() + "\n"
