"""Every benchmark in one run, as Markdown: ``python -m benchmarks.run [--device cpu|cuda] [--quick]``.

Writes benchmarks/results-<device>[-quick].md (and .json) and prints the Markdown. Timings are
ratios measured in one process run on a possibly noisy machine: never asserted in tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "report",
    "occlusion",
    "tsne",
    "knn",
    "memory",
    "baseline",
    "attribution_checks",
    "discovery",
    "feature_viz",
]


def machine(device: str) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({cpu})"
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for results-*.md/json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reportgen-bench-"))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"## {args.device}{' (quick)' if args.quick else ''}: {machine(args.device)}",
        f"{stamp}; torch {torch.__version__}, {torch.get_num_threads()} threads.",
    ]
    results: dict[str, Any] = {}
    for name in [b.strip() for b in args.only.split(",") if b.strip()]:
        try:
            mod = importlib.import_module(f"benchmarks.bench_{name}")
        except ImportError as exc:
            parts.append(f"### {name}\n\nnot run ({exc}).")
            continue
        print(f"[bench] {name} ...", flush=True)
        try:
            kwargs: dict[str, Any] = (
                {"workdir": work} if name in ("report", "memory", "baseline", "feature_viz") else {}
            )
            result = mod.run(args.device, args.quick, **kwargs)
            results[name] = result
            md = (
                mod.markdown(result)
                if hasattr(mod, "markdown")
                else f"```\n{json.dumps(result, indent=1, default=str)}\n```"
            )
        except Exception:  # one benchmark failing must not lose the others' figures
            md = f"failed:\n\n```\n{traceback.format_exc()[-2000:]}\n```"
        parts.append(f"### {name}\n\n{md}")
        print(parts[-1], flush=True)
    text = "\n\n".join(parts) + "\n"
    tag = args.device.replace(":", "") + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-{tag}.md").write_text(text, encoding="utf-8")
    (args.out / f"results-{tag}.json").write_text(
        json.dumps(results, indent=1, default=str), encoding="utf-8"
    )
    print(f"[bench] written {args.out / f'results-{tag}.md'}")


if __name__ == "__main__":
    main()
