"""The data folder: scanning, decoding every image kind users have, preprocessing.

Decoding is defensive: a file that cannot be read becomes a :class:`DecodeFailure` with the reason,
never an exception that ends the run. Pillow's decompression-bomb limit stays in force (its warning
is promoted to an error), only the formats below are accepted, EXIF orientation is applied, GIFs
give their first frame, alpha is composited onto white, 16-bit images are scaled (not clamped).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from reportgen.config import DataConfig, PreprocessConfig
from reportgen.errors import DataError, did_you_mean

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "WEBP", "TIFF")
Image.init()
PIL_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
_BACKGROUND = 255  # alpha is composited onto white


@dataclass(frozen=True)
class ImageItem:
    path: Path
    relpath: str
    """Path relative to the data root, with forward slashes (the image's stable id)."""
    label: int
    """Class index in the model's output order; -1 when unlabelled."""
    size: int


@dataclass(frozen=True)
class DataFolder:
    root: Path
    items: list[ImageItem]
    class_names: list[str]
    """Names indexed by class index (may be longer than the folders present, e.g. from labels)."""
    labelled: bool
    ignored: list[tuple[str, str]]
    """Files under the root that were not considered, with the reason (e.g. outside class folders)."""


class DecodeFailure(Exception):
    """An image that could not be read; ``str(exc)`` is the reason shown to the user."""


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def _image_files(folder: Path, root: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, root)
    )


def read_labels(labels: str | list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, list):
        return [str(x) for x in labels]
    path = Path(labels)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read data.labels ({exc.strerror or exc})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DataError(f"{path}: data.labels file has no class names (one per line)")
    return names


