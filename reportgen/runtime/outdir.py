"""The output folder: checked and locked before any work, left describing exactly one run.

* :func:`prepare_output_dir` runs before the model is loaded: the path must be (or become) a
  folder this process can write to. A path that is a file, a parent that is a file, a read-only
  or otherwise unwritable folder is a :class:`~reportgen.errors.ConfigError` naming
  ``output.dir`` and what to do, before any compute. No report file is written: the check is the
  lock file it creates (and removes on release), and any folder it had to create is removed again
  on release if the run left it empty.
* The lock is ``fcntl.flock`` on ``.reportgen.lock`` inside the folder, taken without waiting:
  a second run into the same folder fails at once with :class:`OutputBusy`, naming the folder and
  the process holding it. The kernel drops the lock when the process ends, however it ends, so a
  killed run never leaves a folder locked.
* :func:`remove_stale_outputs`, after a successful write, removes the files this tool writes
  (:data:`REPORT_FILES`, and temporary files of an interrupted write) that this run did not
  write, so a re-run with fewer formats leaves no ``report.pdf`` from the run before. Nothing
  else in the folder is ever touched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from reportgen.errors import ConfigError
from reportgen.report.text import display_name
from reportgen.runtime.interrupts import deferred_interrupts

REPORT_FILES = (
    "report.html",
    "report.pdf",
    "summary.json",
    "summary.md",
    "timings.json",
    "arrays.npz",
    "predictions.csv",
)
"""Every file name reportgen writes into the output folder (and the only ones it removes)."""

LOCK_NAME = ".reportgen.lock"

# tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") names: 8 characters from this alphabet.
_TEMP = re.compile(
    r"^\.(" + "|".join(re.escape(n) for n in REPORT_FILES) + r")\.[a-z0-9_]{8}\.tmp$"
)


class OutputBusy(ConfigError):
    """Another reportgen run holds the output folder's lock."""


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def _fail(path: Path, problem: str, todo: str = "choose another --out (output.dir)") -> ConfigError:
    return ConfigError(f"output.dir: {display_name(str(path))} {problem}; {todo}")


class OutputDir:
    """A checked, locked output folder. Release it with :meth:`release` or a ``with`` block."""

    def __init__(self, path: Path, fd: int | None, created: list[Path]) -> None:
        self.path = path
        self._fd = fd
        self._created = created

    @property
    def locked(self) -> bool:
        """False only where the file system offers no locks (then runs are not serialised)."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock and its file; remove the folders :func:`prepare_output_dir` created if
        the run left them empty. Safe to call twice."""
        if self._fd is not None:
            lock = self.path / LOCK_NAME
            try:
                if os.stat(lock).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(lock)  # still ours: remove it while holding the lock
            except OSError:
                pass
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only succeeds on an empty folder
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


