"""Incremental occlusion (Krypton): the same logits as full forwards, or full forwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from tiny_models import TinyNet
from torch import nn

from reportgen.methods import incremental, perturbation
from reportgen.methods.incremental import IncrementalOcclusion


def _grid(size: int, window: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = perturbation.grid_shape(size, size, window, stride)
    cell = torch.arange(rows * cols)
    return (cell // cols) * stride, (cell % cols) * stride


def _trained_looking(model: nn.Module) -> nn.Module:
    """Batch-norm statistics away from 0/1, so a wrong region would show in the logits."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


MODELS: list[tuple[str, Callable[[], nn.Module], int, bool]] = [
    ("resnet18", lambda: torchvision.models.resnet18(num_classes=5), 64, False),
    ("resnet18-cl", lambda: torchvision.models.resnet18(num_classes=5), 64, True),
    ("resnet50-cl", lambda: torchvision.models.resnet50(num_classes=5), 64, True),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=5), 64, False),
    ("densenet121", lambda: torchvision.models.densenet121(num_classes=5), 64, False),
    ("efficientnet_b0-cl", lambda: torchvision.models.efficientnet_b0(num_classes=5), 64, True),
    ("vgg11_bn", lambda: torchvision.models.vgg11_bn(num_classes=5), 64, False),
    ("tiny", lambda: TinyNet(3), 32, False),
]


@pytest.mark.parametrize(
    ("name", "factory", "size", "channels_last"), MODELS, ids=[m[0] for m in MODELS]
)
def test_incremental_logits_equal_full_forwards(
    name: str, factory: Callable[[], nn.Module], size: int, channels_last: bool
) -> None:
    """Every occluder position, windows clipped at the border included (stride not dividing
    the free span), against the model's own forward on the occluded copies."""
    torch.manual_seed(0)
    model = _trained_looking(factory())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner = IncrementalOcclusion.trace(model)
    assert runner is not None, name
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    window, stride = {64: (16, 7), 32: (8, 5)}[size]  # the last window is clipped
    tops, lefts = _grid(size, window, stride)
    assert int(tops.max()) > size - window
    fill = torch.tensor([0.3, -0.2, 0.1])
    with torch.inference_mode():
        copies = perturbation.occluded_copies(
            x, torch.zeros(len(tops), dtype=torch.long), tops, lefts, window, fill
        )
        want = model(copies)
        got = runner.logits(x, tops, lefts, window, fill, batch_size=13)
    scale = float(want.abs().max())
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, scale)), (
        name,
        float((got - want).abs().max()),
        scale,
    )


def test_occlusion_maps_use_it_and_give_the_full_computations_maps() -> None:
    torch.manual_seed(0)
    model = _trained_looking(torchvision.models.resnet18(num_classes=4))
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 3])
    fill = torch.zeros(3)
    with torch.inference_mode():
        plain = perturbation.occlusion_maps(model, x, t, 12, 5, fill, batch_size=16)
        before = incremental.TALLY.copies
        fast = perturbation.occlusion_maps(model, x, t, 12, 5, fill, batch_size=16, module=model)
    assert fast.incremental and not plain.incremental
    rows, cols = perturbation.grid_shape(48, 48, 12, 5)
    assert incremental.TALLY.copies - before == 2 * rows * cols  # the self-check not counted
    torch.testing.assert_close(fast.prob, plain.prob, rtol=1e-4, atol=1e-6)
    assert torch.equal(fast.predicted, plain.predicted)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.mean() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_untraceable_or_disagreeing_models_get_full_forwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, t, fill = torch.randn(1, 3, 16, 16), torch.tensor([0]), torch.zeros(3)
    model = Branchy().eval()
    assert IncrementalOcclusion.trace(model) is None
    with torch.inference_mode():
        maps = perturbation.occlusion_maps(model, x, t, 4, 2, fill, module=model)
    assert not maps.incremental
    # A runner whose answer differs from the model's own forward is never used.
    tiny = TinyNet(3).eval()
    monkeypatch.setattr(
        IncrementalOcclusion, "logits", lambda self, image, tops, *a, **k: torch.zeros(len(tops), 3)
    )
    with torch.inference_mode():
        maps = perturbation.occlusion_maps(tiny, x, t, 4, 2, fill, module=tiny)
    assert not maps.incremental
