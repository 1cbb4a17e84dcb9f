"""The attack loop every empirical measurement shares: fixed batches, a seed per batch and attack,
every attack on every batch, results gathered across torchrun ranks, finished batches kept in a
resume journal, checked against the model before it is trusted; and the per-example worst case over attacks."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robust.attacks.independent import AttackOutcome, in_ball
from robust.base import distributed
from robust.base.batching import batch_slice
from robust.base.batching import n_batches as count_batches
from robust.base.runtime import model_device
from robust.base.state import Journal, StateError
from robust.base.stats import accuracy_record

EXAMPLE_POOL = 32  # first-batch adversarial inputs kept (and stored in the state) for the example grid
RECORD_KEYS = {"clean_pred", "robust", "adv_pred", "components", "seconds", "x_adv"}


def attack_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Any],
    batch_size: int,
    seed: int,
    state_path: Path | None,
    key: str | None,
    progress: bool,
    desc: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run every attack on every batch; returns per-example tensors (cpu) for the whole set.

    ``attacks`` are objects with ``name`` and ``run(model, x, y, seed) -> AttackOutcome``. Under
    torchrun the batches are shared out (:func:`robust.base.distributed.map_batches`), every rank
    gets the whole result, and rank 0 alone reads and writes the state file. A state's batches are
    checked before they are used (:func:`check_records`): its structure and ranges, every stored clean
    prediction against the model, and one stored batch attacked again with its own seed.
    """
    device = model_device(model)
    n = len(x)
    journal = Journal(state_path, "evaluation", key, "model, data, threat, attacks, seed or batch size") \
        if state_path is not None else None
    n_batches = count_batches(n, batch_size)

    def size(b: int) -> int:
        sl = batch_slice(b, n, batch_size)
        return sl.stop - sl.start

    def compute(b: int) -> dict[str, Any]:
        sl = batch_slice(b, n, batch_size)
        bx, by = x[sl].to(device), y[sl].to(device)
        with torch.no_grad():
            clean_pred = model(bx).argmax(1)
        rec: dict[str, Any] = {"clean_pred": clean_pred.cpu(), "robust": {}, "adv_pred": {}, "components": {},
                               "seconds": {}, "x_adv": {}}
        clean_ok = clean_pred == by  # a randomised model may answer the attack's own clean pass differently
        for i, attack in enumerate(attacks):
            out: AttackOutcome = attack.run(model, bx, by, seed=seed + 100_003 * b + 1009 * i)
            rec["robust"][attack.name] = (out.robust & clean_ok).cpu()
            rec["adv_pred"][attack.name] = out.adv_pred.cpu()
            rec["components"][attack.name] = dict(out.components)
            rec["seconds"][attack.name] = out.seconds
            if b == 0:
                rec["x_adv"][attack.name] = out.x_adv[:EXAMPLE_POOL].detach().cpu()
        return rec

    def load() -> dict[int, dict[str, Any]]:
        stored = journal.load()
        check_records(stored, model, x, y, attacks, batch_size, state_path, compute)
        return stored

    records = distributed.run_on_main(load) if journal is not None else {}
    bar = tqdm(total=n, desc=desc, unit="img", disable=not (progress and distributed.is_main()), leave=False)
    bar.update(sum(size(b) for b in records))

    def finished(new: dict[int, dict[str, Any]]) -> None:
        records.update(new)
        if journal is not None and distributed.is_main():
            journal.append(new)
        for b in new:
            bar.update(size(b))
            if on_batch is not None:
                on_batch(b, n_batches)

    distributed.map_batches(n_batches, compute, skip=records, on_round=finished)
    bar.close()
    names = [a.name for a in attacks]
    ordered = [records[b] for b in range(n_batches)]
    return {
        "clean_pred": torch.cat([r["clean_pred"] for r in ordered]),
        "robust": {a: torch.cat([r["robust"][a] for r in ordered]) for a in names},
        "adv_pred": {a: torch.cat([r["adv_pred"][a] for r in ordered]) for a in names},
        "components": {a: _sum_dicts(r["components"][a] for r in ordered) for a in names},
        "seconds": {a: sum(r["seconds"][a] for r in ordered) for a in names},
        "x_adv_first": {a: ordered[0]["x_adv"].get(a) for a in names} if ordered else {},
    }


