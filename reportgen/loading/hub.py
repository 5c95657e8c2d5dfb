"""timm and Hugging Face models: ``timm:NAME``, timm hub folders and ``save_pretrained`` folders.

Nothing is downloaded and no code from a model folder runs: architectures are built from the
installed timm/transformers with ``pretrained=False`` or from the folder's ``config.json``, and
the weights are read by :func:`reportgen.loading.checkpoints.load_state_dict` (safetensors, or
``torch.load(weights_only=True)`` with an allow-list; never a fallback). Hugging Face configs
that ask for remote code (``auto_map``) are refused; ``trust_remote_code`` is never set.

timm and transformers are optional extras (``pip install reportgen[timm]`` / ``[hf]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from reportgen.errors import CheckpointError, ConfigError, did_you_mean
from reportgen.loading.checkpoints import apply_state_dict, load_state_dict
from reportgen.loading.metadata import timm_pretrained_section
from reportgen.loading.types import HubFiles

TIMM_PREFIX = "timm:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weights beside a hub folder's config.json, in order of preference (safetensors first)."""
HubKind = Literal["timm-name", "timm-folder", "hf-folder"]


def require_timm(what: str) -> ModuleType:
    """The timm package, or a one-line ConfigError naming the extra to install."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(
            f"model.arch: {what} needs the timm package: pip install reportgen[timm]"
        ) from None


def require_transformers(what: str) -> ModuleType:
    """The transformers package, or a one-line ConfigError naming the extra to install."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(
            f"model.arch: {what} needs the transformers package: pip install reportgen[hf]"
        ) from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder, with one-line errors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def hub_kind(arch: str) -> HubKind | None:
    """What ``model.arch`` names, when it is not a torchvision name or ``module:factory``.

    ``timm:NAME`` -> ``timm-name``; a folder whose config.json has ``architecture`` -> a timm
    hub folder; one with ``model_type``/``architectures`` -> a Hugging Face folder.
    """
    if arch.startswith(TIMM_PREFIX):
        return "timm-name"
    path = Path(arch).expanduser()
    if not path.is_dir():
        return None
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConfigError(
            f"model.arch: folder {path} has no config.json; give a timm hub folder or a "
            "Hugging Face save_pretrained folder (config.json beside the weights)"
        )
    config = read_json(config_path)
    if "architecture" in config:
        return "timm-folder"
    if "model_type" in config or "architectures" in config:
        return "hf-folder"
    raise ConfigError(
        f"{config_path}: neither a timm config (no 'architecture') nor a Hugging Face config "
        "(no 'model_type')"
    )


def folder_weights(folder: Path) -> Path:
    """The weights file beside a hub folder's config.json (safetensors preferred)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    if sharded:
        raise CheckpointError(
            f"{folder}: sharded weights ({sharded[0]}) are not supported; save the model in "
            "one file (save_pretrained(..., max_shard_size='100GB')) or pass --weights FILE"
        )
    raise CheckpointError(
        f"{folder}: no weights beside config.json (expected {' or '.join(WEIGHT_FILES)}); "
        "pass --weights FILE if they are elsewhere"
    )


def _shown(path: Path) -> str:
    """A metadata file as the report names it: ``folder/file`` (no machine-specific prefix)."""
    return f"{path.parent.name}/{path.name}"


@dataclass
class HubModel:
    """A built and loaded timm/Hugging Face model and what its files said."""

    module: nn.Module
    arch: str
    """``timm:NAME`` or the Hugging Face class name (``ViTForImageClassification``)."""
    family: Literal["timm", "hf"]
    num_classes: int
    weights: Path | None
    files: HubFiles


# --------------------------------------------------------------------------- timm

# create_model arguments that fetch or read files, or change what the model returns; a hub
# folder's model_args must not smuggle them in.
_REFUSED_TIMM_ARGS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
        "features_only",
        "scriptable",
        "exportable",
        "no_jit",
    }
)
# pretrained_cfg fields that only matter when downloading or reading pretrained weights.
_PRETRAINED_CFG_DROP = frozenset({"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename"})


def check_timm_name(name: str) -> None:
    """``name`` (``arch`` or ``arch.tag``) is a timm model; otherwise a ConfigError with the
    nearest names. Names that load from elsewhere (``hf-hub:``, ``local-dir:``) are refused."""
    timm = require_timm(f"timm:{name}")
    if ":" in name:
        raise ConfigError(
            f"model.arch: timm:{name}: reportgen builds timm models by name only (nothing is "
            "downloaded); give a local timm hub folder as --model DIR instead"
        )
    arch, _, tag = name.partition(".")
    available = timm.list_models()
    if arch not in available:
        raise ConfigError(
            f"model.arch: unknown timm model {arch!r}{did_you_mean(arch, available)}; "
            "timm.list_models() lists them"
        )
    if tag and name not in timm.list_pretrained(name):
        tags = timm.list_pretrained(f"{arch}.*")
        raise ConfigError(
            f"model.arch: timm has no pretrained tag {name!r}{did_you_mean(name, tags)}"
        )


def timm_pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's registry entry (pretrained_cfg) for ``name`` as plain data (no download)."""
    timm = require_timm(f"timm:{name}")
    cfg = timm.models.get_pretrained_cfg(name)
    return dict(cfg.to_dict()) if cfg is not None else {}


