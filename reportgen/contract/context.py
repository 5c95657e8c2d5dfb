"""The contexts an analysis gets: before the pass (to build a collector) and after it.

A context holds what analyses need and nothing of the run's configuration: the model, the data
folder, the pass result, the query images, the device, the seed, the batch size and precision,
and a progress helper. Tests can build one from a small hand-made :class:`PassResult` without
running a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from reportgen.contract.analysis import SkipSection, UnitImage
from reportgen.contract.passes import PassResult
from reportgen.errors import DataError
from reportgen.heads import MULTICLASS, Head
from reportgen.loading.folders import DataFolder, DecodeFailure
from reportgen.loading.images import ImageDataset, Preprocessor, to_display
from reportgen.loading.models import extract_logits
from reportgen.loading.types import LoadedModel
from reportgen.methods.trust.maps import MapKey
from reportgen.methods.vit import TokenLayout

T = TypeVar("T")
Precision = Literal["fp32", "bf16"]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA when asked for; otherwise nothing changes."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _no_progress(iterable: Iterable[Any], **_kwargs: Any) -> Iterator[Any]:
    return iter(iterable)


@dataclass
class SetupContext:
    """What is known before the dataset pass (for building collectors)."""

    model: LoadedModel
    folder: DataFolder
    device: torch.device
    token_layout: TokenLayout | None = None
    """How a vision transformer's tokens map to its patch grid (None for a CNN)."""
    head: Head = MULTICLASS
    """What the model's outputs mean (a binary model's classes are 2 for its one output)."""


Row = tuple[int, int]
"""One explained row of the per-image sections: (image position, explained class or label)."""


@dataclass(frozen=True)
class QueryBatch:
    """The query images as one batch of model inputs, shared by the per-image analyses.

    One row per (image, explained class): a single-label model explains each query once; a
    multi-label model explains each query for up to ``data.max_labels_per_query`` of its labels,
    so an image can fill several consecutive rows."""

    positions: list[int]
    """Each row's image, as a position among the readable images (a query of ``ctx.queries``;
    repeated on consecutive rows for a multi-label query)."""
    image_ids: list[str]
    """Each row's image path relative to the data root."""
    inputs: torch.Tensor
    """Q×C×H×W preprocessed model inputs, on the device: exactly what the model is fed."""
    targets: torch.Tensor
    """Q class (or label) indices explained, on the device (see
    :meth:`AnalysisContext.query_rows`)."""

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def rows(self) -> list[Row]:
        """(position, explained class) of every row: the key of a row's maps."""
        return list(zip(self.positions, self.targets.cpu().tolist(), strict=True))

    @property
    def images(self) -> list[int]:
        """The distinct query images, in row order (for sections that show each image once)."""
        return list(dict.fromkeys(self.positions))

    def first_rows(self) -> list[int]:
        """The row where each distinct image first appears, in row order."""
        seen: dict[int, int] = {}
        for i, p in enumerate(self.positions):
            seen.setdefault(p, i)
        return list(seen.values())

    def arrays(self) -> dict[str, np.ndarray]:
        """``image_ids``, ``inputs`` and ``targets`` for arrays.npz (the same bytes every time)."""
        return {
            "image_ids": np.array(self.image_ids, dtype=np.str_),
            "inputs": self.inputs.detach().float().cpu().numpy(),
            "targets": self.targets.detach().cpu().numpy().astype(np.int64),
        }


@dataclass
class _QueryCache:
    batch: QueryBatch | None = None
    shas: dict[str, str] | None = None
    """Relative path -> the SHA-256 the dataset pass read (built on first use)."""
    changed: list[str] = field(default_factory=list)
    """Images whose bytes changed between the pass and a re-read (display paths)."""
    for_queries: list[int] | None = None
    """The query positions ``batch`` was read for."""


class ChangedFile(DataError):
    """An image re-read after the dataset pass is not the one the pass read."""


@dataclass
class _MapStore:
    """Attribution maps of the original model one analysis computed and another reuses."""

    entries: dict[MapKey, tuple[list[Row], torch.Tensor]] = field(default_factory=dict)
    promised: set[MapKey] = field(default_factory=set)
    """Keys analyses said they will share (:meth:`Analysis.shares`), for the cost plan."""


