"""Manifests: a CSV, TSV, JSONL or Parquet table that lists the images, their labels and metadata.

One row per image. Columns (names set by ``data.columns``):

* ``path`` (required): the image file, relative to ``data.root`` (default: the manifest's folder);
  an absolute path is read when it lies inside the root. A path that leads out of the root
  (``../x.png``, an absolute path elsewhere) is not read and is listed with the reason, as a link
  out of a data folder is; a link inside the root that points out of it is found when the file is
  read and skipped with the reason.
* ``label`` (optional): a class name, or an integer index into the model's outputs — which one
  was read is stated (:attr:`DataFolder.label_note`); an empty cell is an unlabelled image.
* ``labels`` (optional, instead of ``label``): a multi-label set, ``|``-separated names or a
  JSON list of names or output indices (``model.task: multilabel``). An empty cell is the empty
  set (an image with none of the labels); a null JSON/Parquet cell is an unlabelled image.
* every other column is **metadata**, kept per image as text (empty cells as ``""``).

Input errors are one line naming the manifest, line and column, raised before any work: a missing
column, a duplicate path, an unknown label name (with the nearest names), a cell longer than
:data:`MAX_CELL` characters, a row with the wrong number of fields. A row whose file is missing or
unreadable is skipped by the dataset pass and listed, like a bad image in a folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reportgen.config import DataConfig
from reportgen.errors import ConfigError, DataError, did_you_mean
from reportgen.loading.folders import DataFolder, ImageItem, _spread, read_labels
from reportgen.report.text import display_name

MAX_CELL = 1 << 20
"""The longest cell a manifest may hold (characters); a longer one is a damaged file."""
SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


@dataclass
class Table:
    """A manifest read as text columns (``None`` where a JSON/Parquet cell is absent or null)."""

    where: str
    columns: dict[str, list[Any]]
    lines: list[int]
    """The file's line (CSV/TSV/JSONL) or row number (Parquet, 1-based) of each row."""

    def __len__(self) -> int:
        return len(self.lines)

    def line_word(self) -> str:
        return "row" if self.where.endswith(".parquet") else "line"


