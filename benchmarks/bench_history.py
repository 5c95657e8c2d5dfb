"""``reportgen history`` at archive scale (issue 20): 50 releases × 50,000-image predictions.csv.

    python -m benchmarks.bench_history [--releases 50] [--images 50000]

One demo report is written (a small run), then copied into ``--releases`` folders whose
predictions.csv is replaced by ``--images`` generated rows (each release a little more accurate,
with random flips) and whose summary.json is updated to match; then the history page (HTML only)
is timed. No model is loaded by the history itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from reportgen.api import history_report, load_config, run_report
from reportgen.demo import prepare_demo
from reportgen.report.predictions import format_predictions, prediction_set


def make_archive(root: Path, releases: int, images: int) -> list[Path]:
    config, _ = prepare_demo(root / "train", per_class=5, epochs=1)
    base = root / "base"
    cfg = load_config(
        config,
        {"output.dir": str(base), "output.formats": ["html"], "run.quiet": True},
        analyses=["audit"],
    )
    run_report(cfg)
    rng = np.random.default_rng(0)
    k = 10
    labels = rng.integers(0, k, images)
    paths = [f"{c}/img_{i:06d}.png" for i, c in enumerate(labels)]
    shas = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    names = [str(i) for i in range(k)]
    folders = []
    for r in range(releases):
        accuracy = 0.6 + 0.3 * r / max(1, releases - 1)
        right = rng.random(images) < accuracy
        preds = np.where(right, labels, (labels + rng.integers(1, k, images)) % k)
        logits = rng.normal(0, 1, (images, k)).astype(np.float32)
        logits[np.arange(images), preds] += 4
        text = format_predictions(prediction_set(paths, shas, labels, names, logits))
        dst = root / "reports" / f"r{r:03d}"
        shutil.copytree(base, dst)
        (dst / "predictions.csv").write_text(text, encoding="utf-8")
        s = json.loads((dst / "summary.json").read_text(encoding="utf-8"))
        s["data"]["num_images"] = images
        s["metrics"]["accuracy"] = float((preds == labels).mean())
        s["run"]["release"] = f"1.{r}"
        s["output"]["predictions_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        (dst / "summary.json").write_text(json.dumps(s), encoding="utf-8")
        folders.append(dst)
    return folders


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--releases", type=int, default=50)
    ap.add_argument("--images", type=int, default=50_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t = time.perf_counter()
        folders = make_archive(root, a.releases, a.images)
        print(
            f"archive of {a.releases} releases × {a.images:,} images written in {time.perf_counter() - t:.0f} s"
        )
        t = time.perf_counter()
        run = history_report(folders, root / "H", formats=["html"])
        seconds = time.perf_counter() - t
        steps = run.summary["history"]["steps"]
        print(
            f"history: {seconds:.1f} s for {a.releases} releases × {a.images:,} rows "
            f"({len(steps)} consecutive comparisons; goal ≤ 10 s); "
            f"report.html {(root / 'H' / 'report.html').stat().st_size / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
