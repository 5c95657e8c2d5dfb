"""Data folders from the real world: empty and unreadable class folders, permissions, names that
are not UTF-8, symbolic links, FIFOs, mixed image sizes, a file given as the folder."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ARCH, class_image, make_config, write_image_folder
from PIL import Image
from torchvision.datasets.folder import find_classes

from reportgen.api import run_report
from reportgen.cli import cli
from reportgen.config import DataConfig, PreprocessConfig
from reportgen.errors import ConfigError, DataError
from reportgen.loading.folders import (
    DecodeFailure,
    manifest_sha256,
    output_size,
    read_file,
    scan_folder,
)
from reportgen.loading.images import (
    ImageDataset,
    Preprocessor,
    Sample,
    collate_samples,
    decode_image,
)
from reportgen.loading.sources import check_uniform_size

IS_ROOT = os.geteuid() == 0


def png(path: Path | bytes, cls: int = 0, i: int = 0, size: int = 16) -> None:
    """Write a small PNG at ``path`` (a str path or the exact bytes of one)."""
    data = Image.fromarray(class_image(cls, i, size))
    with open(path, "wb") as f:
        data.save(f, format="PNG")


def deny_scandir(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Make ``os.scandir`` fail on ``denied`` as it does without read permission (root reads all)."""
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(os.fsdecode(path)).resolve() == denied.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def deny_open(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Make ``os.open`` fail on ``denied`` as it does for a chmod 000 file (root reads all)."""
    real = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(os.fsdecode(path)).resolve() == denied.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.fixture
def restore_modes() -> Iterator[list[Path]]:
    """Paths whose permissions a test took away; given back so tmp_path can be removed."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        os.chmod(p, 0o755)


# --------------------------------------------------------------------------- class folders


def test_every_class_folder_keeps_its_index_as_torchvision_does(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"ant": 2, "bee": 0, "cat": 2}, size=8)
    (root / "dog").mkdir()  # last and empty: still a class (the model may have it)
    folder = scan_folder(DataConfig(root=str(root)))
    classes, class_to_idx = find_classes(str(root))  # the reference: torchvision's own rule
    assert folder.class_folders == classes == ["ant", "bee", "cat", "dog"]
    assert folder.class_names == classes
    assert {(i.relpath.split("/")[0], i.label) for i in folder.items} == {
        ("ant", class_to_idx["ant"]),
        ("cat", class_to_idx["cat"]),
    }
    assert [i.label for i in folder.items] == [0, 0, 2, 2]  # cat is 2, not shifted to 1
    assert folder.empty_classes == ["bee", "dog"]


def test_the_whole_run_labels_images_by_the_kept_index(tmp_path: Path, tiny_weights: Path) -> None:
    write_image_folder(tmp_path / "images", {"c0": 2, "c1": 0, "c2": 2}, size=32)
    cfg = make_config(
        tmp_path,
        {"model.weights": str(tiny_weights), "output.save_arrays": True},
        analyses=["filters"],
    )
    assert run_report(cfg).exit_code == 0
    arrays = np.load(tmp_path / "out" / "arrays.npz", allow_pickle=False)
    reference = find_classes(str(tmp_path / "images"))[1]
    expected = [reference[str(p).split("/")[0]] for p in arrays["dataset_ids"]]
    assert arrays["labels"].tolist() == expected == [0, 0, 2, 2]


def test_an_unlistable_class_folder_keeps_its_index_and_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes: list[Path]
) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 2, "b": 2, "c": 2}, size=8)
    if IS_ROOT:  # root reads a chmod 000 folder: simulate what the kernel tells everyone else
        deny_scandir(monkeypatch, root / "b")
    else:
        os.chmod(root / "b", 0)
        restore_modes.append(root / "b")
    folder = scan_folder(DataConfig(root=str(root)))
    assert folder.class_names == ["a", "b", "c"]
    assert [i.label for i in folder.items] == [0, 0, 2, 2]
    assert folder.empty_classes == ["b"]
    assert folder.ignored == [("b/", "cannot list folder (Permission denied)")]


