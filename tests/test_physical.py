"""Adversarial patch and spatial grid search (robust.evaluation.physical) on a model trained for
real: CNNSmall on 8x8 digits, 15 epochs of Adam, 94.3% clean test accuracy when written.

Observed on the 300 test digits with the default 50 steps: patch "worst" 5% (2x2 px) 3.0%, "center"
49%; spatial defaults (+-30 deg, +-3 px) 0% (3 px is most of an 8 px digit). The tests use 100
digits and 10 steps to stay fast.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import accuracy, digits, one_thread, tiny_cnn, train  # noqa: F401  (one_thread: autouse)
from torch import nn

from robust.evaluation.physical import (
    PATCH_DEFAULTS, SPATIAL_DEFAULTS, ThreatResult, describe_patch, describe_spatial, patch_attack, spatial_attack)

N = 100
STEPS = 10
SMALL_GRID = dict(max_rotation=30.0, max_translation=1, rotations=5, translations=3)  # 5 x 3 x 3 = 45 points


@pytest.fixture(scope="module")
def model():
    """Trained CNNSmall in eval mode. Tests must leave it that way."""
    m = train(tiny_cnn(seed=0), epochs=15, seed=0)
    x, y = digits("test")
    assert accuracy(m, x, y) > 0.90  # observed 0.943
    return m


@pytest.fixture(scope="module")
def data():
    x, y = digits("test")
    return x[:N], y[:N]


@pytest.fixture(scope="module")
def clean_correct(model, data):
    x, y = data
    with torch.no_grad():
        return model(x).argmax(1) == y


@pytest.fixture(scope="module")
def worst(model, data):
    x, y = data
    return patch_attack(model, x, y, fraction=0.05, location="worst", steps=STEPS)


def _recount(model: nn.Module, r: ThreatResult, y: torch.Tensor) -> None:
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    assert r.correct.dtype == torch.bool and r.adv_pred.dtype == torch.long
    assert torch.equal(r.adv_pred, pred)
    assert torch.equal(r.correct, pred == y)
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0


def _square(top: int, left: int, side: int, size: int = 8) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top:top + side, left:left + side] = True
    return m


# ---------------------------------------------------------------- patch


def test_worst_patch_changes_one_square_of_the_expected_side(model, data, clean_correct, worst):
    x, y = data
    side = round(math.sqrt(0.05 * 64))
    assert worst.details["side_px"] == side == 2
    assert worst.details["protocol"]["side_px"] == 2 and worst.details["protocol"]["stride_px"] == 1
    spans = set()
    for i, loc in enumerate(worst.details["location"]):
        changed = (worst.x_adv[i] != x[i]).any(0)
        if not clean_correct[i]:
            assert loc is None and torch.equal(worst.x_adv[i], x[i]) and not worst.correct[i]
            continue
        inside = _square(*loc, side)
        assert not (changed & ~inside).any(), f"example {i}: pixels changed outside the patch at {loc}"
        assert torch.equal(worst.x_adv[i][:, ~inside], x[i][:, ~inside])
        rows, cols = changed.nonzero(as_tuple=True)
        spans.add((int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1))
    assert max(spans) == (side, side)
    _recount(model, worst, y)


def test_fixed_location_patch_stays_at_that_location(model, data, clean_correct):
    x, y = data
    r = patch_attack(model, x, y, fraction=0.1, location=(1, 4), steps=STEPS)
    assert r.details["side_px"] == 3
    outside = ~_square(1, 4, 3)
    assert torch.equal(r.x_adv[:, :, outside], x[:, :, outside])
    assert all(loc == [1, 4] for loc, ok in zip(r.details["location"], clean_correct) if ok)
    assert (r.x_adv != x).any(1).sum((1, 2)).max() == 9
    _recount(model, r, y)


def test_whole_image_patch_fools_everything_small_patch_does_not(model, data):
    x, y = data
    whole = patch_attack(model, x, y, fraction=0.99, location="center", steps=STEPS)
    small = patch_attack(model, x, y, fraction=0.02, location="center", steps=STEPS)
    assert whole.details["side_px"] == 8 and small.details["side_px"] == 1
    acc_whole, acc_small = float(whole.correct.float().mean()), float(small.correct.float().mean())
    assert acc_whole <= 0.02, acc_whole  # observed 0.0: the whole image is free
    assert acc_small >= 0.5 and acc_small >= acc_whole + 0.4, acc_small  # observed 0.86 on 300 digits


def test_worst_location_is_the_first_fooling_position_of_the_grid(model, data, clean_correct, worst):
    """"worst" = every fixed position (same seeded start) tried in row-major order: per example the
    first position that fools, else the highest loss; so it is at least as strong as any of them."""
    x, y = data
    positions = [(t, l) for t in range(7) for l in range(7)]  # stride 1 for a 2 px patch on 8 px
    runs = [patch_attack(model, x, y, fraction=0.05, location=p, steps=STEPS) for p in positions]
    fooled = torch.stack([~r.correct for r in runs])  # (positions, N)
    losses = torch.tensor([r.details["loss"] for r in runs])
    for r in runs:
        assert not (~r.correct & worst.correct).any()
        assert worst.correct.sum() <= r.correct.sum()
    assert torch.equal(~worst.correct, fooled.any(0))
    assert worst.correct.sum() < min(r.correct.sum() for r in runs)  # observed 3 vs >= 27 of 100
    for i in range(len(x)):
        if not clean_correct[i]:
            continue
        if fooled[:, i].any():
            first = int(fooled[:, i].nonzero()[0])
        else:
            first = int(losses[:, i].argmax())
            assert worst.details["loss"][i] == pytest.approx(float(losses[first, i]), rel=1e-5)
        assert worst.details["location"][i] == list(positions[first]), i
        assert torch.allclose(worst.x_adv[i], runs[first].x_adv[i], atol=1e-6)


def test_larger_patch_is_no_weaker(model, data):
    x, y = data
    accs = [float(patch_attack(model, x, y, fraction=f, location="center", steps=STEPS).correct.float().mean())
            for f in (0.02, 0.05, 0.1, 0.3)]  # nested centred squares of 1, 2, 3 and 4 px
    assert accs == sorted(accs, reverse=True), accs
    assert accs[-1] < accs[0], accs


def test_patch_is_seeded_and_leaves_global_rng_alone(model, data):
    x, y = data
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = patch_attack(model, x, y, fraction=0.05, location="random", steps=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = patch_attack(model, x, y, fraction=0.05, location="random", steps=3, seed=7)
    c = patch_attack(model, x, y, fraction=0.05, location="random", steps=3, seed=8)
    assert torch.equal(a.x_adv, b.x_adv) and a.details["location"] == b.details["location"]
    assert a.details["location"] != c.details["location"]
    assert len({tuple(loc) for loc in a.details["location"] if loc is not None}) > 10


def test_patch_under_inference_mode_matches_and_leaves_no_grads(model, data):
    x, y = data
    ref = patch_attack(model, x, y, fraction=0.05, location="center", steps=3)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        r = patch_attack(model, xi, yi, fraction=0.05, location="center", steps=3)
    with torch.no_grad():
        q = patch_attack(model, x, y, fraction=0.05, location="center", steps=3)
    assert torch.equal(ref.x_adv, r.x_adv) and torch.equal(ref.x_adv, q.x_adv)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- spatial


def _transform(x: torch.Tensor, angle: float, dx: int, dy: int) -> torch.Tensor:
    """Rotate counter-clockwise by ``angle`` degrees about the centre of a square image, then move
    the content ``dx`` px right and ``dy`` px down; bilinear, black borders."""
    a = math.radians(angle)
    size = x.shape[-1]
    inv = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    t = -inv @ torch.tensor([2.0 * dx / size, 2.0 * dy / size], dtype=torch.float64)
    theta = torch.cat([inv, t[:, None]], 1).to(x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def test_transform_convention():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6] = 1.0  # two px right of the centre
    assert _transform(x, 90.0, 0, 0)[0, 0].argmax() == 2 * 9 + 4  # counter-clockwise: now above
    assert _transform(x, 0.0, 1, 2)[0, 0].argmax() == 6 * 9 + 7


def test_identity_grid_is_clean_accuracy(model, data, clean_correct):
    x, y = data
    r = spatial_attack(model, x, y, rotations=1, translations=1)
    assert torch.equal(r.correct, clean_correct) and torch.equal(r.x_adv, x)
    assert r.details["protocol"]["grid_points"] == 1
    _recount(model, r, y)


def test_spatial_worst_case_beats_every_grid_point(model, data, clean_correct):
    x, y = data
    r = spatial_attack(model, x, y, **SMALL_GRID)
    _recount(model, r, y)
    protocol = r.details["protocol"]
    assert protocol["angles_deg"] == [-30.0, -15.0, 0.0, 15.0, 30.0] and protocol["translations_px"] == [-1, 0, 1]
    assert protocol["grid_points"] == 45
    worst_acc = float(r.correct.float().mean())
    fools = {}
    with torch.no_grad():
        for angle in protocol["angles_deg"]:
            for dx in protocol["translations_px"]:
                for dy in protocol["translations_px"]:
                    ok = model(_transform(x, angle, dx, dy)).argmax(1) == y
                    assert not (r.correct & ~ok).any(), f"robust under the worst case but not at {angle, dx, dy}"
                    assert worst_acc <= float(ok.float().mean())
                    fools[(angle, dx, dy)] = ~ok
    for i in (~r.correct & clean_correct).nonzero().flatten().tolist():  # the smallest fooling point is reported
        angle, (dx, dy) = r.details["angle_deg"][i], r.details["translation_px"][i]
        size = (abs(angle), abs(dx) + abs(dy))
        assert not any(f[i] for g, f in fools.items() if (abs(g[0]), abs(g[1]) + abs(g[2])) < size), i
    assert worst_acc < float(clean_correct.float().mean()) - 0.1  # observed 0.94 -> 0.44 on 300 digits
    for i in range(len(x)):
        angle, (dx, dy) = r.details["angle_deg"][i], r.details["translation_px"][i]
        assert torch.allclose(r.x_adv[i], _transform(x[i:i + 1], angle, dx, dy)[0], atol=1e-6)
    assert (~r.correct & clean_correct).any()


def test_spatial_first_fooling_point_is_the_smallest(model, data):
    x, y = data
    rot = spatial_attack(model, x, y, max_rotation=30.0, rotations=3, translations=1)
    full = spatial_attack(model, x, y, max_rotation=30.0, rotations=7, translations=1)
    assert not (~rot.correct & full.correct).any()  # {-30, 0, 30} is inside the 7-angle grid
    for i in (~full.correct).nonzero().flatten().tolist():
        a = abs(full.details["angle_deg"][i])
        with torch.no_grad():
            assert all((model(_transform(x[i:i + 1], s * b, 0, 0)).argmax(1) == y[i]).all()
                       for b in (0.0, 10.0, 20.0, 30.0) if b < a for s in (-1, 1))


class Constant(nn.Module):
    def __init__(self, label: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(F.one_hot(torch.tensor(label), 10).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_invariant_model_is_unaffected(data):
    x, y = data
    const = Constant(3)
    expected = y == 3
    s = spatial_attack(const, x, y)
    assert torch.equal(s.correct, expected) and torch.equal(s.x_adv, x)
    assert set(s.details["angle_deg"]) == {0.0}
    p = patch_attack(const, x, y, fraction=0.05, location="center", steps=3)
    assert torch.equal(p.correct, expected)


class Spy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.head, self.modes, self.sizes = inner, nn.Identity(), [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append((self.training, self.inner.training))
        self.sizes.append(len(x))
        return self.head(self.inner(x))


@pytest.mark.parametrize("attack", ["patch", "spatial"])
def test_eval_during_attack_and_modes_restored(model, data, attack):
    x, y = data
    spy = Spy(model)
    spy.train()
    spy.head.eval()
    try:
        if attack == "patch":
            patch_attack(spy, x[:20], y[:20], location="center", steps=2)
        else:
            spatial_attack(spy, x[:20], y[:20], **SMALL_GRID)
        assert spy.modes and set(spy.modes) == {(False, False)}
        assert spy.training and spy.inner.training and not spy.head.training
    finally:
        model.eval()


@pytest.mark.parametrize("attack", ["patch", "spatial"])
def test_search_drops_fooled_examples_and_never_exceeds_the_batch(model, data, attack):
    x, y = data
    spy = Spy(model).eval()
    if attack == "patch":
        patch_attack(spy, x, y, fraction=0.05, location="worst", steps=STEPS)
        exhaustive = 49 * len(x) * (STEPS + 1)
    else:
        spatial_attack(spy, x, y, **SMALL_GRID)
        exhaustive = 44 * len(x)
    assert max(spy.sizes) <= len(x)
    assert sum(spy.sizes) < exhaustive / 4, (sum(spy.sizes), exhaustive)


def test_spatial_leaves_global_rng_alone(model, data):
    x, y = data
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = spatial_attack(model, x, y, **SMALL_GRID)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_adv, spatial_attack(model, x, y, **SMALL_GRID).x_adv)


# ---------------------------------------------------------------- protocol and validation


def test_descriptions_are_json_and_match_defaults():
    p = describe_patch((8, 8))
    assert json.loads(json.dumps(p)) == p
    assert p["kind"] == "patch" and p["fraction"] == PATCH_DEFAULTS["fraction"] == 0.05
    assert p["side_px"] == 2 and p["stride_px"] == 1 and p["location"] == "worst" and p["steps"] == 50
    assert describe_patch((32, 32), location=(3, 4))["location"] == [3, 4]
    s = describe_spatial()
    assert json.loads(json.dumps(s)) == s
    assert s["kind"] == "spatial" and s["max_rotation_deg"] == SPATIAL_DEFAULTS["max_rotation"] == 30.0
    assert len(s["angles_deg"]) == 31 and s["angles_deg"][0] == -30.0 and 0.0 in s["angles_deg"]
    assert s["translations_px"] == [-3, -2, -1, 0, 1, 2, 3] and s["grid_points"] == 31 * 49
    assert s["padding"] == "zeros" and s["interpolation"] == "bilinear"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x, y: patch_attack(m, x * 1.5, y), r"images must lie in \[0, 1\].*, 1.5\]"),
        (lambda m, x, y: spatial_attack(m, x - 0.1, y), r"images must lie in \[0, 1\].*\[-0.1, "),
        (lambda m, x, y: patch_attack(m, x, y, fraction=0), "fraction"),
        (lambda m, x, y: patch_attack(m, x, y, fraction=1.5), "fraction"),
        (lambda m, x, y: patch_attack(m, x, y, location=(7, 0)), "does not fit"),
        (lambda m, x, y: patch_attack(m, x, y, location=(0, -1)), "does not fit"),
        (lambda m, x, y: patch_attack(m, x, y, location="corner"), "location"),
        (lambda m, x, y: patch_attack(m, x, y, stride=0), "stride"),
        (lambda m, x, y: patch_attack(m, x, y[:, None]), "1-D integer"),
        (lambda m, x, y: patch_attack(m, x, y.float()), "1-D integer"),
        (lambda m, x, y: spatial_attack(m, x, y[:-1]), "images but .* labels"),
        (lambda m, x, y: spatial_attack(m, x[:, 0], y), r"\(N, C, H, W\)"),
        (lambda m, x, y: spatial_attack(m, x, y, max_rotation=-1), "max_rotation"),
        (lambda m, x, y: spatial_attack(m, x, y, max_rotation=181), "max_rotation"),
        (lambda m, x, y: spatial_attack(m, x, y, max_translation=-1), "max_translation"),
        (lambda m, x, y: spatial_attack(m, x, y, rotations=0), "rotations"),
    ],
)
def test_bad_inputs_raise(model, data, call, match):
    x, y = data
    with pytest.raises(ValueError, match=match):
        call(model, x[:4], y[:4])


@pytest.mark.gpu
def test_on_cuda_agrees_with_cpu_and_keeps_both_rng_streams(model, data):
    x, y = data
    dev = torch.device("cuda")
    m, xc, yc = copy.deepcopy(model).to(dev), x.to(dev), y.to(dev)
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state(dev)
    p = patch_attack(m, xc, yc, fraction=0.05, location="random", steps=STEPS)
    s = spatial_attack(m, xc, yc, **SMALL_GRID)
    w = patch_attack(m, xc, yc, fraction=0.05, location="worst", steps=STEPS)
    assert torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(torch.cuda.get_rng_state(dev), cuda_state)
    for r in (p, s, w):
        assert r.x_adv.device.type == r.correct.device.type == r.adv_pred.device.type == "cuda"
        _recount(m, r, yc)
    p_cpu = patch_attack(model, x, y, fraction=0.05, location="random", steps=STEPS)
    assert p.details["location"] == p_cpu.details["location"]  # positions come from a CPU generator
    for gpu, cpu in ((p, p_cpu), (s, spatial_attack(model, x, y, **SMALL_GRID))):
        assert abs(int(gpu.correct.sum()) - int(cpu.correct.sum())) <= 3
