"""Universal stickers and patches (robust.evaluation.stickers) and their report (robust.reports.stickers).

The models here are hand-built so the right answer is known: a "sign" whose class is decided by the colour of
a region that the sticker's mask covers. A random (zero-step) sticker leaves that colour near neutral, so it
fools nothing; an optimised one paints the region green and fools every frame.
"""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)
from torch import nn

from robust.base.errors import InputError
from robust.evaluation.results import InconsistentReport, check_report, check_stickers
from robust.evaluation.stickers import (
    EOT,
    LEVELS,
    MASKS,
    SIGN_FRACTION,
    Placement,
    aggregate_tracks,
    apply_sticker,
    evaluate_on_tracks,
    mask_area,
    non_printability,
    optimise_patch,
    optimise_sticker,
    place_patch,
    sticker_examples,
    sticker_masks,
    total_variation,
)

SIZE = 32


class RegionColour(nn.Module):
    """Two classes from the mean of (red - green) over ``region`` (1, H, W): class 1 iff that mean < -0.3."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region / region.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = ((x[:, 0] - x[:, 1]) * self.region).sum((1, 2))
        return torch.stack([torch.zeros_like(f), -10.0 * (f + 0.3)], 1)


class GlobalColour(nn.Module):
    """Two classes from the image mean of (green - red): class 1 iff it exceeds -0.1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (x[:, 1] - x[:, 0]).mean((1, 2))
        return torch.stack([torch.zeros_like(f), 20.0 * (f + 0.1)], 1)