def test_a_folder_without_search_permission_is_listed_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes: list[Path]
) -> None:
    """Read but no execute (x) permission: the names can be listed, nothing else."""
    root = write_image_folder(tmp_path / "images", {"a": 2, "b": 2}, size=8)
    (root / "b" / "deeper").mkdir()
    png(root / "b" / "deeper" / "x.png")
    if IS_ROOT:
        real = os.scandir

        class NoSearch:
            def __init__(self, entry: os.DirEntry[str]) -> None:
                self.name, self.path = entry.name, entry.path
                self._dir = entry.is_dir(follow_symlinks=False)

            def is_dir(self, follow_symlinks: bool = True) -> bool:
                return self._dir

            def stat(self, follow_symlinks: bool = True) -> os.stat_result:
                raise PermissionError(errno.EACCES, "Permission denied", self.path)

        class Listing:
            def __init__(self, path: Any) -> None:
                self.it = real(path)

            def __enter__(self) -> Iterator[Any]:
                return (NoSearch(e) for e in self.it)

            def __exit__(self, *exc: object) -> None:
                self.it.close()

        def scandir(path: Any = ".") -> Any:
            if Path(os.fsdecode(path)).resolve() == (root / "b").resolve():
                return Listing(path)
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        os.chmod(root / "b", stat.S_IRUSR)
        restore_modes.append(root / "b")
    folder = scan_folder(DataConfig(root=str(root)))
    assert [i.relpath for i in folder.items] == ["a/a_000.png", "a/a_001.png"]
    assert folder.class_names == ["a", "b"]
    reasons = dict(folder.ignored)
    assert reasons == {
        "b/b_000.png": "cannot read (Permission denied)",
        "b/b_001.png": "cannot read (Permission denied)",
        "b/deeper/": "cannot read (Permission denied)",
    }


def test_unreadable_data_root_is_one_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes: list[Path]
) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 1}, size=8)
    if IS_ROOT:
        deny_scandir(monkeypatch, root)
    else:
        os.chmod(root, 0)
        restore_modes.append(root)
    with pytest.raises(DataError, match=r"cannot list folder \(Permission denied\).*permission"):
        scan_folder(DataConfig(root=str(root)))


def test_empty_folder_not_in_labels_is_left_out_when_folders_match_labels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"cat": 1, "dog": 1}, size=8)
    (root / "misc").mkdir()
    folder = scan_folder(DataConfig(root=str(root), labels=["dog", "cat"]))
    assert [(i.relpath, i.label) for i in folder.items] == [
        ("cat/cat_000.png", 1),
        ("dog/dog_000.png", 0),
    ]
    assert ("misc/", "empty folder not named in data.labels") in folder.ignored
    png(root / "misc" / "x.png")  # not empty any more: a folder the labels do not name
    with pytest.raises(DataError, match=r"not in data\.labels: 'misc'"):
        scan_folder(DataConfig(root=str(root), labels=["dog", "cat"]))


# --------------------------------------------------------------------------- unreadable images


def test_image_without_read_permission_is_skipped_with_the_reason(
    tmp_path: Path,
    tiny_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_modes: list[Path],
) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 3, "b": 3}, size=32)
    locked = root / "b" / "b_001.png"
    if IS_ROOT:
        deny_open(monkeypatch, locked)
    else:
        os.chmod(locked, 0)
        restore_modes.append(locked)
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["neighbors"])
    result = run_report(cfg)
    assert result.exit_code == 0
    data = json.loads((tmp_path / "out" / "summary.json").read_text())["data"]
    assert data["num_images"] == 5
    assert data["skipped"] == [
        {"path": "b/b_001.png", "reason": "cannot read file (Permission denied)"}
    ]


def test_read_file_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def attempt() -> None:
        try:
            outcome.append(read_file(fifo))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5.0)
    if t.is_alive():  # free the blocked reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("read_file blocked on a FIFO")
    assert isinstance(outcome[0], DecodeFailure)
    assert str(outcome[0]) == "a FIFO, not an image file"


def test_fifo_among_the_images_is_listed_and_never_read(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 2}, size=8)
    os.mkfifo(root / "a" / "pipe.png")
    folder = scan_folder(DataConfig(root=str(root)))
    assert [i.relpath for i in folder.items] == ["a/a_000.png", "a/a_001.png"]
    assert folder.ignored == [("a/pipe.png", "a FIFO, not an image file")]


# --------------------------------------------------------------------------- names that are not UTF-8


