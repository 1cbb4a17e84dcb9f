"""Empirical robustness evaluation: attacks, audit, corruptions, physical threats, reports.

``evaluate(model, data, threat, attacks=("autoattack",), ...) -> RobustnessReport`` is the
entry point; ``robust evaluate`` is its command line.
"""

from robust.evaluation.core import EvaluationStateError, RobustnessReport, evaluate, summarise_threat
from robust.evaluation.stats import accuracy_record, clopper_pearson

__all__ = ["EvaluationStateError", "RobustnessReport", "accuracy_record", "clopper_pearson", "evaluate",
           "summarise_threat"]
