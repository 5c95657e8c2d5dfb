"""The methods read scores through the head: occlusion and deletion/insertion on a one-logit
model against hand loops over sigmoid(z), and a two-output softmax model against its one-logit
rewrite (z = z1 − z0), which must give the same probabilities, predictions, occlusion maps and
curves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import TinyNet
from torch import nn

from reportgen.heads import MULTICLASS, Head
from reportgen.methods import perturbation, trust
from reportgen.methods.trust.curves import deletion_insertion_curves, gaussian_blur
from reportgen.report.predictions import prediction_set

BINARY = Head("binary")


def _two_output() -> TinyNet:
    torch.manual_seed(3)
    return TinyNet(2).eval()


def _one_logit(two: TinyNet) -> TinyNet:
    """The same network with one output z = z1 − z0."""
    one = copy.deepcopy(two)
    fc = nn.Linear(two.fc2.in_features, 1)
    with torch.no_grad():
        fc.weight.copy_(two.fc2.weight[1:] - two.fc2.weight[:1])
        fc.bias.copy_(two.fc2.bias[1:] - two.fc2.bias[:1])
    one.fc2 = fc
    return one.eval()


def _inputs() -> torch.Tensor:
    return torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("incremental", [False, True])
def test_binary_occlusion_equals_a_hand_loop_over_the_sigmoid(incremental: bool) -> None:
    model = _one_logit(_two_output())
    x = _inputs()
    targets = torch.tensor([1, 0, 1])
    fill = torch.zeros(3)
    window, stride = 8, 4
    maps = perturbation.occlusion_maps(
        model,
        x,
        targets,
        window,
        stride,
        fill,
        batch_size=5,
        module=model if incremental else None,
        head=BINARY,
    )
    rows, cols = perturbation.grid_shape(24, 24, window, stride)
    with torch.no_grad():
        for i in range(3):
            z0 = float(model(x[i : i + 1])[0, 0])
            sign = 1.0 if int(targets[i]) == 1 else -1.0
            assert float(maps.base_prob[i]) == pytest.approx(1 / (1 + np.exp(-sign * z0)), abs=1e-6)
            for r in range(rows):
                for c in range(cols):
                    copy_ = x[i].clone()
                    copy_[:, r * stride : r * stride + window, c * stride : c * stride + window] = 0
                    z = float(model(copy_[None])[0, 0])
                    want = 1 / (1 + np.exp(-sign * z))
                    assert float(maps.prob[i, r, c]) == pytest.approx(want, abs=1e-5)
                    assert int(maps.predicted[i, r, c]) == int(z >= 0)
    assert float(maps.prob.std()) > 0  # not the flat map softmax over one logit would give


def test_binary_deletion_curves_equal_a_hand_loop() -> None:
    model = _one_logit(_two_output())
    x = _inputs()[:2]
    targets = torch.tensor([1, 0])
    maps = torch.rand((1, 2, 24, 24), generator=torch.Generator().manual_seed(2))
    fill = torch.zeros(1, 3, 1, 1)
    blurred = gaussian_blur(x, 3.0)
    steps = 4
    deletion, insertion, _ = deletion_insertion_curves(
        model, x, targets, maps, fill=fill, blurred=blurred, steps=steps, batch_size=3, head=BINARY
    )
    counts = trust.step_counts(24 * 24, steps)
    ranks = trust.pixel_ranks(maps[0])
    with torch.no_grad():
        for i in range(2):
            sign = 1.0 if int(targets[i]) == 1 else -1.0
            for s, k in enumerate(counts):
                taken = (ranks[i] < int(k)).view(24, 24)
                deleted = torch.where(taken, fill[0], x[i])
                inserted = torch.where(taken, x[i], blurred[i])
                for got, image in ((deletion[0, i, s], deleted), (insertion[0, i, s], inserted)):
                    z = float(model(image[None])[0, 0])
                    assert float(got) == pytest.approx(1 / (1 + np.exp(-sign * z)), abs=1e-5)


def test_a_two_output_model_and_its_one_logit_rewrite_agree() -> None:
    two = _two_output()
    one = _one_logit(two)
    x = _inputs()
    targets = torch.tensor([0, 1, 1])
    with torch.no_grad():
        l2, l1 = two(x), one(x)
    torch.testing.assert_close(BINARY.probabilities(l1), MULTICLASS.probabilities(l2))
    assert torch.equal(BINARY.predictions(l1), MULTICLASS.predictions(l2))
    kwargs = {"window": 8, "stride": 4, "fill": torch.zeros(3), "batch_size": 7}
    occ2 = perturbation.occlusion_maps(two, x, targets, head=MULTICLASS, **kwargs)  # type: ignore[arg-type]
    occ1 = perturbation.occlusion_maps(one, x, targets, head=BINARY, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(occ1.prob, occ2.prob, atol=1e-6, rtol=1e-5)
    assert torch.equal(occ1.predicted, occ2.predicted)
    maps = torch.rand((2, 3, 24, 24), generator=torch.Generator().manual_seed(5))
    common = {
        "fill": torch.zeros(1, 3, 1, 1),
        "blurred": gaussian_blur(x, 3.0),
        "steps": 6,
        "batch_size": 8,
    }
    d2, i2, b2 = deletion_insertion_curves(two, x, targets, maps, head=MULTICLASS, **common)  # type: ignore[arg-type]
    d1, i1, b1 = deletion_insertion_curves(one, x, targets, maps, head=BINARY, **common)  # type: ignore[arg-type]
    np.testing.assert_allclose(d1, d2, atol=1e-6)
    np.testing.assert_allclose(i1, i2, atol=1e-6)
    np.testing.assert_allclose(b1, b2, atol=1e-6)
    # predictions.csv's numbers (float64) agree too.
    paths, shas = ["a", "b", "c"], ["0" * 64] * 3
    names = ["negative", "positive"]
    ps2 = prediction_set(paths, shas, [0, 1, -1], names, l2.numpy())
    ps1 = prediction_set(paths, shas, [0, 1, -1], names, l1.numpy(), head=BINARY)
    np.testing.assert_array_equal(ps1.predictions, ps2.predictions)
    np.testing.assert_allclose(ps1.confidence, ps2.confidence, atol=1e-6)
    np.testing.assert_allclose(ps1.p_label[:2], ps2.p_label[:2], atol=1e-6)
    assert ps1.p_positive is not None and ps2.p_positive is None


def test_gradient_methods_explain_plus_or_minus_the_logit() -> None:
    """A binary head's gradient of the negative class is the positive class' gradient negated."""
    from reportgen.methods import attribution

    model = _one_logit(_two_output())
    x = _inputs()[:1]
    pos = attribution.input_gradients(model, x, torch.tensor([1]), head=BINARY)
    neg = attribution.input_gradients(model, x, torch.tensor([0]), head=BINARY)
    torch.testing.assert_close(neg, -pos)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[0, 0], xr)
    torch.testing.assert_close(pos, grad)
