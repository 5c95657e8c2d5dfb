"""Exact k-nearest neighbours with chunked matrix products and top-k on the device.

Memory is O(chunk × N), never N×N, so 50k × 2048 features fit on a GPU or in RAM.

Distances between points with NaN or Inf coordinates are meaningless (``topk`` orders NaNs
arbitrarily), so :func:`knn` refuses them with :class:`DegenerateInput` instead of returning
silently wrong neighbours; :func:`point_set_problem` says in words what is wrong with a point set
before any native code (t-SNE, PCA) sees it.
"""

from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["euclidean", "cosine"]

# Points whose spread around their mean is below this fraction of their largest coordinate are
# equal up to float rounding (float32 carries ~7 significant digits; the same image run in two
# batch positions differs by a few ulps): their distances carry no information.
EQUAL_RTOL = 1e-6


class DegenerateInput(ValueError):
    """A point set on which distances mean nothing (non-finite values, all points equal)."""


def point_set_problem(x: torch.Tensor, *, min_points: int = 2, what: str = "points") -> str | None:
    """Why distances between the rows of ``x`` carry no information, or None when they do.

    In order: fewer than ``min_points`` rows; rows with NaN or Inf; every row equal (exactly, or
    up to float rounding: largest difference from the first row at most :data:`EQUAL_RTOL` of the largest
    absolute value). ``what`` names the rows in the message (e.g. ``images``).
    """
    n = int(x.shape[0])
    if n < min_points:
        return f"needs at least {min_points} {what}, got {n}"
    finite = torch.isfinite(x.reshape(n, -1)).all(dim=1)
    bad = n - int(finite.sum())
    if bad:
        return f"{bad} of {n} {what} have non-finite values (NaN or Inf)"
    xd = x.reshape(n, -1).double()
    spread = float((xd - xd[:1]).abs().max())  # against one row: exactly equal rows give 0
    scale = float(xd.abs().max())
    if spread <= EQUAL_RTOL * scale or spread == 0.0:
        how = "exactly" if spread == 0.0 else "up to float rounding"
        return f"all {n} {what} are equal ({how}), so distances between them carry no information"
    return None


def _require_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        rows = int((~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)).sum())
        raise DegenerateInput(
            f"k-NN: {rows} of {x.shape[0]} {name} have non-finite values (NaN or Inf), so their "
            "neighbours would be arbitrary"
        )


def _prepare(x: torch.Tensor, metric: Metric) -> torch.Tensor:
    x = x.float()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    return x


def pairwise_distances(
    a: torch.Tensor, b: torch.Tensor, metric: Metric = "euclidean"
) -> torch.Tensor:
    """Distances between rows of ``a`` and rows of ``b`` (euclidean, or 1 - cosine similarity)."""
    a, b = _prepare(a, metric), _prepare(b, metric)
    if metric == "cosine":
        return (1.0 - a @ b.T).clamp_(min=0.0)
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_(min=0.0).sqrt_()


def knn(
    queries: torch.Tensor,
    base: torch.Tensor,
    k: int,
    *,
    metric: Metric = "euclidean",
    exclude: torch.Tensor | None = None,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each Q×k, nearest first.

    ``exclude``: for each query, one base index to leave out (itself, for leave-one-out).
    """
    k = min(k, base.shape[0] - (1 if exclude is not None else 0))
    if k < 1:
        raise ValueError("k-NN needs at least two points")
    _require_finite(base, "points")
    if queries is not base:
        _require_finite(queries, "queries")
    base_p = _prepare(base, metric)
    base_sq = (base_p * base_p).sum(1) if metric == "euclidean" else None
    out_d, out_i = [], []
    for start in range(0, queries.shape[0], chunk):
        q = _prepare(queries[start : start + chunk].to(base.device), metric)
        if metric == "cosine":
            d = 1.0 - q @ base_p.T
        else:
            assert base_sq is not None
            d = (q * q).sum(1, keepdim=True) + base_sq[None, :] - 2.0 * (q @ base_p.T)
        if exclude is not None:
            rows = torch.arange(d.shape[0], device=d.device)
            d[rows, exclude[start : start + chunk].to(d.device)] = float("inf")
        vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        vals = vals.clamp_(min=0.0)
        out_d.append(vals.sqrt_() if metric == "euclidean" else vals)
        out_i.append(idx)
    if not out_d:  # no query: empty results, not an error
        empty = torch.empty(0, k, device=base.device)
        return empty, empty.long()
    return torch.cat(out_d), torch.cat(out_i)


def leave_one_out_agreement(
    x: torch.Tensor, labels: torch.Tensor, k: int, metric: Metric = "euclidean", chunk: int = 1024
) -> float | None:
    """Mean fraction of each point's k nearest other points that share its label.

    Only labelled points (label >= 0) count, as points and as neighbours.
    """
    keep = (labels >= 0).nonzero().flatten()
    if keep.numel() < 2:
        return None
    xs = x[keep.to(x.device)]
    ys = labels[keep].to(x.device)
    own = torch.arange(xs.shape[0], device=x.device)
    _, idx = knn(xs, xs, k, metric=metric, exclude=own, chunk=chunk)
    return float((ys[idx] == ys[:, None]).float().mean())


def leave_one_out_jaccard(
    x: torch.Tensor, sets: torch.Tensor, k: int, metric: Metric = "euclidean", chunk: int = 1024
) -> float | None:
    """Mean Jaccard similarity of each point's label set with those of its k nearest other
    points (multi-label agreement: 1 = the same labels). ``sets``: N×K, 1/0 per label, -1
    across an unlabelled row; only labelled points count, as points and as neighbours. Two
    empty sets are the same labels (1)."""
    keep = (sets >= 0).all(dim=1).nonzero().flatten()
    if keep.numel() < 2:
        return None
    xs = x[keep.to(x.device)]
    ys = (sets[keep] > 0).to(x.device)
    own = torch.arange(xs.shape[0], device=x.device)
    _, idx = knn(xs, xs, k, metric=metric, exclude=own, chunk=chunk)
    return float(jaccard(ys[:, None, :], ys[idx]).mean())


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a ∩ b| / |a ∪ b| of boolean label sets along the last axis (1 where both are empty)."""
    inter = (a & b).sum(dim=-1).float()
    union = (a | b).sum(dim=-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
