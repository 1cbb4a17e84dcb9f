"""Reproduce the GTSRB story on a CPU: harden, measure, certify, audit, rank, on real traffic signs.

Data: the official GTSRB training set (39,209 images; 10% of every class's tracks held out for the
track-level sticker evaluation, validation split off by whole tracks) and the official final test set
(12,630 images), from an offline copy (``--root``, default ``../shared/data/gtsrb``: ``train.npz`` and
``test.npz``). Every figure carries its 95% Clopper-Pearson interval and the number it was measured on.

Stages (each writes ``<out>/stages/<stage>.json``; a finished stage is skipped when the command is run
again, so an interrupted run resumes; ``--fresh`` redoes everything):

1. ``train``: the hardened CPU recipe (``recipes/gtsrb/fgsm_cnn4_cpu.yaml``), its standard-trained twin
   (``standard_cnn4_cpu.yaml``) and the masked-trained model for PatchCleanser (``masked_cnn4_cpu.yaml``),
   with the training time of each;
2. ``evaluate`` (both models): clean accuracy on the full test set; APGD-CE then APGD-T (100 steps, 9 target
   classes, RobustBench settings, torchattacks) at L-inf 8/255 on the first ``--n-apgd`` test images; the full
   AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5,000 queries) with the gradient-masking audit on the first
   ``--n-aa`` (the defaults, 1,000 and 200, fit 2 CPU cores; the issue's 2,000 and 1,000 take hours there);
3. ``safety``: per-class robust accuracy of the safety-critical classes (all 270 stop signs of the test set
   attacked), the worst class, harm-weighted error, and the targeted stop -> speed-limit success rate;
4. ``weather``: rain, snow, fog, sun flare, shadow and night at 5 severities;
5. ``stickers``: universal RP2-style stickers and a universal patch, judged on the held-out tracks
   (a track is fooled when at least k of its frames are: k = 1, half, all);
6. ``patchcleanser``: certified accuracy of the masked-trained model against any patch of the stated size;
7. ``audit``: ``robust audit`` of the hardened model (AutoAttack and its masking checks, the safety view, the
   certificate that applies, corruptions and weather) on the first 100 test images;
8. ``board``: the AutoAttack reports added to a leaderboard (``<out>/leaderboard.db``) and shown.

    python scripts/reproduce_gtsrb.py [--root DIR] [--out runs/gtsrb] [--stages train,evaluate,...] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robust.base.classes import class_metadata  # noqa: E402
from robust.base.stats import accuracy_record  # noqa: E402
from robust.base.threat import ThreatModel  # noqa: E402
from robust.data import DataNotFoundError  # noqa: E402
from robust.data.gtsrb import GTSRB, default_gtsrb_root  # noqa: E402
from robust.evaluation import evaluate  # noqa: E402
from robust.module import RobustClassifier  # noqa: E402

RECIPES = {
    "hardened": REPO / "recipes/gtsrb/fgsm_cnn4_cpu.yaml",
    "standard": REPO / "recipes/gtsrb/standard_cnn4_cpu.yaml",
    "masked": REPO / "recipes/gtsrb/masked_cnn4_cpu.yaml",
}
STAGES = ("train", "evaluate", "safety", "weather", "stickers", "patchcleanser", "audit", "board")
THREAT = ThreatModel("linf", "8/255")
PATCH = 0.05  # sticker and certified patch: a square of 5% of the image area, 7x7 px on 32x32 signs
META = class_metadata("gtsrb")


def fmt(rec: dict[str, Any]) -> str:
    """``97.12% [96.5, 97.7] (n=2000)``."""
    lo, hi = rec["ci95"]
    value = rec["accuracy"] if "accuracy" in rec else rec["rate"]  # accuracy records and success rates
    return f"{value:.2%} [{lo:.1%}, {hi:.1%}] (n={rec['n']})"


class Run:
    """The output folder, the data and the finished stages."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.data = GTSRB(root=str(args.root), holdout_tracks=0.1)
        self.data.setup("test")
        self.x_test, self.y_test = self.data.test_tensors()
        (self.out / "stages").mkdir(parents=True, exist_ok=True)  # after the data: a wrong --root writes nothing
        self._models: dict[str, torch.nn.Module] = {}

    def stage(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.out / "stages" / f"{name}.json"
        if path.is_file() and not self.args.fresh:
            print(f"[{name}] done before: {path}", file=sys.stderr)
            return json.loads(path.read_text())
        print(f"[{name}] ...", file=sys.stderr)
        start = time.perf_counter()
        result = compute()
        result["stage_seconds"] = round(time.perf_counter() - start, 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
        return result

    def checkpoint(self, role: str) -> str:
        record = self.out / role / "fit.json"
        if not record.is_file():
            raise SystemExit(f"{record} is missing: train the {role} model first (--stages train --train {role})")
        return json.loads(record.read_text())["checkpoint"]

    def model(self, role: str) -> torch.nn.Module:
        if role not in self._models:
            module = RobustClassifier.load_from_checkpoint(self.checkpoint(role), map_location="cpu")
            self._models[role] = module.model.eval()
        return self._models[role]


# -- 1. training ---------------------------------------------------------------------------------
def fit(run: Run, role: str) -> dict[str, Any]:
    """Train ``RECIPES[role]`` through the LightningCLI, as ``robust fit --config`` would."""
    from robust.cli.lightning import build_cli

    recipe, folder = RECIPES[role], run.out / role
    cli = build_cli(["--config", str(recipe), "--data.init_args.root", str(run.args.root),
                     "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder)],
                    run=False)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    if hasattr(cli.trainer.logger, "finish"):
        cli.trainer.logger.finish()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"recipe": str(recipe.relative_to(REPO)), "checkpoint": cli.trainer.checkpoint_callback.best_model_path,
            "epochs": cli.trainer.current_epoch, "fit_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "machine": machine()}


def machine() -> str:
    return f"{platform.platform()} | {os.cpu_count()} CPUs | torch threads {torch.get_num_threads()}"


def stage_train(run: Run) -> dict[str, Any]:
    """Train every role whose ``<out>/<role>/fit.json`` is missing (``--train`` limits this run to some roles)."""
    result = {}
    for role in RECIPES:
        record = run.out / role / "fit.json"
        if not record.is_file() or run.args.fresh:
            if role not in run.args.train:
                print(f"[train] {role}: not trained yet and not in --train; the stages that need it will stop",
                      file=sys.stderr)
                continue
            fitted = fit(run, role)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(fitted, indent=2) + "\n")
        result[role] = json.loads(record.read_text())
    return result


# -- 2. evaluation -------------------------------------------------------------------------------
def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> dict[str, Any]:
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return accuracy_record(correct, len(y))


def evaluate_model(run: Run, role: str) -> dict[str, Any]:
    from robust.reports.evaluation import write_report

    model, a = run.model(role), run.args
    x, y = run.x_test, run.y_test
    names = list(META.names)
    folder = run.out / role / "apgd"
    apgd = _finished(folder, a.n_apgd)  # a report a stopped run finished is kept (its size must match)
    if apgd is None:
        report = evaluate(model, (x[:a.n_apgd], y[:a.n_apgd]), THREAT, attacks=("apgd-ce", "apgd-t"), audit=False,
                          batch_size=a.batch, class_names=names, checkpoint=run.checkpoint(role))
        report.protocol.update(data=f"GTSRB (test split, first {a.n_apgd}), {run.data.source}", dataset="gtsrb")
        write_report(report.to_dict(), folder)
        apgd = report.to_dict()
    aa = _finished(run.out / role / "autoattack", a.n_aa) or robust_evaluate(
        run, role, ["--attacks", "autoattack", "--n-examples", str(a.n_aa)], "autoattack")
    return {"clean_full_test": clean_accuracy(model, x, y), "apgd_ce_then_apgd_t": apgd["robust"],
            "apgd_clean": apgd["clean"], "autoattack": aa["robust"], "autoattack_clean": aa["clean"],
            "autoattack_per_attack": {k: v["robust"] for k, v in aa["per_attack"].items()},
            "audit": {"unreliable": aa["audit"].get("unreliable"), "checks": len(aa["audit"].get("checks", [])),
                      "flags": [f["name"] for f in aa["audit"].get("flags", [])]},
            "reports": [str(folder / "report.json"), str(run.out / role / "autoattack" / "report.json")]}


def _finished(folder: Path, n: int) -> dict[str, Any] | None:
    """The report in ``folder`` when one was written for ``n`` examples, else ``None``."""
    path = folder / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("n_examples") == n else None


def robust_evaluate(run: Run, role: str, options: list[str], folder: str) -> dict[str, Any]:
    """``robust evaluate`` on ``role``'s checkpoint with its recipe's data (the official test set): the report a
    user would get, with the audit, the safety view and the provenance a leaderboard entry needs."""
    from robust.cli import main as robust

    out = run.out / role / folder
    code = robust(["evaluate", "--checkpoint", run.checkpoint(role), "--config", str(RECIPES[role]), "--data-root",
                   str(run.args.root), "--norm", THREAT.norm, "--eps", "8/255", "--batch-size", str(run.args.batch),
                   "--out", str(out), "--no-wandb", "--fresh", *options])
    if code != 0:
        raise SystemExit(f"robust evaluate {' '.join(options)} failed for the {role} model (exit {code})")
    return json.loads((out / "report.json").read_text())


def stage_evaluate(run: Run) -> dict[str, Any]:
    return {role: evaluate_model(run, role) for role in ("hardened", "standard")}


# -- 3. safety-critical classes ------------------------------------------------------------------
def stage_safety(run: Run) -> dict[str, Any]:
    """The safety view of the APGD report (first ``--n-apgd`` test images), every stop sign of the test set attacked, and the
    targeted stop -> speed-limit attack (APGD-T toward each of the 8 speed limits, 100 steps)."""
    from robust.evaluation.safety import add_targeted, gtsrb_harm, safety_view, targeted_success

    harm = gtsrb_harm(META)
    speed_limits = META.groups["speed_limit"]
    stop = run.y_test == 14
    xs, ys = run.x_test[stop], run.y_test[stop]
    result = {}
    for role in ("hardened", "standard"):
        done = run.out / role / "safety.json"  # per model, so that an interrupted stage keeps the finished one
        if done.is_file() and not run.args.fresh:
            result[role] = json.loads(done.read_text())
            continue
        model = run.model(role)
        stops = evaluate(model, (xs, ys), THREAT, attacks=("apgd-ce", "apgd-t"), audit=False, batch_size=run.args.batch)
        targeted = targeted_success(model, xs, ys, 14, speed_limits, THREAT, steps=100, batch_size=run.args.batch)
        apgd = run.out / role / "apgd" / "report.json"
        if not apgd.is_file():
            raise SystemExit(f"{apgd} is missing: run the evaluate stage first")
        view = safety_view(json.loads(apgd.read_text()), harm=harm, metadata=META)
        add_targeted(view, targeted, META)
        result[role] = {"stop_clean": stops.clean, "stop_robust": stops.robust,
                        "stop_to_speed_limit": targeted["success"],
                        "stop_to_speed_limit_of_correct": targeted["success_on_correct"],
                        "stop_per_target": {META.name(int(t)): k for t, k in targeted["per_target"].items()},
                        "view": view}
        done.write_text(json.dumps(result[role], indent=2) + "\n")
    return result


# -- 4. weather -----------------------------------------------------------------------------------
def stage_weather(run: Run) -> dict[str, Any]:
    """Rain, snow, fog, sun flare, shadow and night at severities 1..5 on the first ``--n-weather`` test images."""
    from robust.evaluation.weather import evaluate_weather
    from robust.reports.evaluation import plot_weather, plot_weather_grid

    n = run.args.n_weather
    result = {}
    for role in ("hardened", "standard"):
        report = evaluate_weather(run.model(role), (run.x_test[:n], run.y_test[:n]), batch_size=run.args.batch)
        (run.out / role).mkdir(parents=True, exist_ok=True)
        plot_weather(report, run.out / role / "weather.png")
        result[role] = report
    stop = int(torch.nonzero(run.y_test == 14)[0])
    plot_weather_grid(run.x_test[stop], run.out / "weather_preview.png")
    return result


# -- 5. stickers ------------------------------------------------------------------------------------
STICKER_STEPS = 200  # Adam steps at lr 0.1 (pixel space), 32 EOT views per step


def stage_stickers(run: Run) -> dict[str, Any]:
    """Universal perturbations optimised on training images, judged on the held-out tracks (whole tracks
    of every class, never seen in training or optimisation): an RP2-style sticker (two bars on the sign,
    5% of the image area) for all classes and one for stop signs alone, and a universal square patch of
    5% (Brown et al.) anywhere in the image; each under expectation over rotation, scale, perspective,
    brightness and blur. A random sticker of the same mask (no optimisation) is the control."""
    from robust.evaluation.stickers import evaluate_on_tracks, optimise_patch, optimise_sticker, sticker_examples
    from robust.reports.stickers import write_sticker_report

    x_train, y_train = run.data.train_tensors()
    x_held, y_held, t_held = run.data.held_out()
    pick = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))[:4000]
    stop = y_held == 14
    result = {}
    for role in ("hardened", "standard"):
        model = run.model(role)
        made = {
            "sticker_all_classes": optimise_sticker(model, x_train[pick], y_train[pick], "bars", area=PATCH,
                                                    steps=STICKER_STEPS, progress=True),
            "sticker_stop": optimise_sticker(model, x_train, 14, "bars", area=PATCH, steps=STICKER_STEPS,
                                             progress=True),
            "patch_all_classes": optimise_patch(model, x_train[pick], y_train[pick], fraction=PATCH,
                                                steps=STICKER_STEPS, progress=True),
            "random_sticker_control": optimise_sticker(model, x_train[pick], y_train[pick], "bars", area=PATCH,
                                                       steps=0),
        }
        results, examples = {}, {}
        for name, artefact in made.items():
            on = stop if name == "sticker_stop" else torch.ones_like(stop)
            results[name] = evaluate_on_tracks(model, x_held[on], y_held[on], t_held[on], artefact, progress=True)
            examples[name] = sticker_examples(model, x_held[on][::30], y_held[on][::30], artefact)
        write_sticker_report(results, run.out / role / "stickers", examples, class_names=list(META.names))
        result[role] = results
    return result


