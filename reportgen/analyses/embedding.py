"""PCA and t-SNE maps of the penultimate features, and the t-SNE image map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA

from reportgen import methods
from reportgen.analyses.common import TSNE_MAP
from reportgen.contract import Analysis, Metric, Needs, Result, SkipSection
from reportgen.methods.native_tsne import NativeCrash, fit_isolated
from reportgen.params import AnalysisParams, at_least, between, positive, rule
from reportgen.report.figures import class_colors, figure_to_picture, mosaic, new_figure
from reportgen.report.section import Figure, Picture, Table
from reportgen.runtime.lazy import torch

if TYPE_CHECKING:
    from reportgen.contract import AnalysisContext

HOW_TO_READ = (
    "Both maps place every image by its penultimate feature vector. PCA is a linear projection "
    "onto the two directions of largest variance; t-SNE is non-linear and keeps local "
    "neighbourhoods (distances between far-apart clusters mean little). Tight, separated clusters "
    "of one colour mean the network separates those classes; mixed regions show classes it "
    "confuses. The image map puts each image at its t-SNE position, snapped to a grid, so you can "
    "see what the clusters contain. Trustworthiness (0–1) measures how well the map keeps each "
    "point's nearest neighbours; above 0.9 is good."
)

TSNEBackend = Literal["auto", "sklearn", "opentsne", "torch"]


@dataclass(frozen=True)
class EmbeddingParams(AnalysisParams):
    perplexity: float = field(default=30.0, metadata=rule(positive()))
    pca_dims: int = field(default=50, metadata=rule(at_least(2)))
    """t-SNE runs on the first ``pca_dims`` principal components."""
    backend: TSNEBackend = "auto"
    """``auto``: on CUDA, reportgen's exact-gradient torch t-SNE up to ``torch_max_points`` points
    (seconds at 50k on one GPU); elsewhere scikit-learn's Barnes-Hut below ``opentsne_from``
    points and openTSNE's FFT above (O(N), fed by reportgen's exact k-NN)."""
    opentsne_from: int = field(default=2000, metadata=rule(at_least(0)))
    torch_max_points: int = field(default=100_000, metadata=rule(at_least(0)))
    grid_size: int = field(default=0, metadata=rule(between(0, 100)))
    """Image map cells per side; 0 = about sqrt(N), at most 32."""
    tile_size: int = field(default=32, metadata=rule(between(8, 128)))
    trustworthiness_k: int = field(default=5, metadata=rule(at_least(1)))
    trustworthiness_max_points: int = field(
        default=5000, metadata=rule(at_least(0, "must be 0 (all points) or more"))
    )
    """Trustworthiness is O(N²) work (chunked: O(N) memory): on the CPU it is computed on a seeded
    sample of at most this many points (0 = all); on CUDA always on all points."""
    color_by: str = "auto"
    """Multi-label models: the label whose presence colours the maps (``auto``: the most frequent
    label; the labels' names or indices)."""


def pca_project(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
    dims = min(dims, x.shape[0], x.shape[1])
    solver = "full" if x.shape[1] <= 512 or x.shape[0] <= 1000 else "randomized"
    return PCA(n_components=dims, svd_solver=solver, random_state=seed).fit_transform(
        x.astype(np.float64)
    )


def tsne_backend(n: int, p: EmbeddingParams, device: torch.device | None = None) -> str:
    if p.backend != "auto":
        return p.backend
    if device is not None and device.type == "cuda" and n <= p.torch_max_points:
        return "torch"
    return "opentsne" if n >= p.opentsne_from else "sklearn"


BACKEND_NAMES = {
    "sklearn": "scikit-learn (Barnes-Hut)",
    "opentsne": "openTSNE (FFT)",
    "torch": "reportgen torch (exact gradient)",
}


def run_tsne(
    x: np.ndarray, p: EmbeddingParams, seed: int, device: torch.device | None = None
) -> tuple[np.ndarray, str]:
    """2-D t-SNE of ``x`` (already PCA-reduced), seeded, PCA-initialised.

    Raises :class:`SkipSection` with the reason, before any native code runs, when ``x`` is
    degenerate (too few points, NaN/Inf, all points equal), since scikit-learn and openTSNE
    segfault on such input; and when a backend returns a map that is not finite. ``x`` is brought
    to unit RMS first (:func:`reportgen.methods.tsne.scale_for_tsne`), so no feature scale under- or
    overflows in float32.
    """
    problem = methods.tsne.tsne_input_problem(x)
    if problem:
        raise SkipSection(f"t-SNE: {problem}")
    x = methods.tsne.scale_for_tsne(x).astype(np.float32)
    problem = methods.tsne.tsne_input_problem(
        x
    )  # all equal once in float32 (a spread below its resolution)
    if problem:
        raise SkipSection(f"t-SNE: {problem}")
    emb, name = _run_tsne_backend(x, p, seed, device)
    if not np.isfinite(emb).all():
        raise SkipSection(f"t-SNE ({name}) gave positions that are not finite")
    return emb, name


def _run_tsne_backend(
    x: np.ndarray, p: EmbeddingParams, seed: int, device: torch.device | None
) -> tuple[np.ndarray, str]:
    n = x.shape[0]
    perplexity = float(min(p.perplexity, max(1.0, (n - 1) / 3.0)))
    backend = tsne_backend(n, p, device)
    if backend == "torch":
        from reportgen.methods.tsne import torch_tsne

        emb_t = torch_tsne(torch.from_numpy(x).to(device or "cpu"), perplexity=perplexity)
        return emb_t.double().cpu().numpy(), BACKEND_NAMES[backend]
    # Native code runs in a child process: a crash costs this section, not the report.
    try:
        if backend == "opentsne":
            from reportgen.methods.knn import knn

            # Exact neighbours from chunked matrix products (on the device): faster than
            # openTSNE's approximate index at these sizes, and no approximation in the affinities.
            xt = torch.from_numpy(x).to(device or "cpu")
            k = int(min(n - 1, 3 * perplexity))
            dist, idx = knn(xt, xt, k, exclude=torch.arange(n, device=xt.device))
            emb = fit_isolated(
                x,
                "opentsne",
                perplexity,
                seed,
                idx.cpu().numpy(),
                dist.double().cpu().numpy(),
            )
        else:
            emb = fit_isolated(x, "sklearn", perplexity, seed)
    except NativeCrash as exc:
        raise SkipSection(f"{exc}; the rest of the report is complete") from None
    return emb, BACKEND_NAMES[backend]


def sampled_trustworthiness(
    high: np.ndarray | torch.Tensor,
    low: np.ndarray,
    k: int,
    max_points: int,
    seed: int,
    device: torch.device | None = None,
) -> float:
    """Trustworthiness of ``low`` (the map) for ``high``; chunked torch, equal to scikit-learn's.

    On CUDA on all points; elsewhere on a seeded sample of at most ``max_points`` (0 = all).
    """
    from reportgen.methods.tsne import trustworthiness

    n = high.shape[0]
    k = min(k, max(1, (n - 1) // 2 - 1))
    on_cuda = device is not None and device.type == "cuda"
    high_t = torch.as_tensor(high).to(device or "cpu")
    low_t = torch.as_tensor(low).to(high_t.device)
    if not on_cuda and 0 < max_points < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        sel = torch.from_numpy(idx).to(high_t.device)
        high_t, low_t = high_t[sel], low_t[sel]
    return trustworthiness(high_t, low_t, k)


def grid_assignment(points: np.ndarray, grid: int, seed: int) -> list[tuple[int, int, int]]:
    """Snap 2-D points to a grid×grid lattice without overlaps: (point, row, col) triples.

    An optimal assignment (Hungarian algorithm) minimises the total squared distance between each
    point's normalised position and its cell, so the layout keeps the map's structure. With more
    points than cells, a seeded sample of at most two per cell competes for the cells.
    """
    n = points.shape[0]
    cells = grid * grid
    candidates = np.arange(n)
    if n > 2 * cells:
        candidates = np.sort(np.random.default_rng(seed).choice(n, 2 * cells, replace=False))
    pts = points[candidates]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    norm = (pts - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    centres = (
        np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij"), -1).reshape(-1, 2)
        + 0.5
    ) / grid
    # Rows of the grid run top to bottom: flip y so that the image map matches the scatter plot.
    xy = np.stack([1.0 - norm[:, 1], norm[:, 0]], axis=1)
    cost = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return [
        (int(candidates[r]), int(c // grid), int(c % grid)) for r, c in zip(rows, cols, strict=True)
    ]


def scatter_figure(
    pca2: np.ndarray, tsne2: np.ndarray, colour_idx: np.ndarray, names: list[str], legend_title: str
) -> Picture:
    fig = new_figure(10.0, 4.8)
    axes = fig.subplots(1, 2)
    present = sorted(set(colour_idx.tolist()))
    colours = class_colors(max(len(present), 1))
    size = float(np.clip(3000 / max(len(colour_idx), 1), 2, 30))
    for ax, pts, title in ((axes[0], pca2, "PCA"), (axes[1], tsne2, "t-SNE")):
        for ci, cls in enumerate(present):
            m = colour_idx == cls
            ax.scatter(
                pts[m, 0],
                pts[m, 1],
                s=size,
                color=colours[ci],
                label=names[ci],
                linewidths=0,
                alpha=0.8,
            )
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(present) <= 30:
        fig.legend(
            *axes[1].get_legend_handles_labels(),
            loc="outside right center",
            title=legend_title,
            markerscale=max(1.0, 6 / np.sqrt(size)),
            fontsize=8,
            frameon=False,
        )
    return figure_to_picture(fig)


class EmbeddingAnalysis(Analysis[EmbeddingParams]):
    name = "embedding"
    title = "Embeddings: PCA and t-SNE of the penultimate features"
    Params = EmbeddingParams
    needs = Needs(features=True)
    metrics = (
        Metric("tsne_trustworthiness", "t-SNE trustworthiness", headline=True),
        Metric("tsne_backend", "t-SNE implementation", kind="text"),
    )
    order = 30

    def run(self, ctx: AnalysisContext, p: EmbeddingParams) -> Result:
        section = self.section(HOW_TO_READ)
        res = ctx.pass_result
        assert res.features is not None
        n = len(res)
        if n < 5:
            raise SkipSection(f"needs at least 5 readable images, got {n}")
        # Degenerate features (all equal: 12 copies of one image, an all-zero model, an infinite
        # preprocess.std; NaN/Inf from broken weights) make PCA meaningless and crash native t-SNE
        # code: skip with the reason before any of it runs.
        problem = methods.tsne.tsne_input_problem(res.features, "images")
        if problem:
            raise SkipSection(f"the penultimate features ({res.feature_layer}): {problem}")
        seed = ctx.seed
        feats = res.features.float().cpu().numpy().astype(np.float64)
        reduced = pca_project(feats, p.pca_dims, seed)
        pca2 = reduced[:, :2]
        tsne2, backend = run_tsne(reduced.astype(np.float32), p, seed, ctx.device)
        trust = sampled_trustworthiness(
            res.features, tsne2, p.trustworthiness_k, p.trustworthiness_max_points, seed, ctx.device
        )
        arrays = {"tsne": tsne2.astype(np.float32)}
        ctx.share_array(TSNE_MAP, arrays["tsne"])
        metrics = {"tsne_trustworthiness": trust, "tsne_backend": backend}

        colour_by, names, legend, coloured = self._colours(ctx, p)
        section.add(
            Figure(
                scatter_figure(pca2, tsne2, colour_by, names, legend),
                caption=(
                    f"{n} images by their {res.feature_layer} features ({feats.shape[1]} dimensions): "
                    f"PCA (left) and t-SNE (right, {backend}, perplexity "
                    f"{min(p.perplexity, max(1.0, (n - 1) / 3.0)):g}), coloured by {coloured}."
                ),
                alt="PCA and t-SNE scatter plots coloured by class",
                wide=True,
            )
        )
        grid = p.grid_size or int(min(32, max(2, np.ceil(np.sqrt(n)))))
        placed = grid_assignment(tsne2, grid, seed)
        tiles = self._tiles(ctx, [i for i, _, _ in placed], p.tile_size)
        blank = np.full((p.tile_size, p.tile_size, 3), 255, np.uint8)
        canvas = [blank] * (grid * grid)
        for (_, r, c), tile in zip(placed, tiles, strict=True):
            canvas[r * grid + c] = tile
        section.add(
            Figure(
                Picture(mosaic(canvas, columns=grid, pad=1), kind="photo"),
                caption=(
                    f"t-SNE image map: {len(placed)} of {n} images at their t-SNE positions, "
                    f"snapped to a {grid}×{grid} grid without overlaps."
                ),
                alt="Images arranged on a grid by their t-SNE positions",
                wide=True,
            )
        )
        section.add(
            Table(
                caption="Embedding quality",
                columns=["map", "method", "points", f"trustworthiness (k={p.trustworthiness_k})"],
                rows=[
                    [
                        "PCA",
                        "scikit-learn PCA",
                        n,
                        sampled_trustworthiness(
                            res.features,
                            pca2,
                            p.trustworthiness_k,
                            p.trustworthiness_max_points,
                            seed,
                            ctx.device,
                        ),
                    ],
                    ["t-SNE", backend, n, trust],
                ],
            )
        )
        return Result(section, arrays=arrays, metrics=metrics)

    @staticmethod
    def _colours(
        ctx: AnalysisContext, p: EmbeddingParams
    ) -> tuple[np.ndarray, list[str], str, str]:
        """(colour index per image, the names of the colours present, legend title, what the
        caption says the colours are): the label (or predicted class); for a multi-label model
        whether each image has one label (``color_by``), or is predicted to have it."""
        res = ctx.pass_result
        labelled = ctx.folder.labelled
        if res.head.single_label:
            colour_by = res.labels.numpy() if labelled else res.predictions.cpu().numpy()
            present = sorted(set(colour_by.tolist()))
            names = [ctx.class_name(c) for c in present]
            what = "label" if labelled else "predicted class"
            return colour_by, names, "class" if labelled else "predicted", what
        has = (
            (res.label_sets > 0).numpy()
            if labelled and res.label_sets is not None
            else res.predicted_sets.cpu().numpy()
        )
        label, note = _colour_label(ctx, p.color_by, has)
        name = ctx.class_name(label)
        colour_by = has[:, label].astype(np.int64)
        verb = "has" if labelled else "predicted"
        names = [f"not {name}", name] if colour_by.min() == 0 else [name]
        if colour_by.max() == 0:
            names = [f"not {name}"]
        what = f"whether the image {verb} label {name!r}{note}"
        return colour_by, names, f"{verb} {name}", what

    @staticmethod
    def _tiles(ctx: AnalysisContext, positions: list[int], size: int) -> list[np.ndarray]:
        pix = ctx.pass_result.pixels
        if pix.shape[-1] >= size:
            small = pix[positions].float()
            if pix.shape[-1] != size:
                small = torch.nn.functional.interpolate(small, size=(size, size), mode="area")
            arr = small.round().clamp(0, 255).to(torch.uint8).cpu()
            if arr.shape[1] == 1:
                arr = arr.expand(-1, 3, -1, -1)
            return [a.permute(1, 2, 0).numpy() for a in arr]
        imgs = ctx.display_images(positions, size)
        return [_pad_square(im, size) for im in imgs]


def _colour_label(ctx: AnalysisContext, wanted: str, has: np.ndarray) -> tuple[int, str]:
    """The label ``embedding.color_by`` names (a name or an index), else the most frequent one;
    with a note when the name was not found."""
    counts = has.sum(axis=0)
    frequent = int(np.argmax(counts)) if counts.size else 0
    if wanted == "auto":
        return frequent, " (analyses.embedding.color_by: the most frequent label)"
    names = [ctx.class_name(k) for k in range(has.shape[1])]
    if wanted in names:
        return names.index(wanted), ""
    if wanted.isdigit() and int(wanted) < has.shape[1]:
        return int(wanted), ""
    return frequent, (
        f"; analyses.embedding.color_by {wanted!r} is not one of the labels "
        f"({', '.join(names[:8])}), so the most frequent is used"
    )


def _pad_square(img: np.ndarray, size: int) -> np.ndarray:
    out = np.full((size, size, 3), 255, np.uint8)
    h, w = img.shape[:2]
    y, x = (size - h) // 2, (size - w) // 2
    out[y : y + h, x : x + w] = img[:size, :size]
    return out
