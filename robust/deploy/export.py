"""Deployment export: the hardened model as ONNX and TorchScript, checked against the original.

What ships must be the model that was measured. :func:`export_model` writes the files;
:func:`verify_export` runs each exported model (ONNX through onnxruntime, TorchScript through
``torch.jit.load``) on a sample, compares its predictions and logits with the original's, and
re-measures robust accuracy on the exported model with the adversarial examples crafted on the
original (a registry attack), which must agree within ``tolerance`` (0.5 points by default).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust.attacks.independent import build_attack
from robust.base.batching import check_images
from robust.base.runtime import batched_logits, eval_mode
from robust.base.stats import accuracy_record
from robust.base.threat import ThreatModel

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def export_model(model: nn.Module, example: torch.Tensor, out_dir: str | Path,
                 formats: Sequence[str] = FORMATS, opset: int = 18) -> dict[str, Path]:
    """Write ``model`` (on CPU, eval mode, fp32) as ONNX (dynamic batch size, via ``torch.export``)
    and/or TorchScript (traced) into ``out_dir``; ``example`` is an input batch (N, C, H, W)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    check_images(example)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float()
    example = example.cpu().float()
    written: dict[str, Path] = {}
    with eval_mode(model), torch.no_grad():
        if "onnx" in formats:
            path = out / FILES["onnx"]
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},),
                              external_data=False, verbose=False)  # one file: weights inside
            written["onnx"] = path
        if "torchscript" in formats:
            path = out / FILES["torchscript"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is in maintenance in torch 2.x
                torch.jit.trace(model, example, check_trace=True).save(str(path))
            written["torchscript"] = path
    return written


def load_exported(fmt: str, path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images -> logits (CPU tensors) running the exported file."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])

        return run_onnx
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x.detach().cpu().float())

        return run_ts
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def verify_export(model: nn.Module, exported: dict[str, Path], x: torch.Tensor, y: torch.Tensor,
                  threat: ThreatModel | dict, attack: str = "pgd", attack_options: dict | None = None,
                  batch_size: int = 256, seed: int = 0, tolerance: float = 0.005) -> dict[str, Any]:
    """Compare each exported model with ``model`` on ``(x, y)``: prediction agreement, largest logit
    difference, clean accuracy, and robust accuracy on adversarial examples crafted on ``model``
    by ``attack`` under ``threat``. ``ok`` when predictions agree on every clean input and the
    robust accuracies differ by at most ``tolerance`` (a fraction: 0.005 = 0.5 points)."""
    check_images(x, y)
    threat = ThreatModel.coerce(threat)
    model = model.cpu().float()
    with eval_mode(model):
        logits = batched_logits(model, x, batch_size)
    attacker = build_attack(attack, threat, logits.shape[1], **(attack_options or {}))
    start = time.perf_counter()
    with eval_mode(model):
        advs = [attacker.run(model, x[i:i + batch_size], y[i:i + batch_size], seed=seed + i).x_adv
                for i in range(0, len(x), batch_size)]
    x_adv = torch.cat(advs)
    with eval_mode(model):
        adv_logits = batched_logits(model, x_adv, batch_size)
    n = len(y)
    original = {"clean": accuracy_record(int((logits.argmax(1) == y).sum()), n),
                "robust": accuracy_record(int((adv_logits.argmax(1) == y).sum()), n)}
    results: dict[str, Any] = {}
    for fmt, path in exported.items():
        run = load_exported(fmt, path)
        out, out_adv = batched_logits(run, x, batch_size), batched_logits(run, x_adv, batch_size)
        agree = (out.argmax(1) == logits.argmax(1)).float().mean().item()
        robust = accuracy_record(int((out_adv.argmax(1) == y).sum()), n)
        gap = abs(robust["accuracy"] - original["robust"]["accuracy"])
        results[fmt] = {
            "path": str(path), "bytes": Path(path).stat().st_size, "prediction_agreement": agree,
            "adversarial_prediction_agreement": (out_adv.argmax(1) == adv_logits.argmax(1)).float().mean().item(),
            "max_abs_logit_difference": float((out - logits).abs().max()),
            "clean": accuracy_record(int((out.argmax(1) == y).sum()), n), "robust": robust,
            "robust_gap": gap, "ok": bool(agree == 1.0 and gap <= tolerance + 1e-12),
        }
    return {"threat": threat.to_dict(),
            "attack": {"name": attack, "settings": attacker.settings}, "n_examples": n, "tolerance": tolerance,
            "original": original, "exported": results, "ok": all(r["ok"] for r in results.values()),
            "seconds": time.perf_counter() - start, "versions": _versions()}


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        import onnx
        import onnxruntime

        out.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    except ImportError:
        pass
    return out

