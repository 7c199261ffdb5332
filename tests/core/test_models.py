from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hamsweep import spec
from hamsweep.core.models import MODELS, build
from hamsweep.errors import SpecError
from hamsweep.spec import ModelConfig


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def big_models() -> dict[str, nn.Module]:
    # built once: WRN-34-10 alone is 46M parameters, slow to initialize on a CPU
    torch.manual_seed(0)
    return {
        name: build(ModelConfig(name=name), num_classes=10)
        for name in ("preact_resnet18", "wrn34_10")
    }


def test_registry_names_are_the_spec_names() -> None:
    assert tuple(MODELS) == spec.MODELS


# literature: PreAct ResNet-18 11.17M (robust-overfitting code), WRN-34-10 46.16M (TRADES)
@pytest.mark.parametrize(
    ("name", "literature", "exact"),
    [
        # 11,171,146 is the PreAct ResNet-18 without the final BN;
        # its 512 scales and shifts add 1,024
        ("preact_resnet18", 11.17e6, 11_172_170),
        ("wrn34_10", 46.16e6, 46_160_474),
    ],
)
def test_big_model_parameter_counts(
    big_models: dict[str, nn.Module], name: str, literature: float, exact: int
) -> None:
    count = _params(big_models[name])
    assert abs(count - literature) / literature < 0.01
    assert count == exact  # pinned so that an architecture change shows up here


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn34_10"])
def test_big_model_forward_32x32(big_models: dict[str, nn.Module], name: str) -> None:
    with torch.no_grad():
        logits = big_models[name](torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_wrn_init_is_kaiming_fan_out(big_models: dict[str, nn.Module]) -> None:
    # 640 -> 640, 3x3: 3.7M weights, a tight estimate
    conv = big_models["wrn34_10"].layers[-1].conv2
    expected = math.sqrt(2 / (3 * 3 * 640))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_small_cnn_any_square_size(size: int) -> None:
    model = build(ModelConfig(name="small_cnn", width=8), num_classes=7)
    x = torch.rand(4, 3, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (4, 7)
    logits.sum().backward()  # attacks need the input gradient
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_small_cnn_single_channel() -> None:
    model = build(ModelConfig(name="small_cnn", width=4), num_classes=3, in_channels=1)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_small_cnn_width_scales_parameters() -> None:
    counts = {
        w: _params(build(ModelConfig(name="small_cnn", width=w), num_classes=10))
        for w in (8, 16, 32)
    }
    assert counts[8] < counts[16] < counts[32]
    # conv weights grow with width^2, so doubling the width about quadruples the count
    assert 3.5 < counts[32] / counts[16] < 4.1
    assert 200_000 < counts[32] < 350_000
    assert counts[8] < 25_000


def test_build_gives_new_weights_each_call() -> None:
    cfg = ModelConfig(name="small_cnn", width=4)
    a, b = build(cfg, 10), build(cfg, 10)
    assert not torch.equal(a.linear.weight, b.linear.weight)


def test_unknown_model_name() -> None:
    # bypasses validation, as a stale config might
    cfg = ModelConfig.model_construct(name="resnet50", width=32)
    with pytest.raises(SpecError) as err:
        build(cfg, num_classes=10)
    assert str(err.value) == (
        "model.name: unknown model 'resnet50'; "
        "valid models are preact_resnet18, wrn34_10, small_cnn"
    )


def test_bad_num_classes() -> None:
    with pytest.raises(
        ValueError, match="num_classes and in_channels must be >= 1 but got 0 and 3"
    ):
        build(ModelConfig(name="small_cnn", width=4), num_classes=0)
