"""The saliency section renders on tiny models and writes the documented arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_GRAY_ARCH, make_config, make_context, write_image_folder

from reportgen.analyses.occlusion import OcclusionAnalysis
from reportgen.analyses.saliency import SaliencyAnalysis, SaliencyParams
from reportgen.errors import ConfigError, LayerError
from reportgen.methods.hooks import hook_count
from reportgen.params import validate_params
from reportgen.report.section import Figure, Table

FAST = {"smoothgrad_samples": 3, "ig_steps": 4, "batch_size": 8, "image_size": 48}


def _config(tmp_path: Path, weights: Path | None, extra: dict[str, Any] | None = None) -> Any:
    write_image_folder(tmp_path / "images")
    overrides: dict[str, Any] = {"analyses": {"saliency": {**FAST, **(extra or {})}}}
    if weights is not None:
        overrides["model.weights"] = str(weights)
    return make_config(tmp_path, overrides, analyses=["saliency", "occlusion"])


def test_section_renders_with_every_method(tmp_path: Path, tiny_weights: Path) -> None:
    cfg = _config(tmp_path, tiny_weights)
    ctx = make_context(cfg)
    result = SaliencyAnalysis().run(ctx, cfg.analyses["saliency"])
    section = result.section
    assert section.status == "ok", section.reason
    assert any(isinstance(b, Figure) for b in section.blocks)
    tables = [b for b in section.blocks if isinstance(b, Table)]
    assert len(tables) == 2 and len(tables[0].rows) == len(ctx.queries)
    assert result.metrics["gradcam_layer"] == "relu2"
    assert hook_count(ctx.model.module) == 0

    q = len(ctx.queries)
    a = result.arrays
    assert a["image_ids"].tolist() == [ctx.relpath(p) for p in ctx.queries]
    assert a["inputs"].shape == (q, 3, 32, 32)
    assert a["targets"].shape == (q,)
    assert a["saliency_gradient"].shape == (q, 32, 32)
    assert a["smoothgrad"].shape == (q, 3, 32, 32)
    assert a["guided_backprop"].shape == (q, 3, 32, 32)
    assert a["gradcam"].shape == (q, 32, 32)
    assert a["integrated_gradients"].shape == (q, 3, 32, 32)
    assert (a["saliency_gradient"] >= 0).all() and a["saliency_gradient"].max() > 0
    assert (a["gradcam"] >= 0).all()
    # Exactly what was fed: the stored inputs reproduce the stored gradient map.
    model = ctx.model.module
    x = torch.from_numpy(a["inputs"]).requires_grad_(True)
    t = torch.from_numpy(a["targets"])
    (g,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    np.testing.assert_allclose(g.abs().amax(1).numpy(), a["saliency_gradient"], atol=1e-6)


def test_shared_query_arrays_are_identical_whichever_analysis_writes(
    tmp_path: Path, tiny_weights: Path
) -> None:
    cfg = _config(tmp_path, tiny_weights)
    ctx_a = make_context(cfg)
    arrays_a = OcclusionAnalysis().run(ctx_a, cfg.analyses["occlusion"]).arrays
    ctx_b = make_context(cfg)
    arrays_b = SaliencyAnalysis().run(ctx_b, cfg.analyses["saliency"]).arrays
    for key in ("image_ids", "inputs", "targets"):
        assert arrays_a[key].dtype == arrays_b[key].dtype
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key])


def test_gray_model_named_layer_and_subset(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        {
            "model.arch": TINY_GRAY_ARCH,
            "preprocess.mean": [0.5],
            "preprocess.std": [0.5],
            "analyses": {
                "saliency": {
                    **FAST,
                    "methods": ["gradient", "gradcam", "integrated_gradients"],
                    "gradcam_layer": "conv1",
                    "ig_baseline": 0.0,
                }
            },
        },
        analyses=["saliency"],
    )
    write_image_folder(tmp_path / "images")
    ctx = make_context(cfg)
    result = SaliencyAnalysis().run(ctx, cfg.analyses["saliency"])
    section = result.section
    assert section.status == "ok"
    assert result.metrics["gradcam_layer"] == "conv1"
    assert result.arrays["inputs"].shape[1] == 1
    assert result.arrays["gradcam"].shape[1:] == (32, 32)
    assert "smoothgrad" not in result.arrays and "guided_backprop" not in result.arrays


def test_unknown_layer_is_an_input_error_before_the_pass(
    tmp_path: Path, tiny_weights: Path
) -> None:
    cfg = _config(tmp_path, tiny_weights, {"gradcam_layer": "conv9", "methods": ["gradcam"]})
    # Declared as a layer reference, so the plan rejects it before the dataset pass runs.
    with pytest.raises(LayerError, match=r"analyses\.saliency\.gradcam_layer: layer 'conv9'"):
        make_context(cfg)


def test_params_validate() -> None:
    with pytest.raises(ConfigError, match="methods"):
        validate_params(SaliencyParams(methods=["lime"]), "analyses.saliency")
    with pytest.raises(ConfigError, match="ig_steps"):
        validate_params(SaliencyParams(ig_steps=0), "analyses.saliency")
