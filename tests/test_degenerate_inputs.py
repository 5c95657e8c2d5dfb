"""Degenerate features before native code: all equal, all zero, NaN/Inf, extreme scales.

scikit-learn's and openTSNE's t-SNE segfault on such input (their PCA initialisation divides by a
zero standard deviation) and take the whole run with them. The crash is reproduced in a
subprocess first, then the guarded paths are run in subprocesses too, so a regression shows as a
failed test instead of a dead test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH, class_image
from PIL import Image
from tiny_models import tiny_net

from reportgen.methods.knn import EQUAL_RTOL, DegenerateInput, knn, point_set_problem
from reportgen.methods.tsne import scale_for_tsne, torch_tsne, tsne_input_problem

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_unguarded_scikit_learn_tsne_segfaults_on_equal_points(tmp_path: Path) -> None:
    """The hazard itself: if this stops crashing, the library fixed it (the guard stays right)."""
    out = run_python(
        """
        import numpy as np
        from sklearn.manifold import TSNE
        x = np.tile(np.arange(8, dtype=np.float32), (12, 1))
        TSNE(n_components=2, perplexity=3, init="pca", random_state=0).fit_transform(x)
        """,
        tmp_path,
    )
    assert out.returncode == -signal.SIGSEGV, out.stderr[-2000:]


def test_guarded_tsne_skips_or_maps_every_degenerate_input(tmp_path: Path) -> None:
    out = run_python(
        """
        import json
        import numpy as np
        from reportgen.contract import SkipSection
        from reportgen.analyses.embedding import EmbeddingParams, run_tsne

        rng = np.random.default_rng(0)
        row = rng.normal(size=(1, 16))
        cases = {
            "equal": np.tile(row, (12, 1)),
            "zero": np.zeros((12, 16)),
            "nan": np.where(np.eye(12, 16) > 0, np.nan, rng.normal(size=(12, 16))),
            "inf": np.where(np.eye(12, 16) > 0, np.inf, rng.normal(size=(12, 16))),
            "rounding": np.tile(row, (12, 1)) * (1 + 1e-9 * rng.normal(size=(12, 16))),
            "tiny": rng.normal(size=(12, 16)) * 1e-30,
            "huge": rng.normal(size=(12, 16)) * 1e30,
            "few": rng.normal(size=(4, 16)),
        }
        results = {}
        for kind, x in cases.items():
            # openTSNE takes ~8 s on 12 points (FFT grid overhead); the scaling that makes
            # extreme scales work runs before any backend, so two backends show it.
            extreme = kind in ("tiny", "huge")
            for backend in ("sklearn", "torch") if extreme else ("sklearn", "opentsne", "torch"):
                try:
                    emb, _ = run_tsne(x, EmbeddingParams(backend=backend), seed=0)
                    results[f"{kind}/{backend}"] = "finite" if np.isfinite(emb).all() else "NaN"
                except SkipSection as exc:
                    results[f"{kind}/{backend}"] = f"skip: {exc}"
        print(json.dumps(results))
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for backend in ("sklearn", "opentsne", "torch"):
        assert results[f"equal/{backend}"] == (
            "skip: t-SNE: all 12 points are equal (exactly), so distances between them carry "
            "no information"
        )
        assert results[f"zero/{backend}"] == results[f"equal/{backend}"]
        assert (
            results[f"nan/{backend}"]
            == "skip: t-SNE: 12 of 12 points have non-finite values (NaN or Inf)"
        )
        assert results[f"inf/{backend}"] == results[f"nan/{backend}"]
        assert results[f"rounding/{backend}"].startswith(
            "skip: t-SNE: all 12 points are equal (up to float rounding)"
        )
        assert results[f"few/{backend}"] == "skip: t-SNE: needs at least 5 points, got 4"
    for backend in ("sklearn", "torch"):
        # Extreme scales crashed scikit-learn and openTSNE (and gave NaN maps in torch) before
        # the input was brought to unit RMS; now they are mapped.
        assert results[f"tiny/{backend}"] == "finite"
        assert results[f"huge/{backend}"] == "finite"


