"""The audit of one model on one data set, as a library function: the empirical evaluation, the
certificate that applies and the common corruptions, on the same examples with one seed.

``audit(model, (x, y), threat, method)`` returns an :class:`Audit`;
:func:`robust.reports.audit.audit_document` states it as proven / measured / not checked, and
``robust audit`` writes that document with the underlying reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robust.base.batching import collect
from robust.base.runtime import model_device
from robust.base.state import fingerprint
from robust.base.threat import ThreatModel
from robust.evaluation.results import RobustnessReport

__all__ = ["Audit", "audit", "choose_certificate"]


@dataclass
class Audit:
    """What an audit measured: the evaluation (gradient-masking audit included, the corruptions
    unless skipped, the weather group when asked), the certification report or ``None``, the
    certificate's method and why it applies (or why none does), and the provenance every part carries."""

    evaluation: RobustnessReport
    certification: dict[str, Any] | None
    certification_method: str
    provenance: dict[str, Any]


def choose_certificate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: Any = None,
                       *, smoothing_n: int = 10_000, batch_size: int = 128, seed: int = 0, progress: bool = True,
                       checkpoint: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """The certification report that applies to ``model``, and why; ``(None, reason)`` when none does.

    A model trained with noise (``method.sigma``) gets randomized smoothing; otherwise, under L-inf,
    CROWN ∩ IBP with an attack falsifying what is not proven where CROWN supports the graph, IBP
    alone where only IBP does. ``batch_size`` (at most 128) is the bound methods'.
    """
    from robust.certify import report as certification
    from robust.certify.crown import crown_margins
    from robust.certify.ibp import UnsupportedLayerError, elided_bounds

    sigma = getattr(method, "sigma", None)
    if sigma is not None:
        return certification.smoothing_report(
            model, (x, y), sigma, n=smoothing_n, batch_size=10_000 if model_device(model).type == "cuda" else 1000,
            radii=[r * sigma for r in (0.0, 0.5, 1.0, 1.5, 2.0)], seed=seed, progress=progress,
            checkpoint=checkpoint), f"randomized smoothing (the model was trained with noise, sigma {sigma:g})"
    if threat.norm != "linf":
        return None, ("no certificate: interval and CROWN bounds certify L-inf balls, and this deterministic model "
                      "has no randomized-smoothing certificate (train it with GaussianNoise for L2 certificates)")
    device = model_device(model)
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
                                               batch_size=min(batch_size, 128), seed=seed, progress=progress,
                                               checkpoint=checkpoint)
    return report, why


def audit(model: nn.Module, data: Any, threat: ThreatModel | Mapping, method: Any = None, *,
          attacks: Sequence[str] = ("autoattack",), attack_options: dict[str, dict[str, Any]] | None = None,
          n_examples: int | None = None, corruptions: bool = True, weather: bool = False,
          smoothing_n: int = 10_000, batch_size: int = 256,
          seed: int = 0, progress: bool = True, checkpoint: str | None = None,
          provenance: Mapping[str, Any] | None = None, class_metadata: Any = None, harm: Any = None,
          targeted: Sequence[tuple[int, Sequence[int]]] | None = None, targeted_steps: int = 100) -> Audit:
    """Audit ``model`` on ``data`` (``(x, y)`` or a loader; its first ``n_examples``) under ``threat``.

    With ``class_metadata`` (:func:`robust.base.classes.class_metadata`), a ``harm`` matrix or ``targeted``
    ``(source, targets)`` pairs (``None``: the metadata's default, stop -> speed limits on GTSRB), the
    evaluation gets a safety view (:func:`robust.evaluation.safety.safety_view`) with the targeted APGD-T
    success rates and, where a certificate applies, each safety class's certified accuracy.

    ``method`` is the training method (a noise-trained model's ``sigma`` selects randomized
    smoothing); ``attacks``/``attack_options`` are :func:`robust.evaluation.evaluate`'s;
    ``provenance`` (e.g. the data's description, the model's source) joins the data's fingerprint
    in every part. A verification report is checked against the evaluation's attacks per example.
    """
    from robust.certify.report import compare_with_evaluation
    from robust.evaluation.core import evaluate
    from robust.evaluation.corruptions import evaluate_corruptions
    from robust.evaluation.safety import add_certified, default_targeted, safety_view, targeted_success

    threat = ThreatModel.coerce(threat)
    x, y = collect(data, n_examples)
    provenance = {**(provenance or {}), "data_sha256": fingerprint(x, y.to(torch.int64))}
    evaluation = evaluate(model, (x, y), threat, list(attacks), batch_size=batch_size, seed=seed, audit=True,
                          attack_options=attack_options, checkpoint=checkpoint, progress=progress)
    evaluation.protocol.update(provenance)
    if corruptions:
        evaluation.corruptions = evaluate_corruptions(model, (x, y), batch_size=batch_size, seed=seed,
                                                      progress=progress)
    if weather:  # driving weather and light, a group apart from the corruptions
        from robust.evaluation.weather import evaluate_weather

        evaluation.weather = evaluate_weather(model, (x, y), batch_size=batch_size, seed=seed, progress=progress)
    certificate, why = choose_certificate(model, x, y, threat, method, smoothing_n=smoothing_n, batch_size=batch_size,
                                          seed=seed, progress=progress, checkpoint=checkpoint)
    if certificate is not None:
        certificate["protocol"].update(provenance)
        if certificate["method"] != "smoothing":  # the evaluation's attacks also falsify, per example
            compare_with_evaluation(certificate, evaluation.to_dict())
    pairs = default_targeted(class_metadata) if targeted is None else list(targeted)
    if class_metadata is not None or harm is not None or pairs:
        results = [targeted_success(model, x, y, source, targets, threat, steps=targeted_steps, batch_size=batch_size,
                                    seed=seed, progress=progress) for source, targets in pairs]
        evaluation.safety = safety_view(evaluation, harm, class_metadata, targeted=results)
        if certificate is not None:
            add_certified(evaluation.safety, certificate,
                          radius=float(threat.eps) if certificate["method"] == "smoothing" and threat.norm == "l2"
                          else None)
    return Audit(evaluation, certificate, why, provenance)
