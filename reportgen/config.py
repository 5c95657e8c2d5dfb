"""The whole configuration as frozen dataclasses, loaded from YAML with CLI flags on top.

Every key is validated: unknown keys are rejected with their dotted path and the nearest valid
name, and values are checked against the field's type. Relative paths in a config file are
resolved against the file's folder; paths given on the command line against the working folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from reportgen.errors import ConfigError, did_you_mean
from reportgen.params import AnalysisParams, validate_params


@dataclass(frozen=True)
class ModelConfig:
    arch: str | None = None
    """A ``torchvision.models`` name, or ``package.module:factory`` / ``path/file.py:factory``."""
    weights: str | None = None
    """A state dict (.pt/.pth/.bin/.ckpt, loaded with ``weights_only=True``) or .safetensors."""
    checkpoint: str | None = None
    """A whole model that runs code when loaded (pickled module, TorchScript, .pt2)."""
    trust_checkpoint: bool = False
    num_classes: int | None = None
    penultimate: str = "auto"
    """Layer whose output is the feature vector; ``auto`` = the input of the last ``nn.Linear``."""
    in_channels: int | None = None
    """Only needed when the model has no ``nn.Conv2d`` to read the input channels from."""
    task: Literal["auto", "multiclass", "binary", "multilabel"] = "auto"
    """What the outputs mean (:mod:`reportgen.heads`): ``auto`` = ``binary`` for one output, a
    Hugging Face ``problem_type: multi_label_classification`` or a manifest with label sets
    ``multilabel``, else ``multiclass``."""
    threshold: float = 0.5
    """The probability at or above which a binary model predicts positive and a multi-label
    model predicts a label."""


@dataclass(frozen=True)
class BaselineConfig:
    """An older model to compare against, riding the same dataset pass (issue: "what changed?")."""

    arch: str | None = None
    """Architecture of the baseline; default: ``model.arch``."""
    weights: str | None = None
    """The baseline's state dict (never runs code)."""
    checkpoint: str | None = None
    """A whole-model baseline (runs code when loaded; needs ``trust_checkpoint``)."""
    trust_checkpoint: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.weights or self.checkpoint)


@dataclass(frozen=True)
class ColumnsConfig:
    """Which manifest (or dataset) columns hold the image path, the label and the label set."""

    path: str = "path"
    label: str = "label"
    labels: str = "labels"


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None
    """An image folder; a folder of WebDataset ``.tar`` shards or a brace pattern
    (``shards/val-{000000..000031}.tar``); a Hugging Face dataset (``save_to_disk`` folder,
    Parquet file or folder; ``hf:PATH`` to say so). With ``manifest``: the folder its paths are
    relative to (default: the manifest's folder)."""
    manifest: str | None = None
    """A CSV, TSV, JSONL or Parquet table: one row per image (path, label, metadata columns)."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    split: str | None = None
    """A Hugging Face dataset's split (``validation``, ``test`` ...) when it holds several."""
    labels: str | list[str] | None = None
    """Class names in model-output order: a text file (one per line) or a list."""
    max_images: int | None = None
    queries: int | list[str] = 8
    """How many query images (chosen across classes), or a list of paths relative to ``root``.
    For a multi-label model the count is of explained rows (image, label)."""
    max_labels_per_query: int = 3
    """Multi-label models: the labels each query image is explained for (its true and predicted
    labels, the most probable first), at most this many."""


@dataclass(frozen=True)
class PreprocessConfig:
    resize: int | None = 256
    crop: int | None = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    pixel_size: int = 32
    """Side of the downsampled images used for pixel-space distances."""
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    """How the shorter side is resized (timm and Hugging Face models name theirs)."""


