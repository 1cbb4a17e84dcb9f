"""Threat models: the set of allowed perturbations around an image in [0, 1].

``ThreatModel(norm, eps)`` is an L-inf or L2 ball of radius ``eps`` in pixel units
(images in [0, 1]), intersected with the image box [0, 1]. It provides the three
pieces of a projected-gradient attack (Madry et al. 2018, split as in
MadryLab/robustness): a random start inside the set, the steepest-ascent step for
the norm, and the projection back onto the set.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch is imported where a tensor is handled: parsing a threat needs none
    import torch

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
_NORM_ALIASES = {"linf": "linf", "l-inf": "linf", "inf": "linf", "l2": "l2", "2": "l2"}
_EPS_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$")


class Eps(float):
    """A perturbation budget written the way the field writes it: ``0.3``, ``8/255``.

    A float subclass, so it works wherever a float does. Registered with
    jsonargparse, so LightningCLI recipes accept ``eps: 8/255``.
    """

    def __new__(cls, value: Any) -> "Eps":
        return super().__new__(cls, parse_eps(value))

    def __repr__(self) -> str:
        frac = Fraction(float(self)).limit_denominator(1000)
        if frac.denominator in (255, 256) and abs(float(frac) - float(self)) < 1e-12:
            return f"{frac.numerator}/{frac.denominator}"
        return float.__repr__(self)


def parse_eps(value: Any, field: str = "eps") -> float:
    """Parse ``0.3``, ``"0.3"``, ``"8/255"`` into a float; the sign is not checked here."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a number or a fraction like '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _EPS_PATTERN.match(value)
        if match:
            num = float(match.group(1))
            den = float(match.group(2)) if match.group(2) is not None else 1.0
            if den == 0:
                raise ValueError(f"{field} {value!r} divides by zero")
            return num / den
        if value.strip().lstrip("-").lower() in ("nan", "inf", "infinity"):
            return float(value)
        if value.strip().startswith("-"):
            return -parse_eps(value.strip()[1:], field)
    raise ValueError(f"{field} must be a number or a fraction like '8/255', got {value!r}")


def parse_radius(value: Any, field: str = "radius", unit: str = "pixel units") -> float:
    """Parse a certification radius (an eps or an L2 radius): finite and >= 0. A radius of 0 is the
    clean point, a valid figure (certified accuracy at 0 is the smoothed or bounded classifier's accuracy)."""
    radius = parse_eps(value, field)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"{field} must be a finite number >= 0 ({unit}), got {value!r}")
    return radius


def positive_eps(value: Any, field: str = "eps") -> float:
    """Parse ``value`` and require a finite, strictly positive budget."""
    eps = parse_eps(value, field)
    if not math.isfinite(eps):
        raise ValueError(f"{field} must be finite, got {value!r}")
    if eps <= 0:
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return eps


def _register_with_jsonargparse() -> None:
    try:
        from jsonargparse.typing import register_type
    except ImportError:  # pragma: no cover - jsonargparse ships with lightning's CLI
        return
    try:
        register_type(Eps, serializer=float, deserializer=Eps)
    except ValueError:  # already registered (module reloaded)
        pass


_register_with_jsonargparse()


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    norms = t.flatten(1).norm(p=2, dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """An L-inf or L2 ball of radius ``eps`` (pixel units) intersected with [0, 1].

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: radius; a float or a string such as ``"8/255"``; must be finite and > 0.
    """

    norm: Norm
    eps: Eps

    def __post_init__(self) -> None:
        norm = self.norm
        if not isinstance(norm, str) or norm.lower() not in _NORM_ALIASES:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        object.__setattr__(self, "norm", _NORM_ALIASES[norm.lower()])
        object.__setattr__(self, "eps", Eps(positive_eps(self.eps, "eps")))

    @classmethod
    def coerce(cls, value: Any) -> "ThreatModel":
        """Accept a ThreatModel, a ``{norm, eps}`` mapping or a ``{class_path, init_args}`` spec."""
        if isinstance(value, ThreatModel):
            return value
        if isinstance(value, dict):
            args = value.get("init_args", value) if "class_path" in value else value
            unknown = set(args) - {"norm", "eps"}
            if unknown:
                raise ValueError(f"threat has unknown fields {sorted(unknown)}; expected norm and eps")
            if "norm" not in args or "eps" not in args:
                raise ValueError(f"threat needs both norm and eps, got {dict(args)}")
            return cls(args["norm"], args["eps"])
        raise ValueError(f"threat must be a ThreatModel or a {{norm, eps}} mapping, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The threat as every report writes it: ``{"kind": norm, "norm": norm, "eps": float, "eps_str": "8/255"}``.

        ``kind`` repeats the norm so that norm balls and the threats that are not one (patch, spatial,
        corruptions: a ``kind`` and their settings, no ``norm``) share one key; ``eps_str`` is the
        budget as written.
        """
        return {"kind": self.norm, "norm": self.norm, "eps": float(self.eps), "eps_str": repr(self.eps)}

    def _eps(self, eps: float | torch.Tensor | None) -> float | torch.Tensor:
        return float(self.eps) if eps is None else eps

    def box(self, x: torch.Tensor, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel bounds of the L-inf set ``[max(x-eps,0), min(x+eps,1)]``, computed once a batch."""
        e = self._eps(eps)
        return (x - e).clamp_(min=0.0), (x + e).clamp_(max=1.0)

    def random_start(
        self, x: torch.Tensor, eps: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A point drawn uniformly from the ball around ``x``, then clipped to [0, 1]."""
        import torch

        e = self._eps(eps)
        if self.norm == "linf":
            delta = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = delta.mul_(2.0).sub_(1.0).mul_(e)
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = direction / _flat_norm(direction).clamp_min(1e-12)
            d = x[0].numel()
            u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
            delta = direction * (u.pow(1.0 / d) * e)
        return (x + delta).clamp_(0.0, 1.0)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """Steepest ascent for the norm: ``sign(g)`` for L-inf, ``g / ||g||_2`` for L2."""
        if self.norm == "linf":
            return x_adv + step_size * grad.sign()
        return x_adv + step_size * grad / _flat_norm(grad).clamp_min(1e-12)

    def project(
        self,
        x_adv: torch.Tensor,
        x: torch.Tensor,
        eps: float | None = None,
        box: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Map ``x_adv`` into the ball around ``x`` intersected with [0, 1].

        For L-inf this is the exact projection (one clamp to ``box``, which callers
        precompute once per batch). For L2 the difference is rescaled onto the ball,
        then clipped to [0, 1]; clipping only shrinks the difference, so the result
        stays inside both sets.
        """
        if self.norm == "linf":
            lo, hi = box if box is not None else self.box(x, eps)
            return x_adv.minimum(hi).maximum(lo)
        e = self._eps(eps)
        delta = x_adv - x
        scale = (e / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * scale).clamp_(0.0, 1.0)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float | None = None, atol: float = 1e-6) -> torch.Tensor:
        """Per-example boolean: ``x_adv`` lies in the set (within ``atol``)."""
        e = self._eps(eps)
        delta = (x_adv - x).flatten(1)
        dist = delta.abs().amax(dim=1) if self.norm == "linf" else delta.norm(p=2, dim=1)
        in_box = (x_adv >= -atol).flatten(1).all(1) & (x_adv <= 1 + atol).flatten(1).all(1)
        return (dist <= e + atol) & in_box

    def __str__(self) -> str:
        return f"{'Linf' if self.norm == 'linf' else 'L2'}(eps={self.eps!r})"
