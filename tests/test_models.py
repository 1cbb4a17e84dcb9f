"""Contract tests for every registered model and a few torchvision ones."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust.base.spec import build, to_spec
from robust.models import CifarResNet, Normalize, PreActResNet18, WideResNet, create, list_models
from robust.models.registry import _REGISTRY

TORCHVISION = {
    "torchvision:resnet18": {"input_size": 32},
    "torchvision:mobilenet_v3_small": {},
}
HEAVY_INPUT_SIZE = {"wrn28_10": 16, "wrn34_10": 16}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _default(name: str, arg: str, fallback: int) -> int:
    if name.startswith("torchvision:"):
        return fallback
    param = inspect.signature(_REGISTRY[name]).parameters.get(arg)
    return fallback if param is None or param.default is inspect.Parameter.empty else param.default


def _input(name: str) -> torch.Tensor:
    channels = _default(name, "in_channels", 3)
    size = HEAVY_INPUT_SIZE.get(name) or _default(name, "input_size", 32)
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models() + list(TORCHVISION))
def test_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=7, **TORCHVISION.get(name, {})).train()
    x = _input(name)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    zero = [n for n, p in params if not p.grad.any()]
    assert len(zero) <= 0.1 * len(params), f"zero gradient for {zero}"

    rebuilt = build(model._robust_spec)
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18", "resnet20", "wrn16_1", "torchvision:resnet18"])
def test_normalize_is_first_layer(name: str) -> None:
    channels = _default(name, "in_channels", 3)
    mean, std = MEAN[:channels], STD[:channels]
    model = create(name, num_classes=7, mean=mean, std=std).eval()
    first = next(model.children())
    assert isinstance(first, Normalize)
    seen = {}
    first.register_forward_hook(lambda m, args, out: seen.update(inp=args[0], out=out))
    x = _input(name)
    model(x)
    assert seen["inp"] is x
    expected = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(seen["out"], expected)


def test_normalize_matches_normalising_outside() -> None:
    normed = PreActResNet18(num_classes=7, mean=MEAN, std=STD).eval()
    plain = PreActResNet18(num_classes=7).eval()
    result = normed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["normalize.mean", "normalize.std"] and not result.unexpected_keys
    x = _input("preact_resnet18")
    with torch.no_grad():
        torch.testing.assert_close(normed(x), plain(Normalize(MEAN, STD)(x)))


def test_mean_without_std_is_rejected() -> None:
    with pytest.raises(ValueError, match="both mean and std"):
        WideResNet(16, 1, mean=MEAN)


def test_create_rejects_unknown_names_and_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create("resnet_does_not_exist", num_classes=10)
    with pytest.raises(ValueError, match="list_models"):
        create("torchvision:resnet_does_not_exist", num_classes=10)
    for bad in (1, 0, -3, 2.5, "10", True):
        with pytest.raises(ValueError, match="num_classes"):
            create("resnet20", num_classes=bad)


def test_torchvision_weights_are_passed_through() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create("torchvision:resnet18", num_classes=7, weights="DEFAULT")


def test_class_specs_rebuild_the_architecture() -> None:
    model = CifarResNet(depth=14, num_classes=5, in_channels=1, mean=[0.5], std=[0.25])
    spec = to_spec(model)
    assert spec["class_path"] == "robust.models.CifarResNet"
    rebuilt = build(spec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval(), rebuilt.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("depth", [0, 7, 21, 111, 20.0, True])
def test_cifar_resnet_depth_is_validated(depth: object) -> None:
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=depth)


@pytest.mark.parametrize("depth", [4, 27, 29, 28.0])
def test_wide_resnet_depth_is_validated(depth: object) -> None:
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=depth)


@pytest.mark.parametrize(
    ("name", "blocks", "params"),
    [
        ("preact_resnet18", 8, 11_172_170),
        ("resnet20", 9, 272_474),
        ("resnet110", 54, 1_730_714),
        ("wrn16_1", 6, 175_066),
        ("wrn28_10", 12, 36_479_194),
        ("wrn34_10", 15, 46_160_474),
    ],
)
def test_published_sizes(name: str, blocks: int, params: int) -> None:
    with torch.device("meta"):
        model = create(name, num_classes=10)
    residual = [m for m in model.modules() if type(m).__name__ in ("PreActBlock", "BasicBlock")]
    assert len(residual) == blocks
    assert sum(p.numel() for p in model.parameters()) == params


def test_torchvision_small_input_stem_and_channels() -> None:
    model = create("torchvision:resnet18", num_classes=7, in_channels=1, input_size=28)
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 7)

    model = create("torchvision:mobilenet_v3_small", num_classes=7, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)

    with torch.device("meta"):
        vit = create("torchvision:vit_b_16", num_classes=7, input_size=32)
    assert vit.image_size == 32
    assert vit(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 7)
