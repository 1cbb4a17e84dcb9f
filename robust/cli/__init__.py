"""The ``robust`` command.

``robust fit|validate|test --config recipes/...yaml`` run LightningCLI on
:class:`robust.module.RobustClassifier` and any ``robust.data`` module;
``robust quickstart`` trains and measures a PGD model on the embedded digits data.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from robust.base.errors import InputError
from robust.cli.options import ArgumentParser

__all__ = ["ArgumentParser", "COMMANDS", "LIGHTNING_COMMANDS", "USAGE", "main"]

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
COMMANDS = {  # command -> "module:function(argv)", imported on use
    "evaluate": "robust.cli.evaluate:run", "certify": "robust.cli.certify:run", "audit": "robust.cli.audit:run",
    "export": "robust.cli.export:run", "leaderboard": "robust.cli.leaderboard:run",
    "quickstart": "robust.cli.quickstart:main",
}
USAGE = """usage: robust <command> [options]

Harden PyTorch image classifiers against adversarial perturbations and measure how robust they are.

commands:
  quickstart   train PGD and standard models on the embedded digits data and measure them
               under torchattacks' PGD-50 on the held-out test split (no download needed)
  fit          train from a recipe:         robust fit --config recipes/digits/pgd_cnnmedium.yaml
               (--no-wandb: without the recipe's wandb logger; --wandb-project NAME: its project)
  validate     validate a checkpoint:       robust validate --config RECIPE --ckpt_path CKPT
  test         test a checkpoint:           robust test --config RECIPE --ckpt_path CKPT
  evaluate     measure a checkpoint (AutoAttack, RobustBench protocol, gradient-masking audit,
               eps sweep, corruptions, patch, spatial): robust evaluate --checkpoint CKPT --data digits
  certify      certify a checkpoint: randomized smoothing (L2), or IBP / CROWN bounds (L-inf) with an
               attack for what they cannot prove:  robust certify --method crown --checkpoint CKPT --data digits
  audit        one report for a reviewer: AutoAttack + gradient-masking audit, the certificate that
               applies, corruptions, provenance, leaderboard entry: robust audit --checkpoint CKPT --data digits
  export       ONNX and TorchScript files of a checkpoint, checked against it (predictions and
               robust accuracy on the same adversarial examples): robust export --checkpoint CKPT --data digits
  leaderboard  add reports or RobustBench records, show ranked boards, export md/csv/json/html:
               robust leaderboard add runs/evaluate/report.json; robust leaderboard export --format html

Run `robust <command> --help` for the options of a command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robust`` command; bad input ends with one line and exit status 2."""
    try:
        return _main(argv)
    except Exception as exc:
        code = _report(exc)
        if code is None:
            raise
        return code


def _report(exc: Exception) -> int | None:
    """Print ``robust: error: ...`` for an error the user can act on and return the exit status;
    ``None`` for anything else (a bug: its traceback is the useful report)."""
    if isinstance(exc, (FileNotFoundError, InputError)):
        message, code = _one_line(str(exc)), 2
    elif isinstance(exc, (ValueError, argparse.ArgumentError)):  # jsonargparse's parse errors are ArgumentErrors
        message, code = _first_reason(str(exc)), 2
    elif isinstance(exc, (IsADirectoryError, NotADirectoryError, PermissionError)):
        message, code = f"{exc.strerror}: {exc.filename}", 2
    elif isinstance(exc, FloatingPointError):  # training diverged: not bad input, but one line all the same
        message, code = _one_line(str(exc)), 1
    else:
        return None
    print(f"robust: error: {message}", file=sys.stderr)
    return code


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.strip().splitlines() if part.strip()) or "failed"


def _first_reason(message: str) -> str:
    """The most specific reason in a (nested) jsonargparse error, on one line, after the keys that lead to it.

    jsonargparse nests ``Parser key "k":`` and ``Problem with given class_path ...:`` headers and
    lists one ``- reason`` per type of a union; the last concrete line that is not about ``None``
    names the problem.
    """
    from robust.base.spec import CONFIG_PREFIXES

    denied = re.search(r"Importing '([^']+)' is not allowed", message)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    keys: list[str] = []
    reason = lines[0] if lines else "invalid input"
    for line in lines:
        text = line[2:] if line.startswith("- ") else line
        key = re.match(r'Parser key "([^"]+)":\s*(.*)$', text)
        if key:
            if not keys or keys[-1] != key.group(1):
                keys.append(key.group(1))
            text = key.group(2)
        if (not text or text.endswith(":") or "NoneType" in text
                or text.startswith(("Does not validate against", "Subtypes:", "Errors:", "Given value"))):
            continue
        reason = text
        if denied:
            break
    if denied:
        reason = (f"class_path {denied.group(1)!r} is outside the allowlist "
                  f"({', '.join(p + '*' for p in CONFIG_PREFIXES)}); refusing to import it")
    where = ": ".join(keys)
    return f"{where}: {reason}" if where and not reason.startswith("Parser key") else reason


def _main(argv: Sequence[str] | None) -> int:
    from_python = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command in LIGHTNING_COMMANDS:
        if "--no-wandb" in argv:  # the recipes' WandbLogger off for this run
            argv = [a for a in argv if a != "--no-wandb"] + ["--trainer.logger", "false"]
            from_python = True
        if "--wandb-project" in argv[:-1]:  # shorthand for the recipes' logger's project
            i = argv.index("--wandb-project")
            argv = argv[:i] + ["--trainer.logger.init_args.project", argv[i + 1]] + argv[i + 2:]
            from_python = True
        from robust.cli.lightning import build_cli

        build_cli(argv if from_python else None)
        return 0
    if command in COMMANDS:
        module, function = COMMANDS[command].split(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    print(f"robust: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
