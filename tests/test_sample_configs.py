"""Every file in sample_configs/ loads and runs end to end (with small data and paths overridden)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_image_folder

from reportgen.api import load_config, run_report
from reportgen.demo import prepare_demo

SAMPLES = Path(__file__).resolve().parent.parent / "sample_configs"


def fast(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "data.root": str(tmp_path / "images"),
        "output.dir": str(tmp_path / "out"),
        "output.formats": ["html"],
        "run.device": "cpu",
        "run.workers": 0,
        **overrides,
    }


def test_every_sample_config_is_exercised() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.yaml")) == [
        "custom.yaml",
        "demo.yaml",
        "hf.yaml",
        "imagenet_val_manifest.yaml",
        "resnet50.yaml",
        "timm.yaml",
    ]


@pytest.mark.parametrize("name", ["demo.yaml", "resnet50.yaml", "custom.yaml", "timm.yaml"])
def test_sample_loads_with_paths_relative_to_its_folder(name: str) -> None:
    cfg = load_config(SAMPLES / name)
    assert cfg.source == str(SAMPLES / name)
    assert cfg.model.weights is not None and Path(cfg.model.weights).is_absolute()
    assert Path(cfg.model.weights).parent.resolve().is_relative_to(SAMPLES.parent.resolve())
    assert cfg.data.root is not None and Path(cfg.data.root).is_absolute()


def test_demo_yaml_runs_on_a_small_demo(tmp_path: Path) -> None:
    prepare_demo(tmp_path / "demo", per_class=4, epochs=1)
    cfg = load_config(
        SAMPLES / "demo.yaml",
        fast(
            tmp_path,
            **{
                "model.weights": str(tmp_path / "demo" / "model.pt"),
                "data.root": str(tmp_path / "demo" / "data"),
            },
        ),
        analyses=["filters", "neighbors"],
    )
    assert cfg.model.arch == "reportgen.demo:digits_cnn"
    result = run_report(cfg)
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["data"]["num_images"] == 40
    assert summary["model"]["in_channels"] == 1
    # demo.yaml asks for the second conv layer's mosaic too.
    assert "features.3" in (tmp_path / "out" / "report.html").read_text()


def test_resnet50_yaml_on_a_random_resnet50_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=4)
    # Saved as a DDP run would: "module." prefix inside a training checkpoint.
    torch.save(
        {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
        tmp_path / "resnet50.pt",
    )
    del model
    write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2, "fox": 2, "owl": 2}, size=40)
    # Small inputs keep ResNet-50 on the CPU fast; everything else is the sample as written.
    cfg = load_config(
        SAMPLES / "resnet50.yaml",
        fast(
            tmp_path,
            **{
                "model.weights": str(tmp_path / "resnet50.pt"),
                "preprocess.resize": 64,
                "preprocess.crop": 64,
                "run.batch_size": 8,
                "data.queries": 4,
            },
        ),
        analyses=["filters", "neighbors"],
    )
    result = run_report(cfg)
    assert result.exit_code == 0, [(s.name, s.reason) for s in result.sections]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["arch"] == "resnet50"
    assert summary["model"]["num_classes"] == 4  # read from the weights
    assert summary["model"]["feature_layer"] == "fc" and summary["model"]["feature_dim"] == 2048
    assert summary["data"]["class_names"] == ["cat", "dog", "fox", "owl"]
    assert "layer1.0.conv1" in (tmp_path / "out" / "report.html").read_text()


def test_custom_yaml_with_a_small_vgg_state_dict(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("sample_custom_arch", SAMPLES / "custom_arch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.small_vgg(num_classes=5)
    torch.save(model.state_dict(), tmp_path / "small_vgg.pt")
    write_image_folder(tmp_path / "images", {f"c{i}": 2 for i in range(5)}, size=40)
    cfg = load_config(
        SAMPLES / "custom.yaml",
        fast(tmp_path, **{"model.weights": str(tmp_path / "small_vgg.pt")}),
        analyses=["filters", "neighbors"],
    )
    assert cfg.model.arch == f"{SAMPLES / 'custom_arch.py'}:small_vgg"
    result = run_report(cfg)
    assert result.exit_code == 0, [(s.name, s.reason) for s in result.sections]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["num_classes"] == 5  # the factory was called with num_classes=5
    assert summary["model"]["feature_layer"] == "head" and summary["model"]["feature_dim"] == 128
    assert "body.4" in (tmp_path / "out" / "report.html").read_text()


def test_timm_yaml_with_a_random_vit_tiny_training_checkpoint(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    # As timm's train.py saves it: the EMA weights beside the raw ones, args and epoch.
    torch.save(
        {"epoch": 2, "state_dict": model.state_dict(), "state_dict_ema": model.state_dict()},
        tmp_path / "vit_tiny.pth",
    )
    del model
    write_image_folder(tmp_path / "images", {"ant": 2, "bee": 2, "cat": 2}, size=40)
    cfg = load_config(
        SAMPLES / "timm.yaml",
        fast(tmp_path, **{"model.weights": str(tmp_path / "vit_tiny.pth"), "data.queries": 3}),
        analyses=["filters", "neighbors"],
    )
    assert cfg.model.arch == "timm:vit_tiny_patch16_224"
    result = run_report(cfg)
    assert result.exit_code == 0, [(s.name, s.reason) for s in result.sections]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["arch"] == "timm:vit_tiny_patch16_224"
    assert summary["model"]["num_classes"] == 3  # read from the head in the weights
    assert summary["model"]["feature_layer"] == "head" and summary["model"]["feature_dim"] == 192
    assert "patch_embed.proj" in (tmp_path / "out" / "report.html").read_text()


def test_hf_yaml_with_a_tiny_save_pretrained_folder(tmp_path: Path) -> None:
    from hub_models import tiny_hf_vit_folder

    folder = tiny_hf_vit_folder(tmp_path / "vit-finetuned")
    write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2, "fox": 2}, size=40)
    cfg = load_config(
        SAMPLES / "hf.yaml",
        fast(
            tmp_path,
            **{
                "model.arch": str(folder),
                # The tiny model takes 32-px inputs (its preprocessor_config.json says so).
                "preprocess.resize": 32,
                "preprocess.crop": 32,
                "data.queries": 3,
            },
        ),
        analyses=["filters", "neighbors"],
    )
    result = run_report(cfg)
    assert result.exit_code == 0, [(s.name, s.reason) for s in result.sections]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["arch"] == "ViTForImageClassification"
    assert summary["model"]["num_classes"] == 3
    assert summary["model"]["feature_layer"] == "model.classifier"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "model.vit.embeddings.patch_embeddings.projection" in html


def test_imagenet_val_manifest_recipe_on_a_flat_folder(tmp_path: Path) -> None:
    """The ImageNet recipe: the script turns Kaggle's LOC_val_solution.csv into a manifest with
    class indices in sorted-WordNet-id order; the sample config reads the flat folder with it."""
    import subprocess
    import sys

    from tiny_models import tiny_net

    plain = load_config(SAMPLES / "imagenet_val_manifest.yaml")
    assert plain.data.manifest == str(SAMPLES / "imagenet_val.csv")  # relative to the file
    flat = write_image_folder(tmp_path / "val", {"x": 6}, flat=True)
    names = sorted(p.stem for p in flat.iterdir())
    wnids = ["n02", "n01", "n03"]  # the sorted order is n01 (0), n02 (1), n03 (2)
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text(
        "ImageId,PredictionString\n"
        + "".join(f"{n},{wnids[i % 3]} 1 2 3 4\n" for i, n in enumerate(names)),
        encoding="utf-8",
    )
    # The flat folder's files are .png here; ImageNet's are .JPEG (the script appends that).
    for p in flat.iterdir():
        p.rename(p.with_suffix(".JPEG"))
    manifest = tmp_path / "imagenet_val.csv"
    subprocess.run(
        [
            sys.executable,
            str(SAMPLES / "imagenet_val_manifest.py"),
            "--solution",
            str(solution),
            "--out",
            str(manifest),
        ],
        check=True,
        capture_output=True,
    )
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path,label,wnid"
    expected = {"n01": 0, "n02": 1, "n03": 2}
    for line, (i, n) in zip(lines[1:], enumerate(names), strict=True):
        assert line == f"{n}.JPEG,{expected[wnids[i % 3]]},{wnids[i % 3]}"

    weights = tmp_path / "tiny.pt"
    torch.save(tiny_net(3).state_dict(), weights)
    cfg = load_config(
        SAMPLES / "imagenet_val_manifest.yaml",
        fast(
            tmp_path,
            **{
                "model.arch": str(Path(__file__).parent / "tiny_models.py") + ":tiny_net",
                "model.weights": str(weights),
                "data.root": str(flat),
                "data.manifest": str(manifest),
                "data.labels": ["a", "b", "c"],
                "preprocess.resize": 32,
                "preprocess.crop": 32,
            },
        ),
        analyses=["neighbors"],
    )
    assert cfg.data.max_images == 1000
    result = run_report(cfg)
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["data"]["source"] == "manifest"
    assert summary["data"]["metadata_columns"] == ["wnid"]
    assert summary["data"]["labels_read_as"] == "column 'label' read as output indices"
    assert summary["data"]["num_images"] == 6
