"""The floor plan: imports point down the layers, no private name crosses a file, no cycles, and the
light entry points (``robust --help``, the leaderboard, the training objectives) stay light.

Every module under ``robust/`` is parsed with ``ast``, imports inside functions included, and
``importlib.import_module("robust...")`` calls with a literal name count as imports too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "robust"

# The layers, bottom to top; a module may import its own layer and the ones below it. Within the
# middle layer the packages have an order of their own (below).
BASE = {"robust.base"}
TORCH_LAYER = ["robust.models", "robust.attacks", "robust.methods", "robust.certify", "robust.evaluation",
               "robust.deploy"]
REPORTS = {"robust.reports"}
LEADERBOARD = {"robust.leaderboard"}
LIGHTNING = {"robust.data", "robust.module", "robust.callbacks", "robust.tracking"}
FACE = {"robust.cli"}
PUBLIC_ALIASES = {"robust.threat"}  # public names kept at the root (re-exports of robust.base)

# Which middle-layer package may import which (a package may always import itself and robust.base).
MIDDLE_ALLOWED = {
    "robust.models": set(),
    "robust.attacks": set(),
    "robust.methods": {"robust.attacks", "robust.certify", "robust.models"},
    "robust.certify": {"robust.models", "robust.attacks"},
    "robust.evaluation": {"robust.attacks", "robust.certify", "robust.models"},
    "robust.deploy": {"robust.attacks", "robust.evaluation"},
}
LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning", "lightning_fabric")


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer(module: str) -> int:
    pkg = package_of(module)
    if pkg in BASE or pkg in PUBLIC_ALIASES or module == "robust":
        return 0
    if pkg in TORCH_LAYER:
        return 1
    if pkg in REPORTS or pkg in LEADERBOARD:
        return 2
    if pkg in LIGHTNING:
        return 3
    if pkg in FACE:
        return 4
    raise AssertionError(f"{module}: not in any layer of the floor plan (add it to tests/test_architecture.py)")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found += [(source, alias.name, node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, None, node.lineno))
    return found


def internal_edges() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for source, imported, _ in imports(name, path):
            if not source.startswith("robust"):
                continue
            target = f"{source}.{imported}" if imported and f"{source}.{imported}" in mods else source
            if target in mods and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_layer():
    for name in modules():
        layer(name)


def test_no_private_name_crosses_a_file():
    mods = modules()
    bad = []
    for name, path in mods.items():
        for source, imported, line in imports(name, path):
            if not source.startswith("robust") or imported is None:
                continue
            if imported.startswith("_") and f"{source}.{imported}" not in mods and source != name:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {source}.{imported}")
    assert not bad, "private names imported across files:\n" + "\n".join(bad)


def test_imports_point_down_the_layers():
    mods = modules()
    bad = []
    for name, path in mods.items():
        here = layer(name)
        for source, imported, line in imports(name, path):
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if source.split(".")[0] in LIGHTNING_PACKAGES and here < 3:
                bad.append(f"{where}: Lightning imported below the Lightning layer ({source})")
            if not source.startswith("robust") or source == "robust":
                continue
            target = f"{source}.{imported}" if imported and f"{source}.{imported}" in mods else source
            there = layer(target)
            if package_of(target) in FACE and package_of(name) not in FACE:
                bad.append(f"{where}: {name} imports the command line ({target})")
            elif there > here:
                bad.append(f"{where}: {name} (layer {here}) imports {target} (layer {there}) above it")
            elif here == there == 1 and package_of(target) != package_of(name):
                if package_of(target) not in MIDDLE_ALLOWED[package_of(name)]:
                    bad.append(f"{where}: {package_of(name)} may not import {package_of(target)}")
            elif here == there == 2 and package_of(target) != package_of(name) and package_of(name) in REPORTS:
                bad.append(f"{where}: reports may not import the leaderboard ({target})")
            if package_of(target) in PUBLIC_ALIASES:
                bad.append(f"{where}: inside the package, import {target} from robust.base")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    assert cycles(internal_edges()) == []


def graph_figures() -> dict[str, int]:
    edges = internal_edges()
    return {"modules": len(edges), "edges": sum(len(v) for v in edges.values()), "cycles": len(cycles(edges))}


def loaded_modules(code: str) -> set[str]:
    """The top-level packages ``code`` leaves in ``sys.modules``, run in a fresh interpreter."""
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["robust.methods", "robust.leaderboard"])
def test_training_objectives_and_leaderboard_do_not_load_torchattacks(module):
    assert "torchattacks" not in loaded_modules(f"import {module}")


def test_help_and_leaderboard_commands_import_no_torch(tmp_path):
    board = tmp_path / "board.db"
    calls = [["--help"], ["leaderboard", "--help"], ["leaderboard", "show", "--db", str(board)],
             ["leaderboard", "export", "--format", "md", "--db", str(board), "--out", str(tmp_path / "b.md")]]
    calls += [[command, "--help"] for command in ("evaluate", "certify", "audit", "export", "quickstart")]
    for argv in calls:
        loaded = loaded_modules(
            "from robust.cli import main\n"
            "import contextlib, io\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass")
        assert "torch" not in loaded, f"robust {' '.join(argv)} imported torch"
        assert "lightning" not in loaded, f"robust {' '.join(argv)} imported lightning"