def check_records(records: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any],
                  batch_size: int, path: Path, compute: Callable[[int], dict[str, Any]]) -> None:
    """Refuse a resume state whose batches the run cannot have produced, with a :class:`StateError`
    naming ``path`` and the first problem: the structure and ranges of every record (boolean masks of
    the batch's length, no robust example that is misclassified clean, predictions that agree with the
    masks, counts that add up, first-batch points in the ball), every stored clean prediction against
    the model, and one stored batch, chosen at random, attacked again with its own seed (``compute``).
    The journal's digest catches a state of another run; these checks catch an edited one. A few
    disagreements (1%) are allowed for the nondeterminism of GPU kernels; a randomised model (two forward
    passes disagree) gets the structural checks alone, since it cannot reproduce its own answers."""
    names = [a.name for a in attacks]
    n = len(y)
    device = model_device(model)

    def refuse(why: str) -> StateError:
        return StateError(f"{path}: {why}; the state was edited or damaged: start again with --fresh "
                          "(or delete it)")

    if not isinstance(records, Mapping):
        raise refuse("its batches are not a mapping")
    if not records:
        return
    total = count_batches(n, batch_size)
    for b in records:
        if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < total:
            raise refuse(f"batch index {b!r} is not one of 0..{total - 1}")
    with torch.no_grad():
        probe = x[batch_slice(min(records), n, batch_size)].to(device)
        one, two = model(probe).float(), model(probe).float()
    deterministic = torch.equal(one.argmax(1), two.argmax(1)) and \
        float((one - two).abs().max()) <= 1e-3 * max(1.0, float(one.abs().max()))
    for b, rec in records.items():
        sl = batch_slice(b, n, batch_size)
        _check_record(b, rec, y[sl], x[sl], names, attacks, refuse, deterministic)
    if not deterministic:
        return
    order = sorted(records)
    with torch.no_grad():
        for b in order:
            sl = batch_slice(b, n, batch_size)
            clean = model(x[sl].to(device)).argmax(1).cpu()
            wrong = int((clean != records[b]["clean_pred"]).sum())
            if wrong > len(clean) // 100:
                raise refuse(f"batch {b}: {wrong} of {len(clean)} stored clean predictions differ from the model's")
        first = records.get(0)
        if first is not None:
            for name in names:
                pool = first["x_adv"][name]
                k = len(pool)
                broken = (first["clean_pred"][:k] == y[:k]) & ~first["robust"][name][:k]
                if broken.any():
                    pred = model(pool[broken].to(device)).argmax(1).cpu()
                    kept = int((pred == y[:k][broken]).sum())
                    if kept > len(pred) // 100:
                        raise refuse(f"batch 0: {kept} stored adversarial example(s) of {name} are classified "
                                     "correctly by the model")
    b = random.SystemRandom().choice(order)
    again = compute(b)
    for name in names:
        differ = int((again["robust"][name] != records[b]["robust"][name]).sum())
        if differ > len(again["robust"][name]) // 100:
            raise refuse(f"batch {b}: attacked again with its seed, {name} gives {differ} different robust "
                         f"verdict(s) of {len(again['robust'][name])}")


