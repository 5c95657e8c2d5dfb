"""Progress bars: shown on a terminal, silent with --quiet or when stderr is not a TTY."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from conftest import make_config, write_image_folder

from reportgen.api import run_report
from reportgen.runtime.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(tmp_path: Path, tiny_weights: Path, progress: Progress) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path, {"model.weights": str(tiny_weights)}, analyses=["filters", "occlusion"]
    )
    assert run_report(cfg, progress=progress).exit_code == 0


def test_bars_on_a_terminal(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    _run(tmp_path, tiny_weights, Progress(quiet=False))
    shown = err.getvalue()
    assert "dataset pass" in shown
    assert "analyses" in shown  # one bar over the analyses, naming the running one
    assert "occlusion:" in shown  # and the long analyses' own bars


@pytest.mark.parametrize("quiet, tty", [(True, True), (False, False)])
def test_silent_when_quiet_or_not_a_tty(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool, tty: bool
) -> None:
    err = FakeTerminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _run(tmp_path, tiny_weights, Progress(quiet=quiet))
    assert err.getvalue() == ""
