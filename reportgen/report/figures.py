"""Figure helpers: matplotlib's object API (no global pyplot state) and NumPy mosaics.

Plots are rasterised with Agg straight to pixels, so no encoder metadata (software, dates) ever
reaches the report; the renderer encodes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from reportgen.report.section import Picture

DPI = 100
matplotlib.rcParams.update(
    {
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.titlesize": 10,
        "svg.hashsalt": "reportgen",
        "path.simplify": True,
    }
)


def new_figure(width_in: float, height_in: float) -> MplFigure:
    fig = MplFigure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_picture(fig: MplFigure, dpi: int = 110) -> Picture:
    fig.set_dpi(dpi)
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Picture(np.ascontiguousarray(rgba[..., :3]), kind="line")


def normalise01(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (a constant array becomes 0.5)."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12:
        return np.full_like(a, 0.5)
    return (a - lo) / (hi - lo)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling, so that small kernels stay crisp."""
    if factor <= 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def mosaic(
    tiles: Sequence[np.ndarray],
    columns: int,
    pad: int = 2,
    background: int = 255,
) -> np.ndarray:
    """Tiles (H×W or H×W×3 uint8, same size) in a grid with ``pad`` pixels between them."""
    if not tiles:
        raise ValueError("mosaic needs at least one tile")
    first = tiles[0]
    h, w = first.shape[:2]
    channels = 3 if any(t.ndim == 3 for t in tiles) else 1
    rows = (len(tiles) + columns - 1) // columns
    cols = min(columns, len(tiles))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, channels), background, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        tile = t if t.ndim == 3 else t[..., None]
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = (
            tile if tile.shape[2] == channels else np.repeat(tile, channels, 2)
        )
    return out if channels == 3 else out[..., 0]


def to_uint8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colormap(values01: np.ndarray, name: str = "viridis") -> np.ndarray:
    """[0,1] floats -> H×W×3 uint8 through a matplotlib colormap."""
    cmap = matplotlib.colormaps[name]
    return (cmap(np.clip(values01, 0, 1))[..., :3] * 255 + 0.5).astype(np.uint8)


def class_colors(n: int) -> list[tuple[float, float, float]]:
    """Distinct colours for up to 20 classes, then a cyclic map."""
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [tuple(cmap(i)[:3]) for i in range(n)]  # type: ignore[misc]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [tuple(cmap(i)[:3]) for i in range(n)]  # type: ignore[misc]
    cmap = matplotlib.colormaps["hsv"]
    return [tuple(cmap(i / n)[:3]) for i in range(n)]  # type: ignore[misc]