def _create(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; the folders created, outermost first."""
    missing: list[Path] = []
    probe = path
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
            continue
        except NotADirectoryError:
            missing.append(probe)
            probe = probe.parent
            continue
        except OSError as exc:
            raise _fail(path, f"cannot be reached ({_reason(exc)})") from None
        if not stat.S_ISDIR(st.st_mode):
            if probe == path:
                raise _fail(path, "is a file, not a folder", "choose a folder path for the report")
            raise _fail(
                path,
                f"cannot be created: {display_name(str(probe))} is a file, not a folder",
                "choose a folder path for the report",
            )
        break
    created: list[Path] = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            if os.path.isdir(folder):  # created meanwhile (another process): fine
                continue
            for done in reversed(created):
                done.rmdir()
            raise _fail(
                path,
                f"cannot be created: {display_name(str(folder))} exists and is not a folder "
                "(a broken symbolic link?)",
                "choose a folder path for the report",
            ) from None
        except OSError as exc:
            for done in reversed(created):
                try:
                    done.rmdir()
                except OSError:
                    break
            raise _fail(
                path,
                f"cannot be created ({_reason(exc)})",
                "choose a folder you can write to (output.dir, --out)",
            ) from None
        created.append(folder)
    return created


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def check_apart_from_inputs(
    out: str | Path,
    inputs: Iterable[tuple[str, str | Path]],
    *,
    may_contain: bool = False,
    option: str = "--out (output.dir)",
) -> None:
    """The output folder must not be an input folder, lie inside one, or (unless
    ``may_contain``: a run whose data sits in its own report folder, as the demo's) contain one:
    writing there would replace what is being read (a run folder that compare or history reads)
    or mix the report's files into the data. ``inputs``: (what it is, path). Raises ConfigError
    naming both, before any work."""
    o = Path(out).expanduser().resolve()
    for what, path in inputs:
        i = Path(path).expanduser().resolve()
        if o == i:
            relation = "is"
        elif i in o.parents:
            relation = "lies inside"
        elif o in i.parents and not may_contain:
            relation = "contains"
        else:
            continue
        raise ConfigError(
            f"{option}: {display_name(str(o))} {relation} {what} ({display_name(str(i))}); "
            "writing the report there would overwrite or mix with what is being read — "
            "choose an output folder outside it"
        )


def prepare_output_dir(path: str | Path) -> OutputDir:
    """Check that ``path`` can hold the report and lock it for this run (see the module docs).

    Creates the folder when missing. Raises ConfigError, naming ``output.dir`` and what to do,
    when the path or a parent is a file or the folder cannot be created or written; raises
    :class:`OutputBusy` at once when another run holds the folder. Where the file system has no
    locks the folder is used unlocked (``OutputDir.locked`` is False).
    """
    out = Path(path).expanduser()
    created = _create(out)
    lock = out / LOCK_NAME
    try:
        # access(2) answers for this process's user, and with EROFS on a read-only file system;
        # the lock file's creation below is the real test (an old lock file may already exist).
        if not os.access(out, os.W_OK | os.X_OK):
            raise _fail(
                out,
                "is not writable (permission denied or a read-only file system)",
                "make it writable or choose another --out (output.dir)",
            )
        for _ in range(10):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except IsADirectoryError:
                raise _fail(out, f"holds a folder named {LOCK_NAME}", "remove it") from None
            except OSError as exc:
                raise _fail(
                    out,
                    f"is not writable ({_reason(exc)})",
                    "make it writable or choose another --out (output.dir)",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise OutputBusy(
                    f"output.dir: {display_name(str(out))} is in use by another reportgen run"
                    f"{holder}; wait for it to finish or choose another --out"
                ) from None
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    _remove_if_empty_lock(lock)
                    return OutputDir(out, None, created)
                os.close(fd)
                raise _fail(out, f"cannot be locked ({_reason(exc)})") from None
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a deleted file; open the current one again.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return OutputDir(out, fd, created)
        raise _fail(out, "could not be locked (its lock file keeps changing)")
    except BaseException:
        OutputDir(out, None, created).release()
        raise


def _remove_if_empty_lock(lock: Path) -> None:
    try:
        if os.stat(lock).st_size == 0:
            os.unlink(lock)
    except OSError:
        pass


def stale_outputs(out_dir: str | Path, written: Iterable[str | Path]) -> list[Path]:
    """The files :func:`remove_stale_outputs` would remove (see there)."""
    out = Path(out_dir)
    keep = {Path(p).name for p in written}
    found: list[Path] = []
    try:
        entries = sorted(os.scandir(out), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        stale = (entry.name in REPORT_FILES and entry.name not in keep) or bool(
            _TEMP.match(entry.name)
        )
        if stale and not entry.is_dir(follow_symlinks=False):
            found.append(out / entry.name)
    return found


def remove_stale_outputs(out_dir: str | Path, written: Iterable[str | Path]) -> list[Path]:
    """Remove the report files this run did not write; returns what was removed.

    ``written``: the files this run wrote (paths or names). Removed: files named in
    :data:`REPORT_FILES` that are not among them, and hidden temporary files an interrupted
    write left (``.report.html.<8 characters>.tmp``). Folders and every other file stay. Call it
    while holding the folder's lock, after the outputs are written; an interrupt during it is
    deferred so the removals are not cut in half.
    """
    removed = []
    with deferred_interrupts():
        for path in stale_outputs(out_dir, written):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed
