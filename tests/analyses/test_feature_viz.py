"""Feature visualisation: planted models show what was planted, the plan is the passes made,
runs repeat to the byte, channels line up with the maximally activating patches, and models
without hooks or with token grids get what they can."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_GRAY_ARCH, make_config, make_context, write_image_folder
from PIL import Image
from tiny_models import tiny_gray_net, tiny_net

from reportgen.analyses.common import choose_channels
from reportgen.analyses.feature_viz import (
    FeatureVizAnalysis,
    FeatureVizCollector,
    FeatureVizParams,
    resolve_settings,
)
from reportgen.analyses.max_patches import MaxPatchesAnalysis
from reportgen.api import pipeline, run_report
from reportgen.errors import ConfigError
from reportgen.loading.folders import scan_folder
from reportgen.loading.images import ImageDataset, Preprocessor
from reportgen.methods.hooks import hook_count
from reportgen.params import validate_params
from reportgen.report.section import Figure, Table, Text

FAST = {"steps": 6, "crops": 2, "tile_size": 48}


def train(model: torch.nn.Module, cfg: Any, steps: int = 150) -> torch.nn.Module:
    """Fit ``model`` to the config's labelled images as the report preprocesses them."""
    folder = scan_folder(cfg.data)
    data = ImageDataset(
        folder, Preprocessor.from_config(cfg.preprocess, 1 if "gray" in cfg.model.arch else 3)
    )
    x = torch.stack([data[i].input for i in range(len(data))])  # type: ignore[misc]
    y = torch.tensor([item.label for item in folder.items])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) == 1.0
    return model


def section_run(cfg: Any) -> tuple[Any, Any]:
    ctx = make_context(cfg)
    return ctx, FeatureVizAnalysis().run(ctx, cfg.analyses["feature_viz"])


# --------------------------------------------------------------------------- planted models