# -- 6. PatchCleanser -----------------------------------------------------------------------------
def stage_patchcleanser(run: Run) -> dict[str, Any]:
    """``robust certify --patchcleanser 0.05 --masks 6`` on the first ``--n-patch`` test images for the masked-trained
    model and, for contrast, the standard one on the first ``--n-patch-standard``. (The adaptive patch attack
    that checks soundness, ``--patch-attack N``, costs minutes per image at every position on 2 CPU cores;
    ``tests/test_patchcleanser.py`` runs it on a small model.)"""
    from robust.cli import main as robust

    result = {}
    for role, n in (("masked", run.args.n_patch), ("standard", run.args.n_patch_standard)):
        out = run.out / role / "patchcleanser"
        code = robust(["certify", "--patchcleanser", str(PATCH), "--masks", "6", "--checkpoint", run.checkpoint(role),
                       "--config", str(RECIPES[role]), "--data-root", str(run.args.root), "--n-examples",
                       str(n), "--out", str(out), "--no-wandb", "--fresh"])
        if code != 0:
            raise SystemExit(f"robust certify --patchcleanser failed for the {role} model (exit {code})")
        report = json.loads((out / "report.json").read_text())
        result[role] = {k: report.get(k) for k in ("clean", "base_clean", "certified", "mask_set", "cases",
                                                    "empirical", "consistency")}
        result[role]["report"] = str(out / "report.json")
    return result