def _class_index(names: list[str], labels: list[str] | None, root: Path) -> dict[str, int]:
    """Class folder name -> class index in the model's output order.

    Without ``data.labels``: sorted position (torchvision's ImageFolder convention). With it:
    a folder named after a label (or after an index, ``0``, ``1`` ...) gets that label's index;
    when no folder matches, the labels only name the sorted positions (e.g. WordNet-id folders
    with human-readable labels). A mix is refused: the unmatched folders would silently take
    another class's index.
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
    if unmatched:
        shown = ", ".join(f"{n!r}{did_you_mean(n, labels)}" for n in unmatched[:5]) + (
            " ..." if len(unmatched) > 5 else ""
        )
        raise DataError(
            f"{root}: class folder(s) not in data.labels: {shown}; name every class folder "
            "after a label (or its index), or none of them"
        )
    return {n: i for n, i in matched.items() if i is not None}


def scan_folder(cfg: DataConfig) -> DataFolder:
    """List the images: ImageFolder layout (one sub-folder per class) or a flat folder.

    Class folders map to class indices by name when ``data.labels`` lists the folder name, by
    number when the folder is named after an index, else by sorted position (torchvision's
    ImageFolder convention).
    """
    assert cfg.root is not None
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass --data DIR with your images")
    labels = read_labels(cfg.labels)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in class_dirs if _image_files(d, root)]
    items: list[ImageItem] = []
    ignored: list[tuple[str, str]] = []

    def item(p: Path, label: int) -> ImageItem:
        return ImageItem(p, p.relative_to(root).as_posix(), label, p.stat().st_size)

    if class_dirs:
        names = [d.name for d in class_dirs]
        index = _class_index(names, labels, root)
        if len(set(index.values())) != len(index):
            raise DataError(
                f"{root}: class folders map to the same class index ({index}); "
                "name them after data.labels entries or use consistent names"
            )
        for d in class_dirs:
            items.extend(item(p, index[d.name]) for p in _image_files(d, root))
        for p in sorted(root.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                ignored.append((p.name, "image outside the class folders"))
        n = max(index.values()) + 1
        class_names = [str(i) for i in range(max(n, len(labels or [])))]
        if labels:
            class_names[: len(labels)] = labels
        for name, idx in index.items():
            if labels is None or idx >= len(labels):
                class_names[idx] = name
        labelled = True
    else:
        items = [item(p, -1) for p in _image_files(root, root)]
        class_names = labels or []
        labelled = False
    if not items:
        raise DataError(
            f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "put images in the folder or in one sub-folder per class"
        )
    if cfg.max_images is not None and len(items) > cfg.max_images:
        items = _spread(items, cfg.max_images)
    return DataFolder(root, items, class_names, labelled, ignored)


def _spread(items: list[ImageItem], n: int) -> list[ImageItem]:
    """``n`` items spread evenly over the sorted list (so every class keeps its share)."""
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, channels: int, name: str = "") -> np.ndarray:
    """Bytes -> float32 array H×W×channels in [0, 1]. Raises :class:`DecodeFailure`."""
    if not data:
        raise DecodeFailure("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
                img.seek(0)  # first frame of animated GIF/WebP/TIFF
                img.load()
                oriented = ImageOps.exif_transpose(img) or img
                return _to_array(oriented, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeFailure(f"decompression bomb refused ({exc})") from None
    except UnidentifiedImageError:
        raise DecodeFailure("not an image Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError) as exc:
        msg = str(exc) or type(exc).__name__
        raise DecodeFailure(f"unreadable image ({msg})") from None


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return rgb * a + _BACKGROUND / 255.0 * (1.0 - a)


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.max(initial=0) > 65535:
            top = float(arr.max())
        else:
            top = 65535.0 if (mode != "I" or arr.max(initial=0) > 255) else 255.0
        gray = np.clip(arr / top, 0.0, 1.0)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("PA",):
            img = img.convert("RGBA")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...
        arr = np.asarray(img).astype(np.float64) / 255.0
        if img.mode == "L":
            rgb = np.repeat(arr[..., None], 3, axis=2)
        elif img.mode == "LA":
            rgb = _composite(np.repeat(arr[..., :1], 3, axis=2), arr[..., 1])
        elif img.mode == "RGBA":
            rgb = _composite(arr[..., :3], arr[..., 3])
        else:
            rgb = arr[..., :3]
    if channels == 1:
        # ITU-R 601-2 luma, as Pillow's "L" conversion.
        gray = rgb @ np.array([0.299, 0.587, 0.114])
        return gray[..., None].astype(np.float32)
    if channels == 3:
        return rgb.astype(np.float32)
    raise DecodeFailure(f"model expects {channels} input channels; only 1 or 3 are supported")


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessor:
    """Resize (shorter side), centre-crop, normalise: what the model sees."""

    channels: int
    resize: int | None
    crop: int | None
    mean: torch.Tensor
    std: torch.Tensor
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, cfg: PreprocessConfig, channels: int) -> Preprocessor:
        def per_channel(values: Sequence[float], key: str) -> torch.Tensor:
            if len(values) == channels:
                t = torch.tensor(values, dtype=torch.float32)
            elif len(values) == 1:
                t = torch.tensor(list(values) * channels, dtype=torch.float32)
            elif channels == 1 and len(values) == 3:
                t = torch.tensor([sum(values) / 3.0], dtype=torch.float32)
            else:
                raise DataError(
                    f"preprocess.{key} has {len(values)} values but the model takes "
                    f"{channels} input channel(s); give {channels} value(s)"
                )
            return t.view(channels, 1, 1)

        return cls(
            channels,
            cfg.resize,
            cfg.crop,
            per_channel(cfg.mean, "mean"),
            per_channel(cfg.std, "std"),
            cfg.interpolation,
        )

    def geometry(self, array: np.ndarray) -> torch.Tensor:
        """H×W×C float [0,1] -> C×h×w float [0,1] after resize and crop."""
        t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        if self.resize is not None:
            h, w = t.shape[1:]
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            if size != (h, w):
                if self.interpolation == "nearest":
                    t = F.interpolate(t[None], size=size, mode="nearest-exact")[0]
                else:
                    t = F.interpolate(
                        t[None],
                        size=size,
                        mode=self.interpolation,
                        align_corners=False,
                        antialias=scale < 1,
                    )[0].clamp_(0.0, 1.0)
        if self.crop is not None:
            t = center_crop(t, self.crop)
        return t.contiguous()

    def normalise(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.mean.to(t.device)) / self.std.to(t.device)

    def denormalise(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.std.to(t.device) + self.mean.to(t.device)

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        return self.normalise(self.geometry(array))


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop to size×size; pads with the image's edge when it is smaller."""
    _, h, w = t.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        t = F.pad(t[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")[0]
        _, h, w = t.shape
    top, left = (h - size) // 2, (w - size) // 2
    return t[:, top : top + size, left : left + size]


def to_display(t: torch.Tensor) -> np.ndarray:
    """C×H×W in [0,1] -> H×W×3 uint8 (gray replicated)."""
    t = t.detach().float().clamp(0, 1).cpu()
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return (t.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Sample:
    index: int
    input: torch.Tensor | None
    error: str | None
    sha256: str


class ImageDataset(torch.utils.data.Dataset[Sample]):
    """Reads, hashes, decodes and preprocesses one image; failures come back as data."""

    def __init__(self, folder: DataFolder, pre: Preprocessor) -> None:
        self.folder = folder
        self.pre = pre

    def __len__(self) -> int:
        return len(self.folder.items)

    def read(self, index: int) -> tuple[torch.Tensor, str]:
        """The preprocessed input of one image and its SHA-256. Raises DecodeFailure."""
        item = self.folder.items[index]
        try:
            data = item.path.read_bytes()
        except OSError as exc:
            raise DecodeFailure(f"cannot read file ({exc.strerror or exc})") from None
        digest = hashlib.sha256(data).hexdigest()
        return self.pre(decode_image(data, self.pre.channels, item.relpath)), digest

    def __getitem__(self, index: int) -> Sample:
        try:
            x, digest = self.read(index)
            return Sample(index, x, None, digest)
        except DecodeFailure as exc:
            item = self.folder.items[index]
            digest = (
                hashlib.sha256(item.path.read_bytes()).hexdigest() if item.path.exists() else ""
            )
            return Sample(index, None, str(exc), digest)


def collate_samples(
    samples: list[Sample],
) -> tuple[torch.Tensor | None, torch.Tensor, list[Sample]]:
    """Stack the decodable samples; return (batch or None, their indices, all samples)."""
    good = [s for s in samples if s.input is not None]
    batch = torch.stack([s.input for s in good]) if good else None  # type: ignore[misc]
    idx = torch.tensor([s.index for s in good], dtype=torch.long)
    return batch, idx, samples
