"""Atomic writes: every output is either the old complete file or the new complete one."""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path

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
    try:
        for path, data in files.items():
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
                os.replace(tmp, path)
                staged.pop(0)
    except BaseException:
        for tmp, _ in staged:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
