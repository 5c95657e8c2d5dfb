"""What a model's own files say about it: class names and preprocessing, each with its source.

Hugging Face folders carry ``id2label`` in ``config.json`` and the preprocessing in
``preprocessor_config.json``; timm carries ``label_names`` and a ``pretrained_cfg`` (mean, std,
input size, crop fraction, interpolation); torchvision's weights enums hold the 1000 ImageNet
category names offline. The functions here read those plain values (nothing is downloaded) and
say where each one came from, so the report can state it. The pipeline decides what to apply:
explicit configuration always wins over anything here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reportgen.loading.types import HubFiles, LoadedModel, ModelMetadata, Sourced

if TYPE_CHECKING:
    from reportgen.loading.types import LoadedModel

# --------------------------------------------------------------------------- class names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k category names in model-output order (torchvision's offline list).

    Read from a torchvision weights enum's ``meta["categories"]``, which ships with torchvision
    (nothing is downloaded).
    """
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


IMAGENET_SOURCE = "imagenet (torchvision's ImageNet-1k category list)"


def _is_placeholder(names: Sequence[str]) -> bool:
    """Hugging Face's default id2label: ``LABEL_0``, ``LABEL_1`` ... (names nobody chose)."""
    return all(name == f"LABEL_{i}" for i, name in enumerate(names))


def _indexed_names(mapping: Mapping[Any, Any], num_classes: int) -> list[str] | None:
    """Names for indices 0..num_classes-1 from an ``{index: name}`` mapping (JSON keys are text).

    ``None`` when an index is missing or a key is not an index: a partial list would shift or
    mislabel classes.
    """
    names: dict[int, str] = {}
    for key, value in mapping.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            return None
        names[index] = str(value)
    if sorted(names) != list(range(num_classes)):
        return None
    return [names[i] for i in range(num_classes)]


def hf_class_names(config: Mapping[str, Any], num_classes: int) -> list[str] | None:
    """Class names from a Hugging Face config's ``id2label``; ``None`` for the ``LABEL_i``
    placeholder or a mapping that does not cover every output."""
    id2label = config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    names = _indexed_names(id2label, num_classes)
    if names is None or _is_placeholder(names):
        return None
    return names


def timm_class_names(label_names: Any, num_classes: int) -> list[str] | None:
    """Class names from timm's ``label_names`` (a list, or ``{index: name}`` when there are gaps).

    ``None`` when they do not name exactly ``num_classes`` outputs.
    """
    if isinstance(label_names, Mapping):
        return _indexed_names(label_names, num_classes)
    if isinstance(label_names, list | tuple) and len(label_names) == num_classes:
        return [str(n) for n in label_names]
    return None


def _descriptions(label_descriptions: Any, names: list[str] | None) -> list[str] | None:
    """timm's ``label_descriptions`` (name -> description) in class order, when complete."""
    if names is None or not isinstance(label_descriptions, Mapping):
        return None
    if not all(n in label_descriptions for n in names):
        return None
    return [str(label_descriptions[n]) for n in names]


# --------------------------------------------------------------------------- preprocessing

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
TIMM_DEFAULT_CROP_PCT = 0.875
"""timm's ``DEFAULT_CROP_PCT``: used by its transforms when a pretrained_cfg has no crop_pct."""


