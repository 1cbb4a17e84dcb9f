"""CROWN (Zhang et al. 2018): soundness on every supported layer type (random and PGD points of the
ball never leave the bounds, for logits, specifications and margins), exactness on a linear layer,
tighter than IBP on trained networks, unsupported graphs, eps = 0, chunking and a 28x28 CNNSmall.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from _helpers import ball_points, box_pgd, digits, logits_of, one_thread, randomise_bn, tiny_cnn, tol, train  # noqa: F401  (one_thread: autouse)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robust.certify import crown
from robust.certify.crown import crown_bounds, crown_margins
from robust.certify.ibp import UnsupportedLayerError, certified, elided_bounds, interval_bounds
from robust.methods import PGD
from robust.models import CNNSmall, Normalize

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 10)).eval()


def seq_cnn(seed: int) -> nn.Module:
    """Normalize, BatchNorm2d/1d with random statistics, a strided dilated conv, Identity, Dropout."""
    torch.manual_seed(seed)
    return randomise_bn(nn.Sequential(
        Normalize([0.4], [0.3]), nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2), nn.ReLU(), nn.Identity(), nn.Flatten(),
        nn.Linear(128, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10),
    ))


class Functional(nn.Module):
    """Functional ReLUs and reshapes, a grouped conv, 'same' padding, a bias-free Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize([0.5], [0.25])
        self.conv1 = nn.Conv2d(1, 4, 3, padding="same")
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, groups=2, bias=False)
        self.fc1 = nn.Linear(72, 20, bias=False)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(self.normalize(x)))
        out = torch.relu(self.conv2(out))
        out = out.view(out.size(0), -1).reshape(x.shape[0], 8, 9)
        out = self.fc1(torch.flatten(out, 1)).relu()
        return self.fc2(out)


def functional(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return Functional().eval()


def cnn_small(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return CNNSmall(in_channels=1, input_size=8, mean=[0.45], std=[0.3]).eval()


MODELS = {"mlp": mlp, "sequential": seq_cnn, "functional": functional, "cnn_small": cnn_small}


def assert_between(lower: torch.Tensor, upper: torch.Tensor, z: torch.Tensor) -> None:
    """``z`` (N, M, K) for M points around each of N images."""
    t = tol(lower, upper)
    assert (z >= lower[:, None] - t).all() and (z <= upper[:, None] + t).all()


def margins_of(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return z.gather(2, y[:, None, None].expand(-1, z.shape[1], 1)) - z


def check_sound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    n, k = x.shape[0], 10
    lower, upper = crown_bounds(model, x, eps)
    assert lower.shape == upper.shape == (n, k) and (lower <= upper + tol(lower, upper)).all()
    z = logits_of(model, ball_points(x, eps, 32))
    assert_between(lower, upper, z)
    signs = torch.cat([torch.eye(k), -torch.eye(k)])
    z_adv = logits_of(model, box_pgd(model, x.repeat_interleave(2 * k, 0), eps, signs.repeat(n, 1)).view(n, 2 * k, *x.shape[1:]))
    assert_between(lower, upper, z_adv)

    spec = torch.randn(n, 3, k)  # random specifications, attacked in both directions
    c_lower, c_upper = crown_bounds(model, x, eps, spec)
    assert c_lower.shape == (n, 3)
    weights = torch.cat([spec, -spec], 1)
    z_spec = logits_of(model, box_pgd(model, x.repeat_interleave(6, 0), eps, weights.flatten(0, 1)).view(n, 6, *x.shape[1:]))
    assert_between(c_lower, c_upper, torch.cat([z, z_spec], 1) @ spec.transpose(1, 2))

    margins = crown_margins(model, x, y, eps)
    assert margins.shape == (n, k) and (margins.gather(1, y[:, None]) == 0).all()
    t = tol(lower, upper)
    assert (margins_of(z, y) >= margins[:, None] - t).all()
    minimise = F.one_hot(y, k).float()[:, None] - torch.eye(k)[None]  # minimise z_y - z_j, one row per j
    z_adv = logits_of(model, box_pgd(model, x.repeat_interleave(k, 0), eps, minimise.flatten(0, 1)).view(n, k, *x.shape[1:]))
    assert (margins_of(z_adv, y) >= margins[:, None] - t).all()


@SETTINGS
@given(kind=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 1000), eps=st.floats(0.0, 0.3))
def test_bounds_contain_random_and_pgd_points(kind, seed, eps):
    model = MODELS[kind](seed)
    torch.manual_seed(seed)
    check_sound(model, torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,)), eps)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_sound_on_every_model_and_never_looser_than_ibp_inside(kind):
    """Every model at a moderate eps (hypothesis may not draw each), and the pre-activation
    intersection: with the final layer's IBP bounds available, CROWN's margins can be combined."""
    model = MODELS[kind](7)
    torch.manual_seed(7)
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    check_sound(model, x, y, 0.05)
    both = crown_margins(model, x, y, 0.05, intersect_ibp=True)
    torch.testing.assert_close(both, torch.maximum(crown_margins(model, x, y, 0.05), elided_bounds(model, x, y, 0.05)))