def _clean_model_args(args: Mapping[str, Any], source: str) -> dict[str, Any]:
    refused = sorted(k for k in args if k in _REFUSED_TIMM_ARGS)
    if refused:
        raise ConfigError(
            f"{source}: model_args {', '.join(refused)} would load or download weights or change "
            "the model's outputs; remove them"
        )
    return dict(args)


def _clean_pretrained_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from timm.models import PretrainedCfg

    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    return {k: v for k, v in cfg.items() if k in known and k not in _PRETRAINED_CFG_DROP}


def build_timm(
    name: str,
    num_classes: int | None,
    in_chans: int | None = None,
    model_args: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A fresh timm model (``pretrained=False``); ``model_args`` are its constructor arguments
    (img_size, depth ... as a hub folder's config.json records them)."""
    timm = require_timm(f"timm:{name}")
    check_timm_name(name)
    kwargs = _clean_model_args(model_args or {}, f"timm:{name}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if pretrained_cfg:
        kwargs["pretrained_cfg"] = _clean_pretrained_cfg(pretrained_cfg)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "pretrained_cfg")
        raise ConfigError(
            f"model.arch: timm.create_model({name!r}{', ' if shown else ''}{shown}) raised "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.arch: timm:{name} did not build an nn.Module")
    return model


def _find_suffix(state: Mapping[str, torch.Tensor], suffix: str) -> torch.Tensor | None:
    """The tensor stored under ``suffix`` below any wrapper prefix (``module.``, ``model.``)."""
    keys = sorted((k for k in state if k == suffix or k.endswith("." + suffix)), key=len)
    return state[keys[0]] if keys else None


def _first(value: Any) -> str | None:
    """timm's ``classifier``/``first_conv`` fields: a name, or a tuple of names (distilled)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list | tuple) and value and isinstance(value[0], str):
        return value[0]
    return None


def _classifier_name(name: str, pretrained_cfg: Mapping[str, Any], build: Any) -> str | None:
    """The classifier's module name: pretrained_cfg['classifier'], else the module that a probe
    built on the meta device returns from ``get_classifier()``."""
    found = _first(pretrained_cfg.get("classifier"))
    if found is not None:
        return found
    try:
        with torch.device("meta"):
            probe = build()
        head = probe.get_classifier()
    except Exception:
        return None
    if isinstance(head, tuple | list):
        head = head[0] if head else None
    for module_name, module in probe.named_modules():
        if module is head and module_name:
            return module_name
    return None


def timm_shape_from_weights(
    name: str, state: Mapping[str, torch.Tensor], pretrained_cfg: Mapping[str, Any], build: Any
) -> tuple[int | None, int | None]:
    """(num_classes, in_chans) read from the weights: the classifier's output rows and the first
    conv's input channels (None where the file does not tell)."""
    num_classes = in_chans = None
    head = _classifier_name(name, pretrained_cfg, build)
    if head is not None:
        w = _find_suffix(state, f"{head}.weight")
        if w is not None and w.ndim >= 2:
            num_classes = int(w.shape[0])
    first = _first(pretrained_cfg.get("first_conv"))
    if first is not None:
        w = _find_suffix(state, f"{first}.weight")
        if w is not None and w.ndim == 4:
            in_chans = int(w.shape[1])
    return num_classes, in_chans


def _load_into(module: nn.Module, weights: Path) -> None:
    state, _meta = load_state_dict(weights)
    apply_state_dict(module, state, weights)


def load_timm(
    name: str,
    weights: Path | None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> HubModel:
    """``timm:NAME`` with weights in any timm checkpoint layout (plain, or under state_dict,
    state_dict_ema, model_ema, model; .safetensors/.pth/.bin); num_classes and in_chans are read
    from the weights unless given. Without weights the model keeps its random initialisation."""
    check_timm_name(name)
    cfg = timm_pretrained_cfg(name)
    args = dict(model_args or {})

    def probe() -> nn.Module:
        return build_timm(name, None, None, args)

    state: dict[str, torch.Tensor] | None = None
    if weights is not None:
        state, _meta = load_state_dict(weights)
        n, c = timm_shape_from_weights(name, state, cfg, probe)
        num_classes = num_classes if num_classes is not None else n
        in_chans = in_chans if in_chans is not None else c
    module = build_timm(name, num_classes, in_chans if in_chans not in (None, 3) else None, args)
    if state is not None and weights is not None:
        apply_state_dict(module, state, weights)
    files = HubFiles(
        config={"pretrained_cfg": cfg},
        config_source=f"timm's registry entry for {cfg.get('architecture', name)}"
        + (f".{cfg['tag']}" if cfg.get("tag") else ""),
    )
    return HubModel(module, f"timm:{name}", "timm", _timm_classes(module), weights, files)


def _timm_classes(module: nn.Module) -> int:
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    raise CheckpointError(
        "the timm model has no classifier (num_classes=0); reportgen explains class scores"
    )


def build_timm_folder(
    folder: Path, num_classes: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The architecture a timm hub folder's config.json describes (random weights), and the
    config: ``architecture`` built with its ``model_args``, ``num_classes`` and
    ``pretrained_cfg`` (timm derives img_size and global_pool from it, as when it loads one)."""
    config_path = folder / "config.json"
    config = read_json(config_path)
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"{config_path}: 'architecture' must name a timm model")
    require_timm(f"the timm folder {folder}")
    raw_args = config.get("model_args", {})
    if not isinstance(raw_args, Mapping):
        raise ConfigError(f"{config_path}: model_args must be an object")
    args = _clean_model_args(raw_args, str(config_path))
    cfg = dict(timm_pretrained_section(config))
    declared = config.get("num_classes", cfg.get("num_classes"))
    if num_classes is None and isinstance(declared, int) and not isinstance(declared, bool):
        num_classes = declared
    args.pop("num_classes", None)
    module = build_timm(arch, num_classes, args.pop("in_chans", None), args, cfg)
    return module, config


def load_timm_folder(
    folder: Path, weights: Path | None = None, num_classes: int | None = None
) -> HubModel:
    """A timm hub folder: config.json (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``, ``label_names``) with model.safetensors / pytorch_model.bin beside it
    (or ``weights`` elsewhere)."""
    module, config = build_timm_folder(folder, num_classes)
    path = weights if weights is not None else folder_weights(folder)
    _load_into(module, path)
    files = HubFiles(config=config, config_source=_shown(folder / "config.json"))
    arch = f"timm:{config['architecture']}"
    return HubModel(module, arch, "timm", _timm_classes(module), path, files)


# --------------------------------------------------------------------------- Hugging Face

_REMOTE_CODE_AUTO = ("AutoConfig", "AutoModelForImageClassification")


class HFClassifier(nn.Module):
    """A transformers image classifier whose ``forward(x)`` returns the logits tensor.

    transformers returns an output object; hooks, gradients and every analysis expect a
    tensor. The wrapped model is ``self.model``, so its layers are named ``model.<hf name>``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        logits = getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise CheckpointError(
                f"{type(self.model).__name__} returned no logits; reportgen needs an "
                "image-classification model"
            )
        return logits


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a save_pretrained folder, refusing configs that need remote code."""
    config_path = folder / "config.json"
    config = read_json(config_path)
    auto_map = config.get("auto_map")
    if isinstance(auto_map, Mapping):
        needs = [k for k in _REMOTE_CODE_AUTO if k in auto_map]
        if needs:
            raise ConfigError(
                f"{config_path}: auto_map points {needs[0]} at code in the model folder "
                f"({auto_map[needs[0]]}); reportgen never runs a model's own code "
                "(no trust_remote_code): use a model type built into transformers"
            )
    if not isinstance(config.get("model_type"), str):
        raise ConfigError(f"{config_path}: no 'model_type'; not a transformers config")
    return config


def hf_config_object(config: Mapping[str, Any], source: str) -> Any:
    """The transformers config object for a config.json's data (built-in model types only)."""
    transformers = require_transformers(f"the Hugging Face folder {source}")
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    model_type = str(config["model_type"])
    if model_type not in transformers.CONFIG_MAPPING:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not built into transformers "
            f"{transformers.__version__}; reportgen does not run code from model folders"
        )
    if model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(
            f"{source}: model_type {model_type!r} has no image-classification model in "
            "transformers (AutoModelForImageClassification)"
        )
    config_cls = transformers.CONFIG_MAPPING[model_type]
    data = {k: v for k, v in config.items() if k not in ("auto_map", "transformers_version")}
    try:
        return config_cls.from_dict(data)
    except Exception as exc:
        raise ConfigError(
            f"{source}: not a valid {config_cls.__name__} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())})"
        ) from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (reportgen reports problems itself)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def build_hf(config: Mapping[str, Any], source: str) -> HFClassifier:
    """A fresh (randomly initialised) Hugging Face image classifier from config.json data."""
    cfg = hf_config_object(config, source)
    with _quiet_transformers():
        model = _hf_model_class(cfg)(cfg)
    return HFClassifier(model)


def _hf_model_class(cfg: Any) -> Any:
    """The class AutoModelForImageClassification picks for ``cfg`` (as from_config would)."""
    transformers = require_transformers("a Hugging Face folder")
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING
    found = mapping[type(cfg)]
    if isinstance(found, tuple | list):
        # Several heads for one config (DeiT with/without teacher): the one config names.
        named = set(getattr(cfg, "architectures", None) or [])
        found = next((c for c in found if c.__name__ in named), found[0])
    return found


def _loading_item(item: Any) -> str:
    """A key of transformers' loading info; mismatches come as (key, file shape, model shape)."""
    if isinstance(item, tuple) and len(item) == 3:
        key, file_shape, model_shape = item
        return f"{key}: file {tuple(file_shape)} vs model {tuple(model_shape)}"
    return str(item)


def load_hf_folder(folder: Path, weights: Path | None = None) -> HubModel:
    """A Hugging Face ``save_pretrained`` folder: config.json, model.safetensors or
    pytorch_model.bin (or ``weights``), optional preprocessor_config.json.

    The weights are read by reportgen's safe loader; transformers only maps their keys onto the
    model (it renames keys of older checkpoint formats). Missing, unexpected or misshapen keys
    are an error, as for every other weights file.
    """
    config_path = folder / "config.json"
    config = read_hf_config(folder)
    source = str(config_path)
    cfg = hf_config_object(config, source)
    path = weights if weights is not None else folder_weights(folder)
    state, _meta = load_state_dict(path)
    model_cls = _hf_model_class(cfg)
    try:
        with _quiet_transformers():
            # Mismatched shapes are listed in ``info`` (and refused below) instead of raised
            # with a pointer to a report that is silenced here.
            model, info = model_cls.from_pretrained(
                None,
                config=cfg,
                state_dict=state,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except Exception as exc:
        raise CheckpointError(
            f"{path}: transformers could not load these weights into {model_cls.__name__} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    problems = []
    for key, label in (
        ("missing_keys", "missing keys"),
        ("unexpected_keys", "unexpected keys"),
        ("mismatched_keys", "shape mismatches"),
    ):
        found = sorted(_loading_item(k) for k in info.get(key) or ())
        if found:
            problems.append(
                f"{label}: {', '.join(found[:5])}{' ...' if len(found) > 5 else ''} ({len(found)})"
            )
    if problems:
        raise CheckpointError(
            f"{path}: weights do not fit {model_cls.__name__} from {config_path} "
            f"({'; '.join(problems)}); check config.json (num_labels, sizes) against the weights"
        )
    model = model.float()
    preprocessor_path = folder / "preprocessor_config.json"
    preprocessor = read_json(preprocessor_path) if preprocessor_path.is_file() else None
    files = HubFiles(
        config=config,
        config_source=_shown(config_path),
        preprocessor=preprocessor,
        preprocessor_source=_shown(preprocessor_path) if preprocessor is not None else None,
    )
    num_classes = int(cfg.num_labels)
    return HubModel(HFClassifier(model), model_cls.__name__, "hf", num_classes, path, files)


# --------------------------------------------------------------------------- dispatch


def build_hub_architecture(arch: str, kind: HubKind, num_classes: int | None) -> nn.Module:
    """A fresh model for a hub ``model.arch`` (no weights): for list-layers and probes."""
    if kind == "timm-name":
        return build_timm(arch[len(TIMM_PREFIX) :], num_classes)
    folder = Path(arch).expanduser()
    if kind == "timm-folder":
        return build_timm_folder(folder, num_classes)[0]
    return build_hf(read_hf_config(folder), str(folder / "config.json"))


def load_hub_model(
    arch: str,
    kind: HubKind,
    weights: Path | None,
    num_classes: int | None,
    in_chans: int | None = None,
) -> HubModel:
    """Load what a hub ``model.arch`` names (see :func:`hub_kind`)."""
    if kind == "timm-name":
        return load_timm(arch[len(TIMM_PREFIX) :], weights, num_classes, in_chans)
    folder = Path(arch).expanduser()
    if kind == "timm-folder":
        return load_timm_folder(folder, weights, num_classes)
    loaded = load_hf_folder(folder, weights)
    if num_classes is not None and num_classes != loaded.num_classes:
        raise ConfigError(
            f"model.num_classes is {num_classes} but {folder / 'config.json'} has "
            f"{loaded.num_classes} labels"
        )
    return loaded
