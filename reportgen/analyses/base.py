"""The contract every analysis follows.

An analysis is one module with one :class:`Analysis` subclass: a name (config key and
``--analyses`` value), a title, a frozen ``Params`` dataclass, optional capability flags, an
optional :class:`Collector` that rides along the single dataset pass, and :meth:`Analysis.run`,
which turns tensors into a :class:`~reportgen.section.Section`. Register it in
``reportgen/analyses/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch

from reportgen.config import Config
from reportgen.errors import ConfigError
from reportgen.section import Section

if TYPE_CHECKING:
    from reportgen.dataset_pass import PassResult
    from reportgen.loading.images import DataFolder, ImageDataset, Preprocessor
    from reportgen.loading.models import LoadedModel

T = TypeVar("T")


@dataclass(frozen=True)
class AnalysisParams:
    """Base of every analysis' parameters. ``enabled: false`` leaves the analysis out."""

    enabled: bool = True

    def validate(self, path: str) -> None:
        """Raise ConfigError for values out of range; ``path`` is e.g. ``analyses.neighbors``."""

    @staticmethod
    def require(cond: bool, path: str, message: str) -> None:
        if not cond:
            raise ConfigError(f"{path}: {message}")


class Collector(Protocol):
    """Something an analysis gathers during the one dataset pass.

    ``layers``: module names whose outputs it needs. ``update`` receives, per batch, the dataset
    indices (positions among the readable images) and the layers' outputs, on the device.
    """

    layers: Sequence[str]

    def update(self, indices: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None: ...


class MergeableCollector(Collector, Protocol):
    """A collector that also works under ``torchrun`` (several processes share the pass).

    Each rank's collector sees only its shard, with ``indices`` local to that rank (0, 1, ...
    over its own readable images). Rank 0 then receives every rank's collector (its attributes
    pickled, tensors moved to rank 0's device) and calls ``merge`` on its own one:
    ``shards[r]`` is rank r's collector (``shards[0] is self``), ``positions[r][j]`` the global
    position of rank r's local position j. Afterwards ``self`` must hold exactly what one process
    would have collected: re-key stored positions through ``positions``, then combine (e.g. a
    running top-k: concatenate and top-k again, breaking ties by the lower global position so the
    result does not depend on the number of ranks). A collector without ``merge`` makes its
    analysis skip under torchrun.
    """

    def merge(self, shards: Sequence[Any], positions: Sequence[torch.Tensor]) -> None: ...


@dataclass
class SetupContext:
    """What is known before the dataset pass (for building collectors)."""

    config: Config
    model: LoadedModel
    folder: DataFolder
    device: torch.device


@dataclass
class AnalysisContext:
    """What an analysis gets after the dataset pass."""

    config: Config
    model: LoadedModel
    folder: DataFolder
    dataset: ImageDataset
    preprocessor: Preprocessor
    result: PassResult
    device: torch.device
    queries: list[int]
    """Query images, as positions among the readable images (the same for every analysis)."""
    collected: dict[str, Any]
    """Analysis name -> its collector, after the pass."""
    progress: Callable[..., Iterator[Any]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Raw arrays for arrays.npz (written only with output.save_arrays)."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Results analyses publish for each other (e.g. query targets), by documented key."""

    def params(self, name: str) -> Any:
        return self.config.analyses[name]

    def relpath(self, position: int) -> str:
        return self.folder.items[self.result.item_index[position]].relpath

    def label(self, position: int) -> int:
        return int(self.result.labels[position])

    def class_name(self, index: int) -> str:
        names = self.folder.class_names
        if 0 <= index < len(names):
            return names[index]
        return str(index) if index >= 0 else "—"

    def load_inputs(self, positions: Sequence[int]) -> torch.Tensor:
        """Re-read and preprocess these images (normalised model inputs, on the device)."""
        xs = [self.dataset.read(self.result.item_index[p])[0] for p in positions]
        return torch.stack(xs).to(self.device)

    def display_images(self, positions: Sequence[int], size: int | None = None) -> list[np.ndarray]:
        """The images as the model saw them (after resize/crop), H×W×3 uint8, longer side ``size``."""
        from reportgen.loading.images import to_display

        out = []
        for p in positions:
            x, _ = self.dataset.read(self.result.item_index[p])
            img = self.preprocessor.denormalise(x).clamp(0, 1)
            if size is not None and max(img.shape[1:]) != size:
                h, w = img.shape[1:]
                scale = size / max(h, w)
                img = torch.nn.functional.interpolate(
                    img[None],
                    size=(max(1, round(h * scale)), max(1, round(w * scale))),
                    mode="bilinear",
                    align_corners=False,
                    antialias=scale < 1,
                )[0]
            out.append(to_display(img))
        return out

    def targets(self, positions: Sequence[int]) -> torch.Tensor:
        """The class each query is explained for: its true label when known, else the prediction."""
        labels = self.result.labels[list(positions)].to(self.result.predictions.device)
        preds = self.result.predictions[list(positions)]
        ok = (labels >= 0) & (labels < self.result.logits.shape[1])
        return torch.where(ok, labels, preds)

    def iterate(
        self,
        iterable: Iterable[T],
        desc: str,
        total: int | None = None,
        label: Callable[[T], str] | None = None,
    ) -> Iterator[T]:
        """Iterate with a progress bar on a terminal (``label`` names the current item)."""
        return self.progress(iterable, desc=desc, total=total, label=label)


class SkipSection(Exception):
    """Raised by an analysis that cannot run on this model/data; the message is the reason."""


class Analysis:
    name: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type[AnalysisParams]] = AnalysisParams
    requires_hooks: ClassVar[bool] = False
    """Needs Python forward hooks on submodules (not available on TorchScript / exported models)."""
    requires_features: ClassVar[bool] = False
    """Needs the penultimate features from the dataset pass."""
    requires_gradients: ClassVar[bool] = False
    """Needs backward passes through the model."""
    order: ClassVar[int] = 100

    def collector(self, setup: SetupContext, params: Any) -> Collector | None:
        return None

    def run(self, ctx: AnalysisContext, params: Any) -> Section:
        raise NotImplementedError

    def section(self, how_to_read: str = "") -> Section:
        return Section(name=self.name, title=self.title, how_to_read=how_to_read)
