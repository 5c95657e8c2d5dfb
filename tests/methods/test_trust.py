"""reportgen.sanity: stages, randomised copies, similarity measures, deletion/insertion curves.

References: scipy.stats.spearmanr, skimage.metrics.structural_similarity, scipy.ndimage's Gaussian
filter, hand-written per-step loops, and Quantus 0.6 (MPRT, PixelFlipping, ROAD's imputation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torchvision
from hub_models import hf_model, hf_vit_config, small_timm
from scipy import ndimage
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from tiny_models import TinyNet
from torch import nn

from reportgen.demo import DigitsCNN
from reportgen.errors import LayerError
from reportgen.methods import trust
from reportgen.methods.hooks import hook_count


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small convolutions on a shared 2-core machine: one thread is faster and less noisy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class HeadFirst(nn.Module):
    """Registers the head before the body, so registration order is not call order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(nn.functional.max_pool2d(x, 2))))
        return self.head(x.mean(dim=(2, 3)))


class BlocksInAList(nn.Module):
    """EfficientNet-Lite's layout: the blocks live in a ModuleList iterated in ``forward`` (the
    list itself is never called), most of the parameters are in them, and one unused module."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self._bn0 = nn.BatchNorm2d(8)
        self._blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
            for _ in range(6)
        )
        self._conv_head = nn.Conv2d(8, 16, 1)
        self._bn1 = nn.BatchNorm2d(16)
        self._fc = nn.Linear(16, 3)
        self.unused = nn.Linear(4, 4)  # never called in forward: still re-initialised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x) + x
        x = torch.relu(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def _trained_looking(model: nn.Module, seed: int = 3) -> nn.Module:
    """Perturb every parameter and BN statistic, so that a reset visibly changes each tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(torch.rand(t.shape, generator=gen) * 0.5 + 0.1)
    return model.eval()


def _stage_names(model: nn.Module, size: int, channels: int = 3) -> list[str]:
    torch.manual_seed(0)
    stages = trust.randomization_stages(model.eval(), torch.randn(1, channels, size, size))
    return [s.name for s in stages]


# --------------------------------------------------------------------------- stages


def test_stages_on_known_architectures() -> None:
    assert _stage_names(torchvision.models.resnet18(num_classes=4), 32) == [
        "fc",
        "layer4",
        "layer3",
        "layer2",
        "layer1",
        "conv1+bn1",
    ]
    assert _stage_names(DigitsCNN(), 32, 1) == [
        "classifier.3",
        "classifier.1",
        "features.6",
        "features.3",
        "features.0",
    ]

    # VGG-style: convolutions between two poolings form one block; the classifier's linears split.
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    vgg = nn.Sequential(
        nn.Sequential(*block(3, 4), *block(4, 8), *block(8, 8)),
        nn.Flatten(),
        nn.Sequential(nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 3)),
    )
    assert _stage_names(vgg, 16) == ["2.2", "2.0", "0.10+0.12", "0.5+0.7", "0.0+0.2"]
    # DenseNet: stages at one resolution together, the final norm with the last block.
    dense = _stage_names(torchvision.models.densenet121(num_classes=4), 32)
    assert dense[0] == "classifier"
    assert dense[1].endswith("features.denseblock4+features.norm5")
    assert dense[-1] == "features.conv0+features.norm0"


