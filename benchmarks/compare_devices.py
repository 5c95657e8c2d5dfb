"""Run one config on two devices and compare everything the report is built from.

    python -m benchmarks.compare_devices --config demo-report/config.yaml --out /tmp/cmp \
        [--devices cuda,cpu] [--precision fp32|bf16]

Both runs write arrays.npz (features, logits, t-SNE, every saliency/occlusion map of the query
images); the script prints, per array, the largest absolute difference relative to the array's
scale, then the summary metrics and section statuses side by side, and the timings. With
``run.precision: fp32`` the maps should agree to float32 round-off (TF32 is off).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.api import load_config, run_report


def run_on(config: str, device: str, out: Path, precision: str) -> dict[str, Any]:
    overrides = {
        "run.device": device,
        "run.precision": precision,
        "output.dir": str(out),
        "output.formats": ["html"],
        "output.save_arrays": True,
    }
    result = run_report(load_config(config, overrides))
    arrays = dict(np.load(out / "arrays.npz", allow_pickle=False))
    return {"summary": result.summary, "timings": result.timings, "arrays": arrays}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-12)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    first, second = args.devices.split(",")
    a = run_on(args.config, first, args.out / first.replace(":", "_"), args.precision)
    b = run_on(args.config, second, args.out / second.replace(":", "_"), "fp32")
    print(f"## {first} ({args.precision}) vs {second} (fp32)\n")
    print("| array | shape | max |diff| / scale |")
    print("|---|---|---|")
    for key in sorted(a["arrays"]):
        x, y = a["arrays"][key], b["arrays"].get(key)
        if y is None or x.dtype.kind not in "fiu" or x.shape != y.shape:
            same = y is not None and x.shape == y.shape and bool(np.all(x == y))
            print(f"| {key} | {x.shape} | {'identical' if same else 'differs'} |")
            continue
        print(f"| {key} | {x.shape} | {relative_difference(x, y):.2e} |")
    print("\n| metric | " + first + " | " + second + " |\n|---|---|---|")
    ma, mb = a["summary"]["metrics"], b["summary"]["metrics"]
    for key in sorted(set(ma) | set(mb)):
        print(f"| {key} | {ma.get(key)} | {mb.get(key)} |")
    sa = {s["name"]: s["status"] for s in a["summary"]["sections"]}
    sb = {s["name"]: s["status"] for s in b["summary"]["sections"]}
    print(f"\nsections {first}: {json.dumps(sa)}\nsections {second}: {json.dumps(sb)}")
    print(f"\ntimings {first}: {json.dumps(a['timings'], indent=None)}")
    print(f"timings {second}: {json.dumps(b['timings'], indent=None)}")


if __name__ == "__main__":
    main()
