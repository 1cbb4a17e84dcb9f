"""Interval bound propagation (Gowal et al. 2018): soundness on every supported layer type
(random and PGD points of the ball never leave the bounds), exactness on a linear layer, the
elided last layer, unsupported layers, ``verified_accuracy`` and IBP training on digits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import ball_points, box_pgd, digits, logits_of, one_thread, randomise_bn, tiny_cnn, tol, train  # noqa: F401  (one_thread: autouse)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robust.base.spec import build, to_spec
from robust.certify.ibp import UnsupportedLayerError, elided_bounds, interval_bounds, verified_accuracy
from robust.methods.base import Method
from robust.methods.certified import IBP
from robust.models import CNNSmall, Normalize, PreActResNet18
from robust.models.preact_resnet import PreActBlock

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def seq_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_bn(nn.Sequential(
        Normalize([0.4], [0.3]), nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Identity(),
        nn.Flatten(), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10),
    ))


class Residual(nn.Module):
    """PreActResNet blocks plus functional ops: constants, interval differences, .view, .relu, pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize([0.5], [0.25])
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.block = PreActBlock(8, 8)
        self.down = PreActBlock(8, 12, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.normalize(2.0 * x - 1.0) / 3.0)
        out = self.down(self.block(out) + 0.5 * out - 0.25 * out.relu())
        out = torch.relu(-out + 0.1)
        out = self.pool(out)
        return self.head(out.view(out.size(0), -1))


