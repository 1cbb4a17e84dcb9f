"""``robust leaderboard add|show|export``: the robustness leaderboard.

Examples::

    robust leaderboard add runs/evaluate/report.json --name "CNN-medium PGD"
    robust leaderboard add model_info/cifar10/Linf/Gowal2020Uncovering_28_10_extra.json
    robust leaderboard show --dataset cifar10
    robust leaderboard export --format html --out runs/leaderboard.html

The board lives in ``runs/leaderboard.db`` (SQLite) unless ``--db`` or ``$ROBUST_LEADERBOARD``
names another file or a SQLAlchemy URL (``postgresql+psycopg://user:pw@host/db``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from robust.cli.options import ArgumentParser
from robust.leaderboard.entry import THREATS, EntryError
from robust.leaderboard.text import plain


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="robust leaderboard", description="The robustness leaderboard: add reports or "
                       "RobustBench records, show ranked boards, export them.")
    p.add_argument("--db", help="SQLite file or SQLAlchemy URL (default: $ROBUST_LEADERBOARD or runs/leaderboard.db)")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a robust evaluate/certify report.json, a RobustBench model_info JSON or a "
                                     "robust leaderboard JSON export")
    add.add_argument("files", nargs="+")
    add.add_argument("--name", help="model name on the board (default: from the report)")
    add.add_argument("--threat", choices=THREATS, help="for RobustBench records outside model_info/<ds>/<threat>/")
    add.add_argument("--n-examples", type=int, help="for RobustBench records: the test-set size they were measured on")
    add.add_argument("--external", type=float, help="a lower robust accuracy (a fraction in [0, 1], at most the "
                     "attack protocol's robust accuracy) from an adaptive attack")
    add.add_argument("--recipe", help="the recipe the model was trained with")
    add.add_argument("--wandb-run", help="the wandb run path of the training or evaluation")
    show = sub.add_parser("show", help="print the ranked boards")
    show.add_argument("--dataset")
    show.add_argument("--threat", choices=THREATS)
    export = sub.add_parser("export", help="write the boards as md, csv, json or one self-contained html page")
    export.add_argument("--format", choices=("md", "csv", "json", "html"), default="html")
    export.add_argument("--out", help="file to write (default: runs/leaderboard.<format>)")
    export.add_argument("--dataset")
    export.add_argument("--threat", choices=THREATS)
    export.add_argument("--title", default="robust leaderboard")
    return p


def load_entries(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Entries from one file: our report, a RobustBench record or a leaderboard JSON export, each
    validated whole (:func:`robust.leaderboard.entry.validate`)."""
    from robust.leaderboard.entry import from_report, validate
    from robust.leaderboard.formats import read_json
    from robust.leaderboard.robustbench import read_robustbench

    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path.resolve()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EntryError(f"{path}: not a JSON file ({getattr(err, 'msg', err)})") from None
    if isinstance(data, dict) and data.get("format") == "robust-leaderboard":
        if not isinstance(data.get("entries"), list):
            raise EntryError(f"{path}: a leaderboard export needs an 'entries' list")
        if args.external is not None:
            raise EntryError(f"--external: give it with one report or RobustBench record, not a leaderboard export "
                             f"({path})")
        entries = []
        for i, entry in enumerate(read_json(path)):
            try:
                entries.append(validate(entry))
            except EntryError as err:
                raise EntryError(f"{path}: entries[{i}]: {err}") from None
        return entries
    if isinstance(data, dict) and ("autoattack_acc" in data or "corruptions_acc" in data):
        entry = read_robustbench(path, args.threat, args.n_examples)
        if args.external is not None:
            entry = validate({**entry, "external": args.external})
        return [entry]
    if isinstance(data, dict) and "clean" in data and "threat" in data:
        training = {"recipe": args.recipe} if args.recipe else None
        entry = from_report(data, name=args.name, external=args.external, wandb_run=args.wandb_run)
        if training:
            entry["training"] = {**entry["training"], **training}
        return [entry]
    raise EntryError(f"{path}: neither a robust report, a RobustBench model_info record nor a leaderboard export")


def _warn(message: str) -> None:
    print(f"robust: warning: {plain(message)}", file=sys.stderr)


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from robust.leaderboard.store import Store

    if args.action == "add":
        if args.external is not None and len(args.files) > 1:
            raise EntryError("--external: an adaptive attack's number belongs to one model; give one file with it")
        batches = []
        for file in args.files:  # validate every file before opening the store or adding any
            try:
                batches.append((file, load_entries(Path(file), args)))
            except EntryError as err:
                raise EntryError(f"{file}: {err}" if not str(err).startswith(file) else str(err)) from None
        store = Store(args.db)
        for file, entries in batches:
            for entry_id, added in store.add_many(entries):
                print(f"{'added' if added else 'already on the board'}: {entry_id} ({file})")
        print(f"{len(store)} entries in {store.url}")
        return 0
    store = Store(args.db)
    entries = store.entries(args.dataset, args.threat, warn=_warn)
    if args.action == "show":
        _print_boards(entries)
        return 0
    from robust.leaderboard.formats import write

    out = Path(args.out or f"runs/leaderboard.{args.format}")
    try:
        write(entries, args.format, out, title=args.title)
    except OSError as err:
        raise EntryError(f"--out {out}: cannot be written ({err.strerror or err}); nothing was changed") from None
    print(f"{len(entries)} entries written to {out}")
    return 0


def _print_boards(entries: list[dict[str, Any]]) -> None:
    """The ranked boards on the terminal; every field from an entry passes :func:`plain` first."""
    from robust.leaderboard.ranking import boards

    if not entries:
        print("the board is empty: add a report with `robust leaderboard add report.json`")
        return
    for board in boards(entries):
        print(f"\n{plain(board['title'])}")
        metric = "robust" if board["kind"] == "empirical" else "certified"
        print(f"  {'rank':>5}  {'model':<32} {metric + ' [95% CI]':<26} {'clean':>7}")
        for row in board["rows"]:
            rank = "  -  " if row["rank"] is None else (f"={row['rank']}" if row["tied"] else str(row["rank"]))
            ci = row["ci95"]
            value = f"{100 * row['value']:.2f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
            note = "  UNRELIABLE: " + "; ".join(plain(r) for r in row["reasons"]) if row["unreliable"] else (
                "  (external)" if row["external"] else "")
            print(f"  {rank:>5}  {plain(row['name'])[:32]:<32} {value:<26} {100 * row['clean']:6.2f}%{note}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
