"""Ctrl-C and SIGTERM: the run stops (130 / 143), the previous report stays, nothing is left behind.

The subprocess tests run a small script that uses the real pieces (interrupt handlers, the output
folder lock, ``write_all_atomic``, a DataLoader with two workers over a slow dataset) and send it
real signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from reportgen.runtime.interrupts import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Terminated,
    deferred_interrupts,
    interrupt_handlers,
    interrupted,
    raise_if_interrupted,
)
from reportgen.runtime.outdir import LOCK_NAME, OutputBusy, prepare_output_dir
from reportgen.runtime.writes import write_all_atomic

ROOT = Path(__file__).resolve().parents[2]

FAKE_RUN = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    from reportgen.runtime.interrupts import interrupt_handlers
    from reportgen.runtime.outdir import prepare_output_dir
    from reportgen.runtime.writes import write_all_atomic

    out, mode = Path(sys.argv[1]), sys.argv[2]


    def say(message):
        print(message, flush=True)


    def slow_pass():
        import torch  # only this mode needs torch (its import is most of a test's time)
        from torch.utils.data import DataLoader, Dataset

        class Slow(Dataset):
            def __len__(self):
                return 100_000

            def __getitem__(self, i):
                time.sleep(0.05)
                return torch.zeros(2)

        for i, _ in enumerate(DataLoader(Slow(), batch_size=4, num_workers=2)):
            if i == 0:
                say("in pass")


    class Holder:
        def __del__(self):
            # The signal's handler runs inside __del__: Python prints "Exception ignored in"
            # and carries on, as with torch's WeakKeyDictionary callbacks.
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass


    with interrupt_handlers(lambda m: print(m, file=sys.stderr)):
        with prepare_output_dir(out):
            if mode == "pass":
                slow_pass()
            elif mode == "write":
                real_fsync = os.fsync

                def slow_fsync(fd):
                    real_fsync(fd)
                    say("writing")
                    time.sleep(60)

                os.fsync = slow_fsync
            elif mode == "swallowed":
                holder = Holder()
                del holder
                say("went on")
            write_all_atomic({out / "report.html": "new html", out / "summary.json": "new json"})
            say("written")
    """
)


def start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "report.html").write_text("old html")
    (out / "summary.json").write_text("old json")
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, out


def wait_for(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    assert got == line, f"{got!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"


def assert_previous_report_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == [
        "report.html",
        "summary.json",
    ]  # no temp, no lock
    assert (out / "report.html").read_text() == "old html"
    assert (out / "summary.json").read_text() == "old json"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_dataset_pass(tmp_path: Path, sig: int, code: int) -> None:
    proc, out = start(tmp_path, "pass")
    try:
        wait_for(proc, "in pass")
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2  # the DataLoader's two workers
        # The folder is locked while the run goes on: a second run fails at once, naming it.
        t = time.monotonic()
        with pytest.raises(
            OutputBusy, match=rf"in use by another reportgen run \(pid {proc.pid}\)"
        ):
            prepare_output_dir(out)
        assert time.monotonic() - t < 1.0
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(workers, timeout=2.0)
    assert alive == []  # no worker outlives the run
    assert proc.stderr is not None
    assert f"interrupted ({signal.Signals(sig).name}): the run stopped" in proc.stderr.read()
    assert_previous_report_untouched(out)


def test_sigterm_while_writing_leaves_no_temp_files(tmp_path: Path) -> None:
    proc, out = start(tmp_path, "write")
    try:
        wait_for(proc, "writing")  # the first temporary file is written and flushed
        assert any(p.name.startswith(".report.html.") for p in out.iterdir())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == EXIT_SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_previous_report_untouched(out)


def test_an_interrupt_swallowed_in_a_destructor_still_stops_the_run(tmp_path: Path) -> None:
    proc, out = start(tmp_path, "swallowed")
    try:
        wait_for(proc, "went on")  # Python ignored the KeyboardInterrupt and carried on ...
        assert proc.wait(timeout=30) == EXIT_SIGINT  # ... but nothing was written
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "Exception ignored in" in err and "KeyboardInterrupt" in err
    assert_previous_report_untouched(out)


# --------------------------------------------------------------------------- in-process units


def test_sigterm_becomes_exit_143_and_the_old_handlers_come_back() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    lines: list[str] = []
    with pytest.raises(SystemExit) as info, interrupt_handlers(lines.append):
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt")
    assert info.value.code == EXIT_SIGTERM
    assert lines == ["interrupted (SIGTERM): the run stopped"]
    assert {s: signal.getsignal(s) for s in before} == before
    assert interrupted() is None  # the record ends with the block


def test_terminated_is_handled_like_ctrl_c() -> None:
    assert issubclass(Terminated, KeyboardInterrupt)
    with pytest.raises(SystemExit) as info, interrupt_handlers():
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt as exc:  # existing Ctrl-C cleanup paths catch it
            assert isinstance(exc, Terminated)
            raise
    assert info.value.code == EXIT_SIGTERM


def test_a_swallowed_interrupt_is_raised_again_and_wins_over_other_exits() -> None:
    with pytest.raises(SystemExit) as info, interrupt_handlers():
        with contextlib.suppress(KeyboardInterrupt):  # as Python does in __del__ and weakrefs
            signal.raise_signal(signal.SIGINT)
        assert interrupted() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        raise SystemExit(1)  # e.g. "report written, a section failed": the interrupt wins
    assert info.value.code == EXIT_SIGINT
    raise_if_interrupted()  # outside the handlers nothing is recorded: a no-op


def test_deferred_interrupts_finish_the_block_then_raise() -> None:
    steps: list[str] = []
    with pytest.raises(SystemExit) as info, interrupt_handlers():
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")  # not cut off
        steps.append("after the block")  # never reached
    assert steps == ["after the signal"]
    assert info.value.code == EXIT_SIGINT


def test_write_all_atomic_replaces_nothing_after_a_recorded_interrupt(tmp_path: Path) -> None:
    a, b = tmp_path / "report.html", tmp_path / "summary.json"
    a.write_text("old html")
    b.write_text("old json")
    with pytest.raises(SystemExit), interrupt_handlers():
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        write_all_atomic({a: "new html", b: "new json"})
    assert a.read_text() == "old html" and b.read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.json"]


def test_write_all_atomic_removes_its_temp_files_on_any_base_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "report.html", tmp_path / "summary.json"
    a.write_text("old html")
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync_then_interrupt(fd: int) -> None:
        real_fsync(fd)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Terminated("terminated by SIGTERM")

    monkeypatch.setattr(os, "fsync", fsync_then_interrupt)
    with pytest.raises(Terminated):
        write_all_atomic({a: "new html", b: "new json"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert a.read_text() == "old html"
    assert LOCK_NAME not in os.listdir(tmp_path)
