"""Deployment export: the hardened model as ONNX and TorchScript, checked against the original.

What ships must be the model that was measured. :func:`export_verified` writes the files into a
staging folder inside the output folder, runs each exported model (ONNX through onnxruntime,
TorchScript through ``torch.jit.load``) on a sample, compares its predictions and logits with the
original's, re-measures robust accuracy on the exported model with the adversarial examples
crafted on the original (a registry attack), which must agree within ``tolerance`` (0.5 points by
default), and only when every check passes replaces the files of an earlier export
(``model.onnx``, ``model.torchscript.pt``, ``export.json``). A refused or failed export leaves the
earlier one as it was. :func:`export_model` and :func:`verify_export` are the two halves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust.attacks.independent import EvalAttack, build_attack
from robust.base.batching import check_images
from robust.base.errors import InputError
from robust.base.runtime import batched_logits, eval_mode
from robust.base.safe_load import NonFiniteWeightsError
from robust.base.safe_load import check_finite_weights as finite_weights
from robust.base.state import atomic_write_text, fsync_dir
from robust.base.stats import accuracy_record
from robust.base.threat import ThreatModel

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
REPORT = "export.json"
DEFAULT_OPSET = 18  # the dynamo exporter's own opset; older ones go through onnx's version converter
MIN_OPSET = 7  # the oldest opset torch.onnx has targeted
STAGING = ".export-"
STAGING_SUFFIX = ".tmp"


class ExportError(InputError, ValueError):
    """An export that cannot be made or checked; the files of an earlier export are left as they were."""


def supported_opsets() -> range:
    """The ONNX opsets an export may ask for: 7 up to the newest opset of the installed ``onnx``."""
    import onnx.defs

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_opset(opset: Any) -> int:
    """``opset`` as an int inside :func:`supported_opsets`, else an :class:`ExportError` naming the range."""
    span = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in span:
        raise ExportError(f"opset must be an ONNX opset from {span.start} to {span.stop - 1} (the installed onnx), "
                          f"got {opset!r}; the exporter's own is {DEFAULT_OPSET}")
    return opset


def check_formats(formats: Sequence[str]) -> list[str]:
    """The export formats, each one of :data:`FORMATS`, at least one, no repeats."""
    chosen = list(dict.fromkeys(formats)) if not isinstance(formats, str) else [formats]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ExportError(f"unknown export format(s) {unknown or chosen}; choose from {', '.join(FORMATS)}")
    return chosen


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer, naming the first such tensor: its
    exported twin would agree with it and pass every check while predicting nothing."""
    try:
        finite_weights(model, "export")
    except NonFiniteWeightsError as err:
        raise ExportError(str(err)) from None


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a path that is, or can become, a folder (no file on the way)."""
    out = Path(out_dir)
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ExportError(f"output folder {out} cannot be made: {folder} is a file; choose another --out")
            break
    return out


def export_model(model: nn.Module, example: torch.Tensor, out_dir: str | os.PathLike,
                 formats: Sequence[str] = FORMATS, opset: int = DEFAULT_OPSET) -> dict[str, Path]:
    """Write ``model`` (on CPU, eval mode, fp32) as ONNX (dynamic batch size, via ``torch.export``, opset
    ``opset`` exactly or an :class:`ExportError`) and/or TorchScript (traced) into ``out_dir``;
    ``example`` is an input batch (N, C, H, W) in [0, 1]. The files replace earlier ones only once
    every format has been written; a model with non-finite weights is refused."""
    formats = check_formats(formats)
    if "onnx" in formats:
        opset = check_opset(opset)
    check_images(example, nonempty=True)
    check_finite_weights(model)
    with staging(check_out_dir(out_dir)) as stage:
        written = write_formats(model, example, stage, formats, opset)
        return commit(written, Path(out_dir), remove_stale=False)


def write_formats(model: nn.Module, example: torch.Tensor, folder: Path, formats: Sequence[str],
                  opset: int) -> dict[str, Path]:
    """The export itself, into ``folder``; an exporter failure becomes an :class:`ExportError`."""
    model = model.cpu().float()
    example = example.cpu().float()
    written: dict[str, Path] = {}
    with eval_mode(model), torch.no_grad():
        if "onnx" in formats:
            path = folder / FILES["onnx"]
            try:
                with _quiet_exporter():
                    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                                      input_names=["images"], output_names=["logits"],
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                      external_data=False, verbose=False)  # one file: weights inside
            except Exception as err:  # noqa: BLE001 - the exporter's many failure types end in one line
                raise ExportError(f"the ONNX exporter failed on this model: {_first_line(err)}") from None
            written_opset = onnx_opset(path)
            if written_opset != opset:
                raise ExportError(f"the ONNX exporter could not write opset {opset} for this model (it wrote "
                                  f"{written_opset}); ask for --opset {DEFAULT_OPSET} or newer")
            written["onnx"] = path
        if "torchscript" in formats:
            path = folder / FILES["torchscript"]
            try:
                with _jit_quiet():
                    torch.jit.trace(model, example, check_trace=True).save(str(path))
            except Exception as err:  # noqa: BLE001 - as above
                raise ExportError(f"TorchScript tracing failed on this model: {_first_line(err)}") from None
            written["torchscript"] = path
    return written


def onnx_opset(path: str | os.PathLike) -> int | None:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


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
        with _jit_quiet():
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
    check_images(x, y, nonempty=True)
    _check_settings(batch_size, tolerance)
    check_finite_weights(model)
    threat = ThreatModel.coerce(threat)
    model = model.cpu().float()
    with eval_mode(model):
        logits = batched_logits(model, x, batch_size)
    attacker = build_attack(attack, threat, logits.shape[1], **(attack_options or {}))
    return _verify(model, logits, attacker, exported, x, y, batch_size, seed, tolerance)


def export_verified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out_dir: str | os.PathLike,
                    threat: ThreatModel | dict, formats: Sequence[str] = FORMATS, opset: int = DEFAULT_OPSET,
                    attack: str = "pgd", attack_options: dict | None = None, batch_size: int = 256, seed: int = 0,
                    tolerance: float = 0.005, record: dict | None = None) -> dict[str, Any]:
    """Export ``model`` into ``out_dir`` and verify it there (:func:`verify_export` on ``(x, y)``), all or nothing.

    Every argument, the weights and the attack are checked before anything is written. The files are
    made and checked in a staging folder inside ``out_dir``; when every check passes they replace
    the earlier export's (``export.json`` last, the report with ``record`` merged in; a model file of
    a format not exported this time is removed, since the new report does not cover it). Otherwise
    nothing in ``out_dir`` changes: the report comes back with ``ok`` false and ``written`` false.
    """
    formats = check_formats(formats)
    if "onnx" in formats:
        opset = check_opset(opset)
    check_images(x, y, nonempty=True)
    _check_settings(batch_size, tolerance)
    check_finite_weights(model)
    out = check_out_dir(out_dir)
    threat = ThreatModel.coerce(threat)
    model = model.cpu().float()
    with eval_mode(model):
        logits = batched_logits(model, x, batch_size)
    attacker = build_attack(attack, threat, logits.shape[1], **(attack_options or {}))
    with staging(out) as stage:
        files = write_formats(model, x[:min(len(x), 8)], stage, formats, opset)
        report = _verify(model, logits, attacker, files, x, y, batch_size, seed, tolerance)
        for fmt, entry in report["exported"].items():
            entry["path"] = str(out / FILES[fmt])
        report.update(record or {})
        report["written"] = bool(report["ok"])
        if report["ok"]:
            atomic_write_text(stage / REPORT, json.dumps(report, indent=2) + "\n")
            commit({**files, "report": stage / REPORT}, out, remove_stale=True)
    return report


def _check_settings(batch_size: Any, tolerance: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 1:
        raise ExportError(f"tolerance must be a fraction in [0, 1] (0.005 = 0.5 points), got {tolerance!r}")


def _verify(model: nn.Module, logits: torch.Tensor, attacker: EvalAttack, exported: dict[str, Path],
            x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, tolerance: float) -> dict[str, Any]:
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
        try:
            run = load_exported(fmt, path)
            out, out_adv = batched_logits(run, x, batch_size), batched_logits(run, x_adv, batch_size)
        except Exception as err:  # noqa: BLE001 - a runtime that cannot run the file fails the export in one line
            raise ExportError(f"the exported {fmt} model does not run: {_first_line(err)}") from None
        agree = (out.argmax(1) == logits.argmax(1)).float().mean().item()
        robust = accuracy_record(int((out_adv.argmax(1) == y).sum()), n)
        gap = abs(robust["accuracy"] - original["robust"]["accuracy"])
        finite = bool(torch.isfinite(out).all() and torch.isfinite(out_adv).all())
        results[fmt] = {
            "path": str(path), "bytes": Path(path).stat().st_size, "prediction_agreement": agree,
            "adversarial_prediction_agreement": (out_adv.argmax(1) == adv_logits.argmax(1)).float().mean().item(),
            "max_abs_logit_difference": float((out - logits).abs().max()),
            "clean": accuracy_record(int((out.argmax(1) == y).sum()), n), "robust": robust,
            "robust_gap": gap, "finite": finite, "ok": bool(finite and agree == 1.0 and gap <= tolerance + 1e-12),
        }
        if fmt == "onnx":
            results[fmt]["opset"] = onnx_opset(path)
    return {"threat": attacker.threat.to_dict(),
            "attack": {"name": attacker.name, "settings": attacker.settings}, "n_examples": n, "tolerance": tolerance,
            "original": original, "exported": results, "ok": all(r["ok"] for r in results.values()),
            "seconds": time.perf_counter() - start, "versions": _versions()}


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder inside ``out`` (made, with its parents, if missing) for files that may replace
    ``out``'s own; removed at the end, with the folders made for it when the block failed."""
    made = [folder for folder in (out, *out.parents) if not folder.exists()][::-1]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{STAGING}*{STAGING_SUFFIX}"):  # left by a process killed mid-export
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING, suffix=STAGING_SUFFIX, dir=out))
    done = False
    try:
        yield stage
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:
                    break


def commit(files: dict[str, Path], out: Path, remove_stale: bool) -> dict[str, Path]:
    """Move the staged ``files`` into ``out`` (same file system: each move is atomic).

    The earlier ``export.json`` goes first and the new one (key ``"report"``) comes last, so at no
    moment does a report vouch for files it did not check; with ``remove_stale`` a model file of a
    format not in ``files`` goes too."""
    moved: dict[str, Path] = {}
    (out / REPORT).unlink(missing_ok=True)
    for fmt, name in FILES.items():
        if fmt in files:
            moved[fmt] = out / name
            os.replace(files[fmt], moved[fmt])
        elif remove_stale:
            (out / name).unlink(missing_ok=True)
    if "report" in files:
        moved["report"] = out / REPORT
        os.replace(files["report"], moved["report"])
    fsync_dir(out)
    return moved


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs its fallbacks (with tracebacks) as warnings; the opset check reports the outcome."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _jit_quiet() -> Iterator[None]:
    """TorchScript is deprecated in torch 2.x and says so on every call; the format still ships."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no message'}"[:300]


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        import onnx
        import onnxruntime

        out.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    except ImportError:
        pass
    return out
