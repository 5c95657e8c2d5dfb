"""Every section on the models users actually have: timm CNNs and transformers, Hugging Face
folders. Each section is ok or skipped with a reason that names the architecture property;
class names and preprocessing come from the metadata; transformer maps are on the token grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_image_folder
from hub_models import save_timm_hub_folder, small_timm, tiny_hf_vit_folder

from reportgen.api import load_config, run_report

FAST = {
    "analyses.saliency.smoothgrad_samples": 2,
    "analyses.saliency.ig_steps": 4,
    "analyses.saliency.batch_size": 8,
    "analyses.saliency.image_size": 48,
    "analyses.occlusion.batch_size": 32,
    "analyses.embedding.perplexity": 4,
    "analyses.max_patches.k": 3,
    "analyses.max_patches.channels_per_layer": 4,
    "analyses.slices.min_size": 5,  # 15 images: clusters of 5 are tested, so discovery runs
}


def report(tmp_path: Path, arch: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    images = write_image_folder(tmp_path / "images", {"cat": 5, "dog": 5, "fox": 5}, size=40)
    overrides = {
        "model.arch": arch,
        "data.root": str(images),
        "data.queries": 2,
        "output.dir": str(tmp_path / "out"),
        "output.formats": ["html"],
        "output.save_arrays": True,
        "run.device": "cpu",
        "run.workers": 0,
        "run.batch_size": 8,
        **FAST,
        **(extra or {}),
    }
    result = run_report(load_config(None, overrides))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    bad = [(s.name, s.status, s.reason) for s in result.sections if s.status == "failed"]
    assert not bad, bad
    for s in result.sections:
        assert s.status == "ok" or s.reason, s.name
    return summary


def statuses(summary: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["sections"]}


def test_timm_vit_hub_folder_every_section_on_the_token_grid(tmp_path: Path) -> None:
    model = small_timm("vit_tiny_patch16_224", num_classes=3)
    folder = save_timm_hub_folder(model, tmp_path / "vit", label_names=["cat", "dog", "fox"])
    summary = report(tmp_path, str(folder))
    assert set(statuses(summary).values()) == {"ok"}, statuses(summary)
    # Names from label_names (folders map by name), preprocessing from pretrained_cfg.
    assert summary["data"]["class_names"][:3] == ["cat", "dog", "fox"]
    assert "label_names" in summary["data"]["class_names_source"]
    pre = summary["preprocessing"]
    assert pre["crop"]["value"] == 32 and "pretrained_cfg" in pre["crop"]["source"]
    assert pre["mean"]["value"] == [0.5, 0.5, 0.5]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "attention rollout" in html and "guided backprop: unavailable" in html
    assert "GELU" in html
    arrays = np.load(tmp_path / "out" / "arrays.npz")
    # Rollout and Grad-CAM at input resolution; Grad-CAM on the 4×4 token grid of 8-px patches.
    assert arrays["attention_rollout"].shape == (2, 32, 32)
    assert arrays["gradcam"].shape == (2, 32, 32)
    assert "guided_backprop" not in arrays.files
    assert "blocks.1" in html  # activations / top patches on the last block's tokens


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "swin_tiny_patch4_window7_224"])
def test_timm_models_by_name(tmp_path: Path, name: str) -> None:
    import torch

    model = small_timm(name, num_classes=3)
    weights = tmp_path / "w.pth"
    torch.save({"state_dict_ema": model.state_dict(), "epoch": 3}, weights)
    # Built from the name alone, so the shrunk constructor arguments go through a factory.
    from hub_models import TIMM_SMALL

    assert TIMM_SMALL[name]
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import timm\n"
        f"def make(num_classes=3):\n    return timm.create_model({name!r}, pretrained=False, "
        f"num_classes=num_classes, **{TIMM_SMALL[name]!r})\n"
    )
    summary = report(
        tmp_path,
        f"{factory}:make",
        {
            "model.weights": str(weights),
            "preprocess.resize": 32,
            "preprocess.crop": 32,
            "preprocess.mean": [0.5],
            "preprocess.std": [0.25],
        },
    )
    assert statuses(summary)["saliency"] == "ok"
    assert summary["model"]["num_classes"] == 3


def test_hf_vit_folder(tmp_path: Path) -> None:
    folder = tiny_hf_vit_folder(tmp_path / "vit-finetuned")
    summary = report(tmp_path, str(folder))
    assert set(statuses(summary).values()) == {"ok"}, statuses(summary)
    assert summary["data"]["class_names"][:3] == ["cat", "dog", "fox"]
    assert "id2label" in summary["data"]["class_names_source"]
    pre = summary["preprocessing"]
    assert (
        pre["mean"]["value"] == [0.4, 0.45, 0.5] and "preprocessor_config" in pre["mean"]["source"]
    )
    html = (tmp_path / "out" / "report.html").read_text()
    assert "attention rollout" in html


def test_explicit_preprocessing_wins_over_metadata(tmp_path: Path) -> None:
    folder = tiny_hf_vit_folder(tmp_path / "vit-finetuned")
    summary = report(
        tmp_path,
        str(folder),
        {"preprocess.mean": [0.5], "preprocess.std": [0.5], "analyses.saliency.enabled": False},
    )
    pre = summary["preprocessing"]
    assert pre["mean"] == {"value": [0.5], "source": "config"}
    assert pre["std"] == {"value": [0.5], "source": "config"}
    assert pre["crop"]["value"] == 32 and "preprocessor_config" in pre["crop"]["source"]