def residual(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_bn(Residual())


def cnn_small(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return CNNSmall(in_channels=1, input_size=8, mean=[0.45], std=[0.3]).eval()


MODELS = {"sequential": seq_cnn, "residual": residual, "cnn_small": cnn_small}


def assert_contains(lower: torch.Tensor, upper: torch.Tensor, z: torch.Tensor) -> None:
    """``z`` (N, M, K): logits of M points around each of N images."""
    t = tol(lower, upper)
    assert (z >= lower[:, None] - t).all() and (z <= upper[:, None] + t).all()


def check_sound(model: nn.Module, x: torch.Tensor, eps: float, samples: int = 32) -> None:
    lower, upper = interval_bounds(model, x, eps)
    assert (lower <= upper).all()
    assert_contains(lower, upper, logits_of(model, ball_points(x, eps, samples)))
    n, k = lower.shape
    signs = torch.cat([torch.eye(k), -torch.eye(k)])
    x_rep = x.repeat_interleave(2 * k, 0)
    x_adv = box_pgd(model, x_rep, eps, signs.repeat(n, 1))
    assert_contains(lower, upper, logits_of(model, x_adv.view(n, 2 * k, *x.shape[1:])))


@SETTINGS
@given(kind=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 1000), eps=st.floats(0.0, 0.3))
def test_bounds_contain_random_and_pgd_points(kind, seed, eps):
    model = MODELS[kind](seed)
    torch.manual_seed(seed)
    check_sound(model, torch.rand(3, 1, 8, 8), eps)


def test_bounds_sound_on_preact_resnet18():
    torch.manual_seed(0)
    model = randomise_bn(PreActResNet18(num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    x = torch.rand(2, 3, 8, 8)
    lower, upper = interval_bounds(model, x, 1e-3)
    assert_contains(lower, upper, logits_of(model, ball_points(x, 1e-3, 8)))
    x_adv = box_pgd(model, x.repeat_interleave(2, 0), 1e-3, torch.tensor([[1.0] + [0] * 9, [-1.0] + [0] * 9]).repeat(2, 1), 3)
    assert_contains(lower, upper, logits_of(model, x_adv.view(2, 2, 3, 8, 8)))


def test_single_linear_layer_is_exact_and_attained_at_corners():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    x, eps = torch.rand(4, 1, 3, 4), 0.1
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    w, b = model[1].weight, model[1].bias
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    lower, upper = interval_bounds(model, x, eps)
    torch.testing.assert_close(lower, center @ w.T + b - radius @ w.abs().T)
    torch.testing.assert_close(upper, center @ w.T + b + radius @ w.abs().T)
    arg_max = torch.where(w[None] > 0, hi[:, None], lo[:, None])  # (N, K, D): the maximising corner per logit
    arg_min = torch.where(w[None] > 0, lo[:, None], hi[:, None])
    torch.testing.assert_close(upper, (arg_max * w).sum(-1) + b)
    torch.testing.assert_close(lower, (arg_min * w).sum(-1) + b)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(x, 1)
        return 2.0 * self.a(h) - self.b(h) / 4 + (-3.0) * -self.b(h) - 1.0


def test_interval_arithmetic_rules():
    """``2a - b/4 + (-3)(-b) - 1`` from the bounds of a and b: sums end-wise, differences crossed,
    negative factors swap the ends."""
    torch.manual_seed(0)
    model, x = TwoHeads().eval(), torch.rand(3, 1, 8, 8)
    la, ua = interval_bounds(nn.Sequential(nn.Flatten(), model.a), x, 0.1)
    lb, ub = interval_bounds(nn.Sequential(nn.Flatten(), model.b), x, 0.1)
    lower, upper = interval_bounds(model, x, 0.1)
    torch.testing.assert_close(lower, 2 * la - ub / 4 + 3 * lb - 1)
    torch.testing.assert_close(upper, 2 * ua - lb / 4 + 3 * ub - 1)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_zero_eps_gives_the_logits(kind):
    model = MODELS[kind](1)
    x = torch.rand(5, 1, 8, 8)
    lower, upper = interval_bounds(model, x, 0.0)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(lower, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upper, logits, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(kind=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 1000), eps=st.floats(0.0, 0.2))
def test_elided_bounds_tighter_than_naive_and_sound(kind, seed, eps):
    model = MODELS[kind](seed)
    torch.manual_seed(seed)
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    margins = elided_bounds(model, x, y, eps)
    lower, upper = interval_bounds(model, x, eps)
    naive = lower.gather(1, y[:, None]) - upper
    t = tol(lower, upper)
    assert margins.shape == (3, 10) and (margins.gather(1, y[:, None]) == 0).all()
    assert (margins >= naive - t).all()
    z = logits_of(model, ball_points(x, eps, 32))
    assert (z.gather(2, y[:, None, None].expand(-1, z.shape[1], 1)) - z >= margins[:, None] - t).all()
    weights = F.one_hot(y, 10).float()[:, None] - torch.eye(10)[None]  # minimise z_y - z_j, one row per j
    x_adv = box_pgd(model, x.repeat_interleave(10, 0), eps, weights.flatten(0, 1))
    z_adv = logits_of(model, x_adv.view(3, 10, 1, 8, 8))
    assert (z_adv.gather(2, y[:, None, None].expand(-1, 10, 1)) - z_adv >= margins[:, None] - t).all()


def test_elision_falls_back_without_a_final_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU()).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    lower, upper = interval_bounds(model, x, 0.05)
    expected = (lower.gather(1, y[:, None]) - upper).masked_fill(F.one_hot(y, 10).bool(), 0.0)
    torch.testing.assert_close(elided_bounds(model, x, y, 0.05), expected)


class Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@pytest.mark.parametrize("layer, name", [(nn.GELU(), "GELU"), (nn.Sigmoid(), "Sigmoid"), (Custom(), "sigmoid")])
def test_unsupported_layer_is_named(layer, name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), layer, nn.Linear(8, 10)).eval()
    with pytest.raises(NotImplementedError, match=name) as info:
        interval_bounds(model, torch.rand(2, 1, 8, 8), 0.1)
    assert isinstance(info.value, UnsupportedLayerError) and "graph node" in str(info.value)


def test_product_of_two_bounded_tensors_is_refused():
    class Square(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * x).flatten(1)

    with pytest.raises(NotImplementedError, match="mul"):
        interval_bounds(Square(), torch.rand(2, 1, 8, 8), 0.1)


def test_training_mode_batchnorm_raises():
    model = seq_cnn(0).train()
    with pytest.raises(ValueError, match="BatchNorm2d.*training mode"):
        interval_bounds(model, torch.rand(2, 1, 8, 8), 0.1)


def test_negative_eps_raises():
    with pytest.raises(ValueError, match="eps"):
        interval_bounds(cnn_small(0), torch.rand(2, 1, 8, 8), -0.1)


@pytest.fixture(scope="module")
def trained():
    """A standard and an IBP-trained CNNSmall on digits (20 epochs; IBP: 1 clean epoch, 8-epoch ramp)."""
    method = IBP(0.05, kappa_end=0.5, warmup=1, ramp=8)
    return {"standard": train(tiny_cnn(0), epochs=20),
            "ibp": train(tiny_cnn(0), method.loss, epochs=20, on_step=method.update_schedule)}


def test_verified_accuracy_properties(trained):
    model = trained["standard"].train()
    x, y = digits("test")
    results = [verified_accuracy(model, (x, y), eps, batch_size=128) for eps in (0.0, 0.005, 0.02, 0.1)]
    assert model.training
    verified = [r["verified"]["accuracy"] for r in results]
    assert all(r["verified"]["correct"] <= r["clean"]["correct"] for r in results)
    assert results[0]["verified"]["correct"] == results[0]["clean"]["correct"] and verified[0] > 0.9
    assert verified == sorted(verified, reverse=True) and verified[-1] < verified[0]
    r = results[1]
    assert r["n_examples"] == len(x) == len(r["per_example"]) and r["eps"] == 0.005
    assert sum(r["per_example"]) == r["verified"]["correct"] and set(r["verified"]) == {"accuracy", "correct", "n", "ci95"}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)
    assert verified_accuracy(model, loader, 0.005)["per_example"] == r["per_example"]