def test_twelve_copies_of_one_image_end_to_end(tmp_path: Path) -> None:
    """The reported case: exit 139 before; now the embedding section is skipped with the reason."""
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(class_image(0, 0, 32)).save(images / f"copy_{i:02d}.png")
    torch.save(tiny_net(3).state_dict(), tmp_path / "w.pt")
    out = run_python(
        f"""
        from reportgen.cli import main
        import sys
        sys.argv = ["reportgen", "run", "--model", {TINY_ARCH!r}, "--weights", "w.pt",
                    "--data", "images", "--out", "out", "--analyses", "embedding",
                    "--format", "html", "--device", "cpu", "--quiet"]
        main()
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sections = json.loads((tmp_path / "out" / "summary.json").read_text())["sections"]
    (embedding,) = [s for s in sections if s["name"] == "embedding"]
    assert embedding["status"] == "skipped"
    assert embedding["reason"] == (
        "the penultimate features (fc2): all 12 images are equal (exactly), so distances "
        "between them carry no information"
    )


# --------------------------------------------------------------------------- in-process units


def test_point_set_problem_thresholds() -> None:
    rng = np.random.default_rng(1)
    base = torch.from_numpy(np.tile(rng.normal(size=(1, 6)), (5, 1)))
    assert point_set_problem(base, min_points=6) == "needs at least 6 points, got 5"
    scale = float(base.abs().max())
    # Just above the rounding tolerance: real (if tiny) differences are kept.
    above = base.clone()
    above[0, 0] += 3 * EQUAL_RTOL * scale
    assert point_set_problem(above) is None
    below = base.clone()
    below[0, 0] += 0.5 * EQUAL_RTOL * scale
    assert point_set_problem(below, what="images") == (
        "all 5 images are equal (up to float rounding), so distances between them carry no "
        "information"
    )
    with_nan = above.clone()
    with_nan[2, 3] = float("nan")
    assert point_set_problem(with_nan) == "1 of 5 points have non-finite values (NaN or Inf)"
    assert tsne_input_problem(np.zeros((3, 2))) == "needs at least 5 points, got 3"


def test_scale_for_tsne_is_the_centred_unit_rms_copy() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 4)) * 1e-30 + 5e-30
    scaled = scale_for_tsne(x)
    # Reference by hand: subtract the mean, divide by sqrt(mean squared distance to it).
    centred = x - x.mean(axis=0)
    rms = np.sqrt(np.mean(np.sum(centred**2, axis=1)))
    np.testing.assert_allclose(scaled, centred / rms, rtol=1e-12)
    np.testing.assert_allclose(np.mean(np.sum(scaled**2, axis=1)), 1.0, rtol=1e-12)
    with pytest.raises(DegenerateInput):
        scale_for_tsne(np.ones((5, 3)))


def test_tsne_map_does_not_depend_on_the_feature_scale() -> None:
    from reportgen.analyses.embedding import EmbeddingParams, run_tsne

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(10, 5)), rng.normal(size=(10, 5)) + 4.0])
    params = EmbeddingParams(backend="torch", perplexity=5)
    a, _ = run_tsne(x, params, seed=0)
    b, _ = run_tsne(x * 1e12, params, seed=0)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_knn_and_torch_tsne_refuse_non_finite_points() -> None:
    x = torch.randn(8, 3)
    x[5, 1] = float("inf")
    with pytest.raises(DegenerateInput, match=r"1 of 8 points have non-finite values"):
        knn(x, x, 2, exclude=torch.arange(8))
    with pytest.raises(DegenerateInput, match=r"^t-SNE all 8 points are equal"):
        torch_tsne(torch.zeros(8, 3))
    good = torch.randn(8, 3)
    dist, idx = knn(good, good, 2, exclude=torch.arange(8))
    reference = torch.cdist(good.double(), good.double()).fill_diagonal_(float("inf"))
    ref_d, ref_i = reference.topk(2, largest=False)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(dist.double(), ref_d, rtol=1e-5, atol=1e-5)


def test_a_single_image_gets_every_section_ok_or_skipped_with_a_reason(tmp_path: Path) -> None:
    """One image: the audit's label-error check needs neighbours; it failed with 'k-NN needs at
    least two points'. Now it says n/a and why, and its metric is None (not 0: 'ok')."""
    from conftest import make_config, write_image_folder
    from tiny_models import tiny_net

    from reportgen.api import run_report

    write_image_folder(tmp_path / "images", {"a": 1})
    torch.save(tiny_net(3).state_dict(), tmp_path / "tiny.pt")
    result = run_report(make_config(tmp_path, {"model.weights": str(tmp_path / "tiny.pt")}))
    statuses = {s.name: (s.status, s.reason) for s in result.sections}
    assert all(st in ("ok", "skipped") for st, _ in statuses.values()), statuses
    assert all(reason for st, reason in statuses.values() if st == "skipped"), statuses
    assert result.summary["metrics"]["possible_label_errors"] is None
    html = (tmp_path / "out" / "report.html").read_text()
    assert "needs at least two labelled images to have neighbours" in html


def test_a_write_that_hits_a_file_size_limit_is_one_line_and_exit_4(tmp_path: Path) -> None:
    """Disk full or a file-size limit while writing: the previous report survives, and the user
    gets one line naming the file and the cause with its own exit code (was: a raw OSError
    traceback and exit 1, 'a section failed')."""
    import resource

    from conftest import write_image_folder
    from tiny_models import tiny_net

    write_image_folder(tmp_path / "images", {"a": 3, "b": 3})
    torch.save(tiny_net(3).state_dict(), tmp_path / "tiny.pt")
    # No DataLoader workers: their shared-memory files would meet the limit first.
    (tmp_path / "config.yaml").write_text("run: {workers: 0}\n")
    args = [
        sys.executable, "-m", "reportgen", "run", "--config", str(tmp_path / "config.yaml"),
        "--model", TINY_ARCH, "--weights", str(tmp_path / "tiny.pt"),
        "--data", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--device", "cpu",
        "--quiet", "--format", "html", "--analyses", "filters,neighbors",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out" / "report.html").read_bytes()
    assert len(before) > 20_000

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    second = subprocess.run(
        [*args, "--seed", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=limit,
    )
    assert second.returncode == 4, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.startswith("reportgen: error:")]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert "cannot be written (the file is larger than the file-size limit)" in lines[0]
    assert "previous outputs in that folder are unchanged" in lines[0]
    assert (tmp_path / "out" / "report.html").read_bytes() == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
