"""What the classes of a data set mean: their names, their groups and which ones are safety-critical.

Reports, the audit and the harm matrix read this to say "stop" instead of "class 14" and to lead
with the classes whose errors are most dangerous. The registry follows the models' pattern:
``register_class_metadata(name)`` as a decorator on a function that returns the metadata, and one
contract test over every entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_REGISTRY: dict[str, Callable[[], ClassMetadata]] = {}


@dataclass(frozen=True)
class ClassMetadata:
    """Names of ``len(names)`` classes, named groups of class ids and the safety-critical classes.

    ``groups`` partition some or all classes (a class is in at most one group); ``safety`` lists the
    classes whose errors are most dangerous, in the order reports show them.
    """

    names: tuple[str, ...]
    groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    safety: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        if n < 2:
            raise ValueError(f"class metadata needs at least 2 class names, got {n}")
        seen: dict[int, str] = {}
        for group, ids in self.groups.items():
            for i in ids:
                if not 0 <= i < n:
                    raise ValueError(f"group {group!r}: class {i} is not in 0..{n - 1}")
                if i in seen:
                    raise ValueError(f"class {i} is in groups {seen[i]!r} and {group!r}")
                seen[i] = group
        bad = [i for i in self.safety if not 0 <= i < n]
        if bad or len(set(self.safety)) != len(self.safety):
            raise ValueError(f"safety classes must be distinct ids in 0..{n - 1}, got {list(self.safety)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        """The name of class ``i``."""
        return self.names[i]

    def group_of(self, i: int) -> str | None:
        """The group class ``i`` belongs to, or ``None``."""
        return next((g for g, ids in self.groups.items() if i in ids), None)

    def index(self, name: str) -> int:
        """The id of the class called ``name`` (case-insensitive); a ``ValueError`` names unknown names."""
        lowered = [n.lower() for n in self.names]
        if name.lower() not in lowered:
            raise ValueError(f"no class named {name!r}")
        return lowered.index(name.lower())


def register_class_metadata(dataset: str) -> Callable[[Callable[[], ClassMetadata]], Callable[[], ClassMetadata]]:
    """Decorator: ``class_metadata(dataset)`` returns what the decorated function returns."""

    def decorator(fn: Callable[[], ClassMetadata]) -> Callable[[], ClassMetadata]:
        if dataset in _REGISTRY:
            raise ValueError(f"class metadata for {dataset!r} is registered twice")
        _REGISTRY[dataset] = fn
        return fn

    return decorator


def class_metadata(dataset: str | None) -> ClassMetadata | None:
    """The metadata registered for ``dataset`` (case-insensitive; ``-`` reads as ``_``), else ``None``."""
    if not dataset:
        return None
    fn = _REGISTRY.get(dataset.lower().replace("-", "_"))
    return None if fn is None else fn()


def list_class_metadata() -> list[str]:
    """Data sets with registered class metadata."""
    return sorted(_REGISTRY)


GTSRB_NAMES = (
    "speed limit 20", "speed limit 30", "speed limit 50", "speed limit 60", "speed limit 70",
    "speed limit 80", "end of speed limit 80", "speed limit 100", "speed limit 120", "no passing",
    "no passing for trucks", "right-of-way at next intersection", "priority road", "yield", "stop",
    "no vehicles", "trucks prohibited", "no entry", "general caution", "dangerous curve left",
    "dangerous curve right", "double curve", "bumpy road", "slippery road", "road narrows on the right",
    "road work", "traffic signals", "pedestrians", "children crossing", "bicycles crossing",
    "beware of ice/snow", "wild animals crossing", "end of all limits", "turn right ahead", "turn left ahead",
    "ahead only", "go straight or right", "go straight or left", "keep right", "keep left",
    "roundabout", "end of no passing", "end of no passing for trucks",
)
"""The official GTSRB ClassIds 0..42 (Stallkamp et al. 2012), in short English names."""

GTSRB_SPEED_LIMITS = (0, 1, 2, 3, 4, 5, 7, 8)
"""20, 30, 50, 60, 70, 80, 100 and 120 km/h."""


@register_class_metadata("gtsrb")
def gtsrb() -> ClassMetadata:
    """GTSRB's 43 classes in the benchmark's own categories (speed limits, other prohibitory, derestriction,
    mandatory, danger, and the four unique signs). Safety-critical: the signs that make a car stop or give
    way (stop, yield, no entry, priority road), vulnerable road users (pedestrians, children) and the
    speed limits, the confusions behind the physical attacks of Eykholt et al. 2018."""
    return ClassMetadata(
        names=GTSRB_NAMES,
        groups={
            "speed_limit": GTSRB_SPEED_LIMITS,
            "prohibitory": (9, 10, 15, 16),
            "derestriction": (6, 32, 41, 42),
            "mandatory": (33, 34, 35, 36, 37, 38, 39, 40),
            "danger": (11, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31),
            "priority": (12, 13, 14, 17),
        },
        safety=(14, 13, 17, 12, 27, 28, 11, *GTSRB_SPEED_LIMITS),
    )
