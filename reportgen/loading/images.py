"""Decoding every image kind users have, preprocessing, and the dataset the pass reads.

Decoding is defensive: a file that cannot be read becomes a :class:`DecodeFailure` with the reason,
never an exception that ends the run. Pillow's decompression-bomb limit stays in force (its warning
is promoted to an error), only the formats below are accepted, EXIF orientation is applied, GIFs
give their first frame, alpha is composited onto white, 16-bit images are scaled (not clamped).
Scanning the folder and reading files: :mod:`reportgen.loading.folders`.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from reportgen.config import PreprocessConfig
from reportgen.errors import DataError
from reportgen.loading.folders import (
    _BACKGROUND,
    PIL_FORMATS,
    DataFolder,
    DecodeFailure,
)
from reportgen.loading.sources import read_item

# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, channels: int, name: str = "") -> np.ndarray:
    """Bytes -> float32 array H×W×channels in [0, 1]. Raises :class:`DecodeFailure`."""
    if not data:
        raise DecodeFailure("empty file (0 bytes)")
    # A truncated file must fail, whatever another library set globally (WeasyPrint's import
    # turns Pillow's LOAD_TRUNCATED_IMAGES on for the whole process).
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
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
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


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
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                raise DecodeFailure(
                    f"a {w}×{h} image would be {size[1]}×{size[0]} after resizing the shorter "
                    f"side to {self.resize} px, over the {MAX_RESIZED_PIXELS:,}-pixel cap "
                    "(an extreme aspect ratio); skipped"
                )
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
    size: int = -1
    """Bytes read (-1 when the read failed)."""


MAX_RESIZED_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
"""No image is resized to more pixels than Pillow agrees to decode (its decompression-bomb
limit): a 469-byte 1×400000 PNG resized to a 32-px shorter side would be 409 megapixels."""


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
        data = read_item(self.folder, item)
        digest = hashlib.sha256(data).hexdigest()
        return self.pre(decode_image(data, self.pre.channels, item.relpath)), digest

    def __getitem__(self, index: int) -> Sample:
        item = self.folder.items[index]
        try:
            data = read_item(self.folder, item)
        except DecodeFailure as exc:
            return Sample(index, None, str(exc), "")
        digest = hashlib.sha256(data).hexdigest()
        try:
            x = self.pre(decode_image(data, self.pre.channels, item.relpath))
        except DecodeFailure as exc:
            return Sample(index, None, str(exc), digest, len(data))
        return Sample(index, x, None, digest, len(data))


def collate_samples(
    samples: list[Sample],
) -> tuple[torch.Tensor | None, torch.Tensor, list[Sample]]:
    """Stack the decodable samples; return (batch or None, their indices, all samples).

    Samples that come out of preprocessing at another size than the batch's first one are
    turned into failures with the reason (never a crash inside a worker). :func:`check_uniform_size`
    refuses such folders before the pass from the image headers; this is the backstop for a file
    whose header did not tell.
    """
    good = [s for s in samples if s.input is not None]
    if good:
        shape = good[0].input.shape  # type: ignore[union-attr]
        odd = {id(s) for s in good if s.input.shape != shape}  # type: ignore[union-attr]
        if odd:

            def size(s: Sample) -> str:
                return "×".join(map(str, s.input.shape[1:][::-1]))  # type: ignore[union-attr]

            want = size(good[0])
            samples = [
                Sample(
                    s.index,
                    None,
                    f"comes out of preprocessing at {size(s)}, not {want} like the other images; "
                    "set preprocess.crop",
                    s.sha256,
                    s.size,
                )
                if id(s) in odd
                else s
                for s in samples
            ]
            good = [s for s in samples if s.input is not None]
    batch = torch.stack([s.input for s in good]) if good else None  # type: ignore[misc]
    idx = torch.tensor([s.index for s in good], dtype=torch.long)
    return batch, idx, samples
