"""The data folder: scanning, decoding every image kind users have, preprocessing.

Decoding is defensive: a file that cannot be read becomes a :class:`DecodeFailure` with the reason,
never an exception that ends the run. Pillow's decompression-bomb limit stays in force (its warning
is promoted to an error), only the formats below are accepted, EXIF orientation is applied, GIFs
give their first frame, alpha is composited onto white, 16-bit images are scaled (not clamped).

Scanning follows these rules, so that what the report covers is exactly what the folder holds:

* **Class folders.** Every visible sub-folder of the root is a class folder, also an empty one, one
  that cannot be listed and a link to a folder that is not followed (as torchvision's
  ``find_classes`` does), so a later class never shifts to an earlier index. Class folders that
  gave no image are in :attr:`DataFolder.empty_classes`. Only when no sub-folder holds an image is
  the root read as a flat, unlabelled folder.
* **Unreadable entries.** A folder that cannot be listed (no read or search permission), a file
  whose details cannot be read, a special file (FIFO, socket, device) with an image suffix: never
  an exception; each is left out and listed in :attr:`DataFolder.ignored` with the reason. A file
  that cannot be opened when the pass reads it is skipped with the reason, like a corrupt one.
  Files are opened non-blocking and checked to be regular files, so a FIFO never hangs the run.
* **Symbolic links** (to files or folders) are followed only when their resolved target lies
  inside the resolved data root; a link out of it (``/proc/self/cwd``, a link to ``/``) is not
  followed and is listed with its target. A link to a folder on its own path (a loop) is not
  followed either, so link cycles end. The data root itself may be a link.
* **Names that are not UTF-8.** On POSIX a name is bytes; Python gives undecodable bytes as lone
  surrogates. :attr:`ImageItem.relpath` keeps that exact string (the image's identifier: it opens
  the file and :func:`manifest_sha256` hashes its exact bytes, ``os.fsencode``);
  :attr:`ImageItem.display` and :attr:`DataFolder.class_names` are display strings with the
  undecodable bytes shown as ``\\xNN`` (see :mod:`reportgen.text`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from reportgen.config import DataConfig
from reportgen.errors import ConfigError, DataError, did_you_mean
from reportgen.report.text import display_name

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "WEBP", "TIFF")
Image.init()
PIL_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
_BACKGROUND = 255  # alpha is composited onto white


@dataclass(frozen=True)
class Member:
    """An image that is part of a larger file: a WebDataset tar member or a table row."""

    kind: Literal["tar", "arrow", "parquet"]
    position: int
    """tar: byte offset of the member's data; arrow: row in the table; parquet: row in its
    row group."""
    length: int = 0
    """tar: the member's size in bytes."""
    group: int = 0
    """parquet: the row group."""
    column: str = ""
    """arrow/parquet: the image column (a struct with ``bytes`` and ``path``, or binary)."""


@dataclass(frozen=True)
class ImageItem:
    path: Path
    """The image file; for a tar member or table row, the file that holds it; for a manifest
    row, the data root (the file is ``path / relpath``: :func:`item_file`)."""
    relpath: str
    """Path relative to the data root, with forward slashes (the image's stable id). Exact: bytes
    that are not UTF-8 are lone surrogates here; show :attr:`display` to people."""
    label: int
    """Class index in the model's output order; -1 when unlabelled."""
    size: int
    """Bytes on disk when scanned (a file's size); -1 when the source does not tell before the
    read (manifest rows, table rows). The manifest hash uses the bytes actually read."""
    member: Member | None = None
    """Where the bytes lie inside ``path`` (a tar member, a table row); None: ``path`` is the
    image file itself."""
    row: int = -1
    """The item's row in :attr:`DataFolder.metadata` (-1: no metadata)."""
    labels: tuple[int, ...] | None = None
    """Multi-label data (:attr:`DataFolder.label_sets`): the indices of the image's labels, in
    the model's output order (an empty tuple: none of them); None when unlabelled. ``label``
    is then -1."""

    @property
    def display(self) -> str:
        """The relative path as shown in the report and messages (always valid UTF-8)."""
        return display_name(self.relpath)

    @property
    def relpath_bytes(self) -> bytes:
        """The relative path's exact bytes on disk (what the manifest hashes)."""
        return os.fsencode(self.relpath)


