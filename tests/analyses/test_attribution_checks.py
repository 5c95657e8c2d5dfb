"""attribution_checks: the whole check on a model trained on planted evidence, and its section."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses import attribution_checks_present as present
from reportgen.methods import trust
from reportgen.methods.trust import RANDOM
from reportgen.methods.trust.checks import ChecksResult
from reportgen.report.section import Figure, Table, Text

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.2, 1.0]])


def planted_images(
    n: int, seed: int, size: int = 16, side: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim noise with a solid square in the class's colour and a hollow square (the distractor)
    in another class's colour, at random non-overlapping places. Normalised to about [-1, 2.3]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen) * 0.3
    y = torch.randint(0, 3, (n,), generator=gen)
    other = (y + torch.randint(1, 3, (n,), generator=gen)) % 3
    for i in range(n):
        while True:
            a, b, c, d = torch.randint(0, size - side + 1, (4,), generator=gen).tolist()
            if abs(a - c) >= side or abs(b - d) >= side:
                break
        x[i, :, c : c + side, d : d + side] = COLOURS[other[i]][:, None, None]
        x[i, :, c + 1 : c + side - 1, d + 1 : d + side - 1] = 0.15
        x[i, :, a : a + side, b : b + side] = COLOURS[y[i]][:, None, None]
    return (x - 0.3) / 0.3, y


def planted_model(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 3),
    )


def train_planted(seed: int = 0, steps: int = 150) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = planted_model()
    x, y = planted_images(1024, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(x), (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()
    xt, yt = planted_images(256, seed=10_000 + seed)
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    return model, accuracy


def deep_vgg(width: int = 64, depth: int = 8) -> nn.Module:
    """Eight 3×3 conv + ReLU layers (pooling after every second), GAP, one linear layer."""
    layers: list[nn.Module] = []
    cin = 3
    for i in range(depth):
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
        cin = width
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Training and small convolutions on a shared 2-core machine: one thread is fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted() -> tuple[nn.Module, torch.Tensor, torch.Tensor, ChecksResult]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, accuracy = train_planted(seed=0)
        assert accuracy >= 0.95
        x, y = planted_images(16, seed=100)
        methods = trust.attribution_methods(
            list(trust.METHODS),
            smoothgrad_samples=8,
            ig_steps=8,
            occlusion_window=4,
            occlusion_stride=2,
        )
        result = trust.run_attribution_checks(
            model, x, y, methods, mean_fill=torch.zeros(3), steps=16, randomization_images=8
        )
    finally:
        torch.set_num_threads(before)
    return model, x, y, result


def test_planted_evidence_maps_beat_the_random_control(
    planted: tuple[nn.Module, torch.Tensor, torch.Tensor, ChecksResult],
) -> None:
    _model, _x, _y, result = planted
    assert result.methods == list(trust.METHODS)
    rd, ri = result.mean_auc(RANDOM, "deletion"), result.mean_auc(RANDOM, "insertion")
    assert rd is not None and ri is not None
    for method in ("gradient", "gradcam", "occlusion"):
        d, i = result.mean_auc(method, "deletion"), result.mean_auc(method, "insertion")
        assert d is not None and i is not None
        assert d < rd - 0.2, (method, d, rd)
        assert i > ri + 0.05, (method, i, ri)
        assert result.better_than_random(method) == (True, True)
    # Deleting the evidence first: after a quarter of the pixels the class is mostly gone.
    quarter = int(np.searchsorted(result.fractions, 0.25))
    assert result.deletion["occlusion"][:, quarter].mean() < 0.3
    assert result.deletion[RANDOM][:, quarter].mean() > 0.6


def test_planted_evidence_gradient_decorrelates_under_randomisation(
    planted: tuple[nn.Module, torch.Tensor, torch.Tensor, ChecksResult],
) -> None:
    _model, _x, _y, result = planted
    assert [s.name for s in result.stages] == ["9", "5", "3", "0"]
    rho = result.mean_spearman("gradient")
    assert rho[-1] < result.threshold - 0.1
    assert rho[-1] < rho[0]
    assert result.passes_randomization("gradient") is True
    assert result.passes_randomization("gradcam") is True
    ssim_final = result.mean_ssim("gradient")[-1]
    assert 0.0 <= ssim_final < 0.5


def test_guided_backprop_survives_randomisation_on_a_deep_net() -> None:
    # The literature's finding (Adebayo et al. 2018; Nie et al. 2018): guided backprop recovers
    # the image through the ReLUs of a deep net whatever the weights. Here the "model" is a deep
    # net with random weights (seed 1); its fully re-initialised copy (seed 0) is another random
    # net, so a map that explains the weights must change, and guided backprop's barely does.
    torch.manual_seed(1)
    model = deep_vgg().eval()
    x, _ = planted_images(6, seed=3, size=32, side=8)
    t = torch.zeros(6, dtype=torch.long)
    methods = trust.attribution_methods(["gradient", "guided_backprop"])
    result = trust.run_attribution_checks(model, x, t, methods, mean_fill=torch.zeros(3), steps=4)
    assert len(result.stages) == 5
    gb, grad = result.mean_spearman("guided_backprop"), result.mean_spearman("gradient")
    assert (gb[:3] > 0.85).all()
    assert gb[-1] >= result.threshold
    assert grad[-1] < result.threshold
    assert result.passes_randomization("guided_backprop") is False
    assert result.passes_randomization("gradient") is True
    section = present.attribution_checks_section(result, _display(x), ["a", "b"])
    warnings = [b.text for b in section.blocks if isinstance(b, Text) and b.kind == "warning"]
    assert len(warnings) == 1 and "guided backprop" in warnings[0]
    assert trust.headline_metrics(result)["attribution_checks_methods_failing_randomization"] == 1


# --------------------------------------------------------------------------- presentation


def _display(x: torch.Tensor) -> list[np.ndarray]:
    img = (x * 0.3 + 0.3).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return [(i * 255).round().astype(np.uint8) for i in img]


def test_section_puts_the_verdict_first_and_draws_every_figure(
    planted: tuple[nn.Module, torch.Tensor, torch.Tensor, ChecksResult],
) -> None:
    _model, x, _y, result = planted
    titles = [f"img{i}" for i in range(len(x))]
    section = present.attribution_checks_section(result, _display(x), titles, panel_px=48)
    assert section.name == "attribution_checks"
    first = section.blocks[0]
    assert isinstance(first, Table)
    assert first.columns == [
        "method",
        "passes randomisation?",
        "ρ after full randomisation",
        "deletion AUC ↓",
        "insertion AUC ↑",
        "better than random?",
    ]
    assert len(first.rows) == len(result.methods) + 1
    assert first.rows[-1][0] == "random map (control)"
    scores = [float(r[4]) - float(r[3]) for r in first.rows[:-1]]  # ranked by faithfulness
    assert scores == sorted(scores, reverse=True)
    by_method = {r[0]: r for r in first.rows}
    assert by_method["gradient"][1] == "yes" and by_method["gradient"][5] == "yes"
    assert by_method["gradient"][3] == pytest.approx(result.mean_auc("gradient", "deletion"))
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    assert len(figures) == 2 + 2  # two grids, similarity curves, deletion/insertion curves
    for f in figures:
        assert f.picture.pixels.dtype == np.uint8 and f.picture.width >= 300
    grid = figures[0].picture
    assert grid.height > 300  # six method rows
    assert "0.5" in section.how_to_read and "16 equal steps" in section.how_to_read
    assert f"σ = {result.insertion_blur_sigma:g} px" in section.how_to_read
    assert "the dataset's mean pixel" in section.how_to_read
    assert trust.headline_metrics(result)["attribution_checks_methods_failing_randomization"] == 0


def test_section_notes_unavailable_methods_and_draws_the_independent_variant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0, 1])
    methods = trust.attribution_methods(["gradient", "guided_backprop"])
    result = trust.run_attribution_checks(
        model, x, t, methods, mean_fill=torch.zeros(3), steps=4, independent=True, grid_images=1
    )
    section = present.attribution_checks_section(result, _display(x), ["a", "b"])
    notes = [b.text for b in section.blocks if isinstance(b, Text) and b.kind == "note"]
    assert any(n.startswith("guided backprop is not checked") for n in notes)
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    assert len(figures) == 3
    plain = present.similarity_curves(
        trust.ChecksResult(
            **{**result.__dict__, "independent_spearman": None, "independent_ssim": None}
        )
    )
    assert figures[1].picture.height > plain.height * 1.5  # a second row of panels

    nothing = trust.run_attribution_checks(
        model,
        x,
        t,
        {"guided_backprop": methods["guided_backprop"]},
        mean_fill=torch.zeros(3),
        steps=4,
    )
    empty = present.attribution_checks_section(nothing, _display(x), ["a", "b"])
    assert [b.kind for b in empty.blocks if isinstance(b, Text)] == ["warning"]
    assert not any(isinstance(b, (Figure, Table)) for b in empty.blocks)


def test_params_defaults() -> None:
    from reportgen.analyses.attribution_checks import AttributionChecksParams

    p = AttributionChecksParams()
    assert p.methods == list(trust.METHODS)
    assert (p.stages, p.max_images, p.randomization_images, p.grid_images) == ("auto", 8, 3, 2)
    assert (p.steps, p.threshold, p.imputation, p.independent) == (12, 0.5, "constant", False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.steps = 3  # type: ignore[misc]


def test_checks_reuse_the_maps_the_saliency_and_occlusion_sections_drew(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original maps come from the sections that drew them: the same numbers as when the
    checks compute them alone, and one SmoothGrad and one fine occlusion pass fewer."""
    from conftest import make_config, make_context, write_image_folder

    from reportgen import methods
    from reportgen.analyses.attribution_checks import AttributionChecksAnalysis
    from reportgen.analyses.occlusion import OcclusionAnalysis
    from reportgen.analyses.saliency import SaliencyAnalysis

    write_image_folder(tmp_path / "images")
    names = ["smoothgrad", "gradient", "occlusion"]
    cfg = make_config(
        tmp_path,
        {
            "model.weights": str(tiny_weights),
            "analyses": {
                "saliency": {"methods": ["gradient", "smoothgrad"], "smoothgrad_samples": 4},
                "occlusion": {"window": 8, "stride": 4},
                "attribution_checks": {
                    "methods": names,
                    "smoothgrad_samples": 4,
                    "occlusion_window": 8,
                    "occlusion_stride": 4,
                    "randomization_occlusion_stride": 8,
                    "steps": 4,
                },
            },
        },
        analyses=["saliency", "occlusion", "attribution_checks"],
    )
    calls = {"smoothgrad": 0, "occlusion_fine": 0}
    real_sg, real_occ = methods.attribution.smoothgrad, methods.perturbation.occlusion_maps

    def counting_sg(*args: object, **kwargs: object) -> torch.Tensor:
        calls["smoothgrad"] += 1
        return real_sg(*args, **kwargs)  # type: ignore[arg-type]

    def counting_occ(*args: object, **kwargs: object) -> object:
        stride = args[4] if len(args) > 4 else kwargs["stride"]
        calls["occlusion_fine"] += int(stride == 4)
        return real_occ(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(methods.attribution, "smoothgrad", counting_sg)
    monkeypatch.setattr(methods.perturbation, "occlusion_maps", counting_occ)
    monkeypatch.setattr(methods.trust.maps, "occlusion_maps", counting_occ)
    params = cfg.analyses["attribution_checks"]

    alone_ctx = make_context(cfg, "attribution_checks")
    alone = AttributionChecksAnalysis().run(alone_ctx, params)
    alone_calls = dict(calls)
    ctx = make_context(cfg, "attribution_checks")
    SaliencyAnalysis().run(ctx, cfg.analyses["saliency"])
    OcclusionAnalysis().run(ctx, cfg.analyses["occlusion"])
    before = dict(calls)
    shared = AttributionChecksAnalysis().run(ctx, params)
    assert calls["smoothgrad"] - before["smoothgrad"] == alone_calls["smoothgrad"] - 1
    assert calls["occlusion_fine"] - before["occlusion_fine"] == alone_calls["occlusion_fine"] - 1
    for key in ("deletion_auc", "insertion_auc"):
        for name in names:
            np.testing.assert_allclose(
                shared.record["methods"][name][key], alone.record["methods"][name][key], rtol=1e-5
            )
    texts = [b.text for b in shared.section.blocks if isinstance(b, Text)]
    assert any("reused" in s and "SmoothGrad" in s and "occlusion" in s for s in texts), texts
    assert not any(
        "reused" in s for s in (b.text for b in alone.section.blocks if isinstance(b, Text))
    )


def test_a_small_stage_share_never_reads_as_zero() -> None:
    assert present._share(9_408, 23_530_571) == "< 0.1 %"  # ResNet-50's conv1+bn1
    assert present._share(0, 10) == "0.0 %"
    assert present._share(1, 8) == "12.5 %"
    assert present._share(1, 0) == "n/a"
