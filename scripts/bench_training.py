"""Benchmark: our training attack vs torchattacks, and the cost of adversarial training steps.

Run ``python scripts/bench_training.py`` (``--quick`` for a smoke run, ``--help`` for flags).
Defaults: ``cnn_small`` (Gowal et al. 2018, the small MNIST CNN of the IBP papers),
1x28x28 inputs, batch 128, fp32, CPU, all cores. One run prints:

1. **Attack throughput.** Our training PGD-k (``robust.attacks.training.pgd``: input-only
   gradients, no mode toggling per step, one clamp to a precomputed box) against
   ``torchattacks.PGD`` with the same settings (L-inf eps 0.3, step 2.5*eps/k, random
   start), both with the model in eval mode, on random images in [0, 1]. Also the robust
   accuracy of a briefly FGSM-RS-trained model under both attacks on real data
   (``mnist-t10k split`` when ``../shared/data/mnist-t10k`` exists, else the scikit-learn
   digits upscaled), to show the attacks are equally strong.
2. **Training-step cost.** ``method.loss(model, x, y)`` + ``backward()`` + ``SGD.step()``
   with the model in train mode (what ``RobustClassifier.training_step`` does), for
   ``Standard()``, ``FGSM`` (k = 1), ``PGD(steps=k)`` and ``TRADES(steps=k)``, in images/s
   and as a multiple of the standard step, next to the algorithmic floor ``(2k + 3) / 3``:
   a standard step is ~3 forward-pass equivalents (forward 1, backward 2: gradients
   w.r.t. activations and w.r.t. weights cost about one forward each). One attack step
   is a forward plus a backward to the *input* only (~1: weight gradients are skipped
   by ``autograd.grad``), so ~2. A k-step attack then the standard step on x_adv is
   ~2k + 3 passes, i.e. (2k + 3) / 3 standard steps: 23/3 = 7.67 for PGD-10, 5/3 for FGSM.
   ``measured / floor`` near 1 means the attack adds no overhead beyond the passes.
   (TRADES adds a clean forward for its target and one for its loss: floor ``(2k + 5) / 3``.)
3. **Model FLOPs utilisation** (CUDA): the FLOPs of a standard step counted by Lightning's
   ``measure_flops`` on the meta device, times each method's floor in standard steps (the
   passes the algorithm needs), times steps per second, over the chip's peak from
   Lightning's ``get_available_flops`` for the dtype in use.

The performance switches are flags: ``--precision bf16`` (autocast, as
``trainer.precision: bf16-mixed``), ``--channels-last`` (NHWC weights and batches) and
``--compile`` (``torch.compile`` of the model for our attack and the training steps;
torchattacks keeps the plain model, and our eager attack is timed too). The batches are random
tensors already on the device, as with ``device_resident: true`` data. ``--fit-batches N`` adds
4. **End to end**: ``Trainer.fit`` of a ``RobustClassifier`` with FGSM-RS on N batches of
device-resident random uint8 data (crop and flip on the device), in training images/s. The GPU
figures of the README came from::

    python scripts/bench_training.py --model preact_resnet18 --input-size 32 --channels 3 \
        --batch 512 --device cuda --precision bf16 --channels-last --steps 10 --fit-batches 60

Timing (as airbench): contenders are interleaved within each repeat (order reversed
every other repeat, so drift hits all alike), medians are reported, and a ratio is the
median of the per-repeat paired ratios; the minimum is printed too (on a shared machine,
bursts of other work hit long contenders more often than short ones). CPU:
``time.perf_counter``; CUDA: CUDA events after ``torch.cuda.synchronize()``. The machine
and versions are printed with the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchattacks

import robust
from robust.attacks.training import pgd
from robust.base.runtime import Autocast, autocast, to_channels_last
from robust.base.threat import ThreatModel
from robust.data import Digits, MNIST10k, default_mnist_t10k_root
from robust.methods import FGSM, PGD, TRADES, Standard
from robust.models import create

EPS = 0.3  # L-inf radius, pixel units (images in [0, 1]); the MNIST standard
NUM_CLASSES = 10
TRAIN_LR = 1e-3  # Adam learning rate of the brief robust-accuracy training
TRAIN_WARMUP_STEPS = 100  # eps ramps 0 -> EPS over this many optimizer steps
STEP_LR = 0.01  # SGD learning rate of the timed training steps (the value does not affect time)


def floor_ratio(k: int, extra_forwards: int = 0) -> float:
    """Algorithmic floor of a k-step adversarial training step, in standard steps: (2k+3)/3, plus
    one third for every extra forward pass (TRADES: its clean target and its clean loss term)."""
    return (2 * k + 3 + extra_forwards) / 3


SPARSE_TABLE = {"h200 sxm1", "h200 nvl1"}
"""Chips whose entries in Lightning's table are the datasheet's with-sparsity figures (twice the dense peak)."""


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(dense peak FLOP/s of the device for the arithmetic in use, how it was found), from Lightning's
    table. float32 convolutions run on TF32 tensor cores unless cuDNN's TF32 is off."""
    if device.type != "cuda":
        return None, "no GPU"
    import warnings

    from lightning.fabric.utilities import throughput

    name, fmt = torch.cuda.get_device_name(device), torch.bfloat16 if precision == "bf16" else torch.float32
    lower = name.lower()
    key = None
    if "h200" in lower:
        key = "h200 nvl1" if "nvl" in lower else "h200 sxm1"
    elif "h100" in lower:
        key = "h100 nvl" if "nvl" in lower else "h100 pcie" if "pcie" in lower else "h100 sxm"
    entry = getattr(throughput, "_CUDA_FLOPS", {}).get(key)
    if entry is None:  # any other chip: Lightning's own lookup
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flops = throughput.get_available_flops(device, fmt)
        return (float(flops) if flops else None), f"{name}, {fmt}"
    if fmt == torch.float32 and torch.backends.cudnn.allow_tf32:
        fmt = "tfloat32"
    flops = float(entry[fmt]) / (2 if key in SPARSE_TABLE else 1)
    return flops, f"{name} as {key}, {str(fmt).replace('torch.', '')}, dense"