def item_file(folder: DataFolder, item: ImageItem) -> Path:
    """The file an item's bytes are read from (a manifest row's path is joined here)."""
    return item.path / item.relpath if folder.source == "manifest" else item.path


@dataclass(frozen=True)
class DataFolder:
    root: Path
    items: list[ImageItem]
    class_names: list[str]
    """Display names indexed by class index (may be longer than the folders present, e.g. from
    labels)."""
    labelled: bool
    ignored: list[tuple[str, str]]
    """Entries under the root that were not considered, with the reason (outside the class
    folders, unreadable, a link out of the root ...); paths are display strings."""
    class_folders: list[str] = field(default_factory=list)
    """Every class folder's exact name, sorted (empty and unreadable ones included)."""
    empty_classes: list[str] = field(default_factory=list)
    """Display names of class folders that gave no image (empty, unreadable or a link not
    followed); their class index is kept, so the caller can warn."""
    source: Literal["folder", "manifest", "hf", "webdataset"] = "folder"
    """What the images came from (see :mod:`reportgen.loading.sources`)."""
    source_file: str | None = None
    """The manifest, dataset or shard pattern read (display string); None for a folder."""
    metadata: dict[str, list[str]] = field(default_factory=dict)
    """Metadata column -> one text value per source row (``ImageItem.row``); empty cells ``""``."""
    label_note: str | None = None
    """How the labels were read (class names or output indices, from which column/file)."""
    contain: Path | None = None
    """Resolved root that every file read must lie in (manifest rows: a path or a link that
    leads out of it is not followed); None for folders, whose scan already applied the rule."""
    label_sets: bool = False
    """True when the images carry label sets (a manifest's ``labels`` column, multi-label):
    :attr:`ImageItem.labels` holds them and every ``ImageItem.label`` is -1."""

    @property
    def metadata_columns(self) -> list[str]:
        return list(self.metadata)

    def metadata_of(self, item: ImageItem) -> dict[str, str]:
        """The item's metadata values by column ({} when the source has none)."""
        if item.row < 0:
            return dict.fromkeys(self.metadata, "")
        return {k: v[item.row] for k, v in self.metadata.items()}

    @property
    def root_display(self) -> str:
        """The data root as shown to people."""
        return display_name(str(self.root))


class DecodeFailure(Exception):
    """An image that could not be read; ``str(exc)`` is the reason shown to the user."""


# --------------------------------------------------------------------------- scanning


def _os_reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_kind(mode: int) -> str:
    for test, name in _SPECIAL_KINDS:
        if test(mode):
            return name
    return "not a regular file"


@dataclass(frozen=True)
class _Entry:
    """One directory entry after the link policy: what it is and whether it is read."""

    name: str
    path: Path
    kind: Literal["file", "dir", "other"]
    reason: str | None
    """Why it is not read (None: it is read)."""
    size: int = 0
    ident: tuple[int, int] | None = None
    """(device, inode) of a folder, to stop link loops."""


