"""ThreatModel and Eps: the geometry every attack relies on, and the eps syntax configs use.

Property tests draw a seed, a shape and a radius; the tensors are built from the seed, so a
failure reproduces from hypothesis' printed example. Distances are measured in float64 from
the float32 results, so they are the true distances of what the library returned.
"""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import one_thread  # noqa: F401  (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonargparse import ArgumentParser
from scipy import stats

from robust.base.threat import Eps, ThreatModel, parse_eps, positive_eps

# derandomize: the same 50 examples every run (CI reproducible); 1500 random examples per test passed locally.
PROPERTY = settings(max_examples=50, deadline=None, database=None, derandomize=True)
# (N, C, H, W) images, a flat (N, D) batch and a single image; at most 64 values per example so
# float32 rounding keeps an L2 distance within 1e-6 of its exact value (64 * 6e-8 rounding terms).
SHAPES = [(1, 1, 4, 4), (3, 1, 8, 8), (2, 3, 4, 4), (4, 64), (5, 2)]
seeds = st.integers(0, 2**31 - 1)
shapes = st.sampled_from(SHAPES)
radii = st.floats(1e-3, 2.0, allow_nan=False, allow_infinity=False)
norms = st.sampled_from(["linf", "l2"])
spreads = st.sampled_from([1e-3, 0.1, 1.0, 100.0])  # how far x_adv may wander from x


