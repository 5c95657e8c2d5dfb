"""Config: validation with key paths and suggestions, CLI overrides, relative paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_ARCH, make_config, write_image_folder

from reportgen.api import load_config, run_report
from reportgen.config import Config
from reportgen.errors import ConfigError, LayerError

MINIMAL = {"model": {"arch": "resnet18"}, "data": {"root": "images"}}


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def config_error(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path / "c.yaml", data))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("model", "archh", "unknown config key 'model.archh' (did you mean 'arch'?)"),
        ("data", "max_image", "unknown config key 'data.max_image' (did you mean 'max_images'?)"),
        ("run", "batchsize", "'run.batchsize' (did you mean 'batch_size'?)"),
        ("output", "save_array", "'output.save_array' (did you mean 'save_arrays'?)"),
        ("preprocess", "mean_", "'preprocess.mean_' (did you mean 'mean'?)"),
    ],
)
def test_unknown_keys_name_their_path_and_the_nearest_key(
    tmp_path: Path, section: str, key: str, expected: str
) -> None:
    data = {**MINIMAL, section: {**MINIMAL.get(section, {}), key: 1}}
    assert expected in config_error(tmp_path, data)


def test_unknown_section_and_analysis_keys(tmp_path: Path) -> None:
    msg = config_error(tmp_path, {**MINIMAL, "modle": {}})
    assert "unknown config key 'modle' (did you mean 'model'?)" in msg
    msg = config_error(tmp_path, {**MINIMAL, "analyses": {"neighbours": {"k": 3}}})
    assert "'analyses.neighbours' (did you mean 'neighbors'?)" in msg
    msg = config_error(tmp_path, {**MINIMAL, "analyses": {"neighbors": {"kk": 3}}})
    assert "'analyses.neighbors.kk' (did you mean 'k'?)" in msg
    msg = config_error(tmp_path, {**MINIMAL, "analyses": {"filters": {"layer": ["conv1"]}}})
    assert "'analyses.filters.layer' (did you mean 'layers'?)" in msg


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("run.batch_size", "8", "run.batch_size: expected a whole number, got '8'"),
        ("run.batch_size", 8.5, "run.batch_size: expected a whole number"),
        ("run.workers", True, "run.workers: expected a whole number or 'auto', got True"),
        ("model.trust_checkpoint", "yes", "model.trust_checkpoint: expected true or false"),
        ("preprocess.mean", 0.5, "preprocess.mean: expected a list"),
        ("preprocess.mean", ["a", 0.2, 0.3], "preprocess.mean[0]: expected a number"),
        ("data.queries", "eight", "data.queries: expected a whole number or a list"),
        ("run.precision", "fp16", "run.precision: 'fp16' is not one of 'fp32', 'bf16'"),
        ("run.device", "gpu", "run.device: 'gpu' is not auto, cpu, cuda or cuda:N"),
        ("output.formats", ["htm"], "output.formats: unknown format 'htm' (did you mean 'html'?)"),
        ("run.batch_size", 0, "run.batch_size must be between 1 and 65536"),
        ("preprocess.std", [0.1, 0.0, 0.1], "preprocess.std values must be positive"),
        ("analyses.neighbors.k", "5", "analyses.neighbors.k: expected a whole number"),
        ("model", "resnet18", "model: expected a mapping"),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, dotted: str, value: Any, expected: str) -> None:
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(MINIMAL))
    section, *rest = dotted.split(".")
    if rest:
        target = data.setdefault(section, {})
        for part in rest[:-1]:
            target = target.setdefault(part, {})
        target[rest[-1]] = value
    else:
        data[section] = value
    assert expected in config_error(tmp_path, data)


def test_exclusive_and_missing_keys(tmp_path: Path) -> None:
    assert "exclusive" in config_error(
        tmp_path, {**MINIMAL, "model": {"arch": "x", "weights": "a.pt", "checkpoint": "b.pt"}}
    )
    assert "model.arch is missing" in config_error(tmp_path, {"data": {"root": "x"}})
    assert "data.root is missing" in config_error(tmp_path, {"model": {"arch": "x"}})


def test_yaml_syntax_and_shape_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: [resnet\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ is not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_defaults_are_complete_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(write_yaml(tmp_path / "c.yaml", MINIMAL))
    assert cfg.preprocess.resize == 256 and cfg.preprocess.crop == 224
    assert cfg.run.seed == 0 and cfg.data.queries == 8 and cfg.model.penultimate == "auto"
    assert set(cfg.enabled_analyses()) >= {"filters", "neighbors", "embedding"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 3  # type: ignore[misc]


def test_cli_style_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "c.yaml",
        {**MINIMAL, "run": {"seed": 1, "batch_size": 4}, "analyses": {"neighbors": {"k": 3}}},
    )
    cfg = load_config(
        path,
        {"run.seed": 7, "data.root": "cli/images", "run.device": None},
        analyses=["neighbors"],
    )
    assert cfg.run.seed == 7
    assert cfg.run.batch_size == 4  # untouched keys stay as in the file
    assert cfg.run.device == "auto"  # None = flag not given
    assert cfg.data.root == "cli/images"  # flags are relative to the working folder
    assert cfg.enabled_analyses() == ["neighbors"]
    assert cfg.params("neighbors").k == 3
    with_weights = write_yaml(
        tmp_path / "w.yaml", {**MINIMAL, "model": {"arch": "resnet18", "weights": "w.pt"}}
    )
    swapped = load_config(with_weights, {"model.checkpoint": "whole.pt"})
    assert swapped.model.checkpoint == "whole.pt" and swapped.model.weights is None
    assert load_config(with_weights).model.weights == str(tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"--analyses: unknown analysis 'neighbour'"):
        load_config(path, analyses=["neighbour"])


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write_yaml(
        folder / "c.yaml",
        {
            "model": {"arch": "my_arch.py:build", "weights": "w/model.pt"},
            "data": {"root": "../images", "labels": "labels.txt"},
            "output": {"dir": "out"},
        },
    )
    cfg = load_config(path)
    assert cfg.model.weights == str(folder / "w/model.pt")
    assert Path(cfg.data.root or "").resolve() == (tmp_path / "images").resolve()
    assert cfg.data.labels == str(folder / "labels.txt")
    assert cfg.output.dir == str(folder / "out")
    assert cfg.model.arch == f"{folder / 'my_arch.py'}:build"
    # Absolute paths and importable module names stay as they are.
    abs_cfg = load_config(
        write_yaml(
            folder / "abs.yaml",
            {"model": {"arch": "pkg.mod:build"}, "data": {"root": str(tmp_path / "x")}},
        )
    )
    assert abs_cfg.model.arch == "pkg.mod:build" and abs_cfg.data.root == str(tmp_path / "x")


def test_provenance_drops_only_what_must_not_change_the_report(tmp_path: Path) -> None:
    cfg = load_config(write_yaml(tmp_path / "c.yaml", MINIMAL))
    full = cfg.to_dict()
    prov = cfg.to_dict(for_provenance=True)
    assert "dir" in full["output"] and "dir" not in prov["output"]
    assert "quiet" not in prov["run"] and prov["run"]["seed"] == 0
    assert "source" not in full


def test_every_key_is_shown_in_the_reference_sample_config() -> None:
    """The ResNet sample is the documented reference: it lists every key of every section."""
    sample = yaml.safe_load(
        (Path(__file__).parent.parent / "sample_configs" / "resnet50.yaml").read_text()
    )
    for f in dataclasses.fields(Config):
        if f.name in ("source", "analyses", "explicit"):
            continue
        if f.name == "gates":
            assert sample["gates"] == []
            continue
        section_cls = f.default_factory  # type: ignore[misc]
        keys = {g.name for g in dataclasses.fields(section_cls())}
        assert set(sample[f.name]) == keys, f.name


# --------------------------------------------------------------------------- layer names


def test_unknown_penultimate_lists_the_nearest_layers(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 2}, size=32)
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights), "model.penultimate": "fc_1"})
    with pytest.raises(LayerError) as err:
        run_report(cfg)
    assert "layer 'fc_1' is not in the model (did you mean 'fc1'" in str(err.value)
    assert "list-layers" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_unknown_analysis_layer_is_an_input_error(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 2}, size=32)
    cfg = make_config(
        tmp_path,
        {"model.weights": str(tiny_weights), "analyses.filters.layers": ["conv_2"]},
    )
    with pytest.raises(LayerError) as err:
        run_report(cfg)
    msg = str(err.value)
    assert msg.startswith("analyses.filters.layers: layer 'conv_2' is not in the model")
    assert "did you mean 'conv2'" in msg


def test_named_penultimate_layer_is_used(tmp_path: Path, tiny_weights: Path) -> None:
    from conftest import make_context

    write_image_folder(tmp_path / "images", {"a": 3, "b": 3}, size=32)
    cfg = make_config(
        tmp_path,
        {"model.arch": TINY_ARCH, "model.weights": str(tiny_weights), "model.penultimate": "conv2"},
    )
    ctx = make_context(cfg)
    assert ctx.pass_result.feature_layer == "conv2"
    assert ctx.pass_result.features is not None and ctx.pass_result.features.shape == (6, 16)


def test_fail_on_flags_add_to_the_files_gates(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {**MINIMAL, "gates": ["accuracy>=0.5"]})
    cfg = load_config(path, None, extra_gates=["ece<=0.2"])
    assert cfg.gates == ["accuracy>=0.5", "ece<=0.2"]
    assert load_config(path).gates == ["accuracy>=0.5"]