@dataclass(frozen=True)
class RunConfig:
    device: str = "auto"
    batch_size: int = 64
    workers: int | Literal["auto"] = 2
    """DataLoader processes decoding images; ``auto`` sizes them to the machine (on CUDA: the
    CPU cores per local process, less one, at most 16; on the CPU: 2, leaving cores to the model)."""
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    """The model's layout: ``auto`` = channels-last for a model with 2-D convolutions (1.2–1.6×
    faster on CPU cores for ResNet-50 and EfficientNet-B0; the CUDA default), else contiguous.
    The perturbation sections' ``batch_size: auto`` is measured once per model and machine."""
    quiet: bool = False
    release: str | None = None
    """The model release this report describes (``v1.4``, a git tag ...): recorded in
    summary.json (``run.release``) and used by ``reportgen history`` as the release's label."""


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "report"
    save_arrays: bool = False
    formats: list[str] = field(default_factory=lambda: ["html", "pdf"])
    max_html_mb: float = 15.0
    """Size budget for report.html; images are shrunk (with a warning) to stay under it."""
    title: str | None = None
    """Report title; default: "<arch> on <data folder name>"."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    run: RunConfig = field(default_factory=RunConfig)
    analyses: dict[str, AnalysisParams] = field(default_factory=dict)
    """Analysis name -> that analysis' frozen parameter dataclass (always complete once loaded)."""
    output: OutputConfig = field(default_factory=OutputConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    gates: list[str] = field(default_factory=list)
    """Conditions that must hold (``accuracy>=0.9``, ``compare.negative_flip_rate<=0.01``);
    a failed one makes the run exit with code 3."""
    explicit: frozenset[str] = frozenset()
    """Dotted keys the user set (file or flags): model metadata never overrides these."""
    source: str | None = None
    """The config file this came from (for messages only)."""

    def params(self, name: str) -> Any:
        return self.analyses[name]

    def enabled_analyses(self) -> list[str]:
        return [name for name, p in self.analyses.items() if p.enabled]

    def to_dict(self, *, for_provenance: bool = False) -> dict[str, Any]:
        """Plain data. ``for_provenance`` drops what must not change the report's bytes."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out.pop("source")
        out.pop("explicit")
        if for_provenance:
            out["output"].pop("dir")
            out["run"].pop("quiet")
            # Sections that are off say nothing (so a plain run's provenance stays as it was).
            if not self.baseline.enabled:
                out.pop("baseline")
            if not self.gates:
                out.pop("gates")
        return out


FORMATS = ("html", "pdf", "md")
MAX_SIDE = 4096
"""Largest resize/crop side: a 30000-px side would need gigabytes per image."""
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- generic coercion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if tp is type(None):
        return "null"
    plain = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    return plain.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (ints to floats, lists...)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        # Try the narrowest types first so that "8" stays an int for ``int | list[str]``.
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{path}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}"
                f"{did_you_mean(str(value), [str(a) for a in allowed])}"
            )
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected text, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    raise ConfigError(f"{path}: unsupported value {value!r}")


def build_dataclass(cls: Any, data: Any, path: str) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, rejecting unknown keys by path."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [
        f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("source", "explicit")
    ]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown config key '{key_path}'{did_you_mean(str(key), names)}; "
                f"valid keys here: {', '.join(names)}"
            )
        kwargs[key] = coerce(value, hints[key], key_path)
    return cls(**kwargs)


# --------------------------------------------------------------------------- loading

_SECTIONS = ("model", "data", "preprocess", "run", "analyses", "output", "baseline", "gates")
_PATH_KEYS = (
    ("model", "weights"),
    ("model", "checkpoint"),
    ("baseline", "weights"),
    ("baseline", "checkpoint"),
    ("data", "root"),
    ("data", "manifest"),
    ("output", "dir"),
)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently, dropping the whole first block)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice (first on line {seen[key] + 1}); keep one of them",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: the config file is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{p}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a mapping with sections {', '.join(_SECTIONS)}")
    return data


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    for section, key in _PATH_KEYS:
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            value = sec[key]
            prefix = "hf:" if key == "root" and value.startswith("hf:") else ""
            p = Path(value[len(prefix) :]).expanduser()
            if not p.is_absolute():
                sec[key] = prefix + str(base / p)
    for section in ("model", "baseline"):
        model = data.get(section)
        if isinstance(model, dict) and isinstance(model.get("arch"), str):
            arch = model["arch"]
            # ``file.py:factory`` relative to the config file.
            module, _, factory = arch.rpartition(":")
            if module.endswith(".py") and not Path(module).is_absolute():
                model["arch"] = f"{base / module}:{factory}"
    labels = data.get("data", {}).get("labels") if isinstance(data.get("data"), dict) else None
    if isinstance(labels, str) and not Path(labels).is_absolute():
        data["data"]["labels"] = str(base / labels)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    schemas: Mapping[str, type[AnalysisParams]],
    analyses: list[str] | None = None,
    extra_gates: Sequence[str] = (),
) -> Config:
    """Load a config file (optional), apply dotted-key ``overrides`` (CLI flags) on top.

    ``schemas``: analysis name -> its parameter dataclass, in report order (handed in by the
    composition root, :func:`reportgen.api.load_config`). ``analyses`` restricts the run to
    those analysis names (the ``--analyses`` flag); ``extra_gates`` are added to the file's
    ``gates`` (the ``--fail-on`` flags: every condition must hold).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        _resolve_relative(data, Path(path).resolve().parent)
        for key in data:
            if key not in _SECTIONS:
                raise ConfigError(
                    f"{path}: unknown config key '{key}'{did_you_mean(str(key), _SECTIONS)}; "
                    f"valid sections: {', '.join(_SECTIONS)}"
                )
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    # A weights flag replaces the file's checkpoint and vice versa (they are exclusive, and the
    # flag is the later word), so `--checkpoint x` works with a config that names weights.
    for section in ("model", "baseline"):
        model_data = data.get(section)
        if isinstance(model_data, dict):
            for given, replaced in (("weights", "checkpoint"), ("checkpoint", "weights")):
                if f"{section}.{given}" in overrides and f"{section}.{replaced}" not in overrides:
                    model_data.pop(replaced, None)
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    if extra_gates:
        in_file = data.get("gates") or []
        data["gates"] = [*(in_file if isinstance(in_file, list) else [in_file]), *extra_gates]

    analyses_data = data.get("analyses", {})
    if analyses_data is None:
        analyses_data = {}
    if not isinstance(analyses_data, dict):
        raise ConfigError(
            "analyses: expected a mapping of analysis name -> parameters (an empty selection "
            "is an error: name at least one analysis, or omit the key for all of them)"
        )
    for name in analyses_data:
        if name not in schemas:
            raise ConfigError(
                f"unknown analysis 'analyses.{name}'{did_you_mean(str(name), schemas)}; "
                f"available: {', '.join(schemas)}"
            )
    if analyses is not None:
        if not analyses:
            raise ConfigError(
                "--analyses: name at least one analysis (see `reportgen list-analyses`), or "
                "leave the flag out for all of them"
            )
        for name in analyses:
            if name not in schemas:
                raise ConfigError(
                    f"--analyses: unknown analysis '{name}'{did_you_mean(name, schemas)}; "
                    f"available: {', '.join(schemas)}"
                )
    params: dict[str, AnalysisParams] = {}
    for name, cls in schemas.items():
        p = build_dataclass(cls, analyses_data.get(name), f"analyses.{name}")
        if analyses is not None:
            p = dataclasses.replace(p, enabled=name in analyses)
        params[name] = p

    sections = {k: v for k, v in data.items() if k != "analyses"}
    cfg = build_dataclass(Config, sections, "")
    explicit = frozenset(
        f"{section}.{key}"
        for section, values in data.items()
        if isinstance(values, dict)
        for key in values
    ) | frozenset(f"analyses.{name}" for name in analyses or ())  # named by --analyses
    cfg = dataclasses.replace(
        cfg, analyses=params, explicit=explicit, source=str(path) if path else None
    )
    validate(cfg)
    return cfg


def validate_preprocess(
    p: PreprocessConfig, sources: Mapping[str, str] | None = None, channels: int | None = None
) -> None:
    """The preprocessing values' checks, for the config and again once the model's metadata
    (timm's pretrained_cfg, a preprocessor_config.json) filled in what the config left open:
    ``sources``: key -> where the value came from, named in the message (a value the metadata
    gave is the metadata's fault, not the config's). ``channels``: the model's input channels."""

    def name(key: str) -> str:
        src = (sources or {}).get(key)
        if src and src not in ("config", "reportgen default"):
            return f"preprocess.{key} (from the model's metadata: {src})"
        return f"preprocess.{key}"

    def fix(key: str) -> str:
        src = (sources or {}).get(key)
        if src and src not in ("config", "reportgen default"):
            return f"; set preprocess.{key} to override it"
        return ""

    for key in ("resize", "crop"):
        v = getattr(p, key)
        if v is not None and not 1 <= v <= MAX_SIDE:
            raise ConfigError(
                f"{name(key)} must be between 1 and {MAX_SIDE} pixels or null (got {v}){fix(key)}"
            )
    for key in ("mean", "std"):
        values = getattr(p, key)
        if not values:
            raise ConfigError(f"{name(key)} is empty; give one value per input channel{fix(key)}")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ConfigError(f"{name(key)} must hold finite numbers (got {values}){fix(key)}")
        if (
            channels is not None
            and len(values) not in (1, channels)
            and not (channels == 1 and len(values) == 3)
        ):
            raise ConfigError(
                f"{name(key)} has {len(values)} values but the model takes {channels} input "
                f"channel(s); give {channels} value(s){fix(key)}"
            )
    if len(p.mean) != len(p.std):
        raise ConfigError(
            f"{name('mean')} and {name('std')} must be lists of the same length "
            f"(got {len(p.mean)} and {len(p.std)}){fix('mean') or fix('std')}"
        )
    if any(s <= 0 for s in p.std):
        raise ConfigError(f"{name('std')} values must be positive (got {p.std}){fix('std')}")


def validate(cfg: Config) -> None:
    """Value checks that the types alone do not express."""
    m, d, p, r, o = cfg.model, cfg.data, cfg.preprocess, cfg.run, cfg.output
    if m.weights and m.checkpoint:
        raise ConfigError("model.weights and model.checkpoint are exclusive: give one of them")
    b = cfg.baseline
    if b.weights and b.checkpoint:
        raise ConfigError(
            "baseline.weights and baseline.checkpoint are exclusive: give one of them"
        )
    if (b.arch or b.trust_checkpoint) and not b.enabled:
        raise ConfigError(
            "baseline: give the baseline's weights (--baseline-weights) or checkpoint "
            "(--baseline-checkpoint), or remove the baseline section"
        )
    if not m.checkpoint and not m.arch:
        raise ConfigError("model.arch is missing: name a torchvision model or 'module:factory'")
    if not d.root and not d.manifest:
        raise ConfigError(
            "data.root is missing: give --data DIR (or --manifest FILE) or data.root in the config"
        )
    if m.num_classes is not None and m.num_classes < 1:
        raise ConfigError("model.num_classes must be at least 1")
    if not 0.0 < m.threshold < 1.0:
        raise ConfigError(
            f"model.threshold must lie strictly between 0 and 1 (got {m.threshold:g}); it is "
            "the probability at or above which a binary or multi-label prediction is positive"
        )
    if not 1 <= d.max_labels_per_query <= 50:
        raise ConfigError(
            f"data.max_labels_per_query must be between 1 and 50 (got {d.max_labels_per_query})"
        )
    if d.max_images is not None and d.max_images < 1:
        raise ConfigError("data.max_images must be at least 1")
    if isinstance(d.queries, int) and d.queries < 0:
        raise ConfigError("data.queries must be 0 or more")
    validate_preprocess(p)
    if not 1 <= p.pixel_size <= 256:
        raise ConfigError(f"preprocess.pixel_size must be between 1 and 256 (got {p.pixel_size})")
    if not 0 <= r.seed < 2**64:
        raise ConfigError(f"run.seed must be a whole number from 0 to 2**64 - 1 (got {r.seed})")
    if not _DEVICE_RE.match(r.device):
        raise ConfigError(f"run.device: {r.device!r} is not auto, cpu, cuda or cuda:N")
    if not 1 <= r.batch_size <= 65536:
        raise ConfigError(f"run.batch_size must be between 1 and 65536 (got {r.batch_size})")
    if r.workers != "auto" and not 0 <= r.workers <= 256:
        raise ConfigError(f"run.workers must be between 0 and 256, or auto (got {r.workers})")
    for fmt in o.formats:
        if fmt not in FORMATS:
            raise ConfigError(
                f"output.formats: unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}; "
                f"choose from {', '.join(FORMATS)}"
            )
    if "html" not in o.formats and "pdf" not in o.formats:
        raise ConfigError("output.formats must include html or pdf")
    if not 0 < o.max_html_mb <= 10_000:
        raise ConfigError(
            f"output.max_html_mb must be positive (and at most 10000); got {o.max_html_mb}"
        )
    for name, params in cfg.analyses.items():
        validate_params(params, f"analyses.{name}")