def test_names_that_are_not_utf8_are_carried_through(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    broot = os.fsencode(root)
    os.mkdir(broot + b"/caf\xe9")  # Latin-1 "café": not valid UTF-8
    os.mkdir(broot + b"/plain")
    png(broot + b"/caf\xe9/img\xff.png", 0)
    png(broot + b"/plain/ok.png", 1)
    folder = scan_folder(DataConfig(root=str(root)))
    first = folder.items[0]
    assert first.relpath_bytes == b"caf\xe9/img\xff.png"
    assert first.display == "caf\\xe9/img\\xff.png"
    assert folder.class_names == ["caf\\xe9", "plain"]
    assert folder.class_folders[0] == os.fsdecode(b"caf\xe9")
    for text in [first.display, *folder.class_names]:
        text.encode("utf-8")  # displayable: no lone surrogate left
    # The exact string opens the file; the bytes are the ones on disk.
    with open(broot + b"/caf\xe9/img\xff.png", "rb") as f:
        assert read_file(first.path) == f.read()
    pre = Preprocessor.from_config(PreprocessConfig(resize=None, crop=None), 3)
    dataset = ImageDataset(folder, pre)
    assert dataset[0].error is None


def test_manifest_hash_uses_the_exact_bytes(tmp_path: Path) -> None:
    utf8 = [("b/é.png", 10, "ab"), ("a/x.png", 3, "cd")]
    # UTF-8 names: the hash reports always had (sorted "path\tsize\tsha256\n" lines).
    lines = "a/x.png\t3\tcd\nb/é.png\t10\tab\n".encode()
    assert manifest_sha256(utf8) == hashlib.sha256(lines).hexdigest()
    odd = [(os.fsdecode(b"a/\xff.png"), 3, "cd")]
    expected = hashlib.sha256(b"a/\xff.png\t3\tcd\n").hexdigest()
    assert manifest_sha256(odd) == expected
    # Different bytes, different hash (an escaped display string would collide with a real name).
    literal = [("a/\\xff.png", 3, "cd")]
    assert manifest_sha256(literal) != expected


# --------------------------------------------------------------------------- symbolic links


def test_links_inside_the_root_are_followed_and_links_out_of_it_are_not(tmp_path: Path) -> None:
    outside = write_image_folder(tmp_path / "elsewhere", {"z": 2}, size=8)
    root = write_image_folder(tmp_path / "images", {"a": 1, "b": 1}, size=8)
    os.symlink(outside / "z", root / "c_link_out")  # a class folder link out of the root
    os.symlink(root / "a", root / "b" / "to_a")  # inside: followed
    os.symlink(outside / "z" / "z_000.png", root / "b" / "out.png")  # file out of the root
    os.symlink(root / "a" / "a_000.png", root / "b" / "in.png")  # file inside: followed
    os.symlink("..", root / "b" / "loop")  # a cycle
    os.symlink(root / "nowhere.png", root / "b" / "broken.png")
    folder = scan_folder(DataConfig(root=str(root)))
    assert [(i.relpath, i.label) for i in folder.items] == [
        ("a/a_000.png", 0),
        ("b/b_000.png", 1),
        ("b/in.png", 1),
        ("b/to_a/a_000.png", 1),
    ]
    # Every item really lies inside the root, whatever path led to it.
    real_root = root.resolve()
    assert all(i.path.resolve().is_relative_to(real_root) for i in folder.items)
    # The link out of the root is still a class folder (index 2), empty and listed.
    assert folder.class_names == ["a", "b", "c_link_out"]
    assert folder.empty_classes == ["c_link_out"]
    reasons = dict(folder.ignored)
    assert reasons["c_link_out/"].startswith(f"symbolic link to {outside / 'z'}, outside")
    assert reasons["b/out.png"].startswith("symbolic link to ")
    assert reasons["b/loop/"] == "symbolic link to a folder that contains it (a loop); not followed"
    assert reasons["b/broken.png"] == "broken symbolic link"


def test_link_cycles_between_folders_end(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 1, "b": 1}, size=8)
    os.symlink("../b", root / "a" / "to_b")
    os.symlink("../a", root / "b" / "to_a")
    folder = scan_folder(DataConfig(root=str(root)))
    assert [i.relpath for i in folder.items] == [
        "a/a_000.png",
        "a/to_b/b_000.png",
        "b/b_000.png",
        "b/to_a/a_000.png",
    ]
    assert dict(folder.ignored).keys() == {"a/to_b/to_a/", "b/to_a/to_b/"}


def test_data_root_may_be_a_link(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": 1}, size=8)
    os.symlink(root, tmp_path / "alias")
    folder = scan_folder(DataConfig(root=str(tmp_path / "alias")))
    assert [i.relpath for i in folder.items] == ["a/a_000.png"]


def test_proc_self_does_not_wander_out_of_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    real_root = Path("/proc/self").resolve()
    visited: list[Path] = []
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        visited.append(Path(os.fsdecode(path)).resolve())
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match="no images found") as info:
        scan_folder(DataConfig(root="/proc/self"))
    assert visited and all(p.is_relative_to(real_root) for p in visited)
    assert "outside the data folder" in str(info.value)


# --------------------------------------------------------------------------- sizes and paths


@pytest.mark.parametrize(
    ("hw", "resize"), [((32, 24), None), ((30, 41), 16), ((7, 100), 9), ((64, 64), 20)]
)
def test_output_size_matches_the_preprocessor(hw: tuple[int, int], resize: int | None) -> None:
    pre = Preprocessor.from_config(PreprocessConfig(resize=resize, crop=None), 3)
    actual = pre.geometry(np.zeros((*hw, 3), np.float32)).shape[1:]
    assert output_size(hw, resize, None) == tuple(actual)
    assert output_size(hw, resize, 12) == (12, 12)


