"""Empirical robustness evaluation: attacks, audit, corruptions, physical threats, reports.

``evaluate(model, data, threat, attacks=("autoattack",), ...) -> RobustnessReport`` is the
entry point; ``robust evaluate`` is its command line.
"""

from robust.base.state import StateError
from robust.base.stats import accuracy_record, clopper_pearson
from robust.evaluation.core import evaluate, summarise_threat
from robust.evaluation.results import RobustnessReport

__all__ = ["RobustnessReport", "accuracy_record", "clopper_pearson", "evaluate",
           "StateError", "summarise_threat"]