def cell_text(value: Any) -> str:
    """A JSON or Parquet cell as the text predictions.csv keeps (None -> "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@contextlib.contextmanager
def _cell_limit() -> Iterator[None]:
    old = csv.field_size_limit()
    csv.field_size_limit(MAX_CELL)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_delimited(path: Path, where: str, delimiter: str) -> Table:
    text = _read_text(path, where)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    with _cell_limit():
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"{where}: empty manifest; the first line names the columns")
            header = [h.strip() for h in header]
            _no_duplicate_columns(header, where)
            cols: list[list[Any]] = [[] for _ in header]
            lines: list[int] = []
            start = reader.line_num + 1
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    start = reader.line_num + 1
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{where}, line {start}: {len(row)} fields but the header names "
                        f"{len(header)}; quote cells that hold the delimiter"
                    )
                for col, value in zip(cols, row, strict=True):
                    col.append(value)
                lines.append(start)
                start = reader.line_num + 1
        except csv.Error as exc:
            reason = str(exc)
            if "field larger than field limit" in reason:
                reason = f"a cell longer than {MAX_CELL:,} characters"
            raise DataError(
                f"{where}, line {reader.line_num}: malformed manifest ({reason})"
            ) from None
    return Table(where, dict(zip(header, cols, strict=True)), lines)


def _read_text(path: Path, where: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: cannot read the manifest ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the first column name
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: the manifest is not UTF-8 text (bad byte at offset {exc.start}); save it "
            "as UTF-8"
        ) from None


def _no_duplicate_columns(header: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{where}: column {name!r} appears twice in the header")
        seen.add(name)


def _read_jsonl(path: Path, where: str) -> Table:
    text = _read_text(path, where)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    # Lines end at "\n" only: str.splitlines() would also split inside a value holding U+2028,
    # U+2029 or U+0085, which JSON writers leave unescaped.
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}, line {number}: expected a JSON object per line")
        rows.append(row)
        lines.append(number)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {name: [row.get(name) for row in rows] for name in names}
    return Table(where, columns, lines)


def _read_parquet(path: Path, where: str) -> Table:
    pq = import_pyarrow_parquet(where)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{where}: cannot read the Parquet manifest ({exc})") from None
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    return Table(where, columns, list(range(1, table.num_rows + 1)))


def import_pyarrow_parquet(where: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"{where}: reading Parquet and Hugging Face datasets needs pyarrow; "
            "pip install 'reportgen[data]' (or pyarrow)"
        ) from None
    return pq


def read_table(path: Path) -> Table:
    where = display_name(str(path))
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"data.manifest: {where} is not a .csv, .tsv, .jsonl or .parquet file; give the "
            "manifest in one of those formats"
        )
    if not path.is_file():
        raise DataError(f"{where}: manifest not found (data.manifest / --manifest)")
    if kind == "parquet":
        table = _read_parquet(path, where)
    elif kind == "jsonl":
        table = _read_jsonl(path, where)
    else:
        table = _read_delimited(path, where, "," if kind == "csv" else "\t")
    for name, values in table.columns.items():
        for i, value in enumerate(values):
            if isinstance(value, str) and len(value) > MAX_CELL:
                raise DataError(
                    f"{where}, {table.line_word()} {table.lines[i]}: column {name!r} holds a "
                    f"cell longer than {MAX_CELL:,} characters; the manifest is damaged"
                )
    return table


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Labels:
    indices: list[int]
    class_names: list[str]
    note: str | None
    by_name: bool


def resolve_labels(
    raw: Sequence[str], names: list[str] | None, column: str, where: str, lines: Sequence[int]
) -> Labels:
    """Label cells -> class indices. Every cell a class name, or every cell an output index.

    ``names``: the model's class names in output order (``data.labels`` or the model's metadata);
    without them, names are the distinct values sorted (as class folders are) and integers are
    output indices. An empty cell is an unlabelled image (-1).
    """
    values = sorted({v for v in raw if v != ""})
    if not values:
        return Labels([-1] * len(raw), list(names or []), None, False)
    numeric = all(v.isascii() and v.isdigit() and len(v) < 10 for v in values)
    if names is not None:
        known = {n: i for i, n in enumerate(names)}
        if all(v in known for v in values):
            return Labels(
                [known[v] if v else -1 for v in raw],
                list(names),
                f"column {column!r} read as class names",
                True,
            )
        if numeric:
            too_big = [v for v in values if int(v) >= len(names)]
            if too_big:
                line = lines[list(raw).index(too_big[0])]
                raise DataError(
                    f"{where}, line {line}: label {too_big[0]} in column {column!r} is not an "
                    f"output index (the model's class names list {len(names)} outputs)"
                )
            return Labels(
                [int(v) if v else -1 for v in raw],
                list(names),
                f"column {column!r} read as output indices",
                False,
            )
        unknown = next(v for v in raw if v and v not in known)
        line = lines[list(raw).index(unknown)]
        raise DataError(
            f"{where}, line {line}: label {display_name(unknown)!r} in column {column!r} is not "
            f"one of the model's {len(names)} class names{did_you_mean(unknown, names)}; give "
            "data.labels (the class names in output order) or fix the label"
        )
    if numeric:
        top = max(int(v) for v in values)
        return Labels(
            [int(v) if v else -1 for v in raw],
            [str(i) for i in range(top + 1)],
            f"column {column!r} read as output indices (no class names known: named by index)",
            False,
        )
    index = {v: i for i, v in enumerate(values)}
    return Labels(
        [index[v] if v else -1 for v in raw],
        values,
        f"column {column!r} read as class names, numbered in sorted order (as class folders "
        "are); give data.labels to map them to the model's outputs",
        True,
    )


def _separator_hint(values: Sequence[str], names: Sequence[str]) -> str | None:
    """For a label set written with another separator ("cat; dog"): which one to use."""
    known = set(names)
    for v in values:
        parts = [p for p in re.split(r"\s*[,;/+]\s*", v) if p]
        if v not in known and len(parts) > 1 and set(parts) <= known:
            return (
                f"{v!r} looks like several labels: separate a label set's names with '|' "
                f"({'|'.join(parts)}) or give a JSON list"
            )
    return None


def resolve_label_sets(
    cells: Sequence[list[str] | None],
    names: list[str] | None,
    column: str,
    where: str,
    lines: Sequence[int],
) -> tuple[list[tuple[int, ...] | None], Labels]:
    """Label-set cells -> tuples of output indices, with :func:`resolve_labels`' rules over
    every name the cells hold (all class names, or all output indices). None: unlabelled."""
    flat = [v for cell in cells if cell for v in cell]
    flat_lines = [line for cell, line in zip(cells, lines, strict=True) if cell for _ in cell]
    try:
        resolved = resolve_labels(flat, names, column, where, flat_lines)
    except DataError as err:
        hint = _separator_hint(flat, names or [])
        if hint is None:
            raise
        raise DataError(f"{err}; {hint}") from None
    indices = iter(resolved.indices)
    out: list[tuple[int, ...] | None] = []
    for cell in cells:
        if cell is None:
            out.append(None)
        else:
            out.append(tuple(sorted({next(indices) for _ in cell})))
    return out, resolved


def split_label_set(value: Any) -> list[str]:
    """A ``labels`` cell: a JSON list (or a list from JSONL/Parquet), or ``|``-separated names."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [cell_text(v) for v in value if cell_text(v)]
    text = cell_text(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [cell_text(v) for v in parsed if cell_text(v)]
    return [part.strip() for part in text.split("|") if part.strip()]


# --------------------------------------------------------------------------- the source


def _relative(cell: str, root: str) -> tuple[str | None, str | None]:
    """(relative path, None) inside the root, or (None, reason) for a path that leads out."""
    if "\x00" in cell:
        return None, "the path holds a NUL byte"
    if cell.startswith("/"):
        rel = os.path.relpath(posixpath.normpath(cell), root)
        if rel == ".." or rel.startswith("../"):
            # Through links (a root or path behind a symbolic link, macOS's /tmp): compare the
            # resolved paths; the read checks the resolved file again.
            rel = os.path.relpath(os.path.realpath(cell), os.path.realpath(root))
        if rel == ".." or rel.startswith("../"):
            return None, "an absolute path outside data.root: not read (set data.root to hold it)"
        return rel.replace(os.sep, "/"), None
    # Most manifests hold plain relative paths: normalise only where "." or "//" could change it.
    needs = "//" in cell or cell.startswith(".") or "/." in cell or cell.endswith("/")
    rel = posixpath.normpath(cell) if needs else cell
    if rel == ".." or rel.startswith("../"):
        return None, "a path that leads out of data.root: not read"
    if rel == ".":
        return None, "the path names data.root itself, not an image file"
    return rel, None


def scan_manifest(cfg: DataConfig) -> DataFolder:
    """The images a manifest lists (see the module docstring)."""
    assert cfg.manifest is not None
    manifest = Path(cfg.manifest).expanduser()
    table = read_table(manifest)
    where = table.where
    root = Path(cfg.root).expanduser() if cfg.root else manifest.parent
    if not root.is_dir():
        raise DataError(
            f"{display_name(str(root))}: data.root is not a folder; the manifest's paths are "
            "relative to it (default: the manifest's folder)"
        )
    names = {
        "path": cfg.columns.path,
        "label": cfg.columns.label,
        "labels": cfg.columns.labels,
    }
    present = list(table.columns)
    if names["path"] not in table.columns:
        key = "data.columns.path" if cfg.columns.path != "path" else "the path column"
        raise DataError(
            f"{where}: no column {names['path']!r} ({key}){did_you_mean(names['path'], present)}; "
            f"columns: {', '.join(present[:12])} — name the one holding the image paths with "
            "--columns path=COLUMN (data.columns.path)"
        )
    for role in ("label", "labels"):
        if names[role] not in table.columns and getattr(cfg.columns, role) != role:
            raise DataError(
                f"{where}: no column {names[role]!r} (data.columns.{role})"
                f"{did_you_mean(names[role], present)}; columns: {', '.join(present[:12])}"
            )
    paths = [v if isinstance(v, str) else cell_text(v) for v in table.columns[names["path"]]]
    items: list[ImageItem] = []
    ignored: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    keep: list[int] = []
    rels: list[str] = []
    root_text = os.path.normpath(str(root))
    for i, cell in enumerate(paths):
        line = table.lines[i]
        if not cell.strip():
            raise DataError(
                f"{where}, {table.line_word()} {line}: empty {names['path']!r} cell; every row "
                "names its image file"
            )
        rel, reason = _relative(cell, root_text)
        if rel is None:
            ignored.append((display_name(cell), str(reason)))
            continue
        if rel in seen:
            raise DataError(
                f"{where}, {table.line_word()} {line}: image {display_name(rel)!r} is listed "
                f"twice (first on {table.line_word()} {seen[rel]}); list each image once"
            )
        seen[rel] = line
        keep.append(i)
        rels.append(rel)
    labels_model = read_labels(cfg.labels)
    label_col = names["label"] if names["label"] in table.columns else None
    sets_col = names["labels"] if names["labels"] in table.columns else None
    if label_col is not None and sets_col is not None:
        raise DataError(
            f"{where}: both a {label_col!r} column (one class per image) and a {sets_col!r} "
            "column (label sets, multi-label) — keep the one the model was trained for, or name "
            "the other with data.columns"
        )
    lines = [table.lines[i] for i in keep]
    sets: list[tuple[int, ...] | None] = [None] * len(keep)
    if sets_col is not None:
        cells = [
            None
            if table.columns[sets_col][i] is None
            else split_label_set(table.columns[sets_col][i])
            for i in keep
        ]
        sets, resolved = resolve_label_sets(cells, labels_model, sets_col, where, lines)
    elif label_col is not None:
        raw = [cell_text(table.columns[label_col][i]).strip() for i in keep]
        resolved = resolve_labels(raw, labels_model, label_col, where, lines)
    else:
        resolved = Labels([-1] * len(keep), list(labels_model or []), None, False)
    roles = {names["path"], names["label"], names["labels"]}
    metadata = {
        name: [cell_text(values[i]) for i in keep]
        for name, values in table.columns.items()
        if name not in roles
    }
    # ``path`` is the root for every row (one shared object): the file, root / relpath, is
    # joined when it is read (1M Path objects would be most of a large manifest's cost).
    if sets_col is not None:
        items = [
            ImageItem(root, rel, -1, -1, None, row, labels=label_set)
            for row, (rel, label_set) in enumerate(zip(rels, sets, strict=True))
        ]
    else:
        items = [
            ImageItem(root, rel, label, -1, None, row)
            for row, (rel, label) in enumerate(zip(rels, resolved.indices, strict=True))
        ]
    if not items:
        raise DataError(
            f"{where}: no image the manifest lists can be read"
            + (f" ({ignored[0][0]}: {ignored[0][1]})" if ignored else "")
        )
    if cfg.max_images is not None and len(items) > cfg.max_images:
        items = _spread(items, cfg.max_images)
    labelled = any(it.label >= 0 or it.labels is not None for it in items)
    return DataFolder(
        root,
        items,
        resolved.class_names,
        labelled,
        ignored,
        class_folders=list(resolved.class_names) if resolved.by_name and not sets_col else [],
        source="manifest",
        source_file=where,
        metadata=metadata,
        label_note=(
            resolved.note.replace("read as", "read as label sets of") if resolved.note else None
        )
        if sets_col
        else resolved.note,
        contain=root.resolve(),
        label_sets=sets_col is not None,
    )