class _Scanner:
    """Walks the data root under the rules in the module docstring, collecting what it leaves out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.ignored: list[tuple[str, str]] = []

    def ignore(self, rel: str, reason: str) -> None:
        self.ignored.append((display_name(rel), reason))

    def entries(self, folder: Path, rel: str) -> list[_Entry] | None:
        """The visible entries of ``folder`` sorted by name; None (and recorded) when unlistable."""
        try:
            with os.scandir(folder) as it:
                raw = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            self.ignore(rel + "/" if rel else ".", f"cannot list folder ({_os_reason(exc)})")
            return None
        return [self.classify(e) for e in raw]

    def classify(self, entry: os.DirEntry[str]) -> _Entry:
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            # Typically a folder with read but without search (x) permission: names, no details.
            try:
                kind: Literal["file", "dir", "other"] = (
                    "dir" if entry.is_dir(follow_symlinks=False) else "file"
                )
            except OSError:
                kind = "other"
            return _Entry(entry.name, path, kind, f"cannot read ({_os_reason(exc)})")
        if stat.S_ISLNK(st.st_mode):
            return self._link(entry.name, path)
        if stat.S_ISDIR(st.st_mode):
            return _Entry(entry.name, path, "dir", None, ident=(st.st_dev, st.st_ino))
        if stat.S_ISREG(st.st_mode):
            return _Entry(entry.name, path, "file", None, size=st.st_size)
        return _Entry(entry.name, path, "other", f"{_special_kind(st.st_mode)}, not an image file")

    def _link(self, name: str, path: Path) -> _Entry:
        try:
            target = path.resolve(strict=True)
            st = os.stat(target)
        except (OSError, RuntimeError):  # RuntimeError: a loop of links (Python 3.10-3.12)
            return _Entry(name, path, "other", "broken symbolic link")
        if stat.S_ISDIR(st.st_mode):
            kind: Literal["file", "dir", "other"] = "dir"
        elif stat.S_ISREG(st.st_mode):
            kind = "file"
        else:
            return _Entry(name, path, "other", f"symbolic link to {_special_kind(st.st_mode)}")
        if target != self.real_root and not target.is_relative_to(self.real_root):
            return _Entry(
                name,
                path,
                kind,
                f"symbolic link to {display_name(str(target))}, outside the data folder: not "
                "followed",
            )
        return _Entry(name, path, kind, None, size=st.st_size, ident=(st.st_dev, st.st_ino))

    def images(
        self, entry: _Entry, rel: str, route: frozenset[tuple[int, int]]
    ) -> list[tuple[str, Path, int]]:
        """(relpath, path, size) of the images at or under ``entry``, recording what is left out.

        ``route``: the folders (device, inode) from the root down to here, to stop link loops.
        """
        if entry.kind != "dir":
            if not _is_image_name(entry.name):
                return []
            if entry.reason is not None:
                self.ignore(rel, entry.reason)
                return []
            return [(rel, entry.path, entry.size)] if entry.kind == "file" else []
        if entry.reason is not None:
            self.ignore(rel + "/", entry.reason)
            return []
        if entry.ident is not None and entry.ident in route:
            self.ignore(
                rel + "/", "symbolic link to a folder that contains it (a loop); not followed"
            )
            return []
        children = self.entries(entry.path, rel)
        if children is None:
            return []
        inner = route | {entry.ident} if entry.ident is not None else route
        out: list[tuple[str, Path, int]] = []
        for child in children:
            out.extend(self.images(child, f"{rel}/{child.name}", inner))
        return out


def read_labels(labels: str | list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, list):
        names = [str(x) for x in labels]
        _no_duplicate_labels(names, "data.labels")
        return names
    path = Path(labels)
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first name.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read data.labels ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: data.labels is not UTF-8 text ({exc.reason})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DataError(f"{path}: data.labels file has no class names (one per line)")
    _no_duplicate_labels(names, f"{display_name(str(path))} (data.labels)")
    return names


def _no_duplicate_labels(names: list[str], where: str) -> None:
    """A name given twice would shift every later class by one: an input error."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"{where}: class name {display_name(name)!r} appears twice (entries "
                f"{seen[name] + 1} and {i + 1}); every later class would take the wrong output "
                "index — give each output one distinct name"
            )
        seen[name] = i


