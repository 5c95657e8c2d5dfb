"""Ctrl-C and SIGTERM: the run always stops, no output is replaced, children are cleaned up.

Python delivers Ctrl-C as a ``KeyboardInterrupt`` raised wherever the main thread happens to be.
When that is inside a ``__del__`` method or a weakref callback (torch's caches use
``WeakKeyDictionary``; a DataLoader iterator shuts its workers down in ``__del__``), Python prints
"Exception ignored in ... KeyboardInterrupt" and carries on: the run went on and replaced the
previous report. SIGTERM, by default, kills the process on the spot: hidden temporary files stay
behind and DataLoader workers outlive the parent until their watchdog notices.

So, under :func:`interrupt_handlers`:

* SIGINT and SIGTERM are **recorded** in a flag, then raised as ``KeyboardInterrupt`` (SIGTERM as
  :class:`Terminated`, a subclass, so every cleanup path for Ctrl-C runs for it too);
* :func:`raise_if_interrupted` re-raises a recorded interrupt: called at stage boundaries and just
  before outputs are replaced, it stops a run whose interrupt was swallowed;
* inside :func:`deferred_interrupts` (the few renames that commit a report) a signal is only
  recorded and raised when the block ends, so a folder never holds half an old and half a new
  report;
* on the way out the old handlers come back, this process's own child processes (DataLoader
  workers) are terminated, and the process exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_SIGINT = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""
EXIT_SIGTERM = 143
"""Exit status after SIGTERM (128 + SIGTERM)."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup path for Ctrl-C also runs for it."""


class _State:
    recorded: int | None = None
    """The first signal received under the handlers (None: none)."""
    deferred: int = 0
    """Depth of :func:`deferred_interrupts` blocks: while positive, signals are only recorded."""


_state = _State()


def _exception_for(signum: int) -> KeyboardInterrupt:
    if signum == signal.SIGTERM:
        return Terminated(f"terminated by {signal.Signals(signum).name}")
    return KeyboardInterrupt()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state.recorded is None:
        _state.recorded = signum
    if _state.deferred == 0:
        raise _exception_for(signum)


def interrupted() -> int | None:
    """The signal number recorded under :func:`interrupt_handlers`, or None."""
    return _state.recorded


def raise_if_interrupted() -> None:
    """Raise the recorded interrupt again (``KeyboardInterrupt``, or :class:`Terminated`).

    Call it at stage boundaries (after loading, after the dataset pass, between analyses) and
    just before writing outputs: an interrupt that Python swallowed in a ``__del__`` or weakref
    callback still stops the run there. Does nothing when no interrupt was recorded.
    """
    if _state.recorded is not None:
        raise _exception_for(_state.recorded)


def exit_code(signum: int | None) -> int:
    """130 for SIGINT (or an unrecorded ``KeyboardInterrupt``), 143 for SIGTERM, else 128 + n."""
    return 128 + int(signum if signum is not None else signal.SIGINT)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block a signal is recorded but not raised; it is raised when the block ends.

    For the short steps that must not be cut in half (renaming staged outputs over the old
    ones). Only effective under :func:`interrupt_handlers`, whose handler does the recording.
    """
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1
    if _state.deferred == 0:
        raise_if_interrupted()


def stop_child_processes(timeout: float = 2.0) -> None:
    """Terminate this process's own ``multiprocessing`` children (DataLoader workers), then kill
    those still alive after ``timeout`` seconds. Never touches any other process."""
    children = multiprocessing.active_children()
    for p in children:
        p.terminate()
    for p in children:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(timeout)


@contextmanager
def interrupt_handlers(notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM turned into recorded interrupts (see module docs).

    When the block ends after an interrupt (raised through it, or recorded and swallowed), the
    previous handlers are restored, child processes are stopped, ``notify`` gets one line, and
    ``SystemExit(130)`` (SIGINT) or ``SystemExit(143)`` (SIGTERM) is raised, also when the
    interrupt surfaced as another exception or ``SystemExit``. Without an interrupt, exceptions
    pass through unchanged (with the handlers restored). Outside the main thread, where Python
    cannot install signal handlers, the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    _state.recorded = None
    _state.deferred = 0
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    except KeyboardInterrupt as exc:
        if _state.recorded is None:  # raised by code, not by a signal: treat as Ctrl-C
            _state.recorded = int(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except BaseException:
        # An interrupt that surfaced as another exception (a library wrapping it, a worker that
        # died because it was stopped) is still an interrupt; anything else passes through.
        if _state.recorded is None:
            raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    signum, _state.recorded = _state.recorded, None
    if signum is None:
        return
    stop_child_processes()
    if notify is not None:
        notify(f"interrupted ({signal.Signals(signum).name}): the run stopped")
    raise SystemExit(exit_code(signum))
