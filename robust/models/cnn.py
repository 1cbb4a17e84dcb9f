"""Small convolutional networks for MNIST-sized inputs.

``SmallCNN`` is the MNIST network of Carlini & Wagner 2017 used by TRADES (Zhang et
al. 2019). ``CNNSmall``/``CNNMedium``/``CNNLarge`` are the networks of Gowal et al.
2018 (IBP, Table 1), also used by CROWN-IBP (Zhang et al. 2020).
``CNN4`` is the VGG-style four-convolution network with batch norm that CPU-sized traffic-sign
classifiers use. All take ``in_channels`` and ``input_size`` so they also fit 8x8 digits or 32x32 images.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from robust.base.spec import Recorded
from robust.models.normalize import Normalize
from robust.models.registry import register_model


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class _Sequential(Recorded, nn.Sequential):
    """An ``nn.Sequential`` with an optional leading ``Normalize`` and a recorded spec."""

    def _build(self, layers: list[nn.Module], mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            layers = [Normalize(mean, std), *layers]
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)


class MadryCNN(_Sequential):
    """The MNIST network of Madry et al. 2018: conv32 5x5, pool, conv64 5x5, pool, fc1024 (same padding)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        size = input_size // 4
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for MadryCNN")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * size * size, 1024), nn.ReLU(), nn.Linear(1024, num_classes),
        ]
        self._build(layers, mean, std)


class SmallCNN(_Sequential):
    """Conv32-Conv32-Pool-Conv64-Conv64-Pool-FC200-FC200 (3x3 convs, no padding on 28x28;
    padding 1 on inputs smaller than 16 pixels so that 8x8 digits keep a spatial map)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        pad = 1 if input_size < 16 else 0
        size = input_size
        for _ in range(2):
            size = _conv_out(size, 3, 1, pad)
            size = _conv_out(size, 3, 1, pad)
            size //= 2
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for SmallCNN")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 32, 3, padding=pad), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=pad), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * size * size, 200), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        ]
        self._build(layers, mean, std)


def _ibp_cnn(
    convs: list[tuple[int, int, int, int]],
    fcs: list[int],
    num_classes: int,
    in_channels: int,
    input_size: int,
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels, size = in_channels, input_size
    for out, kernel, stride, padding in convs:
        layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=padding), nn.ReLU()]
        channels, size = out, _conv_out(size, kernel, stride, padding)
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for this network")
    layers.append(nn.Flatten())
    width = channels * size * size
    for hidden in fcs:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return layers


class CNNSmall(_Sequential):
    """IBP small: conv16 4x4/2, conv32 4x4/1, fc100 (Gowal et al. 2018, Table 1)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self._build(_ibp_cnn([(16, 4, 2, 1), (32, 4, 1, 1)], [100], num_classes, in_channels, input_size), mean, std)


class CNNMedium(_Sequential):
    """IBP medium: conv32 3x3/1, conv32 4x4/2, conv64 3x3/1, conv64 4x4/2, fc512, fc512."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        convs = [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)]
        self._build(_ibp_cnn(convs, [512, 512], num_classes, in_channels, input_size), mean, std)


class CNNLarge(_Sequential):
    """IBP large: conv64 3x3/1, conv64 3x3/1, conv128 3x3/2, conv128 3x3/1, conv128 3x3/1, fc512."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        convs = [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)]
        self._build(_ibp_cnn(convs, [512], num_classes, in_channels, input_size), mean, std)


class CNN4(_Sequential):
    """conv(w)-conv(w)-pool-conv(2w)-conv(2w)-pool-fc256: 3x3 convolutions with padding 1, each followed by
    BatchNorm and ReLU; ``width`` w = 32 gives 1.1 M parameters on 32x32 colour images (~25 M multiply-adds)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 32,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        size = input_size // 4
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for CNN4")
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, width, None, 2 * width, 2 * width, None):
            if out is None:
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        layers += [nn.Flatten(), nn.Linear(channels * size * size, 256), nn.ReLU(), nn.Linear(256, num_classes)]
        self._build(layers, mean, std)


register_model("madry_cnn")(MadryCNN)
register_model("small_cnn")(SmallCNN)
register_model("cnn_small")(CNNSmall)
register_model("cnn_medium")(CNNMedium)
register_model("cnn_large")(CNNLarge)
register_model("cnn4")(CNN4)