def red_signs(n: int, seed: int) -> torch.Tensor:
    """Red "signs" (red 0.8, green 0.2, blue 0.3) with +-0.1 uniform noise: red - green is 0.6 +- 0.2."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.8, 0.2, 0.3])[None, :, None, None]
    return (base + 0.2 * (torch.rand(n, 3, SIZE, SIZE, generator=g) - 0.5)).clamp(0, 1)


@pytest.fixture(scope="module")
def square():
    return sticker_masks("square", SIZE, 0.1)  # 10x10 px, rows and columns 11..20


@pytest.fixture(scope="module")
def region_model(square):
    region = torch.zeros(1, SIZE, SIZE)
    region[:, 13:19, 13:19] = 1.0  # the square's centre, 2 px in from its edges (EOT moves the sticker a little)
    return RegionColour(region).eval()


@pytest.fixture(scope="module")
def tracks():
    """16 training images on tracks 0..3 and 8 held-out tracks (100..107) of 4 frames: all class 0."""
    x_train, x_eval = red_signs(16, 0), red_signs(32, 1)
    return (x_train, torch.zeros(16, dtype=torch.long), torch.arange(16) // 4,
            x_eval, torch.zeros(32, dtype=torch.long), 100 + torch.arange(32) // 4)


# ------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("name", MASKS)
@pytest.mark.parametrize("area", [0.05, 0.1, 0.15])
def test_masks_cover_the_stated_area_inside_the_sign(name, area):
    mask = sticker_masks(name, SIZE, area)
    assert mask.shape == (1, SIZE, SIZE) and set(mask.unique().tolist()) == {0.0, 1.0}
    pixels = SIZE * SIZE
    # rounding: the bars are a whole number of rows (2 bars x 18 px wide: half a row each, 18 px, off at most);
    # the square's side is round(sqrt(area * H * W)), so its area is off by at most side + 1/4 pixels
    side = round(math.sqrt(area * pixels))
    tolerance = 18 / pixels if name == "bars" else (side + 0.25) / pixels
    assert abs(mask_area(mask) - area) <= tolerance
    margin = math.floor((1 - SIGN_FRACTION) * SIZE / 2)  # 4 px: the sign fills the central ~70%
    rows, cols = mask[0].nonzero().unbind(1)
    assert rows.min() >= margin and cols.min() >= margin and rows.max() < SIZE - margin and cols.max() < SIZE - margin
    if name == "bars":  # two separate horizontal bars of equal size
        rows_on = mask[0].any(1).int()
        assert int((rows_on.diff() == 1).sum()) == 2 and int(rows_on.sum()) % 2 == 0


def test_masks_refuse_bad_names_and_areas_that_do_not_fit():
    with pytest.raises(InputError, match="unknown sticker mask 'circle'"):
        sticker_masks("circle", SIZE)
    with pytest.raises(InputError, match="does not fit two bars"):
        sticker_masks("bars", SIZE, 0.6)
    with pytest.raises(InputError, match="larger than the sign"):
        sticker_masks("square", SIZE, 0.6)
    with pytest.raises(InputError, match="must lie in"):
        sticker_masks("square", SIZE, 0.0)


# -------------------------------------------------------------------------------------------------- EOT


def test_eot_sampling_is_deterministic_from_its_seed_and_draw_i_depends_only_on_i():
    eot = EOT()
    a = eot.sample(10, (SIZE, SIZE), torch.Generator().manual_seed(3))
    b = eot.sample(10, (SIZE, SIZE), torch.Generator().manual_seed(3))
    c = eot.sample(10, (SIZE, SIZE), torch.Generator().manual_seed(4))
    first = eot.sample(4, (SIZE, SIZE), torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(a[k][:4], first[k]) for k in a)
    x = torch.rand(10, 3, SIZE, SIZE)
    assert torch.equal(eot.apply(x, a), eot.apply(x, b))


def test_identity_eot_leaves_images_unchanged_and_rotation_moves_them():
    x = torch.rand(4, 3, SIZE, SIZE)
    params = EOT.identity().sample(4, (SIZE, SIZE), torch.Generator().manual_seed(0))
    assert torch.equal(EOT.identity().apply(x, params), x)
    quarter = EOT(rotation=90.0, scale=(1, 1), translation=0, perspective=0, brightness=(1, 1), blur=0)
    top = torch.zeros(1, 1, SIZE, SIZE)
    top[..., :4, :] = 1.0  # a bright top edge
    turned = quarter.apply(top, quarter.sample(1, (SIZE, SIZE), torch.Generator().manual_seed(0)))
    assert turned[0, 0, :4].mean() < 0.9  # no longer only at the top: it turned by the drawn angle


def test_the_sticker_changes_pixels_only_inside_the_transformed_mask():
    x = torch.rand(8, 3, SIZE, SIZE)
    mask = sticker_masks("bars", SIZE, 0.1)
    sticker = torch.rand(3, SIZE, SIZE)
    stuck = apply_sticker(x, sticker, mask)
    assert torch.equal(stuck * (1 - mask), x * (1 - mask))  # untransformed: exactly unchanged outside
    eot = EOT()
    params = eot.sample(8, (SIZE, SIZE), torch.Generator().manual_seed(0))
    diff = (eot.apply(stuck, params) - eot.apply(x, params)).abs().amax(1)
    seen = eot.apply(mask.expand(8, 1, SIZE, SIZE), params)[:, 0]  # the mask through the same view and blur
    outside = seen == 0
    assert outside.float().mean() > 0.5  # most of each view lies outside the ~11% mask
    assert diff[outside].max() <= 1e-6
    assert diff[~outside].max() > 0.1  # and the sticker does change what it covers


def test_patch_placement_is_deterministic_and_pastes_the_patch_area():
    placement = Placement(rotation=0.0, scale=(1.0, 1.0))
    theta = placement.sample(6, (SIZE, SIZE), 10, torch.Generator().manual_seed(0))["patch_theta"]
    again = placement.sample(6, (SIZE, SIZE), 10, torch.Generator().manual_seed(0))["patch_theta"]
    assert torch.equal(theta, again)
    out = place_patch(torch.zeros(6, 3, SIZE, SIZE), torch.ones(3, 10, 10), theta)
    # a 10x10 white patch at scale 1, unrotated: 100 px of white in each image (bilinear spreads it over edges)
    assert torch.allclose(out[:, 0].sum((1, 2)), torch.full((6,), 100.0), atol=1e-3)


def test_printability_and_smoothness_are_zero_on_flat_palette_colours():
    mask = sticker_masks("square", SIZE, 0.1)
    red = torch.tensor([0.8, 0.1, 0.1])[:, None, None].expand(3, SIZE, SIZE)
    assert float(non_printability(red, mask)) < 1e-5 and float(total_variation(red, mask)) < 1e-5
    noise = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert float(non_printability(noise, mask)) > 1e-3 and float(total_variation(noise, mask)) > 0.1


# ------------------------------------------------------------------------------------------ optimisation


def test_universal_sticker_fools_held_out_tracks_where_a_random_one_does_not(region_model, square, tracks):
    x, y, t, xe, ye, te = tracks
    # 60 Adam steps at lr 0.1 paint the 6x6 decisive region green (red - green -> -1, brightness x0.7 still < -0.3)
    sticker = optimise_sticker(region_model, x, y, square, steps=60, lr=0.1, batch_size=8, track=t, seed=0)
    result = evaluate_on_tracks(region_model, xe, ye, te, sticker, seed=1)
    assert result["clean"]["accuracy"] == 1.0 and result["tracks"] == result["tracks_evaluated"] == 8
    assert result["per_image"]["rate"] >= 0.95  # observed 1.0 (32/32)
    assert result["per_track"]["all"]["successes"] >= 7  # observed 8/8
    assert sticker.history["success"][-1] >= 0.9 and len(sticker.history["loss"]) == 60
    assert torch.equal(sticker.pixels * (1 - square), torch.zeros_like(sticker.pixels))
    random = optimise_sticker(region_model, x, y, square, steps=0, track=t, seed=0)
    zero = evaluate_on_tracks(region_model, xe, ye, te, random, seed=1)
    assert zero["per_image"]["successes"] == 0  # uniform pixels: red - green ~ 0 +- 0.04 on the region, far from -0.3
    assert zero["per_track"]["any"]["successes"] == 0
    again = evaluate_on_tracks(region_model, xe, ye, te, sticker, seed=1, batch_size=5)
    assert again == result  # seeded: the same draws whatever the batch size


def test_targeted_sticker_counts_frames_read_as_the_target(region_model, square, tracks):
    x, y, t, xe, ye, te = tracks
    sticker = optimise_sticker(region_model, x, y, square, target=1, steps=40, batch_size=8, seed=0,
                               printability=0.01, smoothness=0.01)
    result = evaluate_on_tracks(region_model, xe, ye, te, sticker, seed=1)
    assert result["target"] == 1 and result["threat"]["loss"] == "cross-entropy to target"
    assert result["per_image"]["rate"] >= 0.95  # class 1 is the only wrong class: as untargeted, observed 1.0


def test_universal_patch_fools_a_global_colour_model_where_a_random_patch_does_not():
    model = GlobalColour().eval()
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([0.6, 0.4, 0.5])[None, :, None, None]  # green - red = -0.2: class 0
    x = (base + 0.1 * (torch.rand(24, 3, SIZE, SIZE, generator=g) - 0.5)).clamp(0, 1)
    y = torch.zeros(24, dtype=torch.long)
    track = torch.arange(24) // 4
    # a 15% patch (12x12 px, scale 0.8..1.2) of pure green adds ~0.15 * 1.2 = 0.18 to the mean: -0.02 > -0.1
    patch = optimise_patch(model, x[:8], y[:8], fraction=0.15, steps=60, batch_size=8, track=track[:8], seed=0)
    result = evaluate_on_tracks(model, x[8:], y[8:], track[8:], patch, seed=2)
    assert result["kind"] == "universal_patch" and result["per_image"]["rate"] >= 0.75  # observed 1.0 (16/16)
    random = optimise_patch(model, x[:8], y[:8], fraction=0.15, steps=0, seed=0)
    assert evaluate_on_tracks(model, x[8:], y[8:], track[8:], random, seed=2)["per_image"]["successes"] == 0


# -------------------------------------------------------------------------------------------- tracks


def test_track_aggregation_on_hand_built_outcomes():
    #            track: A A A A | B B B | C C | D D D | E E | F F F F   (ids out of order, interleaved)
    track = torch.tensor([7, 7, 7, 7, 3, 3, 3, 9, 9, 1, 1, 1, 5, 5, 2, 2, 2, 2])
    counted = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    fooled = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    perm = torch.randperm(len(track), generator=torch.Generator().manual_seed(0))  # frame order must not matter
    out = aggregate_tracks(counted[perm], fooled[perm], track[perm])
    # A: 2 of 4 fooled -> any, half; B: 3 of 3 -> any, half, all; C: 0 of 2 -> none;
    # D: 1 of its 2 counted frames (its fooled uncounted frame does not count) -> any, half; E: no counted frame,
    # not evaluated; F: 1 of 4 -> any only.
    assert out["tracks"] == 6 and out["tracks_evaluated"] == 5
    assert {k: out["per_track"][k]["successes"] for k in LEVELS} == {"any": 4, "half": 3, "all": 1}
    assert all(out["per_track"][k]["n"] == 5 for k in LEVELS)
    assert (out["per_image"]["successes"], out["per_image"]["n"]) == (7, 15)
    lo, hi = out["per_track"]["half"]["ci95"]
    assert lo < 0.6 < hi
    numeric = aggregate_tracks(counted, fooled, track, levels=(2, 0.75))
    assert {k: v["successes"] for k, v in numeric["per_track"].items()} == {"2": 2, "75%": 1}  # A, B; B
    with pytest.raises(InputError, match="track level"):
        aggregate_tracks(counted, fooled, track, levels=("most",))


def test_overlapping_optimisation_and_evaluation_tracks_are_refused(region_model, square, tracks):
    x, y, t, xe, ye, te = tracks
    sticker = optimise_sticker(region_model, x, y, square, steps=1, track=t, seed=0)
    with pytest.raises(InputError) as err:
        evaluate_on_tracks(region_model, x[:8], y[:8], t[:8], sticker)
    assert "overlap" in str(err.value) and "\n" not in str(err.value) and "[0, 1]" in str(err.value)
    with pytest.raises(InputError, match="overlap"):
        evaluate_on_tracks(region_model, xe, ye, te, sticker, optimisation_tracks=[107])
    evaluate_on_tracks(region_model, xe, ye, te, sticker, optimisation_tracks=torch.tensor([0, 1]))


def test_bad_arguments_are_named(region_model, square, tracks):
    x, y, t, *_ = tracks
    with pytest.raises(InputError, match="target must be a class index in 0..1"):
        optimise_sticker(region_model, x, y, square, target=5, steps=1)
    with pytest.raises(InputError, match="steps must be an integer"):
        optimise_sticker(region_model, x, y, square, steps=-1)
    with pytest.raises(InputError, match="mask must be"):
        optimise_sticker(region_model, x, y, torch.ones(1, 8, 8), steps=1)
    with pytest.raises(InputError, match="EOT blur"):
        EOT(blur=-1.0)


# -------------------------------------------------------------------------------------------- report


def test_report_checks_and_writes_markdown_and_figure(region_model, square, tracks, tmp_path):
    from robust.reports.stickers import render_stickers, write_sticker_report

    x, y, t, xe, ye, te = tracks
    sticker = optimise_sticker(region_model, x, y, square, steps=20, batch_size=8, track=t, seed=0)
    result = evaluate_on_tracks(region_model, xe, ye, te, sticker, seed=1)
    check_stickers({"s": result})
    names = ["stop", "speed limit 30"]
    text = render_stickers({"standard": result}, names)
    assert "## Physical stickers over held-out tracks" in text and "tracks fooled (k = half)" in text
    assert "sticker (custom, 9.8% of the image), untargeted" in text and "class 0 (stop)" in text
    paths = write_sticker_report({"standard": result}, tmp_path,
                                 {"standard": sticker_examples(region_model, xe, ye, sticker, n=4, seed=1)}, names)
    assert paths["standard"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![standard](sticker_standard.png)" in paths["markdown"].read_text()
    broken = {**result, "per_track": {**result["per_track"], "all": {**result["per_track"]["any"]}}}
    broken["per_track"]["any"] = {"rate": 0.0, "successes": 0, "n": 8, "ci95": [0.0, 0.37]}
    with pytest.raises(InconsistentReport, match="per_track"):
        check_stickers({"s": broken})
    empty = {"accuracy": 0.0, "correct": 0, "n": 0}
    with pytest.raises(InconsistentReport, match="stickers.s.per_track"):  # a robustness report's field too
        check_report({"n_examples": 0, "clean": empty, "robust": empty, "stickers": {"s": broken}})
