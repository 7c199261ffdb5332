"""Model registry: PreAct ResNet-18, WideResNet-34-10 and a small CNN for tests and smoke runs.

Every model takes images ``x: (N, C, H, W)`` in [0, 1] and returns logits ``(N, num_classes)``.
There is no normalization layer on purpose: the attack's eps ball is measured in pixel units, so
the model must see the pixels the attack perturbs. Global average pooling is adaptive, so any
square input of at least 8 pixels per side works (32x32 for CIFAR/SVHN, 16x16 in tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from hamsweep.errors import SpecError
from hamsweep.spec import ModelConfig

__all__ = ["MODELS", "PreActResNet", "SmallCNN", "WideResNet", "build"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _stage(
    block: Callable[..., nn.Module], c_in: int, c_out: int, n_blocks: int, stride: int
) -> list[nn.Module]:
    """``n_blocks`` blocks; only the first changes the width and the resolution."""
    return [
        block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n_blocks)
    ]


# --- PreAct ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), laid out
# as in the robust-overfitting code (Rice et al. 2020) that HAM builds on.


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the projection shortcut (1x1 conv, no BN) reads the activated input."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet: 3x3 stem, four stages (64-128-256-512, strides
    1-2-2-2), final BN-ReLU, linear.

    ``blocks=(2, 2, 2, 2)`` is ResNet-18 (11.17M parameters for 10 classes). Init is PyTorch's
    default (kaiming-uniform convs), as in the reference code.
    """

    def __init__(
        self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        layers, c_in = [], 64
        for i, n_blocks in enumerate(blocks):
            layers += _stage(PreActBlock, c_in, 64 * 2**i, n_blocks, stride=1 if i == 0 else 2)
            c_in = 64 * 2**i
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, num_classes)."""
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --- WideResNet (Zagoruyko & Komodakis 2016) as in the TRADES / Madry CIFAR code.


class WideBlock(nn.Module):
    """Pre-activation basic block. When the width changes, the shortcut (1x1 conv) reads the
    activated input; otherwise the identity reads the raw input (the TRADES layout)."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = None
        if c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen: 3x3 stem (16), three stages of (depth - 4) / 6 blocks at 16k, 32k, 64k
    channels (strides 1-2-2), final BN-ReLU, linear. WRN-34-10 has 46.16M parameters for 10 classes.

    The TRADES code also builds an unused ``sub_block1``; it never runs in ``forward`` and is left
    out here, so the parameter count is the one the literature reports.
    """

    def __init__(
        self,
        depth: int = 34,
        widen: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 28, 34) but got {depth}")
        n_blocks = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = _conv3x3(in_channels, 16)
        block = partial(WideBlock, drop_rate=drop_rate)
        layers, c_in = [], 16
        for c_out, stride in zip(widths, (1, 2, 2)):
            layers += _stage(block, c_in, c_out, n_blocks, stride)
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.linear = nn.Linear(c_in, num_classes)
        _init_like_trades(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, num_classes)."""
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _init_like_trades(model: nn.Module) -> None:
    # the TRADES/Madry WRN init: convs N(0, 2 / (k*k*c_out)) (kaiming, fan-out),
    # BN at identity, zero bias
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(
                m.weight,
                0.0,
                math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)),
            )
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# --- Small CNN: fast enough to run a whole training loop in a unit test.


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [_conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three stages of two conv-BN-ReLU at width, 2*width, 4*width, with a 2x2 max-pool between
    stages, then global average pooling and a linear layer. ~289k parameters at width 32."""

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w),
        )  # fmt: skip
        self.linear = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1] -> logits (N, num_classes)."""
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --- Registry. Every factory takes the same keywords; ``width`` only matters to small_cnn.


def _preact_resnet18(num_classes: int, in_channels: int, width: int) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


def _wrn34_10(num_classes: int, in_channels: int, width: int) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_channels)


def _small_cnn(num_classes: int, in_channels: int, width: int) -> nn.Module:
    return SmallCNN(width, num_classes, in_channels)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact_resnet18": _preact_resnet18,
    "wrn34_10": _wrn34_10,
    "small_cnn": _small_cnn,
}


def build(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The model ``cfg.name`` for ``num_classes`` classes and
    ``in_channels``-channel images in [0, 1]."""
    if cfg.name not in MODELS:
        raise SpecError(
            "model.name", f"unknown model {cfg.name!r}; valid models are {', '.join(MODELS)}"
        )
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1 but got {num_classes} and {in_channels}"
        )
    return MODELS[cfg.name](num_classes=num_classes, in_channels=in_channels, width=cfg.width)
