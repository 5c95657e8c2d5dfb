"""Collectors: what an analysis gathers during the one dataset pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


MODEL_INPUT = "<model input>"
"""A name a collector may list among its ``layers`` to receive the batch of model inputs (the
preprocessed images, exactly what the model is fed) under that key; it needs no hook."""


class Collector(Protocol):
    """Something an analysis gathers during the one dataset pass.

    ``layers``: module names whose outputs it needs (and :data:`MODEL_INPUT` for the inputs).
    ``update`` receives, per batch, the dataset positions (among the readable images) and the
    layers' outputs, on the device.
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
