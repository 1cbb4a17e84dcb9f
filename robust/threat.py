"""The public name of the threat model (``robust.threat.ThreatModel``); it lives in :mod:`robust.base.threat`."""

from robust.base.threat import NORMS, Eps, ThreatModel, parse_eps, positive_eps

__all__ = ["NORMS", "Eps", "ThreatModel", "parse_eps", "positive_eps"]