def test_mixed_sizes_without_a_crop_are_an_input_error_before_the_pass(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    png(root / "a" / "one.png", size=16)
    Image.fromarray(class_image(0, 1, 24)[:, :20]).save(root / "a" / "two.png")  # 20 wide, 24 high
    folder = scan_folder(DataConfig(root=str(root)))
    with pytest.raises(ConfigError) as info:
        check_uniform_size(folder, None, None)
    msg = str(info.value)
    assert msg.startswith("preprocess.crop is null but the images differ in size")
    assert "a/one.png 16×16" in msg and "a/two.png 20×24" in msg and "set preprocess.crop" in msg
    with pytest.raises(ConfigError, match=r"after preprocess\.resize"):
        check_uniform_size(folder, 8, None)
    check_uniform_size(folder, None, 16)  # a crop makes every size equal: nothing to check


def test_same_size_after_resize_or_exif_rotation_passes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (16, 8)).save(root / "a" / "wide.png")
    Image.new("RGB", (32, 16)).save(root / "a" / "wider.png")
    folder = scan_folder(DataConfig(root=str(root)))
    check_uniform_size(folder, 8, None)  # both 16×8 after the shorter side goes to 8
    # A JPEG stored 8×16 with EXIF orientation 6 (rotate 90°) is decoded as 16×8.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (8, 16)).save(root / "a" / "rotated.jpg", exif=exif.tobytes())
    folder = scan_folder(DataConfig(root=str(root)))
    data = (root / "a" / "rotated.jpg").read_bytes()
    assert decode_image(data, 3).shape[:2] == (8, 16)  # the decoder's view, the reference
    check_uniform_size(folder, 8, None)
    with pytest.raises(ConfigError):
        check_uniform_size(folder, None, None)  # 16×8 vs 32×16 without a resize


def test_collate_turns_an_odd_size_into_a_skipped_image() -> None:
    samples = [
        Sample(0, torch.zeros(3, 4, 4), None, "a"),
        Sample(1, torch.zeros(3, 4, 5), None, "b"),
        Sample(2, None, "empty file (0 bytes)", ""),
        Sample(3, torch.ones(3, 4, 4), None, "c"),
    ]
    batch, idx, out = collate_samples(samples)
    assert batch is not None and batch.shape == (2, 3, 4, 4)
    assert idx.tolist() == [0, 3]
    assert (
        out[1].error
        == "comes out of preprocessing at 5×4, not 4×4 like the other images; set preprocess.crop"
    )
    assert out[1].sha256 == "b"


def test_a_file_as_the_data_folder_is_one_clear_line(tmp_path: Path, tiny_weights: Path) -> None:
    image = tmp_path / "one.png"
    png(image)
    with pytest.raises(
        ConfigError, match=r"^data\.root: .*one\.png is a file, not a folder; pass --data DIR"
    ):
        scan_folder(DataConfig(root=str(image)))
    args = ["run", "--model", TINY_ARCH, "--weights", str(tiny_weights), "--data", str(image)]
    args += ["--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and "is a file, not a folder" in out.output
    assert not (tmp_path / "out").exists()


def test_an_extreme_aspect_ratio_is_skipped_before_it_is_resized(tmp_path: Path) -> None:
    """A 469-byte 1×400000 PNG made a 2.9 GB process at resize 32 (and an 80 GB allocation at
    224): now it is skipped and listed like an unreadable image, and the run goes on."""
    import resource

    from PIL import Image
    from tiny_models import tiny_net

    from reportgen.api import run_report

    write_image_folder(tmp_path / "images", {"a": 3, "b": 3})
    strip = tmp_path / "images" / "a" / "strip.png"
    Image.new("RGB", (400_000, 1), (200, 10, 10)).save(strip, optimize=True)
    assert strip.stat().st_size < 2_000
    torch.save(tiny_net(3).state_dict(), tmp_path / "tiny.pt")
    cfg = make_config(tmp_path, {"model.weights": str(tmp_path / "tiny.pt")}, ["filters"])
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_report(cfg)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    skipped = {s["path"]: s["reason"] for s in result.summary["data"]["skipped"]}
    assert "a/strip.png" in skipped, result.summary["data"]
    assert "over the 89,478,485-pixel cap" in skipped["a/strip.png"]
    assert result.summary["data"]["num_images"] == 6
    assert grown_mb < 1_000  # the resize would have needed ~4.9 GB
