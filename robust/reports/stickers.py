"""Physical stickers over held-out tracks: a Markdown section (success per frame and per track, k = any / half /
all, with 95% intervals) and a figure of the sticker on a few signs, clean above and stickered below.

Reads the dicts of :func:`robust.evaluation.stickers.evaluate_on_tracks`, keyed by a name the caller chooses
(e.g. ``"standard, stop sticker"``), and the tensors of :func:`robust.evaluation.stickers.sticker_examples`.
A success record reads ``"62.50% [24.49, 91.48] (5/8)"``: the rate, its Clopper-Pearson interval, its sample.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust.reports.files import json_text, write_staged
from robust.reports.format import MISSING, fmt_accuracy, fmt_value, interval, metric_key, percent
from robust.reports.markdown import class_label, class_name, image, table
from robust.reports.plots import RIGHT_COLOR, WRONG_COLOR, figure, save

__all__ = ["fmt_success", "sticker_label", "sticker_section", "plot_sticker", "render_stickers",
           "write_sticker_report"]


def fmt_success(record: Mapping | None) -> str:
    """``"62.50% [24.49, 91.48] (5/8)"`` from a success record (rate, successes, n, ci95)."""
    if not record:
        return MISSING
    text = percent(record.get("rate"))
    ci = interval(record.get("ci95"))
    return f"{text} {ci} ({record.get('successes', '?')}/{record.get('n', '?')})" if ci else text


def sticker_label(threat: Mapping | None, class_names: Sequence[str] | None = None) -> str:
    """``"sticker (bars, 10.5% of the image), untargeted"`` or ``"universal patch (10.0% of the image, 10 px) →
    1 (speed limit 30)"``."""
    if not threat:
        return MISSING
    size = percent(threat.get("area_fraction"), 1)
    if threat.get("kind") == "sticker":
        what = f"sticker ({threat.get('mask', MISSING)}, {size} of the image)"
    else:
        what = f"universal patch ({size} of the image, {threat.get('side_px', MISSING)} px)"
    target = threat.get("target")
    return what + (", untargeted" if target is None else f" → {class_label(int(target), class_names)}")


def _optimised_on(threat: Mapping, class_names: Sequence[str] | None) -> str:
    on = threat.get("optimised_on") or {}
    classes = on.get("classes") or []
    shown = ", ".join(class_label(int(c), class_names) for c in classes[:4]) + (", ..." if len(classes) > 4 else "")
    tracks = f" from {on['tracks']} tracks" if on.get("tracks") is not None else ""
    return f"{on.get('images', MISSING)} images{tracks} of class {shown}" if len(classes) == 1 else \
        f"{on.get('images', MISSING)} images{tracks} of {len(classes)} classes ({shown})"


def _view(eot: Mapping) -> str:
    if not eot.get("rotation") and not eot.get("translation") and not eot.get("perspective") and not eot.get("blur") \
            and list(eot.get("scale") or [1, 1]) == [1, 1] and list(eot.get("brightness") or [1, 1]) == [1, 1]:
        return "none (the image as it is)"
    return (f"rotation ±{fmt_value(eot.get('rotation'))}°, scale {fmt_value(eot.get('scale'))}, "
            f"shift ±{fmt_value(eot.get('translation'))} of the side, perspective {fmt_value(eot.get('perspective'))}, "
            f"brightness {fmt_value(eot.get('brightness'))}, blur σ ≤ {fmt_value(eot.get('blur'))} px")


def sticker_section(results: Mapping[str, Mapping], class_names: Sequence[str] | None = None,
                    images: Mapping[str, str] | None = None) -> list[str]:
    """``## Physical stickers over held-out tracks``: one row per result, then each one's protocol and figure
    (``images`` maps a result's name to a PNG relative to the document)."""
    present = {k: v for k, v in (results or {}).items() if v}
    if not present:
        return []
    levels = list(dict.fromkeys(level for r in present.values() for level in (r.get("per_track") or {})))
    lines = ["## Physical stickers over held-out tracks", "",
             f"Convention: {next(iter(present.values())).get('convention', MISSING)}.", ""]
    rows = []
    for name, r in present.items():
        clean_tracks = (r.get("clean_tracks") or {}).get("all")
        rows.append([name, sticker_label(r.get("threat"), class_names), fmt_accuracy(r.get("clean")),
                     fmt_accuracy(clean_tracks) if clean_tracks else MISSING, fmt_success(r.get("per_image"))]
                    + [fmt_success((r.get("per_track") or {}).get(level)) for level in levels]
                    + [f"{r.get('tracks_evaluated', MISSING)} of {r.get('tracks', MISSING)}"])
    lines += table(["attack", "threat", "clean frames", "clean tracks (all frames)", "frames fooled"]
                   + [f"tracks fooled (k = {level})" for level in levels] + ["tracks counted"], rows) + [""]
    for name, r in present.items():
        threat = r.get("threat") or {}
        eot = threat.get("eot") or {}
        place = threat.get("placement") or {}
        lines.append(f"- **{name}**: optimised on {_optimised_on(threat, class_names)}; "
                     f"{threat.get('steps', MISSING)} Adam steps at lr {fmt_value(threat.get('lr'))} (pixels), "
                     f"batch {threat.get('batch_size', MISSING)}, loss {threat.get('loss', MISSING)}, "
                     f"printability {fmt_value(threat.get('printability'))}, "
                     f"smoothness {fmt_value(threat.get('smoothness'))}; "
                     + (f"placement rotation ±{fmt_value(place.get('rotation'))}°, scale "
                        f"{fmt_value(place.get('scale'))}; " if place else "")
                     + f"view: {_view(eot)}; "
                     f"evaluated on {r.get('frames', MISSING)} frames, seed {r.get('seed', MISSING)}")
    lines.append("")
    for name in present:
        if images and name in images:
            lines += image(f"{name}", images[name])
    return lines