def test_verified_accuracy_validates():
    model, (x, y) = cnn_small(0), digits("test")
    with pytest.raises(ValueError, match="eps"):
        verified_accuracy(model, (x, y), -0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        verified_accuracy(model, (x * 2, y), 0.1)


def test_ibp_loss_contract_and_schedule():
    method = IBP(0.1, kappa_end=0.5, warmup=2, ramp=4, eps_train=0.12)
    assert isinstance(method, Method) and method.threat.norm == "linf" and method.threat.eps == 0.1
    assert method.update_schedule(1.0, 0) == 0.0 and method.kappa == 1.0 and method.current_eps == 0.0
    assert method.update_schedule(4.0, 0) == 0.5
    assert method.kappa == pytest.approx(0.75) and method.current_eps == pytest.approx(0.06)
    assert method.update_schedule(9.0, 0) == 1.0 and method.kappa == 0.5 and method.current_eps == pytest.approx(0.12)
    model = tiny_cnn(0).train()
    x, y = digits("train")
    loss, logs = method.loss(model, x[:32], y[:32])
    assert torch.isfinite(loss) and model.training and {"loss", "clean_acc", "verified_acc", "eps", "kappa"} <= set(logs)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert to_spec(build(to_spec(method))) == to_spec(method)
    with pytest.raises(ValueError, match="kappa_end"):
        IBP(0.1, kappa_end=1.5)


def test_ibp_training_is_verifiably_robust(trained):
    """Observed on the 300 test digits at eps = 0.05: IBP verified 0.557 (clean 0.887); standard verified 0.0
    (clean 0.93)."""
    x, y = digits("test")
    standard = verified_accuracy(trained["standard"], (x, y), 0.05)["verified"]["accuracy"]
    ibp = verified_accuracy(trained["ibp"], (x, y), 0.05)
    assert standard < 0.05
    assert ibp["verified"]["accuracy"] > 0.4 and ibp["clean"]["accuracy"] > 0.75