def _class_index(
    names: list[str], labels: list[str] | None, root: Path, empty: Iterable[str] = ()
) -> dict[str, int]:
    """Class folder name -> class index in the model's output order.

    Without ``data.labels``: sorted position over every class folder, empty ones included
    (torchvision's ImageFolder convention). With it: a folder named after a label (or after an
    index, ``0``, ``1`` ...) gets that label's index; when no folder matches, the labels only name
    the sorted positions (e.g. WordNet-id folders with human-readable labels). A mix is refused:
    the unmatched folders would silently take another class's index; only ``empty`` folders that
    match no label are left out then (matching by name, they cannot shift anything).
    """
    if labels is None:
        return {name: pos for pos, name in enumerate(names)}

    def by_label(name: str) -> int | None:
        if name in labels:
            return labels.index(name)
        if name.isdigit() and int(name) < len(labels):
            return int(name)
        return None

    matched = {name: by_label(name) for name in names}
    unmatched = [n for n, i in matched.items() if i is None]
    if len(unmatched) == len(names):
        return {name: pos for pos, name in enumerate(names)}
    empty_set = set(empty)
    unmatched = [n for n in unmatched if n not in empty_set]
    if unmatched:
        shown = ", ".join(
            f"{display_name(n)!r}{did_you_mean(n, labels)}" for n in unmatched[:5]
        ) + (" ..." if len(unmatched) > 5 else "")
        raise DataError(
            f"{display_name(str(root))}: class folder(s) not in data.labels: {shown}; name every "
            "class folder after a label (or its index), or none of them"
        )
    return {n: i for n, i in matched.items() if i is not None}