# -- 7. audit ----------------------------------------------------------------------------------------
def stage_audit(run: Run) -> dict[str, Any]:
    """``robust audit`` of the hardened model on the first ``--n-audit`` test images: AutoAttack with the
    gradient-masking checks, the safety view, the certificate that applies, corruptions and weather."""
    from robust.cli import main as robust

    out = run.out / "hardened" / "audit"
    code = robust(["audit", "--checkpoint", run.checkpoint("hardened"), "--config", str(RECIPES["hardened"]),
                   "--data-root", str(run.args.root), "--n-examples", str(run.args.n_audit), "--weather",
                   "--batch-size", str(run.args.batch), "--out", str(out), "--no-wandb"])
    if code != 0:
        raise SystemExit(f"robust audit failed (exit {code})")
    audit = json.loads((out / "audit.json").read_text())
    return {"audit": str(out / "audit.json"), "markdown": str(out / "audit.md"),
            "statement": audit.get("statement")}


# -- 8. leaderboard -------------------------------------------------------------------------------
def stage_board(run: Run) -> dict[str, Any]:
    """Both AutoAttack reports on a board of their own (``<out>/leaderboard.db``), shown and exported."""
    from robust.cli import main as robust

    db = run.out / "leaderboard.db"
    names = {"hardened": "CNN4 FGSM-RS 8/255 (CPU recipe)", "standard": "CNN4 standard (CPU recipe)"}
    for role, name in names.items():
        report = run.out / role / "autoattack" / "report.json"
        code = robust(["leaderboard", "--db", str(db), "add", str(report), "--name", name,
                       "--recipe", str(RECIPES[role].relative_to(REPO))])
        if code != 0:
            raise SystemExit(f"robust leaderboard add failed for {report} (exit {code})")
    robust(["leaderboard", "--db", str(db), "show", "--dataset", "gtsrb"])
    page = run.out / "leaderboard.md"
    robust(["leaderboard", "--db", str(db), "export", "--format", "md", "--dataset", "gtsrb", "--out", str(page)])
    return {"db": str(db), "markdown": str(page), "entries": list(names.values())}


