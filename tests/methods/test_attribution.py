"""Attribution methods against independent references: autograd, hand loops, Captum."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

# Captum is a test-only dependency (pyproject's test extra): a missing one must fail, not skip.
import captum.attr as captum_attr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from tiny_models import tiny_net
from torch import nn

from reportgen.methods import attribution
from reportgen.methods.hooks import hook_count

M = TypeVar("M", bound=nn.Module)


def frozen(model: M) -> M:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def tiny() -> nn.Module:
    return frozen(tiny_net(3))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 20, 20, generator=gen), torch.tensor([0, 2, 1])


def snapshot(model: nn.Module) -> tuple[list[tuple[str, type, bool]], dict[str, torch.Tensor]]:
    """Every module's name, type and in-place flag, and a copy of the weights."""
    modules = [(n, type(m), bool(getattr(m, "inplace", False))) for n, m in model.named_modules()]
    return modules, {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: Any) -> None:
    modules, state = snapshot(model)
    assert modules == before[0]
    for k, v in state.items():
        assert torch.equal(v, before[1][k]), k
    assert hook_count(model) == 0


def test_gradient_matches_autograd(
    tiny: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, t = batch
    ours = attribution.input_gradients(tiny, x, t, batch_size=2)
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(tiny(xi)[0, t[i]], xi)
        torch.testing.assert_close(ours[i], ref[0], atol=1e-6, rtol=1e-5)
    sal = attribution.saliency_map(ours)
    assert sal.shape == (3, 20, 20)
    torch.testing.assert_close(sal, ours.abs().amax(1))


def test_smoothgrad_matches_a_loop_with_the_same_noise(
    tiny: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, t = batch
    ours = attribution.smoothgrad(tiny, x, t, samples=5, noise_level=0.2, seed=7, batch_size=4)
    for i in range(len(x)):
        noise = attribution.smoothgrad_noise(x[i], 5, 0.2, 7 + i)
        assert noise.std() > 0
        acc = torch.zeros_like(x[i])
        for s in range(5):
            xi = (x[i] + noise[s])[None].requires_grad_(True)
            (g,) = torch.autograd.grad(tiny(xi)[0, t[i]], xi)
            acc += g[0]
        torch.testing.assert_close(ours[i], acc / 5, atol=1e-6, rtol=1e-5)
    # Independent of the batch size (per-image seeded noise).
    again = attribution.smoothgrad(tiny, x, t, samples=5, noise_level=0.2, seed=7, batch_size=1)
    torch.testing.assert_close(ours, again, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["riemann_middle", "gausslegendre"])
def test_integrated_gradients_match_captum(
    tiny: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], method: str
) -> None:
    x, t = batch
    baseline = torch.full((1, 3, 1, 1), -0.5)
    ours = attribution.integrated_gradients(
        tiny,
        x,
        t,
        baseline,
        steps=7,
        method=method,  # type: ignore[arg-type]
        batch_size=5,
    )
    theirs = captum_attr.IntegratedGradients(tiny).attribute(
        x, baselines=baseline.expand_as(x), target=t, n_steps=7, method=method
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)


def test_integrated_gradients_completeness(
    tiny: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, t = batch
    ig = attribution.integrated_gradients(tiny, x, t, steps=64, batch_size=64)
    with torch.no_grad():
        gap = tiny(x)[torch.arange(3), t] - tiny(torch.zeros_like(x))[torch.arange(3), t]
    torch.testing.assert_close(ig.sum(dim=(1, 2, 3)), gap, atol=2e-3, rtol=2e-2)


def test_gradcam_matches_captum(tiny: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, t = batch
    assert attribution.default_gradcam_layer(tiny, x[:1]) == "relu2"
    for name in ("relu2", "conv2"):
        layer = dict(tiny.named_modules())[name]
        ours = attribution.grad_cam(tiny, x, t, layer, batch_size=2)
        theirs = captum_attr.LayerGradCam(tiny, layer).attribute(
            x, target=t, relu_attributions=True
        )
        torch.testing.assert_close(ours, theirs[:, 0], atol=1e-6, rtol=1e-5)
    up = attribution.upsample_maps(ours, (20, 20))
    assert up.shape == (3, 20, 20)
    assert hook_count(tiny) == 0


class _RefGuidedReLU(torch.autograd.Function):
    """The textbook guided ReLU, written independently of reportgen's."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.where((x > 0) & (grad > 0), grad, torch.zeros_like(grad))


class _RefGuidedModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RefGuidedReLU.apply(x)


def _swap_relus(model: M) -> M:
    """A deep copy with every nn.ReLU module replaced by the reference guided ReLU."""
    ref = copy.deepcopy(model)
    for module in list(ref.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, _RefGuidedModule())
    return ref


def test_guided_backprop_resnet18_matches_captum() -> None:
    torch.manual_seed(0)
    model = frozen(torchvision.models.resnet18(weights=None))
    before = snapshot(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 9])
    ours = attribution.guided_backprop(model, x, t, batch_size=2)
    assert_unchanged(model, before)
    theirs = captum_attr.GuidedBackprop(model).attribute(x.clone(), target=t)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    vanilla = attribution.input_gradients(model, x, t)
    assert ours.abs().sum() > 0 and not torch.allclose(ours, vanilla)
    # Grad-CAM on the last stage (layer4), as Captum computes it.
    assert attribution.default_gradcam_layer(model, x[:1]) == "layer4"
    cam = attribution.grad_cam(model, x, t, model.layer4)
    ref = captum_attr.LayerGradCam(model, model.layer4).attribute(
        x, target=t, relu_attributions=True
    )
    torch.testing.assert_close(cam, ref[:, 0], atol=1e-6, rtol=1e-4)
    assert_unchanged(model, before)


def test_guided_backprop_densenet121_includes_functional_relu() -> None:
    torch.manual_seed(0)
    model = frozen(torchvision.models.densenet121(weights=None))
    before = snapshot(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([11])
    ours = attribution.guided_backprop(model, x, t)
    assert_unchanged(model, before)

    # Reference: module ReLUs swapped on a copy, and DenseNet's functional tail written out
    # with the guided ReLU (torchvision: F.relu(features, inplace=True) -> pool -> classifier).
    ref_model = _swap_relus(model)
    xr = x.clone().requires_grad_(True)
    feats = _RefGuidedReLU.apply(ref_model.features(xr))
    logits = ref_model.classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))
    (ref,) = torch.autograd.grad(logits[0, t[0]], xr)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-4)

    # (Captum's module-hook GuidedBackprop misses that functional ReLU and differs here by
    # ~20 % of the map's scale; not re-run in the test to keep it fast.)
    assert attribution.default_gradcam_layer(model, x) == "features"
    assert hook_count(model) == 0


class _Exploding(nn.Module):
    """ReLUs (module, reused, functional), then an error in the middle of the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        x = F.relu(x - 0.1, inplace=True)
        if self.fail:
            raise ValueError("boom")
        return self.head(self.relu(x * 2.0).flatten(1))


def test_no_hooks_or_mode_left_after_an_exception() -> None:
    torch.manual_seed(0)
    model = frozen(_Exploding())
    before = snapshot(model)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1])
    plain = attribution.input_gradients(model, x, t)
    model.fail = True
    with pytest.raises(ValueError, match="boom"):
        attribution.guided_backprop(model, x, t)
    with pytest.raises(ValueError, match="boom"):
        attribution.grad_cam(model, x, t, model.conv)
    with pytest.raises(ValueError, match="boom"):
        attribution.default_gradcam_layer(model, x)
    assert_unchanged(model, before)
    model.fail = False
    # The function mode is gone: plain gradients are plain again.
    torch.testing.assert_close(attribution.input_gradients(model, x, t), plain)
    guided = attribution.guided_backprop(model, x, t)
    assert not torch.allclose(guided, plain)
    assert_unchanged(model, before)


def test_guided_backprop_refuses_models_without_visible_relus() -> None:
    smooth = frozen(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Tanh()))
    with pytest.raises(attribution.NotApplicable, match=r"\(Tanh\) are smooth"):
        attribution.guided_backprop(smooth, torch.randn(1, 3, 5, 5), torch.tensor([0]))
    linear = frozen(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()))
    with pytest.raises(attribution.NotApplicable, match="no ReLU-family call"):
        attribution.guided_backprop(linear, torch.randn(1, 3, 5, 5), torch.tensor([0]))


