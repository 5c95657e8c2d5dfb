"""Peak memory of the dataset pass against N: flat except the N×D features and the thumbnails.

Each N runs in a fresh subprocess (``--child``) that loads resnet18, runs the dataset pass (load +
pass, every collector of the default analyses riding along) over N generated 64×64 JPEGs at 64²
input, and reports its peak RSS (``ru_maxrss``) and, on CUDA, ``torch.cuda.max_memory_allocated``.
The part that must grow with N is what the pass keeps per image: features (N×512 float32),
logits, and the pixel thumbnails (N×3×32×32 uint8). "Peak − kept" should stay flat.

Run: ``python -m benchmarks.bench_memory [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import resnet18_config, resnet18_weights, table, write_images


def child(n: int, root: Path, weights: Path, device: str, batch: int) -> dict[str, Any]:
    import torch

    from reportgen.api import pipeline

    cfg = resnet18_config(
        weights,
        root,
        root.parent / "unused",
        device,
        batch,
        {"data.max_images": n, "preprocess.resize": 64, "preprocess.crop": 64},
    )
    pipe = pipeline(cfg, warn=lambda _m: None)
    res = pipe.prepare().context.pass_result
    kept = res.logits.nelement() * 4 + res.pixels.nelement()
    if res.features is not None:
        kept += res.features.nelement() * 4
    out = {
        "n": len(res),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kept_mib": kept / 2**20,
        "pass_s": pipe.timings["dataset_pass"],
    }
    if torch.device(device).type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run(device: str = "cpu", quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    sizes = [250, 1000, 4000] if quick else [1000, 4000, 16000]
    work = Path(workdir or tempfile.mkdtemp(prefix="reportgen-bench-"))
    root = write_images(work / f"images64-{max(sizes)}", max(sizes), size=64)
    weights = resnet18_weights(work / "resnet18.pt")
    batch = 256 if device.startswith("cuda") else 64
    rows = []
    for n in sizes:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_memory",
                "--child",
                str(n),
                "--root",
                str(root),
                "--weights",
                str(weights),
                "--device",
                device,
                "--batch",
                str(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["peak_minus_kept_mib"] = row["peak_rss_mib"] - row["kept_mib"]
        rows.append(row)
    return {"benchmark": "memory", "device": device, "batch_size": batch, "rows": rows}


def markdown(r: dict[str, Any]) -> str:
    cuda = r["device"].startswith("cuda")
    cols = [
        "N images",
        "pass s",
        "peak RSS MiB",
        "kept (features+logits+thumbnails) MiB",
        "peak − kept MiB",
    ]
    if cuda:
        cols.append("CUDA max allocated MiB")
    rows = []
    for x in r["rows"]:
        row = [x["n"], x["pass_s"], x["peak_rss_mib"], x["kept_mib"], x["peak_minus_kept_mib"]]
        if cuda:
            row.append(x.get("cuda_max_allocated_mib"))
        rows.append(row)
    return (
        f"Dataset pass only (resnet18 at 64², batch {r['batch_size']}, default collectors), one "
        f"subprocess per N, {r['device']}.\n\n" + table(cols, rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.root, args.weights, args.device, args.batch)))
        return
    print(markdown(run(args.device, args.quick)))


if __name__ == "__main__":
    main()