def make_x(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Images in [0, 1] with about a third of the pixels exactly 0 or 1, as in digits/MNIST,
    so that the box [0, 1] actually cuts the ball."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    pick = torch.rand(shape, generator=g)
    x[pick < 0.2] = 0.0
    x[pick > 0.85] = 1.0
    return x


def make_far(seed: int, x: torch.Tensor, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return x + spread * torch.randn(x.shape, generator=g)


def dist(a: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example distance in float64."""
    d = (a.double() - x.double()).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def assert_in_set(a: torch.Tensor, x: torch.Tensor, threat: ThreatModel, atol: float = 1e-6) -> None:
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0, "left the image box [0, 1]"
    assert float(dist(a, x, threat.norm).max()) <= float(threat.eps) + atol, "left the eps-ball"
    assert bool(threat.contains(a, x).all())


# -- projection and random start -----------------------------------------------------------

@PROPERTY
@given(seed=seeds, shape=shapes, eps=radii, norm=norms, spread=spreads)
def test_project_lands_in_ball_and_box(seed, shape, eps, norm, spread):
    """project(x_adv) lies in the ball (within 1e-6) and exactly in [0, 1], from anywhere."""
    threat = ThreatModel(norm, eps)
    x = make_x(seed, shape)
    p = threat.project(make_far(seed, x, spread), x)
    assert p.shape == x.shape and p.dtype == x.dtype
    assert_in_set(p, x, threat)


@PROPERTY
@given(seed=seeds, shape=shapes, eps=radii, norm=norms)
def test_random_start_lands_in_ball_and_box(seed, shape, eps, norm):
    """random_start(x) lies in the ball (within 1e-6) and in [0, 1]; it is reproducible from a generator."""
    threat = ThreatModel(norm, eps)
    x = make_x(seed, shape)
    a = threat.random_start(x, generator=torch.Generator().manual_seed(seed))
    assert_in_set(a, x, threat)
    b = threat.random_start(x, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@PROPERTY
@given(seed=seeds, shape=shapes, eps=radii, spread=spreads)
def test_linf_project_is_the_exact_projection(seed, shape, eps, spread):
    """The L-inf ball cut by [0, 1] is the box [max(x-eps, 0), min(x+eps, 1)]; the Euclidean
    projection onto a box is the coordinate-wise clamp. project must equal it bit for bit (same
    float32 ops), agree with a float64 clamp to 1e-6, and be idempotent."""
    threat = ThreatModel("linf", eps)
    x = make_x(seed, shape)
    far = make_far(seed, x, spread)
    p = threat.project(far, x)
    lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    assert torch.equal(p, torch.clamp(far, min=lo, max=hi))
    x64 = x.double()
    ref = torch.clamp(far.double(), min=(x64 - eps).clamp(min=0.0), max=(x64 + eps).clamp(max=1.0))
    assert float((p.double() - ref).abs().max()) <= 1e-6
    assert torch.equal(threat.project(p, x), p)
    # the precomputed box gives the same answer (the training attack passes it once a batch)
    assert torch.equal(threat.project(far, x, box=threat.box(x)), p)


@PROPERTY
@given(seed=seeds, shape=shapes, eps=radii, shrink=st.floats(0.0, 0.99))
def test_l2_project_keeps_points_inside(seed, shape, eps, shrink):
    """A point already in the L2 ball and in [0, 1] is its own projection (to float32 rounding)."""
    threat = ThreatModel("l2", eps)
    x = make_x(seed, shape)
    inside = threat.random_start(x, eps * shrink, generator=torch.Generator().manual_seed(seed))
    p = threat.project(inside, x)
    assert float((p - inside).abs().max()) <= 1e-6


@PROPERTY
@given(seed=seeds, shape=shapes, eps=st.floats(1e-3, 0.5), spread=spreads)
def test_l2_project_is_radial_when_the_ball_fits_in_the_box(seed, shape, eps, spread):
    """Around x = 0.5 an L2 ball of radius <= 0.5 lies inside [0, 1] (each |delta_i| <= ||delta||),
    so the projection is the textbook one: x + delta * min(1, eps / ||delta||)."""
    threat = ThreatModel("l2", eps)
    x = torch.full(shape, 0.5)
    far = make_far(seed, x, spread)
    p = threat.project(far, x).double()
    delta = (far - x).double()
    n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    ref = x.double() + delta * (eps / n).clamp(max=1.0)
    assert float((p - ref).abs().max()) <= 1e-6


def test_l2_random_start_fills_the_ball():
    """Uniform in a d-ball means radius = eps * U^(1/d): mean radius ratio d/(d+1) = 64/65 = 0.98462
    for d = 64 (sd of one ratio sqrt(d/((d+2)(d+1)^2)) = 0.0152, so sd of a 2000-sample mean 3.4e-4;
    tolerance 1.5e-3 is 4.4 sd). All-on-the-sphere would give 1.0 (45 sd away), a uniform radius 0.5.
    (ratio)^64 must be U(0, 1): KS p-value > 1e-3 (false alarm 0.1% per seed; the seed is fixed).
    x = 0.5, eps = 0.5 keeps the ball inside [0, 1], so clipping does not bias the radii."""
    d, n, eps = 64, 2000, 0.5
    threat = ThreatModel("l2", eps)
    x = torch.full((n, 1, 8, 8), 0.5)
    a = threat.random_start(x, generator=torch.Generator().manual_seed(0))
    ratio = dist(a, x, "l2") / eps
    assert float(ratio.max()) <= 1.0 + 1e-6
    assert abs(float(ratio.mean()) - d / (d + 1)) < 1.5e-3
    assert stats.kstest(ratio.clamp(max=1.0).pow(d).numpy(), "uniform").pvalue > 1e-3
    # directions are isotropic: the mean displacement is ~0 (each coordinate's sd over 2000 is ~1.4e-3)
    assert float((a - x).mean(0).abs().max()) < 6e-3


def test_linf_random_start_is_uniform_in_the_cube():
    """Away from the box walls delta/eps ~ U(-1, 1): mean 0, E|delta|/eps = 0.5 (20000 coords:
    sd of the mean of |U| is 0.289/sqrt(20000) = 2e-3, tolerance 1e-2)."""
    threat = ThreatModel("linf", 0.2)
    x = torch.full((20000, 1), 0.5)
    delta = (threat.random_start(x, generator=torch.Generator().manual_seed(0)) - x) / 0.2
    assert abs(float(delta.mean())) < 1e-2
    assert abs(float(delta.abs().mean()) - 0.5) < 1e-2
    assert float(delta.abs().max()) <= 1.0 + 1e-6


# -- steepest-ascent step ------------------------------------------------------------------

@PROPERTY
@given(seed=seeds, shape=shapes, step_size=st.floats(1e-3, 1.0))
def test_linf_step_moves_each_coordinate_by_step_size(seed, shape, step_size):
    """sign-gradient step: every coordinate with g != 0 moves by exactly +-step_size in sign(g)'s
    direction (float32 addition on values in [0, 2] rounds by < 1.2e-7); g == 0 does not move."""
    threat = ThreatModel("linf", 0.1)
    g = torch.Generator().manual_seed(seed)
    x_adv = torch.rand(shape, generator=g)
    grad = torch.randn(shape, generator=g)
    grad[torch.rand(shape, generator=g) < 0.3] = 0.0
    moved = (threat.step(x_adv, grad, step_size).double() - x_adv.double())
    expected = step_size * torch.sign(grad).double()
    assert float((moved - expected).abs().max()) <= 2.5e-7
    assert torch.equal(moved[grad == 0], torch.zeros_like(moved[grad == 0]))


@PROPERTY
@given(seed=seeds, shape=shapes, step_size=st.floats(1e-3, 1.0), scale=st.sampled_from([1e-6, 1.0, 1e4]))
def test_l2_step_has_norm_step_size(seed, shape, step_size, scale):
    """L2 step: x_adv + step_size * g / ||g||, so each example moves by step_size, parallel to g
    (cosine 1), whatever the gradient's scale. Tolerance 1e-6: adding to float32 values in [0, 2]
    rounds each of <= 64 coordinates by <= 1.2e-7, i.e. <= 9.6e-7 in L2."""
    threat = ThreatModel("l2", 0.5)
    g = torch.Generator().manual_seed(seed)
    x_adv = torch.rand(shape, generator=g)
    grad = scale * torch.randn(shape, generator=g)
    moved = (threat.step(x_adv, grad, step_size).double() - x_adv.double()).flatten(1)
    assert torch.allclose(moved.norm(dim=1), torch.full((shape[0],), step_size, dtype=torch.float64), rtol=0, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(moved, grad.double().flatten(1), dim=1)
    assert float(cos.min()) > 1 - 1e-5


def test_l2_step_with_zero_gradient_stays_put():
    """An example whose gradient vanishes (a saturated softmax) must not move or become NaN."""
    threat = ThreatModel("l2", 0.5)
    x_adv = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    grad = torch.zeros_like(x_adv)
    grad[1] = 1.0
    out = threat.step(x_adv, grad, 0.3)
    assert torch.equal(out[0], x_adv[0])
    assert abs(float((out[1] - x_adv[1]).norm()) - 0.3) < 1e-6


# -- eps parsing and validation -----------------------------------------------------------

@pytest.mark.parametrize(
    "value, expected",
    [("8/255", 8 / 255), ("0.3", 0.3), (0.3, 0.3), ("1e-2", 0.01), (" 2 / 255 ", 2 / 255), (1, 1.0), ("0.5/2", 0.25)],
)
def test_parse_eps(value, expected):
    """The field writes budgets as fractions of 255 or decimals; both parse to the same float."""
    assert parse_eps(value) == expected
    assert Eps(value) == expected and isinstance(Eps(value), float)
    assert ThreatModel("linf", value).eps == expected


def test_eps_repr_keeps_the_fraction():
    """repr shows n/255 where it is one (configs and logs read like the papers), else the float."""
    assert repr(Eps("8/255")) == "8/255"
    assert repr(Eps(8 / 255)) == "8/255"
    assert repr(Eps("0.3")) == "0.3"
    assert str(ThreatModel("linf", "8/255")) == "Linf(eps=8/255)"
    assert str(ThreatModel("l2", 0.5)) == "L2(eps=0.5)"


@pytest.mark.parametrize(
    "eps", [0, 0.0, -0.1, "-8/255", "0/255", float("nan"), "nan", float("inf"), "inf", "abc", "8/0", "", True, None, "1/2/3"]
)
def test_threat_model_rejects_bad_eps(eps):
    """Zero, negative, NaN, infinite or unparsable budgets raise ValueError naming the field."""
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", eps)


@pytest.mark.parametrize("norm", ["l1", "L0", "", None, 2])
def test_threat_model_rejects_unknown_norm(norm):
    with pytest.raises(ValueError, match="norm"):
        ThreatModel(norm, 0.1)


@pytest.mark.parametrize("alias, norm", [("linf", "linf"), ("Linf", "linf"), ("inf", "linf"), ("L2", "l2"), ("2", "l2")])
def test_norm_aliases(alias, norm):
    assert ThreatModel(alias, 0.1).norm == norm


def test_positive_eps_names_the_field():
    assert positive_eps("2/255", "step_size") == 2 / 255
    with pytest.raises(ValueError, match="step_size"):
        positive_eps(-1, "step_size")


def test_coerce():
    """A ThreatModel passes through; a {norm, eps} mapping or a class_path spec builds one;
    unknown or missing fields are refused."""
    tm = ThreatModel("linf", "8/255")
    assert ThreatModel.coerce(tm) is tm
    assert ThreatModel.coerce({"norm": "linf", "eps": "8/255"}) == tm
    assert ThreatModel.coerce({"class_path": "robust.base.threat.ThreatModel", "init_args": {"norm": "l2", "eps": 0.5}}) == ThreatModel("l2", 0.5)
    with pytest.raises(ValueError, match="unknown fields"):
        ThreatModel.coerce({"norm": "linf", "eps": 0.1, "steps": 10})
    with pytest.raises(ValueError, match="norm and eps"):
        ThreatModel.coerce({"eps": 0.1})
    with pytest.raises(ValueError, match="threat"):
        ThreatModel.coerce("linf")
    with pytest.raises(ValueError, match="eps"):
        ThreatModel.coerce({"norm": "linf", "eps": -1})


def test_threat_model_is_frozen_and_hashable():
    tm = ThreatModel("linf", 0.1)
    with pytest.raises(AttributeError):
        tm.eps = 0.2  # type: ignore[misc]
    assert hash(tm) == hash(ThreatModel("linf", "0.1"))


# -- configs (jsonargparse / LightningCLI) ------------------------------------------------

def test_jsonargparse_reads_eps_fraction():
    """LightningCLI rejects ``eps: 8/255`` for a float; an ``Eps``-typed argument accepts it
    from YAML and from the command line."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--eps", type=Eps)
    cfg = parser.parse_string("eps: 8/255")
    assert isinstance(cfg.eps, Eps) and cfg.eps == 8 / 255
    assert parser.parse_args(["--eps", "0.3"]).eps == 0.3
    again = parser.parse_string(parser.dump(cfg))  # dumps as a float, reads back the same value
    assert isinstance(again.eps, Eps) and again.eps == cfg.eps
    with pytest.raises(Exception, match="eps"):
        parser.parse_string("eps: abc")


def test_jsonargparse_reads_threat_model():
    """A ThreatModel-typed argument given ``{norm: linf, eps: 8/255}`` instantiates the dataclass."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--threat", type=ThreatModel)
    cfg = parser.parse_string("threat: {norm: linf, eps: 8/255}")
    threat = parser.instantiate(cfg).threat
    assert threat == ThreatModel("linf", 8 / 255) and isinstance(threat, ThreatModel)
    assert repr(threat.eps) == "8/255"
    with pytest.raises(Exception):
        parser.parse_string("threat: {norm: l1, eps: 0.1}")


def test_jsonargparse_builds_a_method_from_a_recipe():
    """The way recipes configure training: class arguments of robust.methods.PGD from YAML."""
    from robust.methods import PGD

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PGD, "method")
    cfg = parser.parse_string("method: {threat: {norm: linf, eps: 8/255}, steps: 7, step_size: 2/255}")
    method = parser.instantiate(cfg).method
    assert isinstance(method, PGD)
    assert method.threat == ThreatModel("linf", 8 / 255)
    assert method.steps == 7 and method.step_size == 2 / 255
    assert math.isclose(method.current_eps, 8 / 255)
