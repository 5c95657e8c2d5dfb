"""The command line through click's CliRunner: commands, flags over YAML, exit codes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import TINY_ARCH, write_image_folder
from test_demo import assert_self_contained

import reportgen
from reportgen.analyses import REGISTRY
from reportgen.analyses.filters import FiltersAnalysis
from reportgen.cli import cli

SMALL = ["--device", "cpu", "--quiet", "--format", "html"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def small_config(tmp_path: Path, **extra: Any) -> Path:
    """A YAML config for 32-px inputs and no workers, relative paths (resolved to its folder)."""
    data: dict[str, Any] = {
        "model": {"arch": TINY_ARCH, "weights": "tiny.pt"},
        "data": {"root": "images", "queries": 3},
        "preprocess": {"resize": 32, "crop": 32, "pixel_size": 16},
        "run": {"workers": 0, "batch_size": 8, "seed": 1},
        "output": {"dir": "out", "formats": ["html"]},
    }
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_weights: Path) -> Path:
    """tmp_path with images/ (3 classes × 4), tiny.pt and config.yaml."""
    write_image_folder(tmp_path / "images", {"a": 4, "b": 4, "c": 4}, size=32)
    assert tiny_weights == tmp_path / "tiny.pt"
    small_config(tmp_path)
    return tmp_path


def test_run_writes_the_report_and_exits_0(project: Path) -> None:
    result = invoke(
        "run", "--config", str(project / "config.yaml"), "--device", "cpu",
        "--analyses", "filters,neighbors",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"report written to {project / 'out' / 'report.html'}" in result.output
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert [s["name"] for s in summary["sections"]] == ["filters", "neighbors"]
    assert summary["data"]["num_images"] == 12
    assert_self_contained((project / "out" / "report.html").read_text())


def test_flags_override_the_yaml(project: Path, tmp_path: Path) -> None:
    other = write_image_folder(tmp_path / "other", {"x": 2, "y": 2, "z": 2}, size=32)
    result = invoke(
        "run", "--config", str(project / "config.yaml"), "--data", str(other),
        "--out", str(tmp_path / "elsewhere"), "--seed", "5", "--max-images", "4",
        "--analyses", "filters", *SMALL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet
    summary = json.loads((tmp_path / "elsewhere" / "summary.json").read_text())
    assert summary["data"]["root"] == str(other)
    assert summary["data"]["num_images"] == 4
    assert summary["run"]["seed"] == 5
    assert not (project / "out").exists()


def test_a_manifest_with_its_own_column_names(project: Path) -> None:
    """--manifest and --columns: a flat folder labelled by a manifest, metadata kept."""
    flat = project / "flat"
    flat.mkdir()
    rows = ["file_name,dx,site"]
    for i, img in enumerate(sorted((project / "images").rglob("*.png"))):
        (flat / f"{i:02d}.png").write_bytes(img.read_bytes())
        rows.append(f"{i:02d}.png,{img.parent.name},{'north' if i % 2 else 'south'}")
    (project / "val.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = invoke(
        "run", "--config", str(project / "config.yaml"), "--manifest", str(project / "val.csv"),
        "--data", str(flat), "--columns", "path=file_name,label=dx", "--out",
        str(project / "o3"), "--analyses", "neighbors", *SMALL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((project / "o3" / "summary.json").read_text())
    assert summary["data"]["source"] == "manifest"
    assert summary["data"]["metadata_columns"] == ["site"]
    assert summary["data"]["num_images"] == 12
    assert summary["data"]["class_names"] == ["a", "b", "c"]
    lines = (project / "o3" / "predictions.csv").read_text().splitlines()
    assert lines[0].endswith(",correct,meta:site")
    assert lines[1].startswith("00.png,") and lines[1].endswith(",south")


def test_run_without_a_config(project: Path) -> None:
    result = invoke(
        "run", "--model", TINY_ARCH, "--weights", str(project / "tiny.pt"),
        "--data", str(project / "images"), "--out", str(project / "o2"),
        "--analyses", "filters", *SMALL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (project / "o2" / "report.html").is_file()


def test_a_failing_section_exits_1_and_the_report_is_still_written(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: FiltersAnalysis, ctx: Any, params: Any) -> Any:
        raise RuntimeError("filters exploded on purpose")

    monkeypatch.setattr(FiltersAnalysis, "run", explode)
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--config",
            str(project / "config.yaml"),
            "--analyses",
            "filters,neighbors",
            *SMALL,
        ],
    )
    assert result.exit_code == 1, result.output
    assert "section filters failed: RuntimeError: filters exploded on purpose" in result.output
    summary = json.loads((project / "out" / "summary.json").read_text())
    status = {s["name"]: s for s in summary["sections"]}
    assert status["filters"]["status"] == "failed"
    assert "filters exploded on purpose" in status["filters"]["reason"]
    assert status["neighbors"]["status"] == "ok"
    html = (project / "out" / "report.html").read_text()
    assert "filters exploded on purpose" in html
    assert 'id="section-neighbors"' in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet1B"], "unknown torchvision model 'resnet1B' (did you mean 'resnet18'"),
        (["--analyses", "filter"], "unknown analysis 'filter' (did you mean 'filters'"),
        (["--device", "gpu"], "run.device: 'gpu' is not auto, cpu, cuda or cuda:N"),
        (["--weights", "missing.pt"], "weights file not found"),
        (["--data", "nowhere"], "data folder not found"),
        (["--checkpoint", "tiny.pt"], "refused: --checkpoint files"),
        (["--weights", "a.pt", "--checkpoint", "b.pt"], "model.weights and model.checkpoint are"),
        (["--format", "docx"], "output.formats: unknown format 'docx'"),
        (["--columns", "lable=dx"], "--columns: 'lable=dx' is not ROLE=COLUMN"),
        (["--manifest", "nowhere.csv"], "nowhere.csv: manifest not found"),
        (["--manifest", "list.xlsx"], "is not a .csv, .tsv, .jsonl or .parquet file"),
        (["--data", "s/val-{0..3}.tar"], "shard not found and 3 more"),
    ],
)
def test_input_errors_exit_2_with_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(project)
    result = CliRunner().invoke(cli, ["run", "--config", "config.yaml", "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reportgen: error: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not (project / "out").exists()


def test_unknown_config_key_through_the_cli(project: Path) -> None:
    small_config(project, model__archh="resnet18")
    result = CliRunner().invoke(cli, ["run", "--config", str(project / "config.yaml")])
    assert result.exit_code == 2
    assert "unknown config key 'model.archh' (did you mean 'arch'?)" in result.output


def test_checkpoint_without_trust_through_the_cli(project: Path) -> None:
    import torch
    from tiny_models import tiny_net

    torch.save(tiny_net(), project / "whole.pt")
    args = ["run", "--config", str(project / "config.yaml"), "--quiet"]
    # The flag replaces the YAML's weights (they are exclusive; the flag is the later word).
    refused = CliRunner().invoke(cli, [*args, "--checkpoint", str(project / "whole.pt")])
    assert refused.exit_code == 2
    assert "--trust-checkpoint" in refused.output and refused.output.count("\n") == 1
    trusted = CliRunner().invoke(
        cli,
        [
            *args,
            "--checkpoint",
            str(project / "whole.pt"),
            "--trust-checkpoint",
            "--analyses",
            "filters",
        ],
    )
    assert trusted.exit_code == 0, trusted.output
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert summary["model"]["checkpoint_kind"] == "pickled_module"


def test_list_analyses_documents_every_parameter() -> None:
    result = invoke("list-analyses")
    assert result.exit_code == 0
    import dataclasses

    for name, cls in REGISTRY.items():
        assert f"{name}: {cls.title}" in result.output
        for f in dataclasses.fields(cls.Params):
            assert f"    {f.name}: " in result.output


def test_list_layers() -> None:
    result = invoke("list-layers", "--model", "resnet18")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "conv1\tConv2d" in lines and "layer4.1.conv2\tConv2d" in lines and "fc\tLinear" in lines
    custom = invoke("list-layers", "--model", TINY_ARCH)
    assert custom.output.splitlines()[0] == "conv1\tConv2d"
    bad = CliRunner().invoke(cli, ["list-layers", "--model", "alexnett"])
    assert bad.exit_code == 2 and "did you mean 'alexnet'" in bad.output


def test_version_and_help() -> None:
    assert invoke("--version").output.strip() == f"reportgen, version {reportgen.__version__}"
    help_text = invoke("run", "--help").output
    for flag in (
        "--config", "--model", "--weights", "--checkpoint", "--trust-checkpoint", "--data",
        "--out", "--analyses", "--device", "--seed", "--max-images", "--quiet",
    ):  # fmt: skip
        assert flag in help_text


def test_python_dash_m_reportgen() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reportgen", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for command in ("run", "demo", "list-analyses", "list-layers"):
        assert command in done.stdout
    assert "Usage: reportgen" in done.stdout


def test_demo_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import reportgen.api

    # The real demo, smaller: the CLI wiring is what is under test here.
    small = functools.partial(
        reportgen.api.run_demo,
        per_class=6,
        epochs=1,
        formats=["html"],
        analyses=["filters", "neighbors"],
    )
    monkeypatch.setattr(reportgen.api, "run_demo", small)
    result = invoke("demo", "--out", str(tmp_path / "d"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    assert f"report written to {tmp_path / 'd' / 'report.html'}" in result.output
    assert (tmp_path / "d" / "config.yaml").is_file()


@pytest.mark.parametrize("out", ["images", "images/a/report"])
def test_run_into_its_data_folder_is_an_input_error(project: Path, out: str) -> None:
    """--out that is the data root or lies inside it would put report files among the images
    (and the next run would read them): exit 2 before any work, nothing written."""
    before = sorted(p.relative_to(project) for p in (project / "images").rglob("*"))
    result = invoke("run", "--config", str(project / "config.yaml"), "--out", str(project / out))
    assert result.exit_code == 2
    relation = "is" if out == "images" else "lies inside"
    assert f"{relation} data.root" in result.output, result.output
    assert sorted(p.relative_to(project) for p in (project / "images").rglob("*")) == before


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "analyses.attribution_checks.stages: needs at least one stage"),
        (["relu1"], "analyses.attribution_checks.stages: relu1 has no parameters"),
        (["nope"], "analyses.attribution_checks.stages:"),
    ],
)
def test_randomisation_stages_that_randomise_nothing_are_input_errors(
    project: Path, stages: list[str], message: str
) -> None:
    """An empty stage list made "0 methods fail randomisation" and a gate on it pass with
    nothing randomised; a module without weights re-initialises nothing. Both exit 2 before
    the dataset pass."""
    small_config(project, analyses__attribution_checks={"stages": stages})
    result = invoke(
        "run", "--config", str(project / "config.yaml"), "--analyses", "attribution_checks"
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (project / "out" / "summary.json").exists()


def test_labels_lists_that_would_shift_classes_are_input_errors(project: Path) -> None:
    """A duplicate name shifted every later class (96.7 % → 44.4 %); more names than outputs
    passed silently; a byte-order mark made the first name '\\ufeffa'."""
    labels = project / "labels.txt"
    cases = [
        ("a\nb\na\n", "class name 'a' appears twice (entries 1 and 3)"),
        ("a\nb\nc\nd\n", "data.labels has 4 class names but the model has 3 outputs"),
        ("x\ny\n", "data.labels has 2 class names but the model has 3 outputs"),
    ]
    for text, message in cases:
        labels.write_text(text, encoding="utf-8")
        small_config(project, data__labels=str(labels))
        result = invoke("run", "--config", str(project / "config.yaml"), "--analyses", "filters")
        assert result.exit_code == 2, (text, result.output)
        assert message in result.output, result.output
    small_config(project, data__labels=["a", "b", "b"])
    result = invoke("run", "--config", str(project / "config.yaml"), "--analyses", "filters")
    assert result.exit_code == 2 and "data.labels: class name 'b' appears twice" in result.output
    # A byte-order mark is not part of the first name: folder "a" still matches it.
    labels.write_bytes("\ufeffa\nb\nc\n".encode())
    small_config(project, data__labels=str(labels))
    result = invoke("run", "--config", str(project / "config.yaml"), "--analyses", "filters")
    assert result.exit_code == 0, result.output
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert summary["data"]["class_names"] == ["a", "b", "c"]


def test_a_trusted_half_precision_checkpoint_runs_in_float32(project: Path) -> None:
    """An fp16 whole-model checkpoint was told to 'set preprocess.resize and preprocess.crop';
    its weights are now converted to float32, and the run says so."""
    import torch
    from tiny_models import tiny_net

    torch.save(tiny_net(3).half(), project / "half.pt")
    result = invoke(
        "run", "--checkpoint", str(project / "half.pt"), "--trust-checkpoint",
        "--data", str(project / "images"), "--out", str(project / "out"),
        *SMALL, "--analyses", "filters,neighbors",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert any("float16; they were converted to float32" in w for w in summary["warnings"])