@pytest.mark.parametrize(
    "factory",
    [
        lambda: torchvision.models.resnet18(num_classes=4),
        lambda: torchvision.models.mobilenet_v2(num_classes=4),
        lambda: HeadFirst(),
        lambda: TinyNet(3),
        lambda: BlocksInAList(),
        lambda: torchvision.models.efficientnet_b0(num_classes=4),
        lambda: torchvision.models.densenet121(num_classes=4),
        lambda: small_timm("convnext_atto"),
        lambda: small_timm("vit_tiny_patch16_224"),
        lambda: hf_model(hf_vit_config(num_labels=4)),
    ],
    ids=[
        "resnet18",
        "mobilenet_v2",
        "head_first",
        "tiny",
        "blocks_in_a_list",
        "efficientnet_b0",
        "densenet121",
        "timm_convnext",
        "timm_vit",
        "hf_vit",
    ],
)
def test_stages_cover_every_called_parameter_once(factory: object) -> None:
    torch.manual_seed(0)
    model = factory().eval()  # type: ignore[operator]
    x = torch.randn(1, 3, 32, 32)
    stages = trust.randomization_stages(model, x)
    units = [u for s in stages for u in s.modules]
    assert len(units) == len(set(units))
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert sorted(units) == sorted(owners)
    # The logits layer is alone at the top of the cascade.
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if not isinstance(model, BlocksInAList):
        assert stages[0].modules == (last_linear,)
    assert 2 <= len(stages) <= trust.MAX_AUTO_STAGES
    # The stages' parameter counts add up to the whole network.
    assert sum(s.parameters for s in stages) == sum(p.numel() for p in model.parameters())


def test_blocks_in_a_module_list_are_randomised() -> None:
    """The EfficientNet-Lite case: before, the cascade never reached ``_blocks`` (64 % of that
    network's parameters) because a ModuleList is not itself called."""
    model = _trained_looking(BlocksInAList().eval())
    stages = trust.randomization_stages(model, torch.randn(1, 3, 32, 32))
    assert stages[0].modules == ("_fc",)
    block_units = {u for s in stages for u in s.modules if u.startswith("_blocks.")}
    assert len(block_units) == 12  # 6 blocks × (conv, batch norm)
    # The stage of the unused module is the one of its nearest relative; every tensor changes
    # by the end of the cascade.
    *_, (_, last) = trust.randomized_models(model, stages, seed=5)
    for (name, before), after in zip(
        model.state_dict().items(), last.state_dict().values(), strict=True
    ):
        if before.dtype.is_floating_point:
            assert not torch.equal(before, after), name


def test_stages_follow_call_order_not_registration_order() -> None:
    model = HeadFirst().eval()
    stages = trust.randomization_stages(model, torch.randn(1, 3, 16, 16))
    assert [s.name for s in stages] == ["head", "conv2+bn2", "conv1+bn1"]
    explicit = trust.randomization_stages(model, torch.randn(1, 3, 16, 16), ["conv1", "head"])
    assert [s.name for s in explicit] == ["head", "conv1"]


def test_explicit_stage_names_are_checked() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    stages = trust.randomization_stages(model, x, ["layer1", "fc", "layer4.1"])
    assert [s.name for s in stages] == ["fc", "layer4.1", "layer1"]
    assert stages[1].modules == (
        "layer4.1.conv1",
        "layer4.1.bn1",
        "layer4.1.conv2",
        "layer4.1.bn2",
    )
    with pytest.raises(LayerError, match=r"'layr4' is not a module.*did you mean 'layer4'.*layer1"):
        trust.randomization_stages(model, x, ["layr4"])
    with pytest.raises(LayerError, match="overlap"):
        trust.randomization_stages(model, x, ["layer4", "layer4.0"])
    with pytest.raises(LayerError, match="no parameters"):
        trust.randomization_stages(model, x, ["relu"])


# --------------------------------------------------------------------------- randomised copies


def _own_tensors(model: nn.Module, unit: str) -> list[tuple[str, torch.Tensor]]:
    m = model.get_submodule(unit)
    return [
        (f"{unit}.{n}", t)
        for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if t.is_floating_point()
    ]


