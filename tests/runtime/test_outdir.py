"""The output folder: checked before any work, locked, and left describing exactly one run."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reportgen.errors import ConfigError
from reportgen.runtime.outdir import (
    LOCK_NAME,
    REPORT_FILES,
    OutputBusy,
    prepare_output_dir,
    remove_stale_outputs,
    stale_outputs,
)

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def restore_modes() -> Iterator[list[Path]]:
    paths: list[Path] = []
    yield paths
    for p in paths:
        os.chmod(p, 0o755)


def test_a_new_folder_is_created_locked_and_left_empty_on_release(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "report"
    with prepare_output_dir(out) as od:
        assert od.locked and out.is_dir()
        assert os.listdir(out) == [LOCK_NAME]  # no report file, only the lock
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputBusy, match=r"is in use by another reportgen run \(pid \d+\)"):
            prepare_output_dir(out)
    # Nothing was written: every folder it created is gone again, the parent stays.
    assert not (tmp_path / "a").exists()
    assert os.listdir(tmp_path) == []


def test_an_existing_folder_keeps_its_files_and_is_free_again(tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    od = prepare_output_dir(out)
    od.release()
    od.release()  # twice is harmless
    assert os.listdir(out) == ["notes.txt"]
    with prepare_output_dir(out):  # the lock was released
        pass


def test_a_file_as_the_output_folder(tmp_path: Path) -> None:
    (tmp_path / "report").write_text("x")
    with pytest.raises(
        ConfigError,
        match=r"^output\.dir: .*report is a file, not a folder; choose a folder path for the report$",
    ):
        prepare_output_dir(tmp_path / "report")


def test_a_file_as_a_parent_of_the_output_folder(tmp_path: Path) -> None:
    (tmp_path / "parent").write_text("x")
    with pytest.raises(
        ConfigError,
        match=r"^output\.dir: .*parent/deeper/out cannot be created: .*parent is a file, not a "
        r"folder; choose a folder path for the report$",
    ):
        prepare_output_dir(tmp_path / "parent" / "deeper" / "out")
    assert (tmp_path / "parent").read_text() == "x"


def test_a_read_only_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes: list[Path]
) -> None:
    out = tmp_path / "report"
    out.mkdir()
    if IS_ROOT:  # root writes into a chmod 555 folder: simulate what everyone else is told
        real = os.access

        def access(path: Any, mode: int, **kwargs: Any) -> bool:
            if Path(path) == out and mode & os.W_OK:
                return False
            return real(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)
    else:
        os.chmod(out, stat.S_IRUSR | stat.S_IXUSR)
        restore_modes.append(out)
    with pytest.raises(
        ConfigError, match=r"^output\.dir: .*report is not writable .*make it writable"
    ):
        prepare_output_dir(out)
    assert os.listdir(out) == []


def test_an_unwritable_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_modes: list[Path]
) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    if IS_ROOT:
        real = os.mkdir

        def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            real(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    else:
        os.chmod(parent, stat.S_IRUSR | stat.S_IXUSR)
        restore_modes.append(parent)
    with pytest.raises(
        ConfigError, match=r"^output\.dir: .*ro/new/out cannot be created \(Permission denied\)"
    ):
        prepare_output_dir(parent / "new" / "out")


def test_stale_outputs_of_this_tool_are_removed_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    for name in REPORT_FILES:
        (out / name).write_text("old")
    keep_names = ["notes.txt", ".report.html.tmp", ".report.html.ABCDEFGH.tmp", "report.html.bak"]
    for name in keep_names:
        (out / name).write_text("not ours")
    (out / ".report.pdf.k3_9zq0a.tmp").write_text("half a pdf from a killed run")
    (out / "sub").mkdir()
    (out / "sub" / "report.pdf").write_text("in a sub-folder: never touched")
    written = [out / "report.html", out / "summary.json", "summary.md", out / "timings.json"]
    expected = sorted(
        [out / n for n in ("report.pdf", "arrays.npz", "predictions.csv")]
        + [out / ".report.pdf.k3_9zq0a.tmp"]
    )
    assert sorted(stale_outputs(out, written)) == expected
    assert sorted(remove_stale_outputs(out, written)) == expected
    assert sorted(os.listdir(out)) == sorted(
        ["report.html", "summary.json", "summary.md", "timings.json", "sub", *keep_names]
    )
    assert (out / "sub" / "report.pdf").exists()
    assert remove_stale_outputs(out, written) == []  # nothing left to remove


def test_a_folder_named_like_an_output_is_never_removed(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").mkdir()
    assert remove_stale_outputs(tmp_path, ["report.html"]) == []
    assert (tmp_path / "report.pdf").is_dir()


def test_a_broken_link_in_the_way(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(
        ConfigError, match=r"exists and is not a folder \(a broken symbolic link\?\)"
    ):
        prepare_output_dir(tmp_path / "out" / "report")
    assert sorted(os.listdir(tmp_path)) == ["out"]
