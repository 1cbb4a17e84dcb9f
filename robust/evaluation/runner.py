"""The attack loop every empirical measurement shares: fixed batches, a seed per batch and attack,
every attack on every batch, results gathered across torchrun ranks, finished batches kept in a
resume journal; and the per-example worst case over attacks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robust.attacks.independent import AttackOutcome
from robust.base import distributed
from robust.base.batching import batch_slice
from robust.base.batching import n_batches as count_batches
from robust.base.runtime import model_device
from robust.base.state import Journal
from robust.base.stats import accuracy_record

EXAMPLE_POOL = 32  # first-batch adversarial inputs kept (and stored in the state) for the example grid


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
    gets the whole result, and rank 0 alone reads and writes the state file.
    """
    device = model_device(model)
    n = len(x)
    journal = Journal(state_path, "evaluation", key, "model, data, threat, attacks, seed or batch size") \
        if state_path is not None else None
    records = distributed.run_on_main(journal.load) if journal is not None else {}
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
        for i, attack in enumerate(attacks):
            out: AttackOutcome = attack.run(model, bx, by, seed=seed + 100_003 * b + 1009 * i)
            rec["robust"][attack.name] = out.robust.cpu()
            rec["adv_pred"][attack.name] = out.adv_pred.cpu()
            rec["components"][attack.name] = dict(out.components)
            rec["seconds"][attack.name] = out.seconds
            if b == 0:
                rec["x_adv"][attack.name] = out.x_adv[:EXAMPLE_POOL].detach().cpu()
        return rec

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
