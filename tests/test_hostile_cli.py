"""Everything a tired user can hand the CLI: one line and exit 2 before any work, or a report
with the documented exit code — never a traceback, never a partial output folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH, write_image_folder
from tiny_models import tiny_net

DOCUMENTED = {0, 1, 2, 3}
SMALL = ["--device", "cpu", "--format", "html", "--quiet"]
FAST_YAML = (
    "preprocess: {resize: 32, crop: 32, pixel_size: 16}\n"
    "run: {workers: 0, batch_size: 8}\n"
    "data: {queries: 2}\n"
)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def reportgen(*args: str) -> Done:
    """The console script's ``main()`` in this process (as a user's shell would run it), its
    exit code and its output; an uncaught exception (a traceback) fails the test."""
    from reportgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["reportgen", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return Done(code, out.getvalue(), err.getvalue())


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Path]:
    images = write_image_folder(tmp_path / "images", {"a": 4, "b": 4, "c": 4}, size=32)
    weights = tmp_path / "w.pt"
    torch.save(tiny_net(3).state_dict(), weights)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST_YAML)
    return {"images": images, "weights": weights, "cfg": cfg, "root": tmp_path}


def assert_one_line_error(done: Done, *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("reportgen: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("run: {seed: -1}\n", ["run.seed"]),
        ("run: {seed: 36893488147419103232}\n", ["run.seed"]),
        ("preprocess: {mean: [.nan], std: [1.0]}\n", ["preprocess.mean[0]", "finite"]),
        ("preprocess: {std: [.inf]}\n", ["preprocess.std[0]", "finite"]),
        ("output: {max_html_mb: .nan}\n", ["output.max_html_mb", "finite"]),
        ("preprocess: {resize: 30000}\n", ["preprocess.resize", "4096"]),
        ("analyses: {audit: {thumb_size: 0}}\n", ["analyses.audit.thumb_size"]),
        ("analyses: []\n", ["analyses", "at least one analysis"]),
        ("run: {seed: 1}\nrun: {seed: 2}\n", ["appears twice"]),
        ("analyses: {saliency: {gradcam_layer: fc2}}\n", ["gradcam_layer", "spatial"]),
        (
            "analyses: {max_patches: {layers: [conv1], channels: [99]}}\n",
            ["max_patches.channels", "99"],
        ),
        ("gates: ['acuracy>=0.5']\n", ["did you mean 'accuracy'"]),
    ],
)
def test_bad_config_values_are_one_line_before_any_work(
    base: dict[str, Path], yaml_text: str, needles: list[str]
) -> None:
    cfg = base["root"] / "bad.yaml"
    cfg.write_text(yaml_text)
    out = base["root"] / "out"
    done = reportgen(
        "run", "--config", str(cfg), "--model", TINY_ARCH, "--weights", str(base["weights"]),
        "--data", str(base["images"]), "--out", str(out), *SMALL,
    )  # fmt: skip
    assert_one_line_error(done, *needles)
    assert not out.exists()


def test_bad_files_and_flags(base: dict[str, Path]) -> None:
    root = base["root"]
    run = ["run", "--model", TINY_ARCH, "--data", str(base["images"]), *SMALL]
    latin1 = root / "latin1.yaml"
    latin1.write_bytes("data: {labels: [caf\xe9]}\n".encode("latin-1"))
    assert_one_line_error(
        reportgen(*run, "--config", str(latin1), "--out", str(root / "o1")), "UTF-8"
    )
    assert_one_line_error(
        reportgen(*run, "--analyses", "", "--out", str(root / "o2")), "--analyses"
    )
    assert_one_line_error(reportgen(*run, "--seed", "-5", "--out", str(root / "o3")), "--seed")
    empty = root / "empty.pt"
    empty.write_bytes(b"")
    assert_one_line_error(
        reportgen(*run, "--weights", str(empty), "--out", str(root / "o4")), "empty"
    )
    assert_one_line_error(
        reportgen(*run, "--weights", str(root / "images"), "--out", str(root / "o5")), "folder"
    )
    a_file = root / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(
        reportgen(
            "run", "--model", TINY_ARCH, "--data", str(a_file), *SMALL, "--out", str(root / "o6")
        ),
        str(a_file),
    )
    assert_one_line_error(
        reportgen(*run, "--weights", str(base["weights"]), "--out", str(a_file / "sub")),
        "output.dir",
    )
    assert_one_line_error(
        reportgen("list-layers", "--model", "resnet18", "--num-classes", "-3"), "--num-classes"
    )
    for n in range(1, 7):
        assert not (root / f"o{n}").exists()


def test_demo_on_cuda_without_a_gpu_writes_nothing(tmp_path: Path) -> None:
    if torch.cuda.is_available():  # the promise is about machines without one
        return
    done = reportgen("demo", "--out", str(tmp_path / "d"), "--device", "cuda", "--quiet")
    assert_one_line_error(done, "run.device", "cuda")
    assert not (tmp_path / "d").exists()


def test_zero_queries_skips_the_per_image_sections(base: dict[str, Path]) -> None:
    for spec in ("0", "[]"):
        cfg = base["root"] / f"q{len(spec)}.yaml"
        cfg.write_text(FAST_YAML.replace("queries: 2", f"queries: {spec}"))
        out = base["root"] / f"out{len(spec)}"
        done = reportgen(
            "run", "--config", str(cfg), "--model", TINY_ARCH, "--weights", str(base["weights"]),
            "--data", str(base["images"]), "--out", str(out), *SMALL,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads((out / "summary.json").read_text())
        skipped = {s["name"]: s["reason"] for s in summary["sections"] if s["status"] == "skipped"}
        for name in ("activations", "occlusion", "saliency", "attribution_checks"):
            assert skipped[name] == "no query images (data.queries is 0)"


def test_a_rerun_with_fewer_formats_leaves_one_runs_files(base: dict[str, Path]) -> None:
    out = base["root"] / "out"
    args = [
        "run", "--config", str(base["cfg"]), "--model", TINY_ARCH, "--weights",
        str(base["weights"]), "--data", str(base["images"]), "--out", str(out),
        "--device", "cpu", "--quiet", "--analyses", "filters",
    ]  # fmt: skip
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    assert reportgen(*args, "--format", "html,pdf").returncode == 0
    assert (out / "report.pdf").is_file()
    assert reportgen(*args, "--format", "html").returncode == 0
    assert not (out / "report.pdf").exists()  # no stale PDF beside the new summary
    assert (out / "notes.txt").read_text() == "mine"  # never anything that is not ours


SLOW_FACTORY = """
import os, time
import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        if x.shape[0] > 2:  # the dataset pass, not the output check on two zero images
            open(os.environ["SLOW_MARK"], "w").close()
            time.sleep(0.5)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make(num_classes: int = 3) -> Slow:
    torch.manual_seed(0)
    return Slow(num_classes)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_during_the_pass_stops_keeps_the_old_report(
    base: dict[str, Path], signum: int, code: int
) -> None:
    root = base["root"]
    factory = root / "slow.py"
    factory.write_text(SLOW_FACTORY)
    out = root / "out"
    out.mkdir()
    (out / "report.html").write_text("the previous report")
    mark = root / "mark"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reportgen",
            "run",
            "--config",
            str(base["cfg"]),
            "--model",
            f"{factory}:make",
            "--data",
            str(base["images"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--format",
            "html",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SLOW_MARK": str(mark)},
    )
    deadline = time.monotonic() + 60
    while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert (out / "report.html").read_text() == "the previous report"
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # no temp, lock or partial file


# --------------------------------------------------------------------------- generated mix


def _hostile_case(rng: random.Random, root: Path, base: dict[str, Path], i: int) -> list[str]:
    """One generated run: random config values (some fine, some not) and a random data folder."""
    data = root / f"data{i}"
    kind = rng.choice(
        [
            "classes",
            "classes",
            "flat",
            "odd-names",
            "odd-names",
            "one-image",
            "empty",
            "junk",
            "file",
        ]
    )
    if kind in ("classes", "odd-names"):
        names = (
            {"a": 2, "b": 2}
            if kind == "classes"
            else {"<i onmouseover=x>": 2, "quote\"'": 2, " sp ": 1}
        )
        write_image_folder(data, names, size=rng.choice([8, 24, 40]))
        if rng.random() < 0.5:
            (data / "a" / "broken.png").parent.mkdir(parents=True, exist_ok=True)
            (data / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    elif kind == "flat":
        write_image_folder(data, {"x": 5}, flat=True, size=16)
    elif kind == "empty":
        data.mkdir()
    elif kind == "junk":
        (data / "c").mkdir(parents=True)
        (data / "c" / "x.jpg").write_bytes(os.urandom(64))
    elif kind == "file":
        data.write_text("not a folder")
    else:
        write_image_folder(data, {"only": 1}, size=20)

    def pick(good: list[object], bad: list[object]) -> object:
        return rng.choice(bad) if rng.random() < 0.05 else rng.choice(good)

    yaml_lines = [
        f"preprocess: {{resize: {pick([16, 32, 'null'], [0, 99999])}, "
        f"crop: {pick([16, 32], ['null', -3])}, pixel_size: 8}}",
        f"run: {{workers: 0, batch_size: {pick([1, 4], [0])}, seed: {pick([0, 7], [-1])}}}",
        f"data: {{queries: {pick([0, 1, 3], ['[nope.png]'])}}}",
        f"analyses: {{neighbors: {{k: {pick([1, 3, 99], [0])}}}, "
        f"embedding: {{perplexity: {pick([2, 5], [-1])}}}}}",
    ]
    cfg = root / f"c{i}.yaml"
    cfg.write_text("\n".join(yaml_lines) + "\n")
    args = [
        "run", "--config", str(cfg), "--model", TINY_ARCH, "--data", str(data),
        "--out", str(root / f"out{i}"), "--device", "cpu", "--format", "html", "--quiet",
    ]  # fmt: skip
    if rng.random() < 0.7:
        args += ["--weights", str(base["weights"])]
    if rng.random() < 0.6:
        args += [
            "--analyses",
            rng.choice(
                ["filters,audit", "neighbors,embedding", "occlusion", "saliency,activations"]
            ),
        ]
    return args


def test_generated_hostile_mix(base: dict[str, Path]) -> None:
    rng = random.Random(1234)
    root = base["root"]
    seen: dict[int, int] = {}
    for i in range(12):
        args = _hostile_case(rng, root, base, i)
        done = reportgen(*args)
        seen[done.returncode] = seen.get(done.returncode, 0) + 1
        assert done.returncode in DOCUMENTED, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
        out = root / f"out{i}"
        if done.returncode == 2:
            assert done.stderr.strip().count("\n") == 0, done.stderr
            assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
        else:
            names = {p.name for p in out.iterdir()}
            assert {"report.html", "summary.json", "summary.md", "predictions.csv"} <= names
            assert not any(n.startswith(".") for n in names), names  # no temp or lock file
    assert seen.get(2) and (seen.get(0) or seen.get(1)), seen  # the mix has both kinds