def _is_int_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_record(b: int, rec: Any, y: torch.Tensor, x: torch.Tensor, names: list[str], attacks: Sequence[Any],
                  refuse: Callable[[str], StateError], deterministic: bool = True) -> None:
    """The structure and ranges of one stored batch (see :func:`check_records`); the relations that a
    randomised model's second forward pass may break hold only when ``deterministic``."""
    size = len(y)
    if not isinstance(rec, Mapping) or set(rec) != RECORD_KEYS:
        raise refuse(f"batch {b} is not an evaluation record (fields {sorted(RECORD_KEYS)})")
    clean = rec["clean_pred"]
    if not _is_int_tensor(clean) or tuple(clean.shape) != (size,):
        raise refuse(f"batch {b}: clean_pred must be {size} integer class indices")
    clean_ok = clean == y
    for field in ("robust", "adv_pred", "components", "seconds", "x_adv"):
        if not isinstance(rec[field], Mapping) or (field != "x_adv" and set(rec[field]) != set(names)):
            raise refuse(f"batch {b}: {field} must hold one entry per attack ({', '.join(names)})")
    for name in names:
        mask, adv = rec["robust"][name], rec["adv_pred"][name]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (size,):
            raise refuse(f"batch {b}: the robust mask of {name} must be {size} booleans")
        if not _is_int_tensor(adv) or tuple(adv.shape) != (size,):
            raise refuse(f"batch {b}: adv_pred of {name} must be {size} integer class indices")
        if bool((mask & ~clean_ok).any()):
            raise refuse(f"batch {b}: {name} marks {int((mask & ~clean_ok).sum())} example(s) robust that the "
                         "model misclassifies without attack")
        broken = clean_ok & ~mask
        if bool((adv[mask] != y[mask]).any()) or bool((adv[broken] == y[broken]).any()) \
                or (deterministic and bool((adv[~clean_ok] != clean[~clean_ok]).any())):
            raise refuse(f"batch {b}: the adversarial predictions of {name} contradict its robust mask")
        parts = rec["components"][name]
        if not isinstance(parts, Mapping) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in parts.values()) \
                or sum(parts.values()) > size or (deterministic and sum(parts.values()) != int(broken.sum())):
            raise refuse(f"batch {b}: the counts of {name}'s parts do not add up to the {int(broken.sum())} "
                         "example(s) it broke")
        seconds = rec["seconds"][name]
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) \
                or seconds < 0:
            raise refuse(f"batch {b}: seconds of {name} must be a finite number >= 0, got {seconds!r}")
    pool = rec["x_adv"]
    if b != 0:
        if pool:
            raise refuse(f"batch {b}: only batch 0 keeps adversarial examples")
        return
    k = min(size, EXAMPLE_POOL)
    if set(pool) != set(names):
        raise refuse(f"batch 0: x_adv must hold one entry per attack ({', '.join(names)})")
    for name, attack in zip(names, attacks):
        t = pool[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (k, *x.shape[1:]) or t.dtype != x.dtype:
            raise refuse(f"batch 0: x_adv of {name} must be {k} images of shape {tuple(x.shape[1:])}")
        threat = getattr(attack, "threat", None)
        if not bool(torch.isfinite(t).all()) or (threat is not None and not bool(in_ball(t, x[:k], threat).all())):
            raise refuse(f"batch 0: x_adv of {name} leaves [0, 1] or the eps-ball")
        kept = rec["robust"][name][:k]
        if not torch.equal(t[kept], x[:k][kept]):
            raise refuse(f"batch 0: x_adv of {name} moves examples it marks robust")


def _sum_dicts(ds: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def summarise(
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    robust_masks: dict[str, torch.Tensor],
    adv_preds: dict[str, torch.Tensor],
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, dict, dict, list]:
    """Worst case over attacks, per-class accuracies and where adversarial examples land.

    Returns ``(robust, adv_pred, clean_record, per_class, confusion)``; ``adv_pred`` is the
    prediction under the first attack (in the given order) that broke the example.
    """
    clean_ok = clean_pred == y
    robust = clean_ok.clone()
    for mask in robust_masks.values():
        robust &= mask
    adv_pred = clean_pred.clone()
    assigned = ~clean_ok
    for name, mask in robust_masks.items():
        newly = ~mask & ~assigned
        adv_pred[newly] = adv_preds[name][newly]
        assigned |= newly
    per_class = {}
    for c in range(n_classes):
        sel = y == c
        k = int(sel.sum())
        if k == 0:
            continue
        per_class[str(c)] = {"n": k, "clean": accuracy_record(int(clean_ok[sel].sum()), k),
                             "robust": accuracy_record(int(robust[sel].sum()), k)}
    broken = clean_ok & ~robust
    pairs = y[broken] * n_classes + adv_pred[broken]
    counts = torch.bincount(pairs, minlength=n_classes * n_classes)
    confusion = [{"true": int(i) // n_classes, "adversarial": int(i) % n_classes, "count": int(counts[i])}
                 for i in counts.nonzero().flatten()]
    confusion.sort(key=lambda d: (-d["count"], d["true"], d["adversarial"]))
    return robust, adv_pred, accuracy_record(int(clean_ok.sum()), len(y)), per_class, confusion