def test_cascade_changes_exactly_the_stages_so_far_and_never_the_original() -> None:
    torch.manual_seed(0)
    model = _trained_looking(HeadFirst())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample = torch.randn(1, 3, 16, 16)
    rng_before = torch.get_rng_state()
    stages = trust.randomization_stages(model, sample)
    all_units = [u for s in stages for u in s.modules]
    for k, (stage, copy) in enumerate(trust.randomized_models(model, stages, seed=7)):
        assert stage is stages[k]
        assert copy is not model
        done = {u for s in stages[: k + 1] for u in s.modules}
        for unit in all_units:
            for name, t in _own_tensors(copy, unit):
                changed = not torch.equal(t, before[name])
                assert changed == (unit in done), (k, name)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_independent_variant_changes_one_stage_with_the_cascades_values() -> None:
    torch.manual_seed(0)
    model = _trained_looking(HeadFirst())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stages = trust.randomization_stages(model, torch.randn(1, 3, 16, 16))
    cascade_values: dict[str, torch.Tensor] = {}
    for stage, copy in trust.randomized_models(model, stages, seed=7):
        for unit in stage.modules:
            cascade_values.update({n: t.clone() for n, t in _own_tensors(copy, unit)})
    for stage, copy in trust.randomized_models(model, stages, seed=7, cascade=False):
        for s in stages:
            for unit in s.modules:
                for name, t in _own_tensors(copy, unit):
                    if s is stage:
                        assert torch.equal(t, cascade_values[name]), name
                    else:
                        assert torch.equal(t, before[name]), name


def test_reinitialisation_is_seeded_and_uses_the_modules_own_init() -> None:
    torch.manual_seed(0)
    model = _trained_looking(HeadFirst())
    stage = trust.Stage("head", ("head",))
    a, b, c = (torch.nn.Linear(8, 3) for _ in range(3))
    for m, seed in ((a, 5), (b, 5), (c, 6)):
        m.load_state_dict(model.head.state_dict())
        wrapper = nn.Module()
        wrapper.head = m
        trust.randomize_stage(wrapper, stage, seed)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    # The same draws as nn.Linear's own reset_parameters from a generator seeded the same way.
    ref = torch.nn.Linear(8, 3)
    torch.manual_seed(5)
    ref.reset_parameters()
    torch.testing.assert_close(a.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.bias, ref.bias, rtol=0, atol=0)
    # Kaiming-uniform bound of nn.Linear: 1/sqrt(fan_in).
    assert float(a.weight.detach().abs().max()) <= 1 / math.sqrt(8)