def _floats(value: Any) -> list[float] | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return [float(v) for v in value]
    return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing values read from one metadata file (the fields of :class:`ModelMetadata`)."""

    resize: Sourced[int] | None = None
    crop: Sourced[int] | None = None
    mean: Sourced[list[float]] | None = None
    std: Sourced[list[float]] | None = None
    interpolation: Sourced[str] | None = None
    notes: tuple[str, ...] = ()


def timm_preprocessing(pretrained_cfg: Mapping[str, Any], source: str) -> Preprocessing:
    """Preprocessing from a timm ``pretrained_cfg`` the way timm's eval transforms apply it.

    timm resizes the shorter side to ``floor(size / crop_pct)`` and centre-crops ``size``
    (``input_size`` is channels × height × width; ``crop_pct`` defaults to 0.875).
    """
    notes: list[str] = []
    resize = crop = None
    input_size = pretrained_cfg.get("input_size")
    if input_size is not None and not (
        isinstance(input_size, list | tuple)
        and len(input_size) == 3
        and _positive_int(input_size[1]) is not None
    ):
        notes.append(
            f"{source}: input_size {input_size!r} is not channels × height × width with a "
            "positive size, so it is not used; set preprocess.resize and preprocess.crop to the "
            "size the model was trained at"
        )
    if isinstance(input_size, list | tuple) and len(input_size) == 3:
        height, width = input_size[1], input_size[2]
        size = _positive_int(height)
        if size is not None:
            if width != height:
                notes.append(
                    f"{source}: input_size is {height}×{width}; reportgen crops squares, "
                    f"so it uses {size}"
                )
            raw_pct = pretrained_cfg.get("crop_pct")
            crop_pct = raw_pct if isinstance(raw_pct, int | float) and raw_pct > 0 else None
            pct = TIMM_DEFAULT_CROP_PCT if crop_pct is None else float(crop_pct)
            pct_text = f"crop_pct {pct:g}" + (" (timm's default)" if crop_pct is None else "")
            crop = Sourced(size, f"{source} input_size")
            resize = Sourced(math.floor(size / pct), f"{source} input_size / {pct_text}")
            mode = pretrained_cfg.get("crop_mode", "center")
            if mode not in (None, "center"):
                notes.append(
                    f"{source}: crop_mode {mode!r} (timm resizes differently); reportgen "
                    "resizes the shorter side and centre-crops"
                )
    mean = _floats(pretrained_cfg.get("mean"))
    std = _floats(pretrained_cfg.get("std"))
    interp = pretrained_cfg.get("interpolation")
    return Preprocessing(
        resize=resize,
        crop=crop,
        mean=Sourced(mean, f"{source} mean") if mean else None,
        std=Sourced(std, f"{source} std") if std else None,
        interpolation=Sourced(interp, f"{source} interpolation")
        if isinstance(interp, str) and interp
        else None,
        notes=tuple(notes),
    )


def _edge(size: Any, key: str) -> int | None:
    return _positive_int(size.get(key)) if isinstance(size, Mapping) else None


def hf_preprocessing(processor: Mapping[str, Any], source: str) -> Preprocessing:
    """Preprocessing from a Hugging Face ``preprocessor_config.json`` (image processors).

    * ``size: {shortest_edge: s}`` with ``crop_pct`` (ConvNeXt, ResNet, PoolFormer processors):
      shorter side to ``int(s / crop_pct)``, centre crop ``crop_size`` (or ``s``). The ConvNeXt
      processor warps to s×s without cropping from 384 px up.
    * ``size: {shortest_edge: s}`` without ``crop_pct`` (BiT, CLIP): shorter side to ``s``, then
      ``crop_size`` when ``do_center_crop``.
    * ``size: {height: h, width: w}`` (ViT, DeiT, BEiT): a warp to exactly h×w (then ``crop_size``
      when ``do_center_crop``); reportgen keeps the aspect ratio, so this is recorded in notes.
    * ``image_mean``/``image_std`` unless ``do_normalize`` is false (then 0 and 1).
    """
    notes: list[str] = []
    resize = crop = None
    size = processor.get("size")
    crop_size = processor.get("crop_size")
    crop_edge = _edge(crop_size, "height")
    if crop_edge is not None and _edge(crop_size, "width") not in (None, crop_edge):
        notes.append(f"{source}: crop_size is not square; reportgen crops {crop_edge}×{crop_edge}")
    do_crop = bool(processor.get("do_center_crop", crop_size is not None)) and crop_edge is not None
    shortest = _edge(size, "shortest_edge")
    height, width = _edge(size, "height"), _edge(size, "width")
    raw_pct = processor.get("crop_pct")
    crop_pct = float(raw_pct) if isinstance(raw_pct, int | float) and raw_pct > 0 else None
    kind = processor.get("image_processor_type", "")
    if processor.get("do_resize", True) is False:
        if do_crop and crop_edge is not None:
            crop = Sourced(crop_edge, f"{source} crop_size")
    elif shortest is not None:
        if crop_pct is not None and not (str(kind).startswith("ConvNext") and shortest >= 384):
            resize = Sourced(
                int(shortest / crop_pct), f"{source} size.shortest_edge / crop_pct {crop_pct:g}"
            )
            if do_crop and crop_edge is not None:
                crop = Sourced(crop_edge, f"{source} crop_size")
            else:
                crop = Sourced(shortest, f"{source} size.shortest_edge")
        elif crop_pct is not None:
            resize = Sourced(shortest, f"{source} size.shortest_edge")
            crop = Sourced(shortest, f"{source} size.shortest_edge")
            notes.append(
                f"{source}: the processor warps to {shortest}×{shortest} (no crop from 384 px "
                "up); reportgen keeps the aspect ratio and centre-crops"
            )
        else:
            resize = Sourced(shortest, f"{source} size.shortest_edge")
            if do_crop and crop_edge is not None:
                crop = Sourced(crop_edge, f"{source} crop_size")
    elif height is not None and width is not None:
        if height != width:
            notes.append(
                f"{source}: size is {height}×{width}; reportgen resizes squares, so it uses {height}"
            )
        resize = Sourced(height, f"{source} size.height")
        crop = (
            Sourced(crop_edge, f"{source} crop_size")
            if do_crop and crop_edge is not None
            else Sourced(height, f"{source} size.height")
        )
        notes.append(
            f"{source}: the processor warps images to {height}×{width} (aspect ratio not kept); "
            f"reportgen resizes the shorter side to {height} and centre-crops"
        )
    elif isinstance(size, Mapping) and size:
        notes.append(f"{source}: size {dict(size)} is not a form reportgen reads; left to config")

    if processor.get("do_normalize", True) is False:
        mean: Sourced[list[float]] | None = Sourced([0.0], f"{source} do_normalize: false")
        std: Sourced[list[float]] | None = Sourced([1.0], f"{source} do_normalize: false")
    else:
        mean_v, std_v = _floats(processor.get("image_mean")), _floats(processor.get("image_std"))
        mean = Sourced(mean_v, f"{source} image_mean") if mean_v else None
        std = Sourced(std_v, f"{source} image_std") if std_v else None
    if processor.get("do_rescale", True) is False:
        notes.append(
            f"{source}: do_rescale is false (the model expects 0–255 pixel values); reportgen "
            "scales pixels to 0–1 before normalising"
        )
    factor = processor.get("rescale_factor")
    if isinstance(factor, int | float) and not math.isclose(float(factor), 1 / 255, rel_tol=1e-4):
        notes.append(f"{source}: rescale_factor {factor} is not 1/255; reportgen uses 1/255")
    resample = processor.get("resample")
    interp = _PIL_RESAMPLE.get(resample) if isinstance(resample, int) else None
    return Preprocessing(
        resize=resize,
        crop=crop,
        mean=mean,
        std=std,
        interpolation=Sourced(interp, f"{source} resample={resample}") if interp else None,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- per family


def _with_preprocessing(
    names: list[str] | None,
    names_source: str | None,
    descriptions: list[str] | None,
    pre: Preprocessing | None,
) -> ModelMetadata:
    if pre is None:
        pre = Preprocessing()
    return ModelMetadata(
        class_names=names,
        class_names_source=names_source if names is not None else None,
        class_descriptions=descriptions,
        resize=pre.resize,
        crop=pre.crop,
        mean=pre.mean,
        std=pre.std,
        interpolation=pre.interpolation,
        notes=pre.notes,
    )


def timm_pretrained_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pretrained_cfg of a timm hub config.json. Older exports had a single flat object
    (architecture, input_size, mean ... and ``labels`` at the top level); timm reads that whole
    object as the pretrained_cfg, and so does this."""
    section = config.get("pretrained_cfg")
    if isinstance(section, Mapping):
        return section
    if "pretrained_cfg" in config:
        return {}
    return {k: v for k, v in config.items() if k not in ("architecture", "num_features")}


