"""The query images as one batch of model inputs, shared by the per-image analyses.

Occlusion and saliency (and any other analysis that explains single images) read the same query
images and explain the same target classes. Loading them through :func:`query_batch` reads and
preprocesses them once per report, and :func:`record_query_arrays` writes the auditors' arrays
``image_ids``, ``inputs`` and ``targets`` identically whichever analysis runs first (or alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reportgen.analyses.base import AnalysisContext

SHARED_KEY = "queries.batch"


@dataclass(frozen=True)
class QueryBatch:
    positions: list[int]
    """Positions among the readable images (``ctx.queries``)."""
    image_ids: list[str]
    """Paths relative to the data root."""
    inputs: torch.Tensor
    """Q×C×H×W preprocessed model inputs, on the device: exactly what the model is fed."""
    targets: torch.Tensor
    """Q class indices explained (true label when known, else the prediction), on the device."""

    def __len__(self) -> int:
        return len(self.positions)


def query_batch(ctx: AnalysisContext) -> QueryBatch:
    """The query images and their targets, loaded once per context and cached in ``ctx.shared``."""
    cached = ctx.shared.get(SHARED_KEY)
    if isinstance(cached, QueryBatch) and cached.positions == list(ctx.queries):
        return cached
    positions = list(ctx.queries)
    if positions:
        inputs = ctx.load_inputs(positions).float()
        targets = ctx.targets(positions).to(ctx.device)
    else:
        inputs = torch.empty(0, device=ctx.device)
        targets = torch.empty(0, dtype=torch.long, device=ctx.device)
    batch = QueryBatch(positions, [ctx.relpath(p) for p in positions], inputs, targets)
    ctx.shared[SHARED_KEY] = batch
    return batch


def record_query_arrays(ctx: AnalysisContext, batch: QueryBatch) -> None:
    """Put ``image_ids``, ``inputs`` and ``targets`` into ``ctx.arrays`` (same bytes every time)."""
    ctx.arrays["image_ids"] = np.array(batch.image_ids, dtype=np.str_)
    ctx.arrays["inputs"] = batch.inputs.detach().float().cpu().numpy()
    ctx.arrays["targets"] = batch.targets.detach().cpu().numpy().astype(np.int64)