def test_single_linear_layer_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    x, eps = torch.rand(4, 1, 3, 4), 0.1
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    w, b = model[1].weight, model[1].bias
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    lower, upper = crown_bounds(model, x, eps)
    torch.testing.assert_close(lower, center @ w.T + b - radius @ w.abs().T)
    torch.testing.assert_close(upper, center @ w.T + b + radius @ w.abs().T)
    spec = torch.randn(4, 2, 5)
    cw = spec @ w  # (N, 2, 12): the specification folded into the layer
    c_lower, c_upper = crown_bounds(model, x, eps, spec)
    exact = torch.einsum("nkd,nd->nk", cw, center) + spec @ b
    spread = torch.einsum("nkd,nd->nk", cw.abs(), radius)
    torch.testing.assert_close(c_lower, exact - spread)
    torch.testing.assert_close(c_upper, exact + spread)


def test_first_preactivation_is_exact():
    """Two affine layers before the first ReLU: CROWN is exact there, IBP is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 6)).eval()
    x = torch.rand(3, 1, 8, 8)
    w = model[2].weight @ model[1].weight
    b = model[2].weight @ model[1].bias + model[2].bias
    lo, hi = (x - 0.1).clamp(0, 1).flatten(1), (x + 0.1).clamp(0, 1).flatten(1)
    lower, upper = crown_bounds(model, x, 0.1)
    torch.testing.assert_close(lower, lo @ w.clamp(min=0).T + hi @ w.clamp(max=0).T + b)
    torch.testing.assert_close(upper, hi @ w.clamp(min=0).T + lo @ w.clamp(max=0).T + b)
    i_lower, i_upper = interval_bounds(model, x, 0.1)
    assert (upper - lower).mean() < 0.9 * (i_upper - i_lower).mean()


def reference_crown(layers: list[nn.Linear], x: torch.Tensor, eps: float, spec: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN on a Linear/ReLU MLP with dense matrices, written from the paper's formulas: neurons
    unstable under interval bounds get CROWN bounds (intersected), the others keep the intervals."""
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def lower_of(a: torch.Tensor, k: int) -> torch.Tensor:  # min of a . (output of layers[k])
        const, a = a @ layers[k].bias, a @ layers[k].weight
        for j in reversed(range(k)):
            l, u = bounds[j]
            unstable = (l < 0) & (u > 0)
            upper_slope = torch.where(unstable, u / (u - l), (l >= 0).float())[:, None]
            lower_slope = torch.where(unstable, (u > -l).float(), (l >= 0).float())[:, None]
            intercept = torch.where(unstable, -u * l / (u - l), torch.zeros_like(l))[:, None]
            pos, neg = a.clamp(min=0), a.clamp(max=0)
            const = const + (neg * intercept).sum(-1)
            a = pos * lower_slope + neg * upper_slope
            const, a = const + a @ layers[j].bias, a @ layers[j].weight
        return const + (a.clamp(min=0) * lo[:, None]).sum(-1) + (a.clamp(max=0) * hi[:, None]).sum(-1)

    i_lo, i_hi = lo, hi
    for k, layer in enumerate(layers[:-1]):
        center = F.linear((i_lo + i_hi) / 2, layer.weight, layer.bias)
        radius = F.linear((i_hi - i_lo) / 2, layer.weight.abs())
        l, u = center - radius, center + radius
        eye = torch.eye(layer.out_features)[None].expand(len(x), -1, -1)
        refine = (l < 0) & (u > 0)
        l = torch.where(refine, torch.maximum(l, lower_of(eye, k)), l)
        u = torch.where(refine, torch.minimum(u, -lower_of(-eye, k)), u)
        bounds.append((l, u))
        i_lo, i_hi = l.clamp(min=0), u.clamp(min=0)
    return lower_of(spec, len(layers) - 1), -lower_of(-spec, len(layers) - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_matches_a_dense_reference_on_mlps(seed, eps):
    """The relaxation itself (which line for which sign, the adaptive lower slope, the intercept):
    a wrong choice can stay sound on random points yet differs from the reference."""
    model = mlp(seed)
    torch.manual_seed(seed)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    layers = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        lower, upper = reference_crown(layers, x, eps, torch.eye(10)[None].expand(6, -1, -1))
        margins, _ = reference_crown(layers, x, eps, F.one_hot(y, 10).float()[:, None] - torch.eye(10)[None])
    got_lower, got_upper = crown_bounds(model, x, eps)
    torch.testing.assert_close(got_lower, lower, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_upper, upper, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(crown_margins(model, x, y, eps), margins, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained():
    """A CNNSmall and an MLP on digits, each trained normally and with PGD (eps 0.1, 3 steps)."""
    def fresh_mlp(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    pgd = PGD({"norm": "linf", "eps": 0.1}, steps=3)
    return {"cnn": train(tiny_cnn(0), epochs=6), "mlp": train(fresh_mlp(0), epochs=6),
            "cnn_pgd": train(tiny_cnn(0), pgd.loss, epochs=4), "mlp_pgd": train(fresh_mlp(0), pgd.loss, epochs=4)}


@pytest.mark.parametrize("name", ["cnn", "mlp", "cnn_pgd", "mlp_pgd"])
def test_tighter_than_ibp_on_trained_networks(trained, name):
    model = trained[name]
    x, y = digits("test")
    x, y = x[:100], y[:100]
    eps = 0.02
    lower, upper = crown_bounds(model, x, eps)
    i_lower, i_upper = interval_bounds(model, x, eps)
    assert (upper - lower).mean() < 0.8 * (i_upper - i_lower).mean()
    margins, ibp = crown_margins(model, x, y, eps), elided_bounds(model, x, y, eps)
    assert margins.mean() > ibp.mean()
    assert certified(margins, y).sum() >= certified(ibp, y).sum()
    z = logits_of(model, ball_points(x, eps, 4))
    assert (margins_of(z, y) >= margins[:, None] - tol(lower, upper)).all()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(h)) + h)


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(x, 1)
        self.fc1(h)
        return self.fc2(h)


@pytest.mark.parametrize("model, name", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10)), "MaxPool2d"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Sigmoid(), nn.Linear(8, 10)), "Sigmoid"),
    (Residual(), "add"),
    (Branch(), "fc2"),
])
def test_unsupported_layer_is_named(model, name):
    with pytest.raises(UnsupportedLayerError, match=name) as info:
        crown_bounds(model.eval(), torch.rand(2, 1, 8, 8), 0.1)
    assert "feed-forward ReLU" in str(info.value) and "interval_bounds" in str(info.value)