# -- the summary ----------------------------------------------------------------------------------
def summary(results: dict[str, Any]) -> str:
    """The figures as a markdown section (also written to ``<out>/gtsrb.md``)."""
    lines = ["GTSRB official final test set, L-inf eps 8/255; 95% Clopper-Pearson intervals.", ""]
    results = {stage: {k: v for k, v in (value or {}).items() if isinstance(v, dict)}  # per model, no timings
               for stage, value in results.items()}
    train, ev = results.get("train") or {}, results.get("evaluate") or {}
    if ev:
        lines += ["| model | training | clean (all 12,630) | APGD-CE then APGD-T | AutoAttack |",
                  "| --- | --- | --- | --- | --- |"]
        for role in ("hardened", "standard"):
            t, e = train.get(role) or {}, ev[role]
            when = (f"{t['epochs']} epochs, {t['fit_seconds'] / 60:.1f} min ({t['cpu_seconds'] / 60:.1f} CPU-min)"
                    if t else "")
            lines.append(f"| {role} | {when} | {fmt(e['clean_full_test'])} | {fmt(e['apgd_ce_then_apgd_t'])} | "
                         f"{fmt(e['autoattack'])} |")
        lines.append("")
    safety = results.get("safety") or {}
    if safety:
        lines += ["| model | stop signs clean (270) | stop signs robust (APGD-CE+T) | stop -> any speed limit "
                  "(targeted APGD, 100 steps) | worst class (APGD images) | mean harm clean / attacked |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for role, v in safety.items():
            worst, harm = v["view"].get("worst_class") or {}, v["view"].get("harm") or {}
            wtxt = f"{worst.get('name', worst.get('class'))}: {fmt(worst['robust'])}" if worst.get("robust") else ""
            htxt = (f"{harm['clean']['mean']:.2f} / {harm['adversarial']['mean']:.2f}"
                    if "clean" in harm and "adversarial" in harm else "")
            lines.append(f"| {role} | {fmt(v['stop_clean'])} | {fmt(v['stop_robust'])} | "
                         f"{fmt(v['stop_to_speed_limit'])} | {wtxt} | {htxt} |")
        lines.append("")
    weather = results.get("weather") or {}
    if weather:
        names = list(next(iter(weather.values()))["per_weather"])
        lines += ["Driving weather and light: accuracy per severity on the first "
                  + ", ".join(f"{rep['n_examples']} ({role} clean {fmt(rep['clean'])})" for role, rep in weather.items())
                  + " test images.", "",
                  "| model | severity | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
        for role, rep in weather.items():
            for sev in ("1", "2", "3", "4", "5"):
                cells = [rep["per_weather"][w]["per_severity"][sev]["accuracy"] for w in names]
                lines.append(f"| {role} | {sev} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
        lines.append("")
    stickers = results.get("stickers") or {}
    if stickers:
        lines += ["| model | universal perturbation (5% of the image), held-out tracks | frames fooled | "
                  "tracks fooled, k = 1 | k = half | k = all |", "| --- | --- | --- | --- | --- | --- |"]
        for role, per in stickers.items():
            for name, r in per.items():
                t = r["per_track"]
                lines.append(f"| {role} | {name} | {fmt(r['per_image'])} | {fmt(t['any'])} | {fmt(t['half'])} | "
                             f"{fmt(t['all'])} |")
        lines.append("")
    patch = results.get("patchcleanser") or {}
    if patch:
        lines += ["| model | PatchCleanser mask set | double-masking clean | certified against any patch |",
                  "| --- | --- | --- | --- |"]
        for role, r in patch.items():
            m = r.get("mask_set") or {}
            masks = (f"{m['masks']} masks of {m['mask_size_px'][0]} px (stride {m['stride_px'][0]}) covering any "
                     f"{m['patch_px'][0]}x{m['patch_px'][1]} px patch ({m['patch_area_fraction']:.1%} of the image)"
                     if m else "")
            lines.append(f"| {role} | {masks} | {fmt(r['clean'])} | {fmt(r['certified'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="folder with train.npz and test.npz (default ../shared/data/gtsrb)")
    parser.add_argument("--out", default="runs/gtsrb")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from: {', '.join(STAGES)}")
    parser.add_argument("--fresh", action="store_true", help="redo finished stages")
    parser.add_argument("--train", default=",".join(RECIPES), help="the models this run may train (the others must "
                        "have been trained by an earlier run): comma-separated from " + ", ".join(RECIPES))
    # defaults sized for 2 CPU cores (about an hour for the measuring stages); the sizes on a faster
    # machine: --n-apgd 2000 --n-aa 1000 --n-weather 12630
    parser.add_argument("--n-apgd", type=int, default=1000, help="test images for APGD-CE then APGD-T")
    parser.add_argument("--n-aa", type=int, default=200, help="test images for the full AutoAttack")
    parser.add_argument("--n-weather", type=int, default=500, help="test images per weather corruption")
    parser.add_argument("--n-patch", type=int, default=500, help="test images PatchCleanser certifies (masked model)")
    parser.add_argument("--n-patch-standard", type=int, default=100,
                        help="test images PatchCleanser certifies for the standard model (the contrast)")
    parser.add_argument("--n-audit", type=int, default=100, help="test images the audit measures")
    parser.add_argument("--batch", type=int, default=500, help="attack batch size")
    args = parser.parse_args(argv)
    args.root = args.root or default_gtsrb_root()
    if args.root is None:
        parser.error("../shared/data/gtsrb not found; pass --root DIR holding train.npz and test.npz")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    args.train = [r.strip() for r in args.train.split(",") if r.strip()]
    if set(args.train) - set(RECIPES):
        parser.error(f"--train: unknown model {', '.join(sorted(set(args.train) - set(RECIPES)))}")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        run = Run(args)
    except DataNotFoundError as err:
        parser.error(str(err))
    results: dict[str, Any] = {}
    for name in STAGES:
        if name == "train" and name in stages:  # each model's own fit.json records it: never cached as a stage
            results[name] = stage_train(run)
        elif name in stages:
            results[name] = run.stage(name, lambda name=name: globals()[f"stage_{name}"](run))
    (run.out / "gtsrb.json").write_text(json.dumps(results, indent=2) + "\n")
    text = summary(results)
    (run.out / "gtsrb.md").write_text(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