def write_colours(root: Path, per_class: int = 12) -> Path:
    """Class 'red': a red square on dark noise; class 'other': the same with a square of
    another colour (green, blue, yellow, purple, grey): only red tells the classes apart."""
    others = [(40, 180, 60), (40, 70, 220), (230, 200, 30), (160, 40, 200), (150, 150, 150)]
    rng = np.random.default_rng(0)
    for name in ("other", "red"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            y, x = rng.integers(0, 20, 2)
            img[y : y + 20, x : x + 20] = (220, 40, 40) if name == "red" else others[i % 5]
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


def test_a_planted_colour_shows_in_the_class_image_and_maco_keeps_the_data_spectrum(
    tmp_path: Path,
) -> None:
    """A model that tells red squares from squares of other colours: the red class's image is
    redder than the data, with both parameterisations; the model recognises its class images;
    the objective rises over the steps; MACO's images keep the spectral slope of the data,
    the Fourier baseline's drift from it."""
    write_colours(tmp_path / "images")
    base = make_config(tmp_path, {"data.queries": 2}, analyses=["feature_viz"])
    weights = tmp_path / "colours.pt"
    torch.save(train(tiny_net(2), base).state_dict(), weights)
    slopes: dict[str, tuple[float, list[float]]] = {}
    for kind in ("maco", "fourier"):
        params = {"objectives": ["classes"], "steps": 48, "parameterisation": kind}
        cfg = make_config(
            tmp_path,
            {"model.weights": str(weights), "data.queries": 2, "analyses": {"feature_viz": params}},
            analyses=["feature_viz"],
        )
        ctx, result = section_run(cfg)
        record = result.record
        assert [o["class_name"] for o in record["objectives"]] == ["other", "red"]
        assert result.metrics["feature_viz_class_images_recognised"] == 1.0
        images = result.arrays["feature_viz_images"]
        assert images.shape == (2, 3, 32, 32)
        data_mean = ctx.preprocessor.denormalise(ctx.pass_result.mean_input[:, None, None])
        red = images[1].mean(axis=(1, 2)) - data_mean.flatten().numpy()
        assert red[0] > 0.03 and red[0] > red[1] + 0.03 and red[0] > red[2] + 0.03, (kind, red)
        for o in record["objectives"]:
            assert o["kind"] == "class" and o["probability"] >= 0.5 and o["recognised"]
            assert o["value"] > o["initial_value"]
        history = result.arrays["feature_viz_history"]
        assert history.shape == (2, 48)
        assert (history[:, -5:].mean(1) > history[:, :5].mean(1)).all(), history
        slopes[kind] = (
            record["data_spectral_slope"],
            [o["spectral_slope"] for o in record["objectives"]],
        )
        assert hook_count(ctx.model.module) == 0
        assert not any(p.grad is not None for p in ctx.model.module.parameters())
    data_slope = slopes["maco"][0]
    maco_gap = max(abs(s - data_slope) for s in slopes["maco"][1])
    fourier_gap = min(abs(s - data_slope) for s in slopes["fourier"][1])
    assert maco_gap < 0.5 and maco_gap < fourier_gap, slopes


def write_gratings(root: Path, per_class: int = 8) -> Path:
    """Class 'horizontal': stripes across rows; 'vertical': across columns (random frequency
    and phase, with noise), 32 px grayscale."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    for name in ("horizontal", "vertical"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            freq, phase = rng.uniform(3, 5), rng.uniform(0, 2 * np.pi)
            along = yy if name == "horizontal" else xx
            img = 0.5 + 0.35 * np.sin(2 * np.pi * freq * along + phase)
            img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def energy_across_rows(image: np.ndarray) -> float:
    """Share of the image's spectral energy at frequencies more vertical than horizontal
    (horizontal stripes), the constant term left out."""
    x = image - image.mean()
    power = np.abs(np.fft.fft2(x)) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[-2]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[-1]))[None, :]
    power = power.sum(axis=0) if power.ndim == 3 else power
    rows, cols = float(power[fy > fx].sum()), float(power[fx > fy].sum())
    return rows / (rows + cols)


def test_planted_orientations(tmp_path: Path) -> None:
    """A model told horizontal from vertical stripes: the Fourier images' energy lies at the
    planted orientation. MACO fixes every frequency's amplitude to the data's, so its energy by
    angle is the data's whatever the class (the orientation is in the phases, not measurable
    this way): checked as such."""
    write_gratings(tmp_path / "images")
    overrides: dict[str, Any] = {
        "model.arch": TINY_GRAY_ARCH,
        "preprocess.mean": [0.5],
        "preprocess.std": [0.5],
        "data.queries": 2,
    }
    base = make_config(tmp_path, overrides, analyses=["feature_viz"])
    weights = tmp_path / "gratings.pt"
    torch.save(train(tiny_gray_net(2), base).state_dict(), weights)
    shares: dict[str, list[float]] = {}
    for kind in ("fourier", "maco"):
        params = {"objectives": ["classes"], "steps": 48, "parameterisation": kind}
        cfg = make_config(
            tmp_path,
            {**overrides, "model.weights": str(weights), "analyses": {"feature_viz": params}},
            analyses=["feature_viz"],
        )
        ctx, result = section_run(cfg)
        assert [o["class_name"] for o in result.record["objectives"]] == ["horizontal", "vertical"]
        shares[kind] = [energy_across_rows(img) for img in result.arrays["feature_viz_images"]]
    horizontal, vertical = shares["fourier"]
    assert horizontal > 0.6 and vertical < 0.4, shares
    data = [
        energy_across_rows(ctx.preprocessor.denormalise(ctx.read_checked(p)).numpy())
        for p in range(len(ctx.pass_result.labels))
    ]
    for share in shares["maco"]:
        assert share == pytest.approx(float(np.mean(data)), abs=0.1), (shares, np.mean(data))


def test_a_class_the_model_never_predicts_is_flagged(tmp_path: Path) -> None:
    """Class 0's logit is class 1's minus 2 whatever the input: its image cannot be recognised,
    and the section says so instead of showing it as fine."""
    write_image_folder(tmp_path / "images")
    model = tiny_net(3)
    with torch.no_grad():
        model.fc2.weight[0] = model.fc2.weight[1]
        model.fc2.bias[0] = model.fc2.bias[1] - 2.0
    torch.save(model.state_dict(), tmp_path / "tied.pt")
    params = {**FAST, "objectives": ["classes"], "classes": [0, "square"]}
    cfg = make_config(
        tmp_path,
        {"model.weights": str(tmp_path / "tied.pt"), "analyses": {"feature_viz": params}},
        analyses=["feature_viz"],
    )
    _, result = section_run(cfg)
    first, second = result.record["objectives"]
    assert (first["class"], first["recognised"]) == (0, False)
    assert first["probability"] < 0.5 and second["class_name"] == "square"
    assert result.metrics["feature_viz_class_images_recognised"] in (0.0, 0.5)
    warnings = [
        b.text for b in result.section.blocks if isinstance(b, Text) and b.kind == "warning"
    ]
    assert warnings and "circle" in warnings[0] and "not assigned to their class" in warnings[0]


# --------------------------------------------------------------------------- the run


def test_plan_is_the_passes_made_and_two_runs_give_the_same_bytes(
    tmp_path: Path, tiny_weights: Path
) -> None:
    write_image_folder(tmp_path / "images")
    records, arrays = [], []
    for out in ("a", "b"):
        cfg = make_config(
            tmp_path,
            {
                "model.weights": str(tiny_weights),
                "output.dir": str(tmp_path / out),
                "output.save_arrays": True,
                "analyses": {"feature_viz": {"steps": 5, "crops": 3}},
            },
            analyses=["feature_viz"],
        )
        result = run_report(cfg)
        assert result.exit_code == 0, [(s.name, s.reason) for s in result.sections]
        timings = json.loads((tmp_path / out / "timings.json").read_text())
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        objectives = summary["feature_viz"]["objectives"]
        # 3 query classes + 2 channels of each of conv1 and conv2 (the CPU default).
        assert len(objectives) == 7
        assert timings["plan"]["feature_viz"] == {"forward": 7, "backward": 7 * 5 * 3}
        assert timings["plan"] == timings["passes"]
        records.append(summary["feature_viz"])
        with np.load(tmp_path / out / "arrays.npz") as npz:
            arrays.append({k: npz[k].tobytes() for k in npz.files if k.startswith("feature_viz")})
        assert "feature_viz_class_images_recognised" in summary["metrics"]
        assert {"key": "feature_viz_class_images_recognised"}.items() <= next(
            h for h in summary["headlines"] if h["key"].startswith("feature_viz")
        ).items()
    assert records[0] == records[1]
    assert arrays[0] == arrays[1] and len(arrays[0]) == 5


def test_channels_are_the_patches_rows_and_fill_their_first_column(
    tmp_path: Path, tiny_weights: Path
) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path,
        {"model.weights": str(tiny_weights), "analyses": {"feature_viz": FAST}},
        analyses=["feature_viz", "max_patches"],
    )
    # One run's contexts, as the pipeline hands them out: what one section shares, the next sees.
    prepared = pipeline(cfg, warn=lambda _m: None).prepare()
    viz_ctx = prepared.context_for("feature_viz")
    viz = FeatureVizAnalysis().run(viz_ctx, cfg.analyses["feature_viz"])
    col = viz_ctx.collector
    assert isinstance(col, FeatureVizCollector)
    patches_ctx = prepared.context_for("max_patches")
    patches = MaxPatchesAnalysis().run(patches_ctx, cfg.analyses["max_patches"]).section
    rows = next(b for b in patches.blocks if isinstance(b, Table) and "Channels shown" in b.caption)
    for layer in ("conv1", "conv2"):
        shown = [r[1] for r in rows.rows if r[0] == layer]
        optimised = [o["channel"] for o in viz.record["objectives"] if o.get("layer") == layer]
        assert optimised == shown[:2] == choose_channels(col.state[layer], None, 2)
        assert sorted(patches_ctx.unit_images(layer)) == sorted(optimised)
    captions = [b.caption for b in patches.blocks if isinstance(b, Figure)]
    assert captions and all("First column (blue frame)" in c for c in captions)


def test_torchscript_model_gets_class_images_and_says_why_no_channels(tmp_path: Path) -> None:
    import warnings

    write_image_folder(tmp_path / "images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(tiny_net(3).eval()).save(str(tmp_path / "ts.pt"))
    cfg = make_config(
        tmp_path,
        {
            "model.checkpoint": str(tmp_path / "ts.pt"),
            "model.trust_checkpoint": True,
            "analyses": {"feature_viz": FAST},
        },
        analyses=["feature_viz"],
    )
    result = run_report(cfg)
    (section,) = result.sections
    assert section.status == "ok", section.reason
    kinds = {o["kind"] for o in result.summary["feature_viz"]["objectives"]}
    assert kinds == {"class"}
    notes = [b.text for b in section.blocks if isinstance(b, Text)]
    assert any("Channels: unavailable" in n and "hooks" in n for n in notes)


def test_vision_transformer_channels_on_the_token_grid(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from hub_models import save_timm_hub_folder, small_timm

    model = small_timm("vit_tiny_patch16_224", num_classes=3)
    folder = save_timm_hub_folder(model, tmp_path / "vit", label_names=["cat", "dog", "fox"])
    write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4, "fox": 4}, size=40)
    cfg = make_config(
        tmp_path,
        {"model.arch": str(folder), "analyses": {"feature_viz": FAST}},
        analyses=["feature_viz", "max_patches"],
    )
    result = run_report(cfg)
    assert [s.status for s in result.sections] == ["ok", "ok"], result.sections
    layers = {o["layer"] for o in result.summary["feature_viz"]["objectives"]}
    assert layers == {"output", "blocks.0", "blocks.1"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "First column (blue frame)" in html


# --------------------------------------------------------------------------- settings and errors


class _Ctx:
    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def batch(self, value: Any, backward: bool = False) -> int:
        return 8 if value == "auto" else int(value)


@pytest.mark.parametrize(
    ("device", "size", "steps", "crops", "channels"),
    [
        ("cpu", (32, 32), 48, 2, 2),
        ("cpu", (96, 96), 21, 2, 2),
        ("cpu", (224, 224), 16, 2, 2),
        ("cuda", (224, 224), 256, 6, 16),
    ],
)
def test_automatic_budget(
    device: str, size: tuple[int, int], steps: int, crops: int, channels: int
) -> None:
    s = resolve_settings(FeatureVizParams(), _Ctx(device), size)  # type: ignore[arg-type]
    assert (s.steps, s.crops, s.channels_per_layer, s.image_size) == (steps, crops, channels, size)
    assert s.lr == 1.0 and s.batch_size == 8
    fourier = resolve_settings(
        FeatureVizParams(parameterisation="fourier", steps=7, image_size=64),
        _Ctx(device),  # type: ignore[arg-type]
        (32, 48),
    )
    assert (fourier.lr, fourier.steps, fourier.image_size) == (0.05, 7, (64, 96))


def test_wrong_classes_and_channels_are_input_errors_before_the_pass(
    tmp_path: Path, tiny_weights: Path
) -> None:
    write_image_folder(tmp_path / "images")
    for params, message in (
        ({"classes": ["sqaure"]}, r"no class named 'sqaure'.*square"),
        ({"classes": [3]}, r"3 outputs .*no class 3"),
        ({"channels": [8], "layers": ["conv1"]}, r"conv1 has 8 channels"),
    ):
        cfg = make_config(
            tmp_path,
            {"model.weights": str(tiny_weights), "analyses": {"feature_viz": params}},
            analyses=["feature_viz"],
        )
        with pytest.raises(ConfigError, match=message):
            make_context(cfg)
    with pytest.raises(ConfigError, match="objectives"):
        validate_params(FeatureVizParams(objectives=["pixels"]), "analyses.feature_viz")
    with pytest.raises(ConfigError, match="steps"):
        validate_params(FeatureVizParams(steps=0), "analyses.feature_viz")
    with pytest.raises(ConfigError, match="classes"):
        validate_params(FeatureVizParams(classes=[-1]), "analyses.feature_viz")


def test_a_layer_that_fails_leaves_the_other_images(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One part failing is one part failing: conv2's objectives cannot be scored; the class and
    conv1 images still render, and the section says what failed."""
    import reportgen.methods.feature_viz as fv

    real = fv.scorer

    def fragile(model: Any, targets: Any, to_map: Any, head: Any) -> Any:
        if any(t.name == "conv2" for t in targets):
            raise RuntimeError("conv2 cannot be scored")
        return real(model, targets, to_map, head)

    monkeypatch.setattr(fv, "scorer", fragile)
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path,
        {"model.weights": str(tiny_weights), "analyses": {"feature_viz": FAST}},
        analyses=["feature_viz"],
    )
    _, result = section_run(cfg)
    layers = [o["layer"] for o in result.record["objectives"]]
    assert layers == ["output"] * 3 + ["conv1"] * 2
    notes = [b.text for b in result.section.blocks if isinstance(b, Text)]
    assert any(n.startswith("conv2: failed — RuntimeError: conv2 cannot be scored") for n in notes)