@pytest.mark.parametrize("layer", ["BatchNorm2d", "Dropout"])
def test_training_mode_raises(layer):
    model = seq_cnn(0)
    for m in model.modules():
        if type(m).__name__ == layer:
            m.train()
    with pytest.raises(ValueError, match=f"{layer}.*training mode"):
        crown_margins(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 0.1)
    assert model[2].training == (layer == "BatchNorm2d")  # modes left as they were


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_zero_eps_gives_the_logits(kind):
    model = MODELS[kind](1)
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    lower, upper = crown_bounds(model, x, 0.0)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(lower, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upper, logits, atol=1e-5, rtol=1e-5)
    expected = logits.gather(1, y[:, None]) - logits
    torch.testing.assert_close(crown_margins(model, x, y, 0), expected, atol=1e-5, rtol=1e-5)


def test_invalid_arguments_raise():
    model, x = cnn_small(0), torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="eps"):
        crown_bounds(model, x, -0.1)
    with pytest.raises(ValueError, match="eps"):
        crown_margins(model, x, torch.zeros(2, dtype=torch.long), float("nan"))
    with pytest.raises(ValueError, match="C must have shape"):
        crown_bounds(model, x, 0.1, torch.randn(2, 10))
    with pytest.raises(ValueError, match="labels"):
        crown_margins(model, x, torch.tensor([0, 10]), 0.1)


def test_chunking_does_not_change_the_bounds(monkeypatch):
    model = seq_cnn(3)
    torch.manual_seed(3)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    lower, upper = crown_bounds(model, x, 0.05)
    margins = crown_margins(model, x, y, 0.05)
    monkeypatch.setattr(crown, "CHUNK_BYTES", 4096)  # a handful of rows per chunk
    c_lower, c_upper = crown_bounds(model, x, 0.05)
    torch.testing.assert_close(c_lower, lower, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_upper, upper, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(crown_margins(model, x, y, 0.05), margins, atol=1e-5, rtol=1e-5)


def test_cnn_small_on_28x28_batch_32():
    torch.manual_seed(0)
    model = CNNSmall(in_channels=1, input_size=28, mean=[0.13], std=[0.31]).eval()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    start = time.perf_counter()
    margins = crown_margins(model, x, y, 0.002)
    assert time.perf_counter() - start < 30
    z = logits_of(model, ball_points(x[:4], 0.002, 2))
    assert (margins_of(z, y[:4]) >= margins[:4, None] - tol(margins)).all()


@pytest.mark.gpu
def test_crown_on_cuda_matches_cpu_and_verify_runs_there():
    from robust.certify.verify import verify

    model = tiny_cnn(3).eval()
    x, y = digits("test")
    x, y = x[:64], y[:64]
    cpu = crown_margins(model, x, y, 0.02)
    gpu = crown_margins(model.cuda(), x.cuda(), y.cuda(), 0.02)
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-2, atol=1e-2)  # TF32 may be on: close, not equal
    report = verify(model, (x, y), 0.02, method="crown", attack_options={"steps": 5}, progress=False)
    assert report["consistency"]["ok"] and sum(report["status_counts"].values()) == 64
