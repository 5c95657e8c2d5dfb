"""Images inside larger files: WebDataset tar shards and Hugging Face datasets (Arrow, Parquet).

Nothing is extracted to disk. A scan records where each image lies (a tar member's byte offset
and size; a table's row), so that re-reading one image — a query, a max-activating patch's
source, a gallery thumbnail — opens that one member or row group, never the whole source.

**WebDataset** (``data.root: "shards/val-{000000..000031}.tar"`` or a folder of ``.tar`` files):
a sample is the members sharing a key (the member path up to the first dot of its file name): one
image (``.jpg .jpeg .png .webp .bmp .gif .tif .tiff``), and its label as ``.cls`` (an output
index or a class name) or ``.json`` (``label`` plus metadata keys). An image is named
``SHARD.tar:KEY``. Shards must be uncompressed tar (members are read in place); links and other
non-file members are listed and left out.

**Hugging Face** (``data.root: hf:PATH``, or a folder holding ``dataset_info.json`` /
``state.json`` / ``dataset_dict.json``, or ``.parquet`` files): a ``save_to_disk`` folder (Arrow
stream files, memory-mapped) or Parquet files written by ``datasets`` (``to_parquet``, the Hub's
``data/SPLIT-00000-of-00001.parquet``). The image column is the ``Image`` feature (a struct of
``bytes`` and ``path``), the label column the ``ClassLabel`` (its names are the class names);
other scalar columns are metadata. Only pyarrow is needed (the ``datasets`` package is not): the
format is Arrow plus JSON, and pyarrow is a tenth of ``datasets``'s install. An image is named
``FILE:ROW``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reportgen.config import DataConfig
from reportgen.errors import ConfigError, DataError, did_you_mean
from reportgen.loading.folders import (
    IMAGE_SUFFIXES,
    DataFolder,
    DecodeFailure,
    ImageItem,
    Member,
    _open_regular,
    _spread,
    read_labels,
)
from reportgen.loading.manifest import cell_text, import_pyarrow_parquet, resolve_labels
from reportgen.report.text import display_name

MAX_SIDECAR = 1 << 20
"""The largest ``.cls`` / ``.json`` member read at scan time."""
_IMAGE_EXTS = frozenset(s.lstrip(".") for s in IMAGE_SUFFIXES)
_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


# --------------------------------------------------------------------------- brace patterns


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` lists too.

    Numeric ranges keep the width of their first bound (zero padding), as WebDataset's do.
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo or hi - lo > 1_000_000:
            raise ConfigError(f"data.root: brace range {{{body}}} is empty or too long")
        width = len(rng.group(1))
        parts = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        parts = body.split(",")
    else:
        raise ConfigError(
            f"data.root: {{{body}}} is not a brace range like {{000000..000031}} or a list {{a,b}}"
        )
    return [out for part in parts for out in expand_braces(head + part + tail)]


def is_shard_pattern(root: str) -> bool:
    return root.endswith(".tar") or (".tar" in root and "{" in root)


def shard_files(root: str) -> tuple[list[Path], Path]:
    """The tar files ``data.root`` names (a pattern, one file, or a folder of them) and the
    folder they are named relative to."""
    expanded = Path(root).expanduser()
    if expanded.is_dir():
        files = sorted(
            p for p in expanded.iterdir() if p.suffix == ".tar" and not p.name.startswith(".")
        )
        return files, expanded
    names = expand_braces(str(expanded))
    files = [Path(n) for n in names]
    missing = [p for p in files if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            f"{display_name(str(missing[0]))}: shard not found{more} (data.root "
            f"{display_name(root)}); check the pattern's range"
        )
    return files, files[0].parent


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _read_at(f: Any, offset: int, size: int) -> bytes:
    f.seek(offset)
    data: bytes = f.read(size)
    return data


def scan_shards(cfg: DataConfig) -> DataFolder:
    """Every sample of the shards (see the module docstring)."""
    assert cfg.root is not None
    files, base = shard_files(cfg.root)
    if not files:
        raise DataError(f"{display_name(cfg.root)}: no .tar shards found")
    items: list[ImageItem] = []
    raw_labels: list[str] = []
    meta_rows: list[dict[str, str]] = []
    ignored: list[tuple[str, str]] = []
    lines: list[int] = []
    for shard in files:
        rel_shard = os.path.relpath(shard, base).replace(os.sep, "/")
        _scan_one(shard, rel_shard, items, raw_labels, meta_rows, ignored)
        lines.extend(range(len(lines) + 1, len(items) + 1))
    if not items:
        raise DataError(
            f"{display_name(cfg.root)}: the shards hold no image sample"
            + (f" ({ignored[0][0]}: {ignored[0][1]})" if ignored else "")
        )
    resolved = resolve_labels(
        raw_labels, read_labels(cfg.labels), ".cls/.json label", display_name(cfg.root), lines
    )
    columns: dict[str, None] = {}
    for row in meta_rows:
        columns.update(dict.fromkeys(row))
    metadata = {c: [row.get(c, "") for row in meta_rows] for c in columns}
    items = _labelled(items, resolved.indices, cfg.max_images)
    return DataFolder(
        base,
        items,
        resolved.class_names,
        any(it.label >= 0 for it in items),
        ignored,
        class_folders=list(resolved.class_names) if resolved.by_name else [],
        source="webdataset",
        source_file=display_name(cfg.root),
        metadata=metadata,
        label_note=None
        if resolved.note is None
        else resolved.note.replace("column '.cls/.json label'", "the samples' .cls/.json labels"),
    )


def _labelled(
    items: list[ImageItem], labels: Sequence[int], max_images: int | None
) -> list[ImageItem]:
    """The items with their resolved labels, spread down to ``max_images``."""
    out = [
        ImageItem(it.path, it.relpath, label, it.size, it.member, it.row)
        for it, label in zip(items, labels, strict=True)
    ]
    return _spread(out, max_images) if max_images is not None and len(out) > max_images else out


def _scan_one(
    shard: Path,
    rel_shard: str,
    items: list[ImageItem],
    raw_labels: list[str],
    meta_rows: list[dict[str, str]],
    ignored: list[tuple[str, str]],
) -> None:
    shown = display_name(rel_shard)
    try:
        fd = _open_regular(shard)
    except DecodeFailure as exc:
        ignored.append((shown, str(exc)))
        return
    with os.fdopen(fd, "rb") as f:
        magic = f.read(6)
        for prefix, kind in _COMPRESSED:
            if magic.startswith(prefix):
                raise DataError(
                    f"{display_name(str(shard))}: a {kind}-compressed shard; reportgen reads "
                    "members in place and needs uncompressed .tar shards (e.g. `gunzip` it)"
                )
        f.seek(0)
        samples: OrderedDict[str, dict[str, tarfile.TarInfo]] = OrderedDict()
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if not info.isreg():
                        if not info.isdir():
                            ignored.append(
                                (f"{shown}:{display_name(info.name)}", "not a regular file member")
                            )
                        continue
                    key, ext = _split_key(info.name)
                    if key.startswith("__") or not ext:
                        continue
                    samples.setdefault(key, {})[ext] = info
        except tarfile.TarError as exc:
            ignored.append((shown, f"damaged tar file ({exc}); samples after the damage left out"))
        for key, members in samples.items():
            exts = sorted(e for e in members if e.rpartition(".")[2] in _IMAGE_EXTS)
            name = f"{rel_shard}:{key}"
            if not exts:
                ignored.append((display_name(name), "no image member (.jpg, .png, .webp ...)"))
                continue
            for extra in exts[1:]:
                ignored.append((display_name(f"{name}.{extra}"), "a second image in the sample"))
            info = members[exts[0]]
            label, meta = _sidecars(f, members, name, ignored)
            member = Member("tar", info.offset_data, info.size)
            items.append(ImageItem(shard, name, -1, info.size, member, len(items)))
            raw_labels.append(label)
            meta_rows.append(meta)


def _sidecars(
    f: Any, members: dict[str, tarfile.TarInfo], name: str, ignored: list[tuple[str, str]]
) -> tuple[str, dict[str, str]]:
    """(label text, metadata) from a sample's ``.cls`` and ``.json`` members."""
    label, meta = "", {}
    cls = members.get("cls")
    if cls is not None and cls.size <= MAX_SIDECAR:
        label = _read_at(f, cls.offset_data, cls.size).decode("utf-8", "replace").strip()
    js = members.get("json")
    if js is not None:
        if js.size > MAX_SIDECAR:
            ignored.append((display_name(f"{name}.json"), f"over {MAX_SIDECAR:,} bytes, not read"))
        else:
            try:
                value = json.loads(_read_at(f, js.offset_data, js.size))
            except (json.JSONDecodeError, UnicodeDecodeError):
                value = None
                ignored.append(
                    (display_name(f"{name}.json"), "not JSON; its label and metadata left out")
                )
            if isinstance(value, dict):
                if not label and "label" in value:
                    label = cell_text(value["label"]).strip()
                meta = {k: cell_text(v) for k, v in value.items() if k != "label"}
    return label, meta