def timm_metadata(files: HubFiles, num_classes: int) -> ModelMetadata:
    """Names from ``label_names`` (else ImageNet for 1000 outputs), preprocessing from
    ``pretrained_cfg``. A timm hub folder's config.json keeps labels at its top level; older
    ones inside pretrained_cfg."""
    config = files.config
    source = files.config_source or "timm config"
    cfg = timm_pretrained_section(config)
    where = f"{source} pretrained_cfg" if "pretrained_cfg" in config else source
    label_names = config.get("label_names", cfg.get("label_names", cfg.get("labels")))
    label_descriptions = config.get("label_descriptions", cfg.get("label_descriptions"))
    names = timm_class_names(label_names, num_classes) if label_names else None
    names_source: str | None = f"timm label_names ({source})" if names else None
    if names is None and num_classes == 1000:
        # timm's ImageNet-1k heads use the same class order as torchvision's list.
        names, names_source = imagenet_class_names(), IMAGENET_SOURCE + " for 1000 outputs"
    pre = timm_preprocessing(cfg, where) if cfg else None
    return _with_preprocessing(
        names, names_source, _descriptions(label_descriptions, names if label_names else None), pre
    )


def hf_metadata(files: HubFiles, num_classes: int) -> ModelMetadata:
    """Names from ``id2label`` (not the ``LABEL_i`` placeholder), preprocessing from
    ``preprocessor_config.json``."""
    source = files.config_source or "config.json"
    names = hf_class_names(files.config, num_classes)
    pre = (
        hf_preprocessing(
            files.preprocessor, files.preprocessor_source or "preprocessor_config.json"
        )
        if files.preprocessor is not None
        else None
    )
    return _with_preprocessing(names, f"id2label ({source})", None, pre)


def model_metadata(arch_spec: str | None, loaded: LoadedModel) -> ModelMetadata:
    """The metadata of a loaded model: class names and preprocessing with their sources.

    ``arch_spec`` is ``model.arch`` as given (used in source texts). torchvision architectures
    with 1000 outputs get the ImageNet names; timm and Hugging Face models what their files
    say; user factories and whole-model checkpoints nothing.
    """
    if loaded.family == "timm":
        return timm_metadata(loaded.hub or HubFiles(), loaded.num_classes)
    if loaded.family == "hf":
        return hf_metadata(loaded.hub or HubFiles(), loaded.num_classes)
    if loaded.family == "torchvision" and loaded.num_classes == 1000:
        return ModelMetadata(
            class_names=imagenet_class_names(),
            class_names_source=f"{IMAGENET_SOURCE}: {arch_spec or loaded.arch} has 1000 outputs",
        )
    return ModelMetadata()
