"""Benchmark: randomized-smoothing certification throughput against the base model's plain forward.

Run ``python scripts/bench_certify.py`` (``--help`` for flags). For each model (by default the
IBP papers' small CNN on 1x28x28 MNIST-sized inputs and ResNet-110 on 3x32x32 CIFAR-sized
inputs, Cohen et al.'s network) at one batch size it measures, in one run and on one device:

* the ceiling: batched forward passes, in eval mode under ``no_grad``, of the network that
  certification runs (on CUDA by default: the model with BatchNorm folded into its convolutions,
  NHWC memory order, bf16 autocast; ``--precision 32`` / ``--no-fast`` turn those off) on a
  fixed batch, in images per second; the unmodified model's forward is printed next to it;
* certification: ``Smooth._counts`` (the Monte Carlo loop of CERTIFY: fresh Gaussian noise
  per sample, forward, argmax and class counts on the device) for ``--n`` samples of one image,
  in noisy samples per second;

and prints their ratio. Goal: >= 0.80 on CPU (drawing the noise alone costs 15-20% there) and
>= 0.90 on a GPU. With ``--certify-images K`` (default 3 on CUDA) it also times K complete
certificates, ``Smooth.certify(x, n0=100, n=100_000, alpha=0.001)``, in seconds per image
(Cohen et al.'s setting; their ResNet-110 took about 15 s per image on an RTX 2080 Ti). Timing: ``time.perf_counter`` around ``torch.cuda.synchronize()`` on CUDA;
the median of ``--repeats`` runs after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robust  # noqa: E402
from robust.base.runtime import autocast, fast_cuda  # noqa: E402
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


def check_fresh_noise(device: torch.device) -> float:
    """Every noisy sample of CERTIFY's loop gets its own noise: record what the network sees over
    three batches and assert that no two samples (within or across batches) are equal. Returns
    the smallest distance between two samples."""
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().float().flatten(1).clone())
            return torch.zeros(len(x), 10, device=x.device)

    recorder = Recorder().to(device)
    Smooth(recorder, 10, sigma=0.25, seed=0, fast=False)._counts(torch.rand(1, 8, 8, device=device), 12, 4, None)
    samples = torch.cat(seen)
    assert len(samples) == 12, f"expected 12 noisy samples, saw {len(samples)}"
    gaps = torch.cdist(samples, samples) + torch.eye(len(samples), device=device) * 1e9
    closest = float(gaps.min())
    assert closest > 0, "two noisy samples were identical: the noise is not fresh for every sample"
    return closest


def bench_model(name: str, device: torch.device, batch: int, n: int, repeats: int, warmup: int,
                precision: str | None = None, fast: bool | None = None, certify_images: int = 0,
                certify_n: int = 100_000, compile: bool = False) -> dict:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device).eval()
    images = torch.rand((batch, *shape), device=device)
    image = images[0]
    passes = max(1, n // batch)
    smooth = Smooth(model, 10, sigma=0.25, seed=0, precision=precision, fast=fast, compile=compile)
    counter = smooth._counter()  # the network the noisy passes run through
    batch_in = images.contiguous(memory_format=torch.channels_last) if smooth.fast else images

    def forward(net) -> None:
        with torch.no_grad(), autocast(device, smooth.precision):
            for _ in range(passes):
                net(batch_in).argmax(1)

    def certify() -> None:
        smooth._counts(image, passes * batch, batch, None)

    forward_s = _median_seconds(lambda: forward(counter), device, repeats, warmup)
    certify_s = _median_seconds(certify, device, repeats, warmup)
    plain_s = _median_seconds(lambda: forward(model), device, repeats, warmup) if counter is not model else forward_s
    samples = passes * batch
    result = {"input": list(shape), "batch": batch, "samples": samples, "precision": smooth.precision,
              "fast": smooth.fast, "compile": compile, "forward_images_per_s": samples / forward_s,
              "plain_forward_images_per_s": samples / plain_s, "certify_samples_per_s": samples / certify_s}
    result["ratio"] = result["certify_samples_per_s"] / result["forward_images_per_s"]
    if certify_images:
        seconds = []
        for i in range(certify_images):
            _sync(device)
            start = time.perf_counter()
            smooth.certify(images[i], n0=100, n=certify_n, alpha=0.001, batch_size=batch)
            _sync(device)
            seconds.append(time.perf_counter() - start)
        result["certify_n"] = certify_n
        result["certify_seconds_per_image"] = statistics.median(seconds)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn_small,resnet110", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 1000 on CPU, 10,000 on CUDA")
    parser.add_argument("--n", type=int, default=None, help="noisy samples per timed run (default: 10 batches on CUDA, 2 on CPU)")
    parser.add_argument("--precision", choices=("32", "bf16"), default=None,
                        help="noisy passes in float32 or bf16 autocast (default: bf16 on CUDA, 32 on CPU)")
    parser.add_argument("--no-fast", action="store_true",
                        help="count with the unmodified model (no BatchNorm folding, no channels_last)")
    parser.add_argument("--certify-images", type=int, default=None,
                        help="complete certificates to time (default: 3 on CUDA, 0 on CPU)")
    parser.add_argument("--certify-n", type=int, default=100_000, help="their n (n0 is 100)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the counting network")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    fast_cuda(device)  # cudnn.benchmark on CUDA, as `robust certify` sets it
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
    out["fresh_noise_min_distance"] = check_fresh_noise(device)
    print(f"  fresh noise: 12 samples over 3 batches, all distinct (closest pair {out['fresh_noise_min_distance']:.2f} "
          f"apart in L2; ok)")
    for name in args.models.split(","):
        certify_images = args.certify_images if args.certify_images is not None else (3 if device.type == "cuda" else 0)
        r = bench_model(name, device, batch, n, args.repeats, args.warmup, precision=args.precision,
                        fast=False if args.no_fast else None, certify_images=certify_images,
                        certify_n=args.certify_n, compile=args.compile)
        out["models"][name] = r
        verdict = "ok" if r["ratio"] >= GOAL[device.type] else "BELOW GOAL"
        how = (f"{'bf16' if r['precision'] == 'bf16' else 'fp32'}{', BN folded + NHWC' if r['fast'] else ''}"
               f"{', compiled' if r['compile'] else ''}")
        print(f"  {name:<10} forward {r['forward_images_per_s']:>12,.0f} img/s   certify "
              f"{r['certify_samples_per_s']:>12,.0f} samples/s   ratio {r['ratio']:.3f} "
              f"(goal >= {GOAL[device.type]:.2f}: {verdict})   [{how}; unmodified model's forward "
              f"{r['plain_forward_images_per_s']:,.0f} img/s]")
        if "certify_seconds_per_image" in r:
            sec = r["certify_seconds_per_image"]
            goal = (f"; goal < 1 s on a GPU: {'ok' if sec < 1 else 'ABOVE GOAL'}"
                    if device.type == "cuda" and args.certify_n == 100_000 else "")
            print(f"  {name:<10} CERTIFY n0=100, n={args.certify_n:,}, batch {batch}: {sec:.3f} s per image "
                  f"(median of {certify_images}{goal})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
