"""The default report on a real-size CNN: every section, all defaults, on ~120 photos.

Setup: a torchvision ResNet-50 (or ``--arch efficientnet_b0``, the EfficientNet-Lite class),
``weights=None`` seeded (nothing is downloaded; the compute is the trained model's), with one
output per source photo; 120 JPEG photos of about 400×350 cut (seeded crops and flips) from the colour
photographs scikit-image and scikit-learn bundle, one class folder per source photo. All report
defaults (224-px crop, HTML + PDF), the device given, a fresh batch-size cache (so the
measurement's cost is in the figure). Reports the whole run, each stage, the cost plan, and the
attribution checks against saliency + occlusion.

Run from the repository root: ``python -m benchmarks.bench_real_cnn [--arch resnet50] [--n 120]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from benchmarks.common import table, timed
from reportgen.api import load_config, run_report

GOAL_TOTAL_S = 240.0
GOAL_CHECKS_RATIO = 1.5
GOAL_FEATURE_VIZ = 0.2


def photos() -> list[np.ndarray]:
    """The bundled colour photographs (H×W×3 uint8, at least 300 px on the shorter side)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
        "colorwheel",
        "motorcycle_left",
        "cat",
    ]
    out: list[np.ndarray] = []
    for name in names:
        try:
            img = np.asarray(getattr(data, name)())
        except (AttributeError, OSError, ValueError):
            continue  # not in this scikit-image version (or not bundled)
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 300:
            out.append(np.ascontiguousarray(img[..., :3]))
    out += [np.asarray(img) for img in load_sample_images().images]
    return out


def write_photos(root: Path, n: int, seed: int = 0) -> tuple[Path, int]:
    """``n`` JPEGs of about 400×350 in one class folder per source photo; (root, classes)."""
    sources = photos()
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % len(sources)
        src = sources[c]
        h, w = src.shape[:2]
        ch, cw = int(rng.integers(h * 6 // 10, h + 1)), int(rng.integers(w * 6 // 10, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        folder = root / f"photo_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).resize((400, 350)).save(
            folder / f"img_{i:04d}.jpg", quality=90
        )
    return root, len(sources)


def run(
    arch: str = "resnet50", n: int = 120, device: str = "cpu", workdir: Path | None = None
) -> dict[str, Any]:
    work = Path(workdir or tempfile.mkdtemp(prefix="reportgen-realcnn-"))
    root, classes = write_photos(work / "photos", n)
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=classes)
    weights = work / f"{arch}.pt"
    torch.save(model.state_dict(), weights)
    os.environ["REPORTGEN_CACHE_DIR"] = str(work / "cache")  # a first run: it measures
    cfg = load_config(
        None,
        {
            "model.arch": arch,
            "model.weights": str(weights),
            "model.num_classes": classes,
            "data.root": str(root),
            "output.dir": str(work / "report"),
            "run.device": device,
            "run.quiet": True,
        },
    )
    total, result = timed(lambda: run_report(cfg), device)
    timings = json.loads((work / "report" / "timings.json").read_text())
    summary = result.summary
    an = timings["analyses"]
    checks = an.get("attribution_checks", 0.0)
    viz = an.get("feature_viz", 0.0)
    sal_occ = an.get("saliency", 0.0) + an.get("occlusion", 0.0)
    return {
        "benchmark": "real_cnn",
        "arch": arch,
        "device": device,
        "n_images": n,
        "classes": classes,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "total_seconds": total,
        "timings": timings,
        "batches": summary["run"]["batches"],
        "sections": {s.name: s.status for s in result.sections},
        "checks_over_saliency_occlusion": checks / sal_occ if sal_occ else None,
        "feature_viz_over_rest": viz / (total - viz) if viz else None,
        "stage_parameters": summary.get("attribution_checks", {}).get("stage_parameters"),
        "meets_total": total <= GOAL_TOTAL_S,
    }


def markdown(r: dict[str, Any]) -> str:
    t = r["timings"]
    plan = t.get("plan", {})
    rows: list[list[Any]] = [
        ["load", t.get("load", 0.0), ""],
        ["batch-size measurement", t.get("calibration", 0.0), ""],
        ["dataset pass", t["dataset_pass"], f"{r['n_images']} forward"],
    ]
    for name, sec in t["analyses"].items():
        p = plan.get(name) or {}
        passes = " + ".join(
            f"{p[k]:,} {label}"
            for k, label in (("forward", "forward"), ("backward", "fwd+bwd"))
            if p.get(k)
        )
        rows.append([f"analysis: {name}", sec, passes])
    rows.append(["render (HTML + PDF)", t.get("render", 0.0), ""])
    stages = r["stage_parameters"] or []
    share = (
        f"{len(stages)} stages, {sum(stages):,} parameters re-initialised by the last"
        if stages
        else ""
    )
    b = r["batches"]
    head = (
        f"{r['arch']} (weights=None, seeded, {r['classes']}-class head), {r['n_images']} JPEG photos 400×350 "
        f"→ 224², {r['device']}, {r['threads']} threads, torch {r['torch']}, all defaults; "
        f"batches {b['forward']} forward / {b['backward']} forward+backward, "
        f"{b['memory_format'].replace('_', ' ')}. **Whole report {r['total_seconds']:.0f} s** "
        f"(goal ≤ {GOAL_TOTAL_S:.0f} s); attribution checks ÷ (saliency + occlusion) = "
        f"**{r['checks_over_saliency_occlusion']:.2f}** (goal ≤ {GOAL_CHECKS_RATIO}); "
        f"feature visualisation ÷ the rest of the report = "
        f"**{r['feature_viz_over_rest'] or 0:.2f}** (goal ≤ {GOAL_FEATURE_VIZ}). {share}."
    )
    failed = [f"{k} ({v})" for k, v in r["sections"].items() if v != "ok"]
    note = "\n\nSections not ok: " + ", ".join(failed) + "." if failed else "\n\nEvery section ok."
    return head + "\n\n" + table(["stage", "seconds", "planned passes"], rows) + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    r = run(args.arch, args.n, args.device, args.workdir)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1, default=str))
    print(markdown(r))


if __name__ == "__main__":
    main()
