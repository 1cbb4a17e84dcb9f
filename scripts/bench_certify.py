"""Benchmark: randomized-smoothing certification throughput against the base model's plain forward.

Run ``python scripts/bench_certify.py`` (``--help`` for flags). For each model (by default the
IBP papers' small CNN on 1x28x28 MNIST-sized inputs and ResNet-110 on 3x32x32 CIFAR-sized
inputs, Cohen et al.'s network) at one batch size it measures, in one run and on one device:

* the ceiling: batched forward passes of the base model in eval mode under ``no_grad`` (bf16
  autocast on CUDA, as certification uses) on a fixed batch, in images per second;
* certification: ``Smooth._counts`` (the Monte Carlo loop of CERTIFY: fresh Gaussian noise
  per sample, forward, argmax and class counts on the device) for ``--n`` samples of one image,
  in noisy samples per second;

and prints their ratio. Goal: >= 0.80 on CPU (drawing the noise alone costs 15-20% there) and
>= 0.90 on a GPU. Timing: ``time.perf_counter`` around ``torch.cuda.synchronize()`` on CUDA;
the median of ``--repeats`` runs after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robust  # noqa: E402
from robust.certify.smoothing import Smooth  # noqa: E402
from robust.models import CNNSmall, ResNet110  # noqa: E402

MODELS = {
    "cnn_small": (lambda: CNNSmall(num_classes=10), (1, 28, 28)),
    "resnet110": (lambda: ResNet110(num_classes=10, mean=[0.4914, 0.4822, 0.4465], std=[0.2023, 0.1994, 0.2010]),
                  (3, 32, 32)),
}
GOAL = {"cpu": 0.80, "cuda": 0.90}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, device: torch.device, batch: int, n: int, repeats: int, warmup: int) -> dict:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device).eval()
    images = torch.rand((batch, *shape), device=device)
    image = images[0]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    passes = max(1, n // batch)

    def forward() -> None:
        with torch.no_grad(), autocast:
            for _ in range(passes):
                model(images).argmax(1)

    smooth = Smooth(model, 10, sigma=0.25, seed=0)

    def certify() -> None:
        smooth._counts(image, passes * batch, batch, None)

    forward_s = _median_seconds(forward, device, repeats, warmup)
    certify_s = _median_seconds(certify, device, repeats, warmup)
    samples = passes * batch
    result = {"input": list(shape), "batch": batch, "samples": samples,
              "forward_images_per_s": samples / forward_s, "certify_samples_per_s": samples / certify_s}
    result["ratio"] = result["certify_samples_per_s"] / result["forward_images_per_s"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn_small,resnet110", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 1000 on CPU, 10,000 on CUDA")
    parser.add_argument("--n", type=int, default=None, help="noisy samples per timed run (default: 10 batches on CUDA, 2 on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (10_000 if device.type == "cuda" else 1000)
    n = args.n or (10 if device.type == "cuda" else 2) * batch
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    out = {"machine": machine, "device": device.type,
           "versions": {"python": platform.python_version(), "torch": torch.__version__, "robust": robust.__version__},
           "goal": GOAL[device.type], "models": {}}
    print(f"certification throughput vs plain forward on {machine} (batch {batch}, {n} samples, "
          f"median of {args.repeats})")
    for name in args.models.split(","):
        r = bench_model(name, device, batch, n, args.repeats, args.warmup)
        out["models"][name] = r
        verdict = "ok" if r["ratio"] >= GOAL[device.type] else "BELOW GOAL"
        print(f"  {name:<10} forward {r['forward_images_per_s']:>12,.0f} img/s   certify "
              f"{r['certify_samples_per_s']:>12,.0f} samples/s   ratio {r['ratio']:.3f} "
              f"(goal >= {GOAL[device.type]:.2f}: {verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
