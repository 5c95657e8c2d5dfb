"""What an analysis hands to the renderer: plain data, no torch, no matplotlib.

Images keep their pixels (uint8 arrays) rather than encoded bytes, so that the renderer can pick
the encoding (PNG for line art, JPEG for photographs) and shrink them to meet the size budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True, eq=False)
class Picture:
    """An image to embed. ``pixels``: H×W (gray) or H×W×3/4 uint8."""

    pixels: np.ndarray
    kind: Literal["line", "photo"] = "line"
    """``line``: plots, mosaics, heat-maps (lossless PNG). ``photo``: photographs (JPEG)."""

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim not in (2, 3):
            raise ValueError(
                f"Picture needs H×W[×C] uint8 pixels, got {self.pixels.dtype} {self.pixels.shape}"
            )

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, eq=False)
class Figure:
    picture: Picture
    caption: str
    alt: str
    wide: bool = False
    """Let the figure use the full page width."""


@dataclass(frozen=True, eq=False)
class Thumb:
    """A small image inside a table cell, with an optional line of text under it."""

    picture: Picture
    label: str = ""
    alt: str = ""


@dataclass(frozen=True, eq=False)
class Link:
    """A relative link to a file beside the report (``reportgen history``'s archived reports).

    ``href`` is a relative path (no scheme, not absolute), percent-encoded here; the page's
    Content-Security-Policy leaves navigation to local files alone and loads nothing."""

    text: str
    href: str

    def __post_init__(self) -> None:
        if ":" in self.href.split("/")[0] or self.href.startswith(("/", "\\")):
            raise ValueError(f"Link needs a relative path, got {self.href!r}")

    @property
    def quoted(self) -> str:
        from urllib.parse import quote

        return quote(self.href, safe="/")


Cell = str | int | float | None | Thumb | Link


@dataclass(frozen=True, eq=False)
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True, eq=False)
class Text:
    text: str
    kind: Literal["paragraph", "note", "warning", "error"] = "paragraph"


Block = Figure | Table | Text


@dataclass(eq=False)
class Section:
    name: str
    title: str
    how_to_read: str = ""
    status: Status = "ok"
    reason: str | None = None
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


def format_number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e6):
        return str(int(value))
    return (
        f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    )
