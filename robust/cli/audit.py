"""``robust audit``: one document for a safety reviewer about one checkpoint on one data set.

Runs, on the same examples and with one seed:

1. the empirical evaluation (AutoAttack under the RobustBench protocol with the
   gradient-masking audit, per-class figures) at the checkpoint's threat model;
2. the certification that applies to the model: randomized smoothing for a noise-trained model,
   CROWN ∩ IBP (with an attack falsifying what is not proven) for a feed-forward ReLU network
   under L-inf, IBP alone for other graphs whose layers it supports; otherwise it says why no
   certificate could be computed;
3. common corruptions (15 types x 5 severities), and with ``--weather`` driving weather and light
   (rain, snow, fog, sun flare, shadow, night x 5 severities, a separate group);

and writes ``audit.json`` and ``audit.md`` (what is *proven*, what is only *measured*, what
could *not be checked*, full provenance) with the underlying reports and plots in
``evaluation/`` and ``certification/``, plus its leaderboard entry (``entry.json``; added to a
board with ``--leaderboard``). The measuring is :func:`robust.evaluation.audit.audit`, the document
:func:`robust.reports.audit.audit_document`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robust.cli.evaluate import add_safety_arguments, safety_plan
from robust.cli.options import (
    ArgumentParser, UsageError, add_run_arguments, add_source_arguments, add_threat_arguments, check_run_arguments,
    describe_model, json_arg, load_source, parse_args, resolve_threat, wandb_run)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="robust audit", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    add_threat_arguments(p, "default: the checkpoint's threat model", "default: the checkpoint's")
    p.add_argument("--attacks", default="autoattack", help="comma-separated registry attacks")
    p.add_argument("--attack-options", default="{}", help="JSON overrides per attack")
    p.add_argument("--smoothing-n", type=int, default=10_000, help="Monte Carlo samples per smoothing certificate")
    p.add_argument("--no-corruptions", action="store_true")
    p.add_argument("--weather", action="store_true",
                   help="also measure driving weather and light (rain, snow, fog, flare, shadow, night) x 5 severities")
    add_safety_arguments(p)
    add_run_arguments(p, "audit", "runs/audit", fresh=False)
    p.add_argument("--name", help="model name for the leaderboard entry")
    p.add_argument("--leaderboard", help="also add the entry to this board (SQLite file or SQLAlchemy URL)")
    return p


def run(argv: list[str]) -> int:
    args = parse_args(parser(), argv)
    from robust.base.distributed import launched

    if launched():  # every process would run the whole audit and write the same files
        raise UsageError("robust audit runs in one process: start it without torchrun "
                         "(robust evaluate and robust certify share their work across torchrun's processes)")
    from robust.attacks.registry import check_attack_options, check_attacks
    from robust.evaluation.audit import audit
    from robust.leaderboard.entry import from_report
    from robust.reports.audit import audit_document, render_markdown
    from robust.reports.certification import log_certification, write_certification
    from robust.reports.evaluation import log_to_wandb, write_report
    from robust.reports.files import write_json, write_staged

    attacks = check_attacks([a.strip() for a in args.attacks.split(",") if a.strip()], "--attacks")
    if not attacks:
        raise UsageError("--attacks must name at least one attack")
    options = check_attack_options(attacks, json_arg(args.attack_options, "--attack-options"), "--attack-options")
    x, y, data_desc, model, ckpt_threat, method = load_source(args)
    device = check_run_arguments(args)
    threat = resolve_threat(args, ckpt_threat)
    plan = safety_plan(args, model, x) or {}  # a bad --harm/--targeted is refused before any attack
    model = model.to(device).eval()
    out = Path(args.out)
    print(f"auditing {args.checkpoint or args.model} on {data_desc}: {min(args.n_examples or len(y), len(y))} images, "
          f"{threat.norm} eps {threat.eps!r}", file=sys.stderr)
    result = audit(model, (x, y), threat, method, attacks=attacks, attack_options=options, n_examples=args.n_examples,
                   corruptions=not args.no_corruptions, weather=args.weather, smoothing_n=args.smoothing_n,
                   batch_size=args.batch_size,
                   seed=args.seed, progress=not args.no_progress, checkpoint=args.checkpoint,
                   provenance={"data": data_desc, **describe_model(args, model, method)},
                   class_metadata=plan.get("metadata"), harm=plan.get("harm"), targeted=plan.get("pairs", []),
                   targeted_steps=args.targeted_steps)
    certificate = result.certification
    with wandb_run(args, out, "audit", result.evaluation.protocol) as run_:
        evaluation = result.evaluation.to_dict()
        written = write_report(evaluation, out / "evaluation", examples=result.evaluation.examples)
        if certificate is not None:
            written.update({f"certification_{k}": v
                            for k, v in write_certification(certificate, out / "certification").items()})
        document = audit_document(result)
        entry = from_report(evaluation, name=args.name)
        if certificate is not None:
            entry["certified"] = from_report(certificate)["certified"]
        document["leaderboard_entry"] = entry

        def render(stage: Path) -> dict[str, Path]:
            (stage / "audit.md").write_text(render_markdown(document, written, out), encoding="utf-8")
            return {"entry": write_json(entry, stage / "entry.json"), "markdown": stage / "audit.md",
                    "json": write_json(document, stage / "audit.json")}

        files = write_staged(out, render)
        if run_ is not None:
            log_to_wandb(evaluation, run_, images={k: v for k, v in written.items() if "certification" not in k})
            if certificate is not None:
                log_certification(certificate, run_, images={k: v for k, v in written.items() if "certification" in k})
    if args.leaderboard:
        from robust.leaderboard.store import Store

        entry_id, added = Store(args.leaderboard).add(entry)
        print(f"leaderboard: {'added' if added else 'already there'} {entry_id} in {args.leaderboard}")
    for line in document["statement"]:
        print(line)
    print("written: " + ", ".join(str(p) for p in files.values()))
    return 0