def standard_step_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one standard training step (forward + backward), counted on the meta device by
    Lightning's ``measure_flops``. (Its counter cannot see inside ``autograd.grad``, so an
    adversarial step is credited with this times its algorithmic floor in passes.)"""
    from lightning.fabric.utilities.throughput import measure_flops

    meta = copy.deepcopy(model).to("meta").train()
    x = torch.rand(shape, device="meta")
    y = torch.randint(0, NUM_CLASSES, (shape[0],), device="meta")
    return float(measure_flops(meta, lambda: Standard().loss(meta, x, y)[0], lambda loss: loss))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn_small", help="registry name or torchvision:<name>")
    p.add_argument("--batch", type=int, default=128, help="images per batch")
    p.add_argument("--input-size", type=int, default=28, help="image side, pixels")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--steps", default="10", help="PGD steps k, comma-separated (FGSM k=1 is always added); "
                   "the attack comparison uses the first")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 30, quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3, quick 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="32", choices=("32", "bf16"), help="float32, or bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory order for weights and batches")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (ours; torchattacks stays eager)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--no-trades", action="store_true", help="skip TRADES in the training-step table")
    p.add_argument("--fit-batches", type=int, default=0, help="also time Trainer.fit of FGSM-RS on this many "
                   "batches of device-resident random data (0: skip)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps of the brief FGSM-RS training "
                   "(default 300, quick 30)")
    p.add_argument("--train-seconds", type=float, default=60.0, help="time cap of that training, s")
    p.add_argument("--eval-examples", type=int, default=None, help="test images for robust accuracy "
                   "(default 2000, quick 128)")
    p.add_argument("--quick", action="store_true", help="fewer repeats, shorter training")
    p.add_argument("--json", default=None, help="also write the results to this path")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.steps = [int(s) for s in str(a.steps).split(",") if s.strip()]
    if not a.steps or min(a.steps) < 1:
        p.error("--steps needs integers >= 1")
    quick = a.quick
    a.repeats = a.repeats if a.repeats is not None else (5 if quick else 30)
    a.warmup = a.warmup if a.warmup is not None else (1 if quick else 3)
    a.train_steps = a.train_steps if a.train_steps is not None else (30 if quick else 300)
    a.eval_examples = a.eval_examples if a.eval_examples is not None else (128 if quick else 2000)
    return a


def build_model(name: str, channels: int, size: int) -> torch.nn.Module:
    """``create(name, 10, ...)`` with the input shape, dropping kwargs a constructor does not take."""
    for kw in ({"in_channels": channels, "input_size": size}, {"in_channels": channels}, {}):
        try:
            return create(name, num_classes=NUM_CLASSES, **kw)
        except TypeError:
            continue
    raise ValueError(f"cannot build {name!r} for {channels}x{size}x{size} inputs")


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn``, s (CUDA events after a synchronise on GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # ms -> s
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def race(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int,
         device: torch.device) -> dict[str, list[float]]:
    """Per-repeat times (s) of each contender, run interleaved (A B, B A, A B, ...)."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            t = seconds(contenders[n], device)
            if r >= warmup:
                times[n].append(t)
    return times