def _array(t: Any) -> np.ndarray:
    """(C, H, W) tensor or array in [0, 1] → (H, W) or (H, W, 3)."""
    a = t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=float)
    return np.clip(a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0)), 0.0, 1.0)


def _short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_sticker(examples: Mapping[str, Any], path: str | os.PathLike, class_names: Sequence[str] | None = None,
                 title: str | None = None) -> Path:
    """First column: the sticker (grey checkerboard where the mask is empty). Then one column per frame: its clean
    view above and its stickered view below, titled with the prediction (red: fooled)."""
    clean, adv = examples["clean"], examples["adv"]
    n = len(clean)
    y, p_clean, p_adv = ([int(v) for v in examples[k]] for k in ("y", "pred_clean", "pred_adv"))
    target = examples.get("target")

    def name(i: int) -> str:
        return _short(class_name(i, class_names) or str(i))

    art, mask = _array(examples["pixels"]), _array(examples["mask"])
    mask = mask if mask.ndim == 2 else mask[..., 0]
    checker = 0.35 + 0.3 * ((np.indices(mask.shape).sum(0) // max(1, mask.shape[0] // 8)) % 2)
    if art.ndim == 3:
        art = art * mask[..., None] + checker[..., None] * (1 - mask[..., None])
    else:
        art = art * mask + checker * (1 - mask)
    kw = {"interpolation": "nearest", "vmin": 0.0, "vmax": 1.0}
    gray = {"cmap": "gray"} if art.ndim == 2 else {}
    fig = figure(1.5 * (n + 1) + 0.6, 3.8)
    axes = fig.subplots(2, n + 1, squeeze=False)
    axes[0][0].imshow(art, **kw, **gray)
    axes[0][0].set_title("sticker" if examples.get("kind") == "sticker" else "patch", fontsize=8)
    axes[1][0].axis("off")
    for c in range(n):
        fooled = p_adv[c] == target if target is not None else p_adv[c] != y[c]
        for r, (views, pred) in enumerate(((clean, p_clean), (adv, p_adv))):
            ax = axes[r][c + 1]
            ax.imshow(_array(views[c]), **kw, **gray)
            ok = pred[c] == y[c]
            colour = WRONG_COLOR if (r == 1 and fooled) or (r == 0 and not ok) else RIGHT_COLOR
            ax.set_title((f"y={name(y[c])}\n" if r == 0 else "") + f"→ {name(pred[c])}", fontsize=7, color=colour)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][1].set_ylabel("clean view", fontsize=8)
    axes[1][1].set_ylabel("with sticker", fontsize=8)
    fig.suptitle(title or "Sticker on held-out frames (same view above and below; red: fooled)", fontsize=9)
    return save(fig, path)


def render_stickers(results: Mapping[str, Mapping], class_names: Sequence[str] | None = None,
                    images: Mapping[str, str] | None = None) -> str:
    """A standalone Markdown document: :func:`sticker_section` under a title."""
    lines = ["# Physical stickers", ""] + sticker_section(results, class_names, images)
    return "\n".join(lines).rstrip() + "\n"


def write_sticker_report(results: Mapping[str, Mapping], out_dir: str | os.PathLike,
                         examples: Mapping[str, Mapping] | None = None,
                         class_names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``stickers.json``, one ``sticker_<name>.png`` per entry of ``examples`` and ``stickers.md`` into
    ``out_dir`` (staged, :func:`robust.reports.files.write_staged`); return name → path. Results whose numbers
    contradict each other are refused first (:func:`robust.evaluation.results.check_stickers`)."""
    from robust.evaluation.results import check_stickers

    check_stickers(results)
    text = json_text(dict(results))

    def render(stage: Path) -> dict[str, Path]:
        made: dict[str, Path] = {}
        for name, ex in (examples or {}).items():
            label = sticker_label((results.get(name) or {}).get("threat"), class_names)
            made[name] = plot_sticker(ex, stage / f"sticker_{metric_key(name)}.png", class_names,
                                      title=f"{name}: {label}")
        (stage / "stickers.md").write_text(render_stickers(results, class_names, {k: p.name for k, p in made.items()}),
                                           encoding="utf-8")
        (stage / "stickers.json").write_text(text, encoding="utf-8")
        return {**made, "markdown": stage / "stickers.md", "json": stage / "stickers.json"}

    return write_staged(out_dir, render)
