"""One data interface under every source: a :class:`DataFolder` of :class:`ImageItem`.

Four sources give the same thing — items with an id (``relpath``), a label, a metadata row and a
way to read their bytes — so the dataset pass, queries, thumbnails, max-patch re-reads,
neighbours, the manifest hash and predictions.csv never ask where an image came from:

* an image folder (class sub-folders or flat): :func:`reportgen.loading.folders.scan_folder`;
* a manifest (``data.manifest``, CSV/TSV/JSONL/Parquet): :mod:`reportgen.loading.manifest`;
* WebDataset tar shards and Hugging Face datasets: :mod:`reportgen.loading.containers`.

:func:`source_kind` decides from the config alone (no scan), so the model's metadata can be
applied knowing whether class folders exist.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal

from reportgen.config import DataConfig
from reportgen.errors import ConfigError
from reportgen.loading.containers import (
    is_hf_folder,
    is_shard_pattern,
    read_member,
    scan_hf,
    scan_shards,
)
from reportgen.loading.folders import (
    DataFolder,
    DecodeFailure,
    ImageItem,
    _header_size,
    header_size_of,
    item_file,
    output_size,
    read_file,
    scan_folder,
)
from reportgen.loading.manifest import scan_manifest
from reportgen.report.text import display_name

SourceKind = Literal["folder", "manifest", "hf", "webdataset"]


def source_kind(cfg: DataConfig) -> SourceKind:
    """Which source the data config names (see the module docstring)."""
    if cfg.manifest:
        return "manifest"
    root = cfg.root or ""
    if root.startswith("hf:"):
        return "hf"
    path = Path(root).expanduser()
    if is_shard_pattern(root) and not path.is_dir():
        return "webdataset"
    if path.is_file() and path.suffix == ".parquet":
        return "hf"
    if is_hf_folder(path):
        return "hf"
    if path.is_dir():
        try:
            names = [n for n in os.listdir(path) if not n.startswith(".")]
        except OSError:
            return "folder"
        if names and all(n.endswith(".tar") for n in names):
            return "webdataset"
        if names and all(n.endswith(".parquet") for n in names):
            return "hf"
    return "folder"


def open_source(cfg: DataConfig) -> DataFolder:
    """Scan the configured source; input errors (one line, exit 2) before any work."""
    kind = source_kind(cfg)
    if kind == "manifest":
        return scan_manifest(cfg)
    if kind == "hf":
        return scan_hf(cfg)
    if kind == "webdataset":
        return scan_shards(cfg)
    return scan_folder(cfg)


def _contained(folder: DataFolder, item: ImageItem) -> None:
    """A manifest row's file must resolve inside the data root (a link out is not followed)."""
    if folder.contain is None:
        return
    real = Path(os.path.realpath(item_file(folder, item)))
    if real != folder.contain and not real.is_relative_to(folder.contain):
        raise DecodeFailure(
            f"leads to {display_name(str(real))}, outside the data folder: not followed"
        )


def read_item(folder: DataFolder, item: ImageItem, max_bytes: int | None = None) -> bytes:
    """An image's bytes from whatever source holds it. Raises :class:`DecodeFailure`."""
    if item.member is not None:
        return read_member(item, max_bytes)
    _contained(folder, item)
    return read_file(item_file(folder, item), max_bytes)


def item_header_size(folder: DataFolder, item: ImageItem) -> tuple[int, int] | None:
    """(height, width) of an image from its header (None when unreadable)."""
    if item.member is None:  # a file: its header only, never the whole image
        try:
            _contained(folder, item)
        except DecodeFailure:
            return None
        return _header_size(item_file(folder, item))
    try:
        data = read_item(folder, item)
    except DecodeFailure:
        return None
    return header_size_of(io.BytesIO(data))


def check_uniform_size(folder: DataFolder, resize: int | None, crop: int | None) -> None:
    """Raise ConfigError when the images would not come out of preprocessing at one size.

    Batching needs one size. With ``preprocess.crop`` set every image is cropped (or padded) to
    crop × crop, so nothing is read. Without it the sizes come from the image headers only (no
    decoding); the first image of another size ends the check with an error that names both
    images and the keys to set. Files whose header cannot be read are left to the dataset pass,
    which skips them with the reason.
    """
    if crop is not None:
        return
    first: tuple[ImageItem, tuple[int, int], tuple[int, int]] | None = None
    for it in folder.items:
        hw = item_header_size(folder, it)
        if hw is None:
            continue
        out = output_size(hw, resize, crop)
        if first is None:
            first = (it, hw, out)
        elif out != first[2]:
            f_item, f_hw, f_out = first

            def shown(item: ImageItem, hw: tuple[int, int], out: tuple[int, int]) -> str:
                text = f"{item.display} {hw[1]}×{hw[0]}"
                return text + (f" → {out[1]}×{out[0]}" if resize is not None else "")

            after = " after preprocess.resize" if resize is not None else ""
            raise ConfigError(
                f"preprocess.crop is null but the images differ in size{after} "
                f"({shown(f_item, f_hw, f_out)}, {shown(it, hw, out)}), so they cannot be "
                f"batched; set preprocess.crop (e.g. {min(f_out)}) so that every image comes out "
                "at one size (preprocess.resize sets the shorter side before the crop)"
            )
