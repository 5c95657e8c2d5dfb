"""The data folder: scanning, decoding every image kind, and skipping unreadable files."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_ARCH, TINY_GRAY_ARCH, class_image, make_config, write_image_folder
from PIL import Image

from reportgen.api import run_report
from reportgen.cli import cli
from reportgen.config import DataConfig
from reportgen.errors import DataError
from reportgen.loading.folders import DecodeFailure, scan_folder
from reportgen.loading.images import decode_image


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb_pattern() -> np.ndarray:
    """16×24 RGB: four flat colour blocks (flat, so that JPEG stays close)."""
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[:8, :12] = (255, 0, 0)
    arr[:8, 12:] = (0, 255, 0)
    arr[8:, :12] = (0, 0, 255)
    arr[8:, 12:] = (255, 255, 255)
    return arr


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "kwargs", "tol"),
    [
        ("PNG", {}, 0.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("GIF", {}, 0.0),
        ("JPEG", {"quality": 95}, 0.12),
    ],
)
def test_formats_decode_to_the_same_pixels(fmt: str, kwargs: dict[str, object], tol: float) -> None:
    arr = rgb_pattern()
    out = decode_image(encode(Image.fromarray(arr), fmt, **kwargs), 3)
    assert out.shape == (16, 24, 3) and out.dtype == np.float32
    # Compare block centres (JPEG blurs the edges between blocks).
    for y, x in [(3, 5), (3, 18), (12, 5), (12, 18)]:
        np.testing.assert_allclose(out[y, x], arr[y, x] / 255.0, atol=tol + 1e-6)


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = decode_image(data, 3)
    np.testing.assert_allclose(out[4, 4], [1.0, 0.0, 0.0])


def test_exif_orientation_is_applied() -> None:
    # Stored 20 wide × 10 high, left half black, right half white; Orientation 6 means "rotate
    # 90° clockwise to display", so the displayed image is 10 wide × 20 high, black on top.
    arr = np.zeros((10, 20), np.uint8)
    arr[:, 10:] = 255
    img = Image.fromarray(arr, "L")
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()), 1)
    assert out.shape == (20, 10, 1)
    assert out[:8].mean() < 0.1 and out[12:].mean() > 0.9
    # Without the tag the image stays as stored.
    plain = decode_image(encode(img, "JPEG", quality=95), 1)
    assert plain.shape == (10, 20, 1)


# --------------------------------------------------------------------------- modes


def test_rgba_alpha_is_composited_onto_white() -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    arr[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    arr[1, 1] = (0, 0, 255, 255)
    out = decode_image(encode(Image.fromarray(arr, "RGBA"), "PNG"), 3)
    np.testing.assert_allclose(out[0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(out[0, 1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1, 0], [127 / 255] * 3, atol=1e-6)
    np.testing.assert_allclose(out[1, 1], [0.0, 0.0, 1.0])


def test_la_alpha_is_composited() -> None:
    arr = np.array([[[0, 0], [0, 255]]], np.uint8)  # transparent black, opaque black
    out = decode_image(encode(Image.fromarray(arr, "LA"), "PNG"), 1)
    np.testing.assert_allclose(out[0, :, 0], [1.0, 0.0], atol=1e-6)


def test_palette_with_and_without_transparency() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    opaque = decode_image(encode(img, "PNG"), 3)
    np.testing.assert_allclose(opaque[0], [[1, 0, 0], [0, 0, 1]])
    transparent = decode_image(encode(img, "PNG", transparency=0), 3)
    np.testing.assert_allclose(transparent[0], [[1, 1, 1], [0, 0, 1]])
    # GIF transparency takes the same path.
    gif = decode_image(encode(img, "GIF", transparency=0), 3)
    np.testing.assert_allclose(gif[0], [[1, 1, 1], [0, 0, 1]])


def test_cmyk() -> None:
    img = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    for fmt in ("JPEG", "TIFF"):
        out = decode_image(encode(img, fmt), 3)
        np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.0], atol=0.03)


def test_16_bit_is_scaled_not_clamped() -> None:
    arr = np.array([[0, 32768, 65535, 1000]], np.uint16)
    img = Image.fromarray(arr)  # mode I;16
    assert img.mode == "I;16"
    for fmt in ("PNG", "TIFF"):
        out = decode_image(encode(img, fmt), 1)
        np.testing.assert_allclose(
            out[0, :, 0], [0.0, 32768 / 65535, 1.0, 1000 / 65535], rtol=1e-5, atol=1e-7
        )


def test_one_bit() -> None:
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    out = decode_image(encode(img, "PNG"), 3)
    np.testing.assert_allclose(out[0], [[0, 0, 0], [1, 1, 1]])


def test_channel_conversion() -> None:
    gray = decode_image(encode(Image.new("L", (2, 2), 51), "PNG"), 3)
    np.testing.assert_allclose(gray[0, 0], [0.2, 0.2, 0.2], atol=1e-6)
    luma = decode_image(encode(Image.new("RGB", (2, 2), (255, 0, 0)), "PNG"), 1)
    assert luma.shape == (2, 2, 1)
    np.testing.assert_allclose(luma[0, 0, 0], 0.299, atol=1e-6)


# --------------------------------------------------------------------------- unreadable files


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims a huge image (a decompression bomb) with no real data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bad_bytes_raise_decode_failure_with_a_reason() -> None:
    good_png = encode(Image.fromarray(class_image(0, 0)), "PNG")
    good_jpg = encode(Image.fromarray(class_image(0, 0)), "JPEG")
    cases = {
        b"": "empty file",
        good_png[: len(good_png) // 2]: "unreadable image",
        good_jpg[: len(good_jpg) // 2]: "unreadable image",
        b"just some text": "not an image",
        png_claiming(60000, 60000): "decompression bomb",
    }
    for data, reason in cases.items():
        with pytest.raises(DecodeFailure, match=reason):
            decode_image(data, 3)


def test_unreadable_files_are_skipped_listed_and_the_run_goes_on(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 3, "b": 3}, size=32)
    png = (root / "a" / "a_000.png").read_bytes()
    jpg = encode(Image.fromarray(class_image(1, 9, 32)), "JPEG")
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (root / "b" / "text.jpg").write_text("not an image at all")
    (root / "b" / "huge.png").write_bytes(png_claiming(60000, 60000))
    # Over Pillow's limit (set low here) but under twice it: Pillow only warns; we refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    Image.fromarray(class_image(0, 7, 48)).save(root / "a" / "bomb_warning.png")
    # Ignored, not skipped: non-image suffixes and hidden files and folders.
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"")
    (root / "b" / ".ipynb_checkpoints").mkdir()
    (root / "b" / ".ipynb_checkpoints" / "y.png").write_bytes(b"")

    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["neighbors"])
    result = run_report(cfg)
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    data = summary["data"]
    assert data["num_images"] == 6
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert set(reasons) == {
        "a/zero.png",
        "a/truncated.png",
        "a/bomb_warning.png",
        "b/truncated.jpg",
        "b/text.jpg",
        "b/huge.png",
    }
    assert data["num_skipped"] == 6
    assert "empty file" in reasons["a/zero.png"]
    assert "unreadable" in reasons["a/truncated.png"]
    assert "unreadable" in reasons["b/truncated.jpg"]
    assert "not an image" in reasons["b/text.jpg"]
    assert "decompression bomb" in reasons["b/huge.png"]
    assert "decompression bomb" in reasons["a/bomb_warning.png"]
    html = (tmp_path / "out" / "report.html").read_text()
    for path in reasons:
        assert path in html
    for ignored in ("notes.txt", ".hidden.png", ".cache/", "ipynb"):
        assert ignored not in html


def test_no_readable_image_is_an_input_error(tmp_path: Path, tiny_weights: Path) -> None:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"")
    (root / "a" / "y.jpg").write_text("nope")
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)})
    with pytest.raises(DataError, match=r"none of the 2 image\(s\) could be read"):
        run_report(cfg)
    args = ["run", "--model", TINY_ARCH, "--weights", str(tiny_weights), "--data", str(root)]
    args += ["--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and "could be read" in out.output


@pytest.mark.parametrize("content", ["empty", "non_images", "hidden_only"])
def test_folder_without_images_is_an_error(tmp_path: Path, content: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    if content == "non_images":
        (root / "readme.md").write_text("x")
        (root / "cls").mkdir()
        (root / "cls" / "labels.csv").write_text("x")
    elif content == "hidden_only":
        (root / ".thumbs").mkdir()
        Image.new("RGB", (4, 4)).save(root / ".thumbs" / "a.png")
        Image.new("RGB", (4, 4)).save(root / ".b.png")
    with pytest.raises(DataError, match="no images found"):
        scan_folder(DataConfig(root=str(root)))
    with pytest.raises(DataError, match="data folder not found"):
        scan_folder(DataConfig(root=str(tmp_path / "missing")))


# --------------------------------------------------------------------------- folder layouts


def test_image_folder_layout_is_sorted_and_labelled(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"zebra": 2, "ant": 3, "moth": 1}, size=8)
    Image.new("RGB", (4, 4)).save(root / "stray.png")
    folder = scan_folder(DataConfig(root=str(root)))
    assert folder.labelled
    assert folder.class_names == ["ant", "moth", "zebra"]
    assert [i.relpath for i in folder.items] == [
        "ant/ant_000.png",
        "ant/ant_001.png",
        "ant/ant_002.png",
        "moth/moth_000.png",
        "zebra/zebra_000.png",
        "zebra/zebra_001.png",
    ]
    assert [i.label for i in folder.items] == [0, 0, 0, 1, 2, 2]
    assert folder.ignored == [("stray.png", "image outside the class folders")]


def test_flat_folder_is_unlabelled(tmp_path: Path, tiny_weights: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"b": 3, "a": 3}, size=32, flat=True)
    folder = scan_folder(DataConfig(root=str(root)))
    assert not folder.labelled
    assert [i.relpath for i in folder.items][:2] == ["a_000.png", "a_001.png"]
    assert {i.label for i in folder.items} == {-1}
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["neighbors"])
    run_report(cfg)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"]["accuracy"] is None
    assert summary["data"]["labelled"] is False
    assert {s["status"] for s in summary["sections"]} == {"ok"}


def test_labels_from_a_file_and_a_list(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"dog": 1, "cat": 1}, size=8)
    labels = tmp_path / "labels.txt"
    labels.write_text("bird\ncat\n\ndog\n")
    folder = scan_folder(DataConfig(root=str(root), labels=str(labels)))
    assert folder.class_names == ["bird", "cat", "dog"]
    assert [(i.relpath, i.label) for i in folder.items] == [
        ("cat/cat_000.png", 1),
        ("dog/dog_000.png", 2),
    ]
    folder = scan_folder(DataConfig(root=str(root), labels=["dog", "cat"]))
    assert [(i.relpath, i.label) for i in folder.items] == [
        ("cat/cat_000.png", 1),
        ("dog/dog_000.png", 0),
    ]


def test_labels_name_numbered_and_positional_folders(tmp_path: Path) -> None:
    numbered = write_image_folder(tmp_path / "numbered", {"0": 1, "2": 1}, size=8)
    folder = scan_folder(DataConfig(root=str(numbered), labels=["zero", "one", "two"]))
    assert [i.label for i in folder.items] == [0, 2]
    assert folder.class_names == ["zero", "one", "two"]
    # WordNet-style folder ids with human labels: labels name the sorted positions.
    synsets = write_image_folder(tmp_path / "synsets", {"n02": 1, "n01": 1}, size=8)
    folder = scan_folder(DataConfig(root=str(synsets), labels=["tench", "goldfish"]))
    assert [(i.relpath.split("/")[0], i.label) for i in folder.items] == [("n01", 0), ("n02", 1)]
    assert folder.class_names == ["tench", "goldfish"]


def test_folders_partly_matching_labels_are_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"cat": 1, "dgo": 1}, size=8)
    with pytest.raises(DataError, match=r"'dgo' \(did you mean 'dog'\?\)"):
        scan_folder(DataConfig(root=str(root), labels=["cat", "dog", "bird"]))


def test_missing_labels_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 1}, size=8)
    with pytest.raises(DataError, match=r"cannot read data\.labels"):
        scan_folder(DataConfig(root=str(root), labels=str(tmp_path / "nope.txt")))


def test_max_images_keeps_every_class_and_is_deterministic(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 10, "b": 10, "c": 10}, size=8)
    first = scan_folder(DataConfig(root=str(root), max_images=6))
    again = scan_folder(DataConfig(root=str(root), max_images=6))
    assert len(first.items) == 6
    assert [i.relpath for i in first.items] == [i.relpath for i in again.items]
    assert {i.label for i in first.items} == {0, 1, 2}
    assert [i.relpath for i in first.items] == sorted(i.relpath for i in first.items)


def test_grayscale_model_reads_one_channel_from_its_first_conv(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", {"a": 2, "b": 2}, size=32)
    rgba = np.zeros((32, 32, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "images" / "a" / "transparent.png")
    cfg = make_config(tmp_path, {"model.arch": TINY_GRAY_ARCH}, analyses=["filters"])
    result = run_report(cfg)
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["in_channels"] == 1
    assert summary["data"]["num_images"] == 5 and summary["data"]["num_skipped"] == 0


def test_truncated_images_fail_even_after_weasyprint_was_imported() -> None:
    # WeasyPrint's import sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process; a report
    # renders its PDF in the same process, so decoding must not depend on that switch.
    import weasyprint.images  # noqa: F401
    from PIL import ImageFile

    good_png = encode(Image.fromarray(class_image(0, 0)), "PNG")
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
    try:
        with pytest.raises(DecodeFailure, match="unreadable image"):
            decode_image(good_png[: len(good_png) // 2], 3)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for WeasyPrint
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
