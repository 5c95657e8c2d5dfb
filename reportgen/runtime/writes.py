"""Atomic writes: every output is either the old complete file or the new complete one."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import suppress
from pathlib import Path

from reportgen.errors import OutputWriteError
from reportgen.report.text import display_name
from reportgen.runtime.interrupts import deferred_interrupts, raise_if_interrupted


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename: never a truncated file."""
    write_all_atomic({path: data})


def write_all_atomic(files: dict[Path, bytes | str]) -> None:
    """Write several files so that each is either the old complete one or the new complete one.

    Every payload goes to a temporary file next to its target first (flushed to disk); only when
    all of them are written are they renamed over the targets, one ``os.replace`` each. A failure
    while writing (disk full, Ctrl-C, SIGTERM: any ``BaseException``) removes the temporary files
    and leaves every target as it was, so an existing report is never swapped for part of a new
    one. Nothing is replaced once an interrupt was recorded (:mod:`reportgen.interrupts`), even
    one Python swallowed earlier; during the renames a signal is deferred until they are done.
    """
    raise_if_interrupted()
    staged: list[tuple[str, Path]] = []
    current: Path | None = None
    try:
        for path, data in files.items():
            current = path
            payload = data.encode("utf-8") if isinstance(data, str) else data
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            # mkstemp creates 0600 files; outputs get the usual permissions.
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        with deferred_interrupts():
            raise_if_interrupted()  # recorded (perhaps swallowed) while staging: replace nothing
            while staged:
                tmp, path = staged[0]
                current = path
                os.replace(tmp, path)
                staged.pop(0)
    except BaseException as exc:
        for tmp, _ in staged:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and current is not None:
            raise OutputWriteError(
                f"{display_name(str(current))}: cannot be written ({_why(exc)}); the previous "
                "outputs in that folder are unchanged — free space, raise the limit or choose "
                "another --out, then run again"
            ) from None
        raise


def _why(exc: OSError) -> str:
    names = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file is larger than the file-size limit",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
    }
    return names.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