# --------------------------------------------------------------------------- Hugging Face


def import_pyarrow(where: str) -> Any:
    import_pyarrow_parquet(where)
    import pyarrow as pa
    import pyarrow.ipc  # registers pa.ipc

    return pa


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any(
        (path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{display_name(str(path))}: cannot read ({exc})") from None


def _choose_split(splits: Sequence[str], split: str | None, where: str) -> str:
    if split is not None:
        if split not in splits:
            raise ConfigError(
                f"data.split: {split!r} is not a split of {where}{did_you_mean(split, splits)}; "
                f"splits: {', '.join(splits)}"
            )
        return split
    if len(splits) == 1:
        return splits[0]
    raise ConfigError(
        f"{where} holds the splits {', '.join(splits)}: choose one with data.split (e.g. "
        f"data.split: {splits[0]})"
    )


def hf_files(root: Path, split: str | None) -> tuple[list[Path], str, str | None]:
    """(table files, kind 'arrow'|'parquet', the split read) of a Hugging Face dataset."""
    where = display_name(str(root))
    if root.is_file():
        if root.suffix != ".parquet":
            raise ConfigError(f"data.root: {where} is neither a folder nor a .parquet file")
        return [root], "parquet", split
    if (root / "dataset_dict.json").is_file():
        splits = _json(root / "dataset_dict.json").get("splits") or []
        chosen = _choose_split([str(s) for s in splits], split, where)
        files, kind, _ = hf_files(root / chosen, None)
        return files, kind, chosen
    if (root / "state.json").is_file():
        state = _json(root / "state.json")
        files = [root / str(d.get("filename")) for d in state.get("_data_files") or []]
        for p in files:
            if p.parent != root or not p.is_file():
                raise DataError(
                    f"{where}/state.json lists {display_name(p.name)}, which is not there"
                )
        return files, "arrow", state.get("_split")
    parquet = sorted(root.rglob("*.parquet"))
    if not parquet:
        raise DataError(
            f"{where}: not a Hugging Face dataset (no state.json, dataset_dict.json or .parquet "
            "files); use save_to_disk or to_parquet"
        )
    by_split: dict[str, list[Path]] = {}
    for p in parquet:
        m = re.match(r"(.+?)-\d{5}-of-\d{5}\.parquet$", p.name)
        by_split.setdefault(m.group(1) if m else p.stem, []).append(p)
    if len(by_split) == 1 and split is None:
        return parquet, "parquet", None
    chosen = _choose_split(sorted(by_split), split, where)
    return by_split[chosen], "parquet", chosen


def _features(root: Path, schema: Any) -> dict[str, Any]:
    """The dataset's features (``datasets``'s JSON): from the Parquet/Arrow schema metadata or
    ``dataset_info.json``."""
    meta = schema.metadata or {}
    if b"huggingface" in meta:
        try:
            info = json.loads(meta[b"huggingface"])
            feats = (info.get("info") or {}).get("features")
            if isinstance(feats, dict):
                return feats
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    folder = root if root.is_dir() else root.parent
    info_file = folder / "dataset_info.json"
    if info_file.is_file():
        feats = _json(info_file).get("features")
        if isinstance(feats, dict):
            return feats
    return {}


def _open_arrow(path: Path) -> Any:
    pa = import_pyarrow(display_name(str(path)))
    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except Exception:  # an Arrow file (random-access format) rather than a stream
        return pa.ipc.open_file(source).read_all()


def scan_hf(cfg: DataConfig) -> DataFolder:
    """Every row of a Hugging Face dataset's split (see the module docstring)."""
    assert cfg.root is not None
    text = cfg.root[3:] if cfg.root.startswith("hf:") else cfg.root
    root = Path(text).expanduser()
    where = display_name(str(root))
    if not root.exists():
        raise DataError(f"{where}: Hugging Face dataset not found (data.root)")
    files, kind, _split = hf_files(root, cfg.split)
    pq = import_pyarrow_parquet(where)
    base = root if root.is_dir() else root.parent
    first_schema = pq.read_schema(files[0]) if kind == "parquet" else _open_arrow(files[0]).schema
    feats = _features(root, first_schema)
    image_col = cfg.columns.path if cfg.columns.path != "path" else None
    label_col = cfg.columns.label
    names = list(first_schema.names)
    if image_col is None:
        image_col = next(
            (n for n, f in feats.items() if isinstance(f, dict) and f.get("_type") == "Image"),
            None,
        ) or next((n for n in ("image", "img") if n in names), None)
    if image_col is None or image_col not in names:
        raise DataError(
            f"{where}: no image column (an Image feature){did_you_mean(image_col or '', names)}; "
            f"columns: {', '.join(names[:12])} — set data.columns.path to the image column"
        )
    class_label = next(
        (n for n, f in feats.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"),
        None,
    )
    if label_col == "label" and "label" not in names and class_label is not None:
        label_col = class_label
    if cfg.columns.label != "label" and label_col not in names:
        raise DataError(
            f"{where}: no column {label_col!r} (data.columns.label){did_you_mean(label_col, names)}"
        )
    feature_names = (feats.get(label_col) or {}).get("names") if label_col in feats else None
    scalar = [
        n
        for n in names
        if n not in (image_col, label_col)
        and not (isinstance(feats.get(n), dict) and feats[n].get("_type") in ("Image", "Audio"))
    ]
    items: list[ImageItem] = []
    raw_labels: list[str] = []
    metadata: dict[str, list[str]] = {n: [] for n in scalar}
    ignored: list[tuple[str, str]] = []
    for path in files:
        rel = os.path.relpath(path, base).replace(os.sep, "/")
        table, groups = _read_columns(path, kind, [c for c in [label_col, *scalar] if c in names])
        n = table.num_rows
        labels = table.column(label_col).to_pylist() if label_col in names else [None] * n
        for name in scalar:
            metadata[name].extend(cell_text(v) for v in table.column(name).to_pylist())
        row = 0
        for group, size in enumerate(groups):
            for r in range(size):
                member = (
                    Member("parquet", r, group=group, column=image_col)
                    if kind == "parquet"
                    else Member("arrow", row, column=image_col)
                )
                items.append(ImageItem(path, f"{rel}:{row}", -1, -1, member, len(items)))
                row += 1
        for value in labels:
            if feature_names is not None and isinstance(value, int) and value >= 0:
                raw_labels.append(
                    str(feature_names[value]) if value < len(feature_names) else str(value)
                )
            elif isinstance(value, int) and value < 0:
                raw_labels.append("")  # datasets' "no label"
            else:
                raw_labels.append(cell_text(value).strip())
    if not items:
        raise DataError(f"{where}: the dataset has no rows")
    names_given = read_labels(cfg.labels)
    known = (
        names_given
        if names_given is not None
        else ([str(x) for x in feature_names] if feature_names else None)
    )
    resolved = resolve_labels(raw_labels, known, label_col, where, list(range(1, len(items) + 1)))
    note = resolved.note
    if feature_names and names_given is None and note:
        note += " (names from the dataset's ClassLabel feature)"
    items = _labelled(items, resolved.indices, cfg.max_images)
    return DataFolder(
        base,
        items,
        resolved.class_names,
        any(it.label >= 0 for it in items),
        ignored,
        class_folders=list(resolved.class_names) if resolved.by_name and not feature_names else [],
        source="hf",
        source_file=where,
        metadata=metadata,
        label_note=note,
    )


def _read_columns(path: Path, kind: str, columns: list[str]) -> tuple[Any, list[int]]:
    """The table of ``columns`` (no image bytes) and the rows of each row group."""
    if kind == "arrow":
        table = _open_arrow(path)
        return table.select(columns), [table.num_rows]
    pq = import_pyarrow_parquet(display_name(str(path)))
    try:
        pf = pq.ParquetFile(path)
        table = pf.read(columns=columns)
    except Exception as exc:
        raise DataError(f"{display_name(str(path))}: cannot read ({exc})") from None
    groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    return table, groups


# --------------------------------------------------------------------------- reading members

_TABLES: OrderedDict[tuple[str, int, str, int, int], Any] = OrderedDict()
"""Per process: the last few Arrow tables / Parquet row groups read (an image column each)."""
_KEEP = 4


def _cached(key: tuple[str, int, str, int, int], load: Any) -> Any:
    if key in _TABLES:
        _TABLES.move_to_end(key)
        return _TABLES[key]
    for stale in [k for k in _TABLES if k[:3] == key[:3]]:
        del _TABLES[stale]
    value = load()
    _TABLES[key] = value
    while len(_TABLES) > _KEEP:
        _TABLES.popitem(last=False)
    return value


def read_member(item: ImageItem, max_bytes: int | None = None) -> bytes:
    """The bytes of an image inside a shard or table. Raises :class:`DecodeFailure`."""
    member = item.member
    assert member is not None
    if member.kind == "tar":
        if max_bytes is not None and member.length > max_bytes:
            raise DecodeFailure(f"{member.length:,} bytes, more than the {max_bytes:,} allowed")
        fd = _open_regular(item.path)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size < member.position + member.length:
                raise DecodeFailure("the shard is shorter than when it was scanned")
            chunk = _read_at(f, member.position, member.length)
        if len(chunk) != member.length:
            raise DecodeFailure("the shard is shorter than when it was scanned")
        return chunk
    try:
        st = os.stat(item.path)
    except OSError as exc:
        raise DecodeFailure(f"cannot read file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeFailure("not a regular file")
    # The file's size and time are in the key: a file rewritten or truncated since a table was
    # opened (memory-mapped) is opened afresh, never read through the stale mapping (SIGBUS).
    key = (
        str(item.path),
        member.group if member.kind == "parquet" else -1,
        member.column,
        st.st_size,
        st.st_mtime_ns,
    )
    try:
        if member.kind == "arrow":
            column = _cached(key, lambda: _open_arrow(item.path).column(member.column))
        else:
            pq = import_pyarrow_parquet(display_name(str(item.path)))
            column = _cached(
                key,
                lambda: (
                    pq.ParquetFile(item.path)
                    .read_row_group(member.group, columns=[member.column])
                    .column(0)
                ),
            )
        value = column[member.position].as_py()
    except (IndexError, KeyError, OSError, ValueError) as exc:
        raise DecodeFailure(f"cannot read the row ({exc})") from None
    except Exception as exc:  # pyarrow's own errors
        raise DecodeFailure(f"cannot read the row ({type(exc).__name__}: {exc})") from None
    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None:
        shown = value.get("path") if isinstance(value, dict) else None
        raise DecodeFailure(
            "the row holds no image bytes"
            + (f" (only a path, {display_name(str(shown))}, which is not read)" if shown else "")
        )
    if not isinstance(data, bytes):
        raise DecodeFailure("the image cell is not bytes")
    if max_bytes is not None and len(data) > max_bytes:
        raise DecodeFailure(f"{len(data):,} bytes, more than the {max_bytes:,} allowed")
    return data