def _open_root(cfg: DataConfig) -> Path:
    assert cfg.root is not None
    root = Path(cfg.root).expanduser()
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise DataError(
            f"{display_name(str(root))}: data folder not found; pass --data DIR with your images"
        ) from None
    except OSError as exc:
        raise DataError(
            f"{display_name(str(root))}: cannot open the data folder ({_os_reason(exc)})"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(
            f"data.root: {display_name(str(root))} is a file, not a folder; pass --data DIR, the "
            "folder that holds the images (one sub-folder per class, or the images themselves)"
        )
    return root


def scan_folder(cfg: DataConfig) -> DataFolder:
    """List the images: ImageFolder layout (one sub-folder per class) or a flat folder.

    Class folders map to class indices by name when ``data.labels`` lists the folder name, by
    number when the folder is named after an index, else by sorted position over every class
    folder, empty ones included (torchvision's ImageFolder convention). Links, unreadable
    entries and names that are not UTF-8 follow the rules in the module docstring.
    """
    root = _open_root(cfg)
    labels = read_labels(cfg.labels)
    scanner = _Scanner(root)
    top = scanner.entries(root, "")
    if top is None:
        reason = scanner.ignored[0][1] if scanner.ignored else "cannot list folder"
        raise DataError(
            f"{display_name(str(root))}: {reason}; give the user running reportgen read and "
            "search (x) permission on the data folder"
        )
    route = frozenset({(os.stat(root).st_dev, os.stat(root).st_ino)})
    dirs = [e for e in top if e.kind == "dir"]
    per_dir = {d.name: scanner.images(d, d.name, route) for d in dirs}
    items: list[ImageItem] = []
    ignored: list[tuple[str, str]] = []
    class_folders: list[str] = []
    empty_classes: list[str] = []

    def item(rel: str, path: Path, size: int, label: int) -> ImageItem:
        return ImageItem(path, rel, label, size)

    if any(per_dir.values()):
        class_folders = [d.name for d in dirs]
        empty = [name for name in class_folders if not per_dir[name]]
        index = _class_index(class_folders, labels, root, empty)
        if len(set(index.values())) != len(index):
            raise DataError(
                f"{display_name(str(root))}: class folders map to the same class index "
                f"({ {display_name(k): v for k, v in index.items()} }); name them after "
                "data.labels entries or use consistent names"
            )
        for name in class_folders:
            if name not in index:
                ignored.append((display_name(name) + "/", "empty folder not named in data.labels"))
                continue
            if not per_dir[name]:
                empty_classes.append(display_name(name))
            found = sorted(per_dir[name], key=lambda f: f[0].split("/"))
            items.extend(item(rel, path, size, index[name]) for rel, path, size in found)
        for e in top:
            if e.kind != "dir" and _is_image_name(e.name):
                ignored.append(
                    (display_name(e.name), e.reason or "image outside the class folders")
                )
        n = max(index.values()) + 1
        class_names = [str(i) for i in range(max(n, len(labels or [])))]
        if labels:
            class_names[: len(labels)] = labels
        for name, idx in index.items():
            if labels is None or idx >= len(labels):
                class_names[idx] = display_name(name)
        labelled = True
    else:
        found = [f for e in top if e.kind != "dir" for f in scanner.images(e, e.name, route)]
        items = [item(rel, path, size, -1) for rel, path, size in found]
        class_names = labels or []
        labelled = False
    ignored = scanner.ignored + ignored
    if not items:
        unread = f"; left out: {ignored[0][0]} ({ignored[0][1]})" if ignored else ""
        more = f" and {len(ignored) - 1} more" if len(ignored) > 1 else ""
        raise DataError(
            f"{display_name(str(root))}: no images found (looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}){unread}{more}; put images in the folder or in "
            "one sub-folder per class"
        )
    if cfg.max_images is not None and len(items) > cfg.max_images:
        items = _spread(items, cfg.max_images)
    return DataFolder(root, items, class_names, labelled, ignored, class_folders, empty_classes)


def _spread(items: list[ImageItem], n: int) -> list[ImageItem]:
    """``n`` items spread evenly over the sorted list (so every class keeps its share)."""
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def manifest_sha256(manifest: Iterable[tuple[str, int, str]]) -> str:
    """SHA-256 over ``(relpath, size, file sha256)`` lines, sorted, the path as its exact bytes.

    A name that is not UTF-8 is hashed as the bytes on disk (``os.fsencode``); for UTF-8 names
    the lines are ``relpath\\tsize\\tsha256\\n`` in UTF-8, as before.
    """
    h = hashlib.sha256()
    for rel, size, digest in sorted(manifest):
        h.update(os.fsencode(rel) + f"\t{size}\t{digest}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- image sizes


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file from its header alone (None when unreadable)."""
    return _header_size(path)


def _header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) as the decoder will see it (EXIF rotation applied), from the header only.

    Pillow's ``open`` is lazy: it reads the header (and the EXIF block), not the pixels.
    """
    try:
        with os.fdopen(_open_regular(path), "rb") as f:
            return header_size_of(f)
    except Exception:  # unreadable in any way: the dataset pass skips it with the reason
        return None


def header_size_of(f: Any) -> tuple[int, int] | None:
    """(height, width) of the image in the open binary file ``f`` (see :func:`_header_size`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f, formats=PIL_FORMATS) as img:
                w, h = img.size
                # EXIF orientations 5-8 are transposed or rotated by 90 degrees (exif_transpose).
                if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                    w, h = h, w
                return h, w
    except Exception:  # unreadable in any way: the dataset pass skips it with the reason
        return None


def output_size(hw: tuple[int, int], resize: int | None, crop: int | None) -> tuple[int, int]:
    """The (height, width) :class:`Preprocessor` gives an image of ``hw`` (same rounding)."""
    if crop is not None:
        return crop, crop
    h, w = hw
    if resize is None:
        return h, w
    scale = resize / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


# --------------------------------------------------------------------------- reading


def _open_regular(path: Path) -> int:
    """A read-only descriptor on a regular file. Raises :class:`DecodeFailure`.

    Opened non-blocking and checked with ``fstat`` before any read: a FIFO or device that took an
    image's place never blocks the run.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DecodeFailure(f"cannot read file ({_os_reason(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise DecodeFailure(f"cannot read file ({_os_reason(exc)})") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DecodeFailure(f"{_special_kind(mode)}, not an image file")
    return fd


def read_file(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file. Raises :class:`DecodeFailure` with the reason.

    A file the process may not read (no permission), or that is not a regular file, is a failure
    with the reason, like a corrupt image: skipped and listed, never an exception that ends the run.
    ``max_bytes``: a larger file is a failure too, found before reading it.
    """
    fd = _open_regular(path)
    if max_bytes is not None:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            os.close(fd)
            raise DecodeFailure(f"{size:,} bytes, more than the {max_bytes:,} allowed")
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DecodeFailure(f"cannot read file ({_os_reason(exc)})") from None
