"""Same checkpoint, data, config and seed: byte-identical report.html, report.pdf, summary.json.

The second run happens in a fresh interpreter (another hash seed, another time) and writes to a
differently named output folder; only the data root must be the same path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS, make_config, write_image_folder

import reportgen
from reportgen.api import run_report

OUTPUTS = ["report.html", "report.pdf", "summary.json", "summary.md"]

SECOND_RUN = """
import sys
from pathlib import Path
from conftest import make_config
from reportgen.api import run_report
base, out = Path(sys.argv[1]), sys.argv[2]
run_report(make_config(base, {"model.weights": str(base / "tiny.pt"),
                              "output.formats": ["html", "pdf"], "output.dir": out,
                              "analyses.slices.min_size": 5}))
"""


@pytest.mark.slow
def test_two_runs_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from tiny_models import tiny_net

    # Both runs share a measured-batch cache of their own: another test of the same tiny model
    # running beside this one (pytest -n 2) must not measure and overwrite it between them.
    monkeypatch.setenv("REPORTGEN_CACHE_DIR", str(tmp_path / "cache"))

    base = tmp_path / "shared"
    write_image_folder(base / "images")
    (base / "images" / "circle" / "broken.png").write_bytes(b"not a png")
    torch.save(tiny_net(3).state_dict(), base / "tiny.pt")

    first = tmp_path / "out-alpha"
    run_report(
        make_config(
            base,
            {
                "model.weights": str(base / "tiny.pt"),
                "output.formats": ["html", "pdf"],
                "output.dir": str(first),
                "analyses.slices.min_size": 5,  # 17 images: the clusters are tested too
            },
        )
    )
    second = tmp_path / "second run, elsewhere"
    # The reportgen under test, not whichever one the environment installed (a worktree).
    source = Path(reportgen.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": f"{TESTS}{os.pathsep}{source}"}
    subprocess.run(
        [sys.executable, "-c", SECOND_RUN, str(base), str(second)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    for name in OUTPUTS:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        assert a == b, f"{name} differs between the two runs"
        assert b"out-alpha" not in a and b"second run" not in b, f"{name} names its folder"

    summary = json.loads((first / "summary.json").read_text())
    prov = summary["provenance"]
    assert len(prov["checkpoint_sha256"]) == 64 and len(prov["manifest_sha256"]) == 64
    assert prov["config"]["run"]["seed"] == prov["seed"] == 0
    assert {"reportgen", "torch", "torchvision"} <= set(prov["versions"])
    assert prov["device"] == "cpu"
    assert "dir" not in prov["config"]["output"]
    pdf = (first / "report.pdf").read_bytes()
    assert b"/CreationDate" not in pdf and b"/ModDate" not in pdf