def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def real_data(channels: int, size: int) -> tuple[str, tuple[torch.Tensor, ...]]:
    """(name, (x_train, y_train, x_test, y_test)): mnist-t10k split if present, else digits."""
    if default_mnist_t10k_root() is not None:
        dm, name = MNIST10k(val_size=0), "mnist-t10k split (train 0..7999, test 8000..)"
    else:
        dm, name = Digits(upscale=28), "scikit-learn digits upscaled to 28x28"
    tensors = (*dm.train_tensors(), *dm.test_tensors())

    def shape(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
        return x.expand(-1, channels, -1, -1).contiguous()

    x_tr, y_tr, x_te, y_te = tensors
    return name, (shape(x_tr), y_tr, shape(x_te), y_te)


def train_briefly(model, x, y, threat, batch, max_steps, budget_s, device) -> dict:
    """FGSM-RS training, eps warm-up over TRAIN_WARMUP_STEPS; stops at ``max_steps`` or ``budget_s`` s."""
    method = FGSM(threat, warmup=TRAIN_WARMUP_STEPS, warmup_unit="steps")
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    model.train()
    step, t0 = 0, time.perf_counter()
    while step < max_steps and time.perf_counter() - t0 < budget_s:
        for idx in torch.randperm(len(y)).split(batch):
            method.update_schedule(0.0, step)
            loss, _ = method.loss(model, x[idx].to(device), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= max_steps or time.perf_counter() - t0 >= budget_s:
                break
    model.eval()
    return {"method": "FGSM-RS", "steps": step, "seconds": time.perf_counter() - t0,
            "final_eps": method.current_eps}


def accuracy_under(model, x, y, attack, batch, device) -> float:
    """Fraction of (x, y) classified correctly after ``attack(x, y)`` (None: clean)."""
    correct = 0
    for xb, yb in zip(x.split(batch), y.split(batch)):
        xb, yb = xb.to(device), yb.to(device)
        xa = xb if attack is None else attack(xb, yb)
        with torch.no_grad():
            correct += int((model(xa).argmax(1) == yb).sum())
    return correct / len(y)


def end_to_end(args: argparse.Namespace, shape: tuple[int, ...], threat: ThreatModel, device: torch.device) -> dict:
    """Images/s of ``Trainer.fit`` on a RobustClassifier with FGSM-RS over device-resident data
    (``device_resident=True``: uint8 on the device, random crop and flip there), logging off."""
    import lightning.pytorch as pl

    from robust.data.base import ImageTensorDataset, RobustDataModule
    from robust.module import RobustClassifier

    skip = min(5, args.fit_batches // 2)
    n = args.batch * args.fit_batches

    class RandomImages(RobustDataModule):
        name, num_classes, in_channels, image_size = "random", NUM_CLASSES, shape[1], shape[2]
        mean, std = (0.5,) * shape[1], (0.25,) * shape[1]

        def _load_fit(self):
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randint(0, 256, (n, *shape[1:]), dtype=torch.uint8, generator=g)
            return ImageTensorDataset(x, torch.randint(0, NUM_CLASSES, (n,), generator=g)), None

        def _augmentation(self):
            return 4, True

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == skip:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.end = time.perf_counter()

    torch.manual_seed(args.seed)
    model = build_model(args.model, args.channels, args.input_size)
    module = RobustClassifier(model, FGSM(threat), lr=0.01, channels_last=args.channels_last, compile=args.compile,
                              compile_mode=args.compile_mode)
    clock = Clock()
    trainer = pl.Trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         precision="bf16-mixed" if args.precision == "bf16" else "32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         inference_mode=False, benchmark=device.type == "cuda", callbacks=[clock],
                         limit_val_batches=0)
    trainer.fit(module, datamodule=RandomImages(batch_size=args.batch, device_resident=True))
    timed = args.fit_batches - skip
    return {"images_per_s": timed * args.batch / (clock.end - clock.start), "timed_batches": timed,
            "skipped_batches": skip, "final_loss": float(trainer.callback_metrics["train/loss"])}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    threat = ThreatModel("linf", EPS)
    k_attack = args.steps[0]
    alpha = 2.5 * EPS / k_attack  # pixel units per step (Madry et al. 2018 default)
    shape = (args.batch, args.channels, args.input_size, args.input_size)
    model = build_model(args.model, args.channels, args.input_size).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast = torch.compile(model, mode=args.compile_mode) if args.compile else model  # shares the weights
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    info = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchattacks": torchattacks.__version__, "robust": robust.__version__},
        "config": {"device": str(device), "model": args.model, "batch": args.batch, "input": list(shape[1:]),
                   "dtype": "float32", "precision": args.precision,
                   "channels_last": args.channels_last, "compile": args.compile, "eps": EPS, "steps": args.steps, "repeats": args.repeats,
                   "warmup": args.warmup, "quick": args.quick, "seed": args.seed},
    }
    m, v = info["machine"], info["versions"]
    print(f"machine : {m['platform']} | {m['processor']} | {m['cpu_count']} CPUs | torch threads {m['torch_threads']}"
          + (f" | {gpu}" if gpu else ""))
    print(f"versions: python {v['python']} | torch {v['torch']} | torchattacks {v['torchattacks']} "
          f"| robust {v['robust']}")
    print(f"setup   : device {device} | model {args.model} ({sum(p.numel() for p in model.parameters()):,} params) "
          f"| batch {args.batch} x {args.channels}x{args.input_size}x{args.input_size} "
          f"{'bf16 autocast' if args.precision == 'bf16' else 'fp32'}"
          f"{' | channels_last' if args.channels_last else ''}{' | torch.compile' if args.compile else ''} "
          f"| L-inf eps {EPS} "
          f"| {args.repeats} repeats, {args.warmup} warm-up, interleaved, medians")

    # Random tensors of the right shape, in [0, 1], for all timings.
    x = torch.rand(shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
    if args.channels_last:
        x = to_channels_last(x)
    wrap = (lambda m: Autocast(m, args.precision)) if args.precision == "bf16" else (lambda m: m)  # noqa: E731
    attacked = wrap(fast)  # what our pgd runs

    # DESIGN: every attack sample gets fresh randomness.
    a1, a2 = pgd(attacked, x, y, threat, steps=k_attack), pgd(attacked, x, y, threat, steps=k_attack)
    differ = float((a1 != a2).float().mean())  # fraction of pixels
    assert differ > 0, "two successive pgd calls on one batch returned identical points: random start is not fresh"
    assert bool(threat.contains(a1, x).all()), "pgd left the L-inf ball or [0, 1]"
    print(f"fresh randomness: two pgd calls on one batch differ in {100 * differ:.1f}% of pixels (ok)")

    # 1a. Robust accuracy on real data, ours vs torchattacks.
    data_name, (x_tr, y_tr, x_te, y_te) = real_data(args.channels, args.input_size)
    x_te, y_te = x_te[: args.eval_examples], y_te[: args.eval_examples]
    trained = train_briefly(model, x_tr, y_tr, threat, args.batch, args.train_steps, args.train_seconds, device)
    attacked, plain = wrap(fast).eval(), wrap(model).eval()  # torchattacks restores the mode it finds: eval
    ta = torchattacks.PGD(plain, eps=EPS, alpha=alpha, steps=k_attack, random_start=True)
    ours = lambda xb, yb: pgd(attacked, xb, yb, threat, steps=k_attack)  # noqa: E731
    eager = wrap(model).eval()
    acc = {"data": data_name, "n": len(y_te), "training": trained,
           "clean": accuracy_under(model, x_te, y_te, None, args.batch, device),
           "ours": accuracy_under(model, x_te, y_te, ours, args.batch, device),
           "torchattacks": accuracy_under(model, x_te, y_te, ta, args.batch, device)}

    # 1b. Attack throughput on random tensors; model in eval mode (torchattacks toggles it itself).
    model.eval()
    assert not any(m.training for m in model.modules()), "the attacked model must stay in eval mode"
    contenders = {"ours": lambda: ours(x, y), "torchattacks": lambda: ta(x, y)}
    if args.compile:
        contenders["ours_eager"] = lambda: pgd(eager, x, y, threat, steps=k_attack)
    times = race(contenders, args.repeats, args.warmup, device)
    assert not any(m.training for m in model.modules()), "an attack left the model in train mode"
    attack = {"steps": k_attack, "eps": EPS, "step_size": alpha, "robust_accuracy": acc,
              "speedup": 1 / paired_ratio(times["ours"], times["torchattacks"])}  # ours/torchattacks, images/s
    for n, t in times.items():
        attack[f"{n}_ms"] = 1e3 * statistics.median(t)
        attack[f"{n}_min_ms"] = 1e3 * min(t)
        attack[f"{n}_images_per_s"] = args.batch / statistics.median(t)

    print(f"\n1. PGD-{k_attack} attack, L-inf eps {EPS}, step {alpha:.4g}, random start, model in eval mode")
    print(f"   {'attack':<24}{'median ms':>10}{'min ms':>9}{'images/s':>11}")
    labels = [("ours", "ours (compiled)" if args.compile else "ours (robust pgd)"), ("torchattacks", "torchattacks.PGD")]
    if args.compile:
        labels.append(("ours_eager", "ours (eager)"))
        attack["speedup_eager"] = 1 / paired_ratio(times["ours_eager"], times["torchattacks"])
    for n, label in labels:
        print(f"   {label:<24}{attack[f'{n}_ms']:>10.2f}{attack[f'{n}_min_ms']:>9.2f}"
              f"{attack[f'{n}_images_per_s']:>11.0f}")
    print(f"   throughput ours / torchattacks: {attack['speedup']:.2f}x (median of {args.repeats} paired repeats)"
          + (f"; eager ours / torchattacks: {attack['speedup_eager']:.2f}x" if args.compile else ""))
    print(f"   robust accuracy on {acc['n']} test images of {data_name}, model trained {trained['seconds']:.0f} s "
          f"({trained['steps']} FGSM-RS steps, eps at {trained['final_eps']:.2f}):")
    print(f"   clean {100 * acc['clean']:.1f}% | ours {100 * acc['ours']:.1f}% | torchattacks "
          f"{100 * acc['torchattacks']:.1f}% | difference {100 * abs(acc['ours'] - acc['torchattacks']):.1f} points")

    # 2. Training-step cost: loss + backward + SGD step, model in train mode.
    base = copy.deepcopy(model).train()
    net = torch.compile(base, mode=args.compile_mode) if args.compile else base
    opt = torch.optim.SGD(base.parameters(), lr=STEP_LR)
    methods = {"Standard": (0, 0, Standard()), "FGSM-RS": (1, 0, FGSM(threat))}
    methods.update({f"PGD-{k}": (k, 0, PGD(threat, steps=k)) for k in args.steps})
    if not args.no_trades:
        methods.update({f"TRADES-{k}": (k, 2, TRADES(threat, steps=k)) for k in args.steps})

    def step_fn(method):
        def run():
            with autocast(device, args.precision):
                loss, _ = method.loss(net, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    times = race({n: step_fn(meth) for n, (_, _, meth) in methods.items()}, args.repeats, args.warmup, device)
    rows = []
    peak, chip = peak_flops(device, args.precision)
    std_flops = standard_step_flops(model, shape) if peak else None
    for n, (k, extra, _) in methods.items():
        cost = paired_ratio(times[n], times["Standard"])  # standard steps
        floor = floor_ratio(k, extra)
        row = {"method": n, "k": k, "ms": 1e3 * statistics.median(times[n]), "min_ms": 1e3 * min(times[n]),
               "images_per_s": args.batch / statistics.median(times[n]),
               "cost": cost, "floor": floor, "cost_over_floor": cost / floor}
        if peak:
            row["flops_per_step"] = std_flops * floor
            row["mfu"] = row["flops_per_step"] / (statistics.median(times[n]) * peak)
        rows.append(row)
    print("\n2. Training step (loss + backward + SGD step, train mode), cost in standard steps")
    print(f"   {'method':<10}{'k':>4}{'median ms':>11}{'min ms':>9}{'images/s':>10}{'cost':>8}"
          f"{'floor (2k+3)/3':>16}{'cost/floor':>12}")
    for r in rows:
        print(f"   {r['method']:<10}{r['k']:>4}{r['ms']:>11.2f}{r['min_ms']:>9.2f}{r['images_per_s']:>10.0f}"
              f"{r['cost']:>8.2f}{r['floor']:>16.2f}{r['cost_over_floor']:>12.2f}")
    if peak:
        print(f"\n3. Model FLOPs utilisation against {peak / 1e12:.0f} TFLOP/s peak ({chip}; Lightning's table)")
        for r in rows:
            print(f"   {r['method']:<10}{r['flops_per_step'] / 1e9:>10.1f} GFLOP/step  MFU {100 * r['mfu']:5.1f}%")

    results = {**info, "peak_flops": peak, "randomness": {"fresh": differ > 0, "fraction_pixels_differ": differ},
               "attack": attack, "training_step": rows}
    if args.fit_batches:
        results["fit"] = end_to_end(args, shape, threat, device)
        f = results["fit"]
        print(f"\n4. End to end: RobustClassifier(FGSM-RS) + Trainer.fit, device-resident random uint8 data "
              f"({'bf16-mixed' if args.precision == 'bf16' else '32-true'}"
              f"{', channels_last' if args.channels_last else ''}{', compiled' if args.compile else ''})")
        print(f"   {f['images_per_s']:,.0f} training images/s over {f['timed_batches']} batches of {args.batch} "
              f"(after {f['skipped_batches']} warm-up batches), final train loss {f['final_loss']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