class _GateNet(nn.Module):
    """conv -> gate -> conv -> gate -> pool -> linear, with one gate module reused."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.gate = gate
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.c2(self.gate(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _hand_guided(model: _GateNet, x: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """Guided backprop written out by hand: forward by layers, backward by the chain rule with
    each gate's guided rule (positive gradients only, times the gate's derivative)."""
    z1 = model.c1(x)
    a1 = _gate(z1, kind)
    z2 = model.c2(a1)
    a2 = _gate(z2, kind)
    hw = a2.shape[2] * a2.shape[3]
    g_a2 = model.fc.weight[t][:, :, None, None].expand_as(a2) / hw
    g_z2 = g_a2.clamp(min=0) * _deriv(z2, kind)
    a1r = a1.detach().requires_grad_(True)
    (g_a1,) = torch.autograd.grad(model.c2(a1r), a1r, g_z2)
    g_z1 = g_a1.clamp(min=0) * _deriv(z1, kind)
    xr = x.detach().requires_grad_(True)
    (g_x,) = torch.autograd.grad(model.c1(xr), xr, g_z1)
    return g_x


def _gate(z: torch.Tensor, kind: str) -> torch.Tensor:
    return {
        "relu6": z.clamp(0, 6),
        "hardtanh06": z.clamp(0, 6),
        "leaky": torch.where(z > 0, z, 0.1 * z),
    }[kind]


def _deriv(z: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "leaky":
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, 0.1))
    return ((z > 0) & (z < 6)).float()


@pytest.mark.parametrize(
    ("kind", "gate"),
    [
        ("relu6", nn.ReLU6(inplace=True)),
        ("hardtanh06", nn.Hardtanh(0.0, 6.0)),
        ("leaky", nn.LeakyReLU(0.1)),
    ],
)
def test_guided_backprop_on_the_relu_family_matches_a_hand_reference(
    kind: str, gate: nn.Module
) -> None:
    model = frozen(_GateNet(gate))
    # Large inputs so that some units pass 6 and are clamped by ReLU6.
    x = 4 * torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 3])
    got = attribution.guided_backprop(model, x, t)
    expected = _hand_guided(model, x, t, kind)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, attribution.input_gradients(model, x, t))


def test_spearman_matches_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (6, 7)).astype(float)  # ties on purpose
    b = a + rng.normal(0, 2, a.shape)
    assert attribution.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0])
    assert np.isnan(attribution.spearman(np.ones((3, 3)), b[:3, :3]))