class ResetsChildren(nn.Module):
    """Owns a parameter and a child; its reset_parameters also resets the child."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((4,), 3.0))
        self.inner = nn.Linear(4, 4)

    def reset_parameters(self) -> None:
        self.scale = nn.Parameter(torch.randn(4))  # replaces the tensor
        self.inner = nn.Linear(4, 4)  # replaces the child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.scale)


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 3.0, 400).view(20, 20))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_reinit_leaves_other_stages_and_redraws_modules_without_reset() -> None:
    outer = ResetsChildren()
    inner_before = outer.inner.weight.detach().clone()
    trust.randomize_stage(outer, trust.Stage("outer", ("",)), seed=0)
    assert not torch.equal(outer.scale, torch.full((4,), 3.0))
    assert torch.equal(outer.inner.weight, inner_before)  # belongs to another stage
    assert outer.scale.device.type == "cpu" and outer.scale.requires_grad

    plain = NoReset()
    orig = plain.w.detach().clone()
    trust.randomize_stage(plain, trust.Stage("w", ("",)), seed=0)
    assert not torch.equal(plain.w, orig)
    w = plain.w.detach()
    assert abs(float(w.mean()) - float(orig.mean())) < 0.3
    assert abs(float(w.std()) - float(orig.std())) < 0.15 * float(orig.std())
    # Uncorrelated with the original values.
    assert abs(np.corrcoef(w.flatten(), orig.flatten())[0, 1]) < 0.2


# --------------------------------------------------------------------------- similarity


def test_spearman_abs_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 9, 11))
    b = a + rng.normal(scale=1.5, size=a.shape)
    ties = rng.integers(-3, 4, size=(5, 9, 11)).astype(float)  # many ties, signs
    for x, y in ((a, b), (ties, b), (ties, np.round(b))):
        ours = trust.spearman_abs(x, y)
        ref = [spearmanr(np.abs(x[i]).ravel(), np.abs(y[i]).ravel())[0] for i in range(len(x))]
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    const = trust.spearman_abs(np.ones((1, 4, 4)), a[:1, :4, :4])
    assert np.isnan(const).all()
    assert trust.spearman_abs(a[0], b[0]).shape == ()


@pytest.mark.parametrize("size", [(24, 28), (12, 9)])
def test_ssim_matches_scikit_image(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / 20.0)
    a = np.stack([rng.random((h, w)), blob, blob])
    b = np.stack([rng.random((h, w)), blob + 0.3 * rng.random((h, w)), np.roll(blob, 3, axis=1)])
    na, nb = trust.normalise_maps01(a), trust.normalise_maps01(b)
    uniform = trust.ssim(na, nb, window="uniform")
    gaussian = trust.ssim(na, nb, window="gaussian")
    for i in range(3):
        ref_u = structural_similarity(na[i], nb[i], data_range=1.0)
        assert uniform[i] == pytest.approx(ref_u, abs=1e-6)
        if min(h, w) >= 11:
            ref_g = structural_similarity(
                na[i],
                nb[i],
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        else:  # window larger than the map: the largest odd box that fits, as documented
            ref_g = structural_similarity(na[i], nb[i], data_range=1.0, win_size=9)
        assert gaussian[i] == pytest.approx(ref_g, abs=1e-6)
    assert trust.ssim(na, na).tolist() == pytest.approx([1.0, 1.0, 1.0])
    np.testing.assert_allclose(trust.normalise_maps01(np.full((1, 3, 3), 2.0)), 0.0)


# --------------------------------------------------------------------------- curves


def test_gaussian_blur_matches_scipy() -> None:
    x = torch.rand(2, 3, 20, 17, dtype=torch.float64)
    for sigma in (0.8, 2.5, 6.0):
        ours = trust.gaussian_blur(x, sigma).numpy()
        radius = min(int(4 * sigma + 0.5), 16)
        ref = ndimage.gaussian_filter(
            x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", radius=(0, 0, radius, radius)
        )
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_pixel_ranks_break_ties_by_index() -> None:
    maps = torch.tensor([[[0.5, 0.1, 0.5], [0.9, 0.1, 0.5]]])
    ranks = trust.pixel_ranks(maps)
    flat = maps.flatten().numpy()
    order = np.lexsort((np.arange(flat.size), -flat))  # value descending, then index
    expected = np.empty(flat.size, int)
    expected[order] = np.arange(flat.size)
    assert ranks[0].tolist() == expected.tolist() == [1, 4, 2, 0, 5, 3]


def _slow_curve(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    saliency: np.ndarray,
    other: torch.Tensor,
    steps: int,
    kind: str,
) -> list[float]:
    """One image at a time, pixel by pixel: the obvious implementation."""
    h, w = saliency.shape
    order = sorted(range(h * w), key=lambda i: (-saliency.flat[i], i))
    probs = []
    for s in range(steps + 1):
        n = round(s * h * w / steps)
        x = image.clone() if kind == "deletion" else other.clone()
        for i in order[:n]:
            r, c = divmod(i, w)
            x[:, r, c] = other[:, r, c] if kind == "deletion" else image[:, r, c]
        with torch.no_grad():
            probs.append(float(model(x[None]).softmax(1)[0, target]))
    return probs


def test_deletion_and_insertion_match_a_slow_loop() -> None:
    torch.manual_seed(0)
    model = _trained_looking(TinyNet(3), seed=1)
    x = torch.randn(2, 3, 7, 9)
    t = torch.tensor([2, 0])
    maps = torch.stack([torch.rand(2, 7, 9), torch.randint(0, 3, (2, 7, 9)).float()])
    fill = torch.tensor([0.2, -0.1, 0.3]).view(1, 3, 1, 1)
    blurred = trust.gaussian_blur(x, 1.5)
    steps = 5  # 63 pixels: uneven step sizes
    for kind, base in (("deletion", fill), ("insertion", blurred)):
        ours = trust.perturbation_curves(
            model,
            x,
            t,
            maps,
            kind=kind,
            baseline=base,
            steps=steps,
            batch_size=7,  # type: ignore[arg-type]
        )
        for k in range(2):
            for q in range(2):
                other = base.expand_as(x)[q]
                ref = _slow_curve(model, x[q], int(t[q]), maps[k, q].numpy(), other, steps, kind)
                np.testing.assert_allclose(ours[k, q], ref, atol=1e-6)
        fractions = trust.step_counts(63, steps) / 63
        np.testing.assert_allclose(
            trust.curve_auc(fractions, ours), np.trapezoid(ours, fractions, axis=-1), atol=1e-12
        )
    assert trust.step_counts(63, 5).tolist() == [0, 13, 25, 38, 50, 63]


def test_road_imputation_matches_quantus() -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_nli

    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 6, 7))
    unknown = rng.random((6, 7)) < 0.45
    ours = trust.noisy_linear_imputation(
        torch.from_numpy(img)[None], torch.from_numpy(unknown)[None], tol=1e-12
    )[0].numpy()
    ref = quantus_nli(img.copy(), np.flatnonzero(unknown.ravel()), noise=0.0)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    np.testing.assert_array_equal(ours[:, ~unknown], img[:, ~unknown])

    # Noise: only on imputed pixels, with the requested σ.
    big = torch.zeros(1, 1, 40, 40, dtype=torch.float64)
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 5:35, 5:35] = True
    noisy = trust.noisy_linear_imputation(
        big, mask, noise=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert float(noisy[0, 0][~mask[0]].abs().max()) == 0.0
    assert float(noisy[0, 0][mask[0]].std()) == pytest.approx(0.1, rel=0.1)

    # Nothing known: the pixels keep the starting image.
    start = torch.full((1, 2, 5, 5), 0.25, dtype=torch.float64)
    everything = torch.ones(1, 5, 5, dtype=torch.bool)
    out = trust.noisy_linear_imputation(
        torch.from_numpy(rng.normal(size=(1, 2, 5, 5))), everything, init=start
    )
    torch.testing.assert_close(out, start)


def test_road_curves_start_at_the_image_and_end_at_the_fill() -> None:
    torch.manual_seed(0)
    model = _trained_looking(TinyNet(3), seed=2)
    x = torch.randn(2, 3, 12, 12)
    t = torch.tensor([1, 2])
    fill = torch.tensor([0.1, 0.0, -0.2]).view(1, 3, 1, 1)
    maps = torch.rand(1, 2, 12, 12)
    curves = trust.perturbation_curves(
        model, x, t, maps, kind="deletion", baseline=fill, steps=4, imputation="road", road_noise=0
    )
    with torch.no_grad():
        p_image = model(x).softmax(1).gather(1, t[:, None])[:, 0].numpy()
        p_fill = model(fill.expand_as(x)).softmax(1).gather(1, t[:, None])[:, 0].numpy()
    np.testing.assert_allclose(curves[0, :, 0], p_image, atol=1e-6)
    np.testing.assert_allclose(curves[0, :, -1], p_fill, atol=1e-6)


def test_deletion_matches_quantus_pixel_flipping() -> None:
    import quantus

    torch.manual_seed(0)
    model = _trained_looking(TinyNet(3, in_channels=1), seed=4)
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([0, 1, 2])
    maps = torch.rand(3, 16, 16)  # continuous: no ties, so any sort gives the same order
    fill = 0.3
    steps = 16
    ours = trust.perturbation_curves(
        model, x, t, maps[None], kind="deletion", baseline=torch.tensor(fill), steps=steps
    )[0]
    metric = quantus.PixelFlipping(
        features_in_step=16 * 16 // steps,
        perturb_baseline=fill,
        abs=False,
        normalise=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    ref = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=maps[:, None].numpy(),
        device="cpu",
        softmax=True,
    )
    np.testing.assert_allclose(ours[:, 1:], np.asarray(ref), atol=1e-5)


# --------------------------------------------------------------------------- the whole check


def test_randomisation_matches_quantus_mprt() -> None:
    import quantus

    torch.manual_seed(0)
    model = _trained_looking(TinyNet(3), seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    t = torch.tensor([0, 1, 2, 1])
    methods = trust.attribution_methods(["gradient"])

    def explain(
        model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object
    ) -> np.ndarray:
        out = methods["gradient"](model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return out.detach().numpy()

    quantus_seed = 42
    ref = quantus.MPRT(
        layer_order="top_down", seed=quantus_seed, disable_warnings=True, display_progressbar=False
    )(
        model=model,
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=None,
        explain_func=explain,
        device="cpu",
    )
    # Quantus re-initialises every module with reset_parameters, last registered first, each
    # from torch.manual_seed(seed + 1): one stage per module, seeded the same way.
    stages = trust.randomization_stages(model, x[:1], ["conv1", "conv2", "fc1", "fc2"])
    result = trust.run_attribution_checks(
        model,
        x,
        t,
        methods,
        stages=stages,
        mean_fill=torch.zeros(3),
        seed=quantus_seed + 1,
        steps=4,
    )
    assert [s.name for s in stages] == [k for k in ref if k != "original"]
    for j, stage in enumerate(stages):
        np.testing.assert_allclose(result.spearman["gradient"][:, j], ref[stage.name], atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class NoReluMLP(nn.Module):
    """Tanh MLP on flattened pixels: no ReLU for guided backprop, no spatial map for Grad-CAM."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_methods_that_cannot_run_are_reported_and_the_others_go_on() -> None:
    torch.manual_seed(0)
    model = NoReluMLP().eval()
    with torch.inference_mode():  # as a query batch may be: must still work with autograd
        x = torch.randn(3, 3, 8, 8)
        t = model(x).argmax(1)
    methods = trust.attribution_methods(
        ["gradient", "guided_backprop", "gradcam", "occlusion"], occlusion_window=2
    )
    rng_before = torch.get_rng_state()
    result = trust.run_attribution_checks(
        model, x, t, methods, mean_fill=torch.zeros(3), steps=4, independent=True
    )
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert hook_count(model) == 0
    assert result.methods == ["gradient", "occlusion"]
    assert "ReLU" in result.unavailable["guided_backprop"]
    assert "spatial" in result.unavailable["gradcam"]
    summary = trust.summary_dict(result)
    json.dumps(summary, allow_nan=False)
    assert set(summary) == {
        "images",
        "stages",
        "stage_parameters",
        "threshold",
        "methods",
        "random",
    }
    assert summary["images"] == 3 and summary["threshold"] == 0.5
    assert summary["stages"] == ["net.3", "net.1"]
    layers = dict(model.named_modules())
    assert summary["stage_parameters"] == [
        sum(p.numel() for p in layers[name].parameters()) for name in ("net.3", "net.1")
    ]
    assert set(summary["methods"]) == {"gradient", "guided_backprop", "gradcam", "occlusion"}
    assert summary["methods"]["gradcam"] == {
        "randomization": {"spearman": None, "ssim": None},
        "passes_randomization": None,
        "deletion_auc": None,
        "insertion_auc": None,
    }
    g = summary["methods"]["gradient"]
    assert set(g) == {"randomization", "passes_randomization", "deletion_auc", "insertion_auc"}
    assert len(g["randomization"]["spearman"]) == len(g["randomization"]["ssim"]) == 2
    assert g["deletion_auc"] == pytest.approx(float(result.deletion_auc["gradient"].mean()))
    assert set(summary["random"]) == {"deletion_auc", "insertion_auc"}
    assert result.independent_spearman is not None
    assert result.independent_spearman["gradient"].shape == (3, 2)
    headline = trust.headline_metrics(result)
    assert headline["attribution_checks_methods"] == 2
    assert headline["attribution_checks_methods_unavailable"] == 2
    assert all(isinstance(v, (int, float)) for v in headline.values())


