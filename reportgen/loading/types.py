"""What the loaders hand on: a loaded model and the metadata its files carry, plain types.

They live below the loaders (checkpoints, hub, metadata, models) so that those import each other
only downwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from torch import nn

from reportgen.errors import LayerError, did_you_mean
from reportgen.loading.checkpoints import CheckpointKind

Family = Literal["torchvision", "timm", "hf", "factory", "checkpoint"]
"""Where the architecture came from: a torchvision name, ``timm:NAME`` or a timm hub folder, a
Hugging Face ``save_pretrained`` folder, a user's ``module:factory``, or a whole-model
``--checkpoint``."""

T = TypeVar("T")


@dataclass(frozen=True)
class Sourced(Generic[T]):
    """A value and where it was read (a file and key, or a library's table)."""

    value: T
    source: str


@dataclass(frozen=True)
class HubFiles:
    """The metadata files a hub-style model came with, as plain JSON values.

    ``config`` is the folder's ``config.json`` (timm: ``architecture``, ``num_classes``,
    ``label_names``, ``pretrained_cfg``; Hugging Face: ``model_type``, ``id2label`` ...). For
    ``timm:NAME`` without a folder it holds ``{"pretrained_cfg": ...}`` from timm's registry.
    """

    config: Mapping[str, Any] = field(default_factory=dict)
    config_source: str | None = None
    """How to name ``config`` in the report (``DIR/config.json``, ``timm's registry entry ...``)."""
    preprocessor: Mapping[str, Any] | None = None
    """A Hugging Face ``preprocessor_config.json``, when the folder has one."""
    preprocessor_source: str | None = None


PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "interpolation")


@dataclass(frozen=True)
class ModelMetadata:
    """Class names and preprocessing a model's metadata gives, each with its source.

    Every field is optional: ``None`` means the metadata says nothing about it (the config's
    value or default stays).
    """

    class_names: list[str] | None = None
    class_names_source: str | None = None
    class_descriptions: list[str] | None = None
    """Human-readable names where ``class_names`` are ids (timm ``label_descriptions``, e.g.
    WordNet synsets -> "tench, Tinca tinca")."""
    resize: Sourced[int] | None = None
    """Shorter side the image is resized to before the centre crop."""
    crop: Sourced[int] | None = None
    mean: Sourced[list[float]] | None = None
    std: Sourced[list[float]] | None = None
    interpolation: Sourced[str] | None = None
    """``bilinear``, ``bicubic`` ... (reportgen's resize is bilinear; this records what the
    model was trained with)."""
    notes: tuple[str, ...] = ()
    """Where reportgen's preprocessing can only approximate the metadata's (warping resizes,
    non-square inputs ...), in words."""

    def preprocess_values(self) -> dict[str, Any]:
        """``preprocess.*`` values the metadata gives (key -> value), for the pipeline to apply
        where the config does not set them."""
        out: dict[str, Any] = {}
        for key in PREPROCESS_KEYS:
            item = getattr(self, key)
            if item is not None:
                out[key] = item.value
        return out

    def preprocess_sources(self) -> dict[str, str]:
        """``preprocess.*`` key -> where its value came from."""
        return {k: getattr(self, k).source for k in PREPROCESS_KEYS if getattr(self, k)}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for summary.json."""
        return {
            "class_names_source": self.class_names_source,
            "num_class_names": None if self.class_names is None else len(self.class_names),
            "preprocess": self.preprocess_values(),
            "preprocess_sources": self.preprocess_sources(),
            "notes": list(self.notes),
        }


@dataclass
class LoadedModel:
    module: nn.Module
    arch: str
    kind: CheckpointKind
    sha256: str | None
    source: str | None
    num_classes: int
    in_channels: int
    family: Family = "torchvision"
    hub: HubFiles | None = None
    """The metadata files a timm/Hugging Face model came with (None for other families)."""
    metadata: ModelMetadata = field(default_factory=ModelMetadata)
    """Class names and preprocessing from the model's metadata, with their sources."""

    @property
    def supports_hooks(self) -> bool:
        """TorchScript modules and exported graphs do not run Python forward hooks on submodules."""
        return self.kind in ("state_dict", "pickled_module")

    @property
    def supports_gradients(self) -> bool:
        """Input gradients: every kind loaded here is differentiable (TorchScript and exported
        programs included); a future inference-only kind would say no here."""
        return True

    def layer(self, name: str) -> nn.Module:
        return find_layer(self.module, name)

    def layer_names(self) -> list[str]:
        return [n for n, _ in self.module.named_modules() if n]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    raise LayerError(
        f"layer '{name}' is not in the model{did_you_mean(name, names)}; "
        "`reportgen list-layers --model ARCH` prints every layer name"
    )
