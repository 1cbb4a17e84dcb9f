"""Confidence intervals for accuracies measured on a finite sample."""

from __future__ import annotations

from scipy.stats import binomtest


def clopper_pearson(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial (Clopper-Pearson) interval for an accuracy of ``correct / n``."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def accuracy_record(correct: int, n: int) -> dict:
    """``{"accuracy", "correct", "n", "ci95"}``: an accuracy never travels without its sample size."""
    return {"accuracy": correct / n if n else 0.0, "correct": int(correct), "n": int(n),
            "ci95": list(clopper_pearson(correct, n))}