def test_given_original_maps_are_not_recomputed_and_undefined_similarity_is_handled() -> None:
    torch.manual_seed(0)
    model = _trained_looking(TinyNet(3), seed=6)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 1, 2])
    calls: list[int] = []

    def dead_on_random(m: nn.Module, inputs: torch.Tensor, _t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.zeros(inputs.shape[0], 16, 16)  # constant after randomisation

    given = torch.rand(3, 16, 16)
    given[2] = 0.0  # a constant original: no ranking to compare
    result = trust.run_attribution_checks(
        model,
        x,
        t,
        {"cam": dead_on_random},
        mean_fill=torch.zeros(3),
        steps=4,
        original_maps={"cam": given},
        randomization_images=3,
    )
    assert len(calls) == len(result.stages)
    rho = result.spearman["cam"]
    assert (rho[:2] == 0.0).all() and np.isnan(rho[2]).all()
    assert result.passes_randomization("cam") is True
    np.testing.assert_allclose(result.grid_maps["cam"][:, 0], given[:2].numpy())


def test_randomisation_can_use_its_own_map_settings_and_the_curves_keep_theirs() -> None:
    """Occlusion in the randomisation test on a coarse grid: the original it compares with is
    the coarse map too (like with like), the deletion/insertion curves use the fine one."""
    torch.manual_seed(0)
    model = TinyNet(3).eval()  # untrained: probabilities far from 0 and 1, maps not flat
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    fine = trust.attribution_methods(["occlusion"], occlusion_window=4, occlusion_stride=1)
    coarse = trust.attribution_methods(["occlusion"], occlusion_window=4, occlusion_stride=4)
    common = {"mean_fill": torch.zeros(3), "steps": 4, "seed": 7, "randomization_images": 2}
    plain = trust.run_attribution_checks(model, x, t, fine, **common)
    mixed = trust.run_attribution_checks(model, x, t, fine, randomization_methods=coarse, **common)
    expected = coarse["occlusion"](model, x[:2], t[:2]).numpy()
    np.testing.assert_allclose(mixed.grid_maps["occlusion"][:, 0], expected, rtol=1e-5, atol=1e-9)
    assert not np.allclose(plain.grid_maps["occlusion"][:, 0], expected, rtol=0.05, atol=1e-7)
    for kind in ("deletion", "insertion"):
        table_plain = getattr(plain, kind)
        table_mixed = getattr(mixed, kind)
        np.testing.assert_array_equal(table_plain["occlusion"], table_mixed["occlusion"])
    # The randomised maps are coarse too: the last stage's map of each image is constant on the
    # 4×4 cells the coarse windows tile.
    last = mixed.grid_maps["occlusion"][:, -1]
    cells = last.reshape(len(last), 4, 4, 4, 4)
    assert np.allclose(cells, cells[:, :, :1, :, :1], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("imputation", ["constant", "road"])
def test_both_curves_in_one_queue_equal_each_curve_alone(imputation: str) -> None:
    """One queue for deletion and insertion of every map, the shared images (unchanged, fully
    deleted, fully blurred) evaluated once: the same curves as each kind's own queue (which the
    Quantus tests check), and the base probability is the model's on the unchanged image."""
    torch.manual_seed(1)
    model = TinyNet(3).eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 2, 1])
    maps = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    fill = torch.zeros(1, 3, 1, 1)
    blurred = trust.gaussian_blur(x, 2.0)
    kw = {"steps": 5, "batch_size": 7, "imputation": imputation, "road_noise": 0.0}
    deletion, insertion, base = trust.deletion_insertion_curves(
        model, x, t, maps, fill=fill, blurred=blurred, **kw
    )
    alone_d = trust.perturbation_curves(model, x, t, maps, kind="deletion", baseline=fill, **kw)
    alone_i = trust.perturbation_curves(model, x, t, maps, kind="insertion", baseline=blurred, **kw)
    np.testing.assert_allclose(deletion, alone_d, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(insertion, alone_i, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        expected = model(x).softmax(1)[torch.arange(3), t].numpy()
    np.testing.assert_allclose(base, expected, rtol=1e-5)
    np.testing.assert_allclose(deletion[:, :, 0], np.broadcast_to(expected, (4, 3)), rtol=1e-5)
    assert trust.curve_passes(4, 3, 5, imputation) == (  # type: ignore[arg-type]
        2 * 4 * 3 * 4 + 9 if imputation == "constant" else 2 * 4 * 3 * 6 + 3
    )