@dataclass
class AnalysisContext:
    """What an analysis gets after the dataset pass."""

    model: LoadedModel
    folder: DataFolder
    dataset: ImageDataset
    preprocessor: Preprocessor
    pass_result: PassResult
    device: torch.device
    queries: list[int]
    """Query images, as positions among the readable images (the same for every analysis)."""
    seed: int = 0
    batch_size: int = 64
    """Images per forward pass (the run's batch size)."""
    precision: Precision = "fp32"
    pixel_size: int = 32
    """Side of the downsampled images in ``pass_result.pixels``."""
    collector: Any = None
    """This analysis' own collector after the pass (None when it has none)."""
    token_layout: TokenLayout | None = None
    """How a vision transformer's tokens map to its patch grid (None for a CNN)."""
    labels_are_model_classes: bool = True
    """False when the class folders cannot be the model's outputs (more folders than outputs,
    or folders numbered by position without data.labels): label-vs-prediction checks are then
    meaningless, and the per-image sections explain the prediction."""
    max_labels_per_query: int = 3
    """Multi-label models: labels explained per query image (``data.max_labels_per_query``)."""
    max_query_rows: int | None = None
    """Multi-label models: explained rows in all (``data.queries`` as a count; None: a list)."""
    forward_batch: int = 16
    """Images per forward-only pass in the perturbation sections (measured: ``run.memory_format``)."""
    backward_batch: int = 8
    """Images per forward+backward pass in the gradient methods (measured)."""
    progress: Callable[..., Iterator[Any]] = _no_progress
    _queries_cache: _QueryCache = field(default_factory=_QueryCache, repr=False)
    _maps: _MapStore = field(default_factory=_MapStore, repr=False)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _unit_images: dict[str, dict[int, UnitImage]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ images and labels

    def relpath(self, position: int) -> str:
        """The image's path under the data root, as shown to a reader (undecodable bytes of a
        file name escaped as ``\\xNN``); ``image_id`` is the exact string."""
        return self.folder.items[self.pass_result.item_index[position]].display

    def image_id(self, position: int) -> str:
        """The image's exact path under the data root (its stable id in arrays.npz)."""
        return self.folder.items[self.pass_result.item_index[position]].relpath

    def label(self, position: int) -> int:
        return int(self.pass_result.labels[position])

    def class_name(self, index: int) -> str:
        names = self.folder.class_names
        if 0 <= index < len(names):
            return names[index]
        return str(index) if index >= 0 else "—"

    def read_checked(self, position: int) -> torch.Tensor:
        """Re-read one image, preprocessed, checking its bytes against the SHA-256 the dataset
        pass recorded: a file replaced during the run raises :class:`ChangedFile` naming it
        (its prediction, hash and neighbours are the old picture's)."""
        cache = self._queries_cache
        if cache.shas is None:
            cache.shas = {rel: sha for rel, _, sha in self.pass_result.manifest}
        shown = self.relpath(position)
        try:
            x, digest = self.dataset.read(self.pass_result.item_index[position])
        except DecodeFailure as exc:  # deleted or damaged since the pass
            if shown not in cache.changed:
                cache.changed.append(shown)
            raise ChangedFile(
                f"{shown}: no longer readable since the dataset pass ({exc}); it is left out "
                "— re-run the report"
            ) from None
        expected = cache.shas.get(self.image_id(position))
        if expected and digest != expected:
            if shown not in cache.changed:
                cache.changed.append(shown)
            raise ChangedFile(
                f"{shown}: changed since the dataset pass (its SHA-256 is not the one the "
                "pass recorded); it is left out — re-run the report so that every section "
                "sees the same image"
            )
        return x

    @property
    def changed_files(self) -> list[str]:
        """Images found changed on a re-read (left out where they were re-read)."""
        return list(self._queries_cache.changed)

    def load_inputs(self, positions: Sequence[int]) -> torch.Tensor:
        """Re-read and preprocess these images (normalised model inputs, on the device);
        raises :class:`ChangedFile` for a file replaced since the pass."""
        xs = [self.read_checked(p) for p in positions]
        return torch.stack(xs).to(self.device)

    def display_images(self, positions: Sequence[int], size: int | None = None) -> list[np.ndarray]:
        """The images as the model saw them (after resize/crop), H×W×3 uint8, longer side ``size``.

        A file changed or deleted since the pass is not shown: a plain gray tile stands in its
        place (the numbers beside it are the pass's), and the run's warnings name the file."""
        out = []
        for p in positions:
            try:
                x = self.read_checked(p)
            except ChangedFile:
                side = size or self.preprocessor.crop or self.preprocessor.resize or 32
                out.append(np.full((side, side, 3), 128, np.uint8))
                continue
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

    @property
    def head(self) -> Head:
        """What the model's outputs mean (:mod:`reportgen.heads`): every probability, prediction
        and explained score an analysis shows comes from it."""
        return self.pass_result.head

    def label_set(self, position: int) -> list[int]:
        """A multi-label image's labels (indices; [] when it has none or is unlabelled)."""
        sets = self.pass_result.label_sets
        if sets is None:
            return []
        return torch.nonzero(sets[position] > 0).flatten().tolist()

    def label_text(self, position: int) -> str:
        """The image's label as shown to a reader: a class name, a label set (``a | b``,
        ``none``), or ``unlabelled``."""
        res = self.pass_result
        if res.label_sets is not None:
            if not bool(res.labelled_rows[position]):
                return "unlabelled"
            names = [self.class_name(k) for k in self.label_set(position)]
            return " | ".join(names) if names else "none"
        label = self.label(position)
        return self.class_name(label) if label >= 0 else "unlabelled"

    @property
    def explained_words(self) -> str:
        """What the per-image maps explain, in words (for captions)."""
        return {
            "multiclass": "the explained class (the true label, or the prediction for "
            "unlabelled images)",
            "binary": "the positive class (a binary model's one logit, whatever the label: "
            "evidence for positive raises it, evidence against lowers it)",
            "multilabel": "the explained label (each query is explained for its true and "
            "predicted labels, the most probable first, named on every row)",
        }[self.head.task]

    def prediction_text(self, position: int) -> str:
        """The model's prediction for an image as shown to a reader: a class name, or the
        predicted label set (``a | b``, ``none``)."""
        res = self.pass_result
        if res.head.single_label:
            return self.class_name(int(res.predictions[position]))
        labels = res.predicted_sets[position].nonzero().flatten().tolist()
        return " | ".join(self.class_name(k) for k in labels) or "none"

    def targets(self, positions: Sequence[int]) -> torch.Tensor:
        """The class each query is explained for (single-label heads): its true label when
        known, else the prediction; a binary model's maps always explain the positive class
        (its one logit: red = evidence for positive, blue = against)."""
        res = self.pass_result
        if res.head.task == "binary":
            return torch.ones(len(positions), dtype=torch.long, device=res.logits.device)
        labels = res.labels[list(positions)].to(res.predictions.device)
        preds = res.predictions[list(positions)]
        if not self.labels_are_model_classes:
            return preds
        ok = (labels >= 0) & (labels < res.num_classes)
        return torch.where(ok, labels, preds)

    def query_rows(self) -> list[Row]:
        """(position, explained class) of every row the per-image sections explain.

        Single-label: one row per query (:meth:`targets`). Multi-label: per query its true and
        predicted labels, the most probable first, at most ``max_labels_per_query``
        (:meth:`PassResult.explained_labels`), so every panel names the label it explains; at
        most ``max_query_rows`` rows in all (``data.queries`` as a count), so a multi-label
        report costs what a multiclass one with the same ``data.queries`` does."""
        res = self.pass_result
        if res.head.single_label:
            targets = self.targets(self.queries).cpu().tolist() if self.queries else []
            return list(zip(self.queries, targets, strict=True))
        rows = [
            (p, k) for p in self.queries for k in res.explained_labels(p, self.max_labels_per_query)
        ]
        return rows if self.max_query_rows is None else rows[: self.max_query_rows]

    def query_batch(self) -> QueryBatch:
        """The query rows' images and targets, read once per run and shared by the analyses."""
        cache = self._queries_cache
        if cache.batch is not None and cache.for_queries == list(self.queries):
            return cache.batch
        # A query replaced since the pass is left out (and listed in the run's warnings).
        read: dict[int, torch.Tensor] = {}
        for p in dict.fromkeys(self.queries):
            try:
                read[p] = self.read_checked(p)
            except ChangedFile:
                continue
        if self.queries and not read:
            raise SkipSection(
                "every query image changed since the dataset pass ("
                + ", ".join(cache.changed[:3])
                + "); re-run the report"
            )
        rows = [(p, t) for p, t in self.query_rows() if p in read]
        positions = [p for p, _ in rows]
        if rows:
            inputs = torch.stack([read[p] for p in positions]).to(self.device).float()
            targets = torch.tensor([t for _, t in rows], dtype=torch.long, device=self.device)
        else:
            inputs = torch.empty(0, device=self.device)
            targets = torch.empty(0, dtype=torch.long, device=self.device)
        batch = QueryBatch(positions, [self.image_id(p) for p in positions], inputs, targets)
        cache.batch, cache.for_queries = batch, list(self.queries)
        return batch

    # ------------------------------------------------------------------ shared maps

    @property
    def autocasting(self) -> bool:
        """True when forward passes run under bf16 autocast (their maps differ from fp32 ones)."""
        return self.precision == "bf16" and self.device.type == "cuda"

    def share_maps(self, key: MapKey, rows: Sequence[Row], maps: torch.Tensor) -> None:
        """Offer Q×H×W maps of the original model on these query rows (position, explained
        class) to later analyses (the attribution checks judge the very maps the saliency and
        occlusion sections drew, without computing them again)."""
        self._maps.entries[key] = (list(rows), maps.detach())

    def promise_maps(self, keys: Iterable[MapKey]) -> None:
        """Record maps an analysis will share once it ran (the plan is made before any runs)."""
        self._maps.promised.update(keys)

    def will_share(self, key: MapKey) -> bool:
        """True when a map under ``key`` is shared already or promised by an analysis to come."""
        return key in self._maps.entries or key in self._maps.promised

    def shared_maps(self, key: MapKey, rows: Sequence[Row]) -> torch.Tensor | None:
        """The maps another analysis shared under ``key`` for these rows (position, explained
        class), or None when it did not compute all of them."""
        entry = self._maps.entries.get(key)
        if entry is None:
            return None
        index = {r: i for i, r in enumerate(entry[0])}
        if any(r not in index for r in rows):
            return None
        return entry[1][[index[r] for r in rows]]

    # ------------------------------------------------------------------ shared arrays

    def share_array(self, key: str, array: np.ndarray) -> None:
        """Offer a per-image array (one row per pass position, e.g. the embedding's t-SNE map)
        to later analyses, which draw on it instead of computing their own. No model pass
        depends on it, so the cost plan needs no promise: an analysis that finds none (the
        sharing one disabled, skipped or failed) falls back to its own and says so."""
        self._arrays[key] = array

    def shared_array(self, key: str) -> np.ndarray | None:
        """The array an earlier analysis shared under ``key``, or None."""
        return self._arrays.get(key)

    def share_unit_images(self, layer: str, images: dict[int, UnitImage]) -> None:
        """Offer images optimised for channels of ``layer`` to the sections that run later."""
        self._unit_images.setdefault(layer, {}).update(images)

    def unit_images(self, layer: str) -> dict[int, UnitImage]:
        """Channel -> the image optimised for it, of the channels of ``layer`` that an earlier
        section optimised (empty when none did)."""
        return dict(self._unit_images.get(layer, {}))

    # ------------------------------------------------------------------ the model

    def batch(self, value: int | str, backward: bool = False) -> int:
        """A section's ``batch_size``: ``auto`` is the measured one."""
        if value == "auto":
            return self.backward_batch if backward else self.forward_batch
        return int(value)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the query images as the model gets them."""
        x = self.query_batch().inputs
        return int(x.shape[2]), int(x.shape[3])

    @property
    def explained_rows(self) -> int:
        """Rows the per-image sections explain (queries × labels for a multi-label model), for
        the cost plan."""
        return len(self.query_rows())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of model inputs, at the run's precision (forward-only passes)."""
        with autocast(self.device, self.precision):
            return extract_logits(self.model.module(x))

    def iterate(
        self,
        iterable: Iterable[T],
        desc: str,
        total: int | None = None,
        label: Callable[[T], str] | None = None,
    ) -> Iterator[T]:
        """Iterate with a progress bar on a terminal (``label`` names the current item)."""
        return self.progress(iterable, desc=desc, total=total, label=label)
