"""Benchmark: our ``autoattack`` (RobustBench standard protocol) against torchattacks' ``AutoAttack``.

Run ``python scripts/bench_autoattack.py`` (``--help`` for flags). One run:

1. trains a fixed model: the IBP papers' small CNN (Gowal et al. 2018) on the scikit-learn
   digits (8x8, 1,197 training images), PGD-7 adversarial training at L-inf eps 0.1 for
   ``--epochs`` epochs of Adam (seeded; about 10 s on one CPU core), or loads ``--checkpoint``;
2. attacks the same held-out images (the 300 test digits, or ``--n-examples`` of them) with
   ``robust.evaluation.evaluate(attacks=("autoattack",), audit=False)`` and with
   ``torchattacks.AutoAttack(norm="Linf", version="standard", n_classes=10, seed=0)``;
3. prints both robust accuracies with 95% Clopper-Pearson intervals, both times, their
   ratio, and the examples each one broke that the other did not.

Ours must be at least as strong: torchattacks 3.5.1's AutoAttack runs APGD/APGD-T/FAB with
their 10-step defaults instead of the protocol's 100 (and n-1 target classes, 42 on GTSRB),
so it is faster and can miss adversarial examples. Timing: CPU ``time.perf_counter``; CUDA
events after ``torch.cuda.synchronize()``. The machine and versions are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torchattacks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robust  # noqa: E402
from robust.attacks.independent import in_ball  # noqa: E402
from robust.base.stats import accuracy_record  # noqa: E402
from robust.base.threat import ThreatModel  # noqa: E402
from robust.data import Digits  # noqa: E402
from robust.evaluation import evaluate  # noqa: E402
from robust.methods import PGD  # noqa: E402
from robust.models import CNNSmall  # noqa: E402

EPS = 0.1  # L-inf radius in pixel units (images in [0, 1])
TRAIN_STEPS = 7  # PGD steps of adversarial training, step 2.5 * eps / steps
LR = 1e-3  # Adam
BATCH = 64


def train_model(epochs: int, seed: int, device: torch.device) -> torch.nn.Module:
    dm = Digits()
    x, y = dm.train_tensors()
    torch.manual_seed(seed)
    model = CNNSmall(num_classes=10, in_channels=1, input_size=8).to(device)
    method = PGD(ThreatModel("linf", EPS), steps=TRAIN_STEPS)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            loss, _ = method.loss(model, x[idx].to(device), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return out, start.elapsed_time(end) / 1000
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="adversarial training epochs of the fixed model")
    p.add_argument("--checkpoint", help="evaluate this robust checkpoint instead (its data must be 10-class digits)")
    p.add_argument("--eps", type=float, default=EPS, help="L-inf radius of the evaluation (training uses 0.1)")
    p.add_argument("--n-examples", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    if args.checkpoint:
        from robust.module import RobustClassifier

        model = RobustClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu").model.to(device).eval()
    else:
        model = train_model(args.epochs, args.seed, device)
    dm = Digits()
    x, y = dm.test_tensors()
    x, y = x[:args.n_examples].to(device), y[:args.n_examples].to(device)
    threat = ThreatModel("linf", args.eps)

    report, ours_s = timed(lambda: evaluate(model, (x, y), threat, attacks=("autoattack",), batch_size=args.batch_size,
                                            seed=args.seed, audit=False, progress=False), device)
    ours_mask = report.masks["autoattack"].to(device)

    def theirs_run():
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=args.seed)
        advs = [attack(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
        return torch.cat(advs)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x_adv, theirs_s = timed(theirs_run, device)
    with torch.no_grad():
        theirs_mask = (model(x_adv).argmax(1) == y) | ~in_ball(x_adv, x, threat)
        theirs_mask &= model(x).argmax(1) == y
    n = len(y)
    ours, theirs = accuracy_record(int(ours_mask.sum()), n), accuracy_record(int(theirs_mask.sum()), n)
    only_theirs = int((~theirs_mask & ours_mask).sum())
    only_ours = int((~ours_mask & theirs_mask).sum())
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; torch {torch.__version__}, torchattacks {torchattacks.__version__}, "
          f"robust {getattr(robust, '__version__', '0')}, python {platform.python_version()}")
    print(f"model: CNNSmall, PGD-{TRAIN_STEPS} trained {args.epochs} epochs on digits"
          if not args.checkpoint else f"model: {args.checkpoint}")
    print(f"data: {n} held-out digits, L-inf eps {args.eps}; clean accuracy {report.clean_accuracy:.2%}")
    for name, rec, secs in (("ours: autoattack (APGD-CE, APGD-T, FAB-T x100 steps, 9 targets; Square 5000)", ours,
                             ours_s),
                            ("torchattacks.AutoAttack(version='standard')", theirs, theirs_s)):
        lo, hi = rec["ci95"]
        print(f"  {name:<80} robust {rec['accuracy']:.2%} [{lo:.2%}, {hi:.2%}]  {secs:7.1f} s")
    print(f"components (examples broken): {report.per_attack['autoattack']['components']}")
    print(f"broken only by ours: {only_ours}; broken only by torchattacks: {only_theirs}")
    print(f"robust accuracy, ours - torchattacks: {100 * (ours['accuracy'] - theirs['accuracy']):+.2f} points "
          f"({'ours at least as strong' if ours['accuracy'] <= theirs['accuracy'] else 'OURS WEAKER'})")
    print(f"time ratio ours / torchattacks: {ours_s / theirs_s:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "ours": ours, "torchattacks": theirs, "ours_seconds": ours_s,
            "torchattacks_seconds": theirs_s, "only_ours": only_ours, "only_torchattacks": only_theirs}, indent=2))
    return 0 if ours["accuracy"] <= theirs["accuracy"] else 1


if __name__ == "__main__":
    sys.exit(main())
