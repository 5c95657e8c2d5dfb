"""Data sources at scale (issue 18): a 1M-row manifest parsed and validated, and re-reads that
open one member or row, never the whole source.

    python -m benchmarks.bench_sources [--rows 1000000] [--out DIR]

Reports (one run, ratios where the machine's noise matters):
- seconds to parse + validate a CSV and a Parquet manifest of ``--rows`` rows (path, label as a
  class name, two metadata columns), and the Python heap it keeps per row (tracemalloc);
- seconds to re-read one image from the middle of a 4-shard WebDataset set and from a Parquet
  file with image bytes, as a ratio to reading the same image file from a folder.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.config import DataConfig
from reportgen.loading.containers import scan_hf, scan_shards
from reportgen.loading.manifest import scan_manifest
from reportgen.loading.sources import read_item


def write_manifest(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "site", "age"])
        for i in range(rows):
            w.writerow(
                [f"d{i % 1000:03d}/img_{i:07d}.jpg", f"class_{i % 1000}", "ABC"[i % 3], i % 90]
            )


def bench_manifest(tmp: Path, rows: int) -> None:
    csv_path = tmp / "val.csv"
    t = time.perf_counter()
    write_manifest(csv_path, rows)
    print(
        f"wrote {rows:,}-row CSV ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s"
    )
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    pq.write_table(pacsv.read_csv(csv_path), tmp / "val.parquet")
    names = [f"class_{i}" for i in range(1000)]
    for manifest in (csv_path, tmp / "val.parquet"):
        cfg = DataConfig(root=str(tmp), manifest=str(manifest), labels=names)
        gc.collect()
        t = time.perf_counter()
        folder = scan_manifest(cfg)
        seconds = time.perf_counter() - t
        assert len(folder.items) == rows
        del folder
        gc.collect()
        tracemalloc.start()  # a second scan, traced (tracing slows it several times)
        folder = scan_manifest(cfg)
        kept, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"{manifest.suffix[1:]:>7} manifest, {rows:,} rows: parsed + validated in "
            f"{seconds:.2f} s; {kept / rows:.0f} bytes kept per row (items + metadata)"
        )
        del folder


def _image_bytes(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bench_rereads(tmp: Path, n: int = 4000) -> None:
    images = tmp / "images"
    images.mkdir()
    payloads = [_image_bytes(i) for i in range(64)]
    shards = tmp / "shards"
    shards.mkdir()
    per = n // 4
    for s in range(4):
        with tarfile.open(shards / f"val-{s:06d}.tar", "w") as tar:
            for i in range(s * per, (s + 1) * per):
                data = payloads[i % 64]
                info = tarfile.TarInfo(f"{i:06d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for i in range(64):
        (images / f"{i:06d}.png").write_bytes(payloads[i])
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": payloads[i % 64], "path": None} for i in range(n)]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    ds.to_parquet(str(tmp / "val.parquet"), batch_size=500)
    t = time.perf_counter()
    wds = scan_shards(DataConfig(root=str(shards)))
    scan_wds = time.perf_counter() - t
    t = time.perf_counter()
    hf = scan_hf(DataConfig(root=str(tmp / "val.parquet")))
    scan_pq = time.perf_counter() - t
    file_item = __import__("reportgen.loading.folders", fromlist=["scan_folder"]).scan_folder(
        DataConfig(root=str(images))
    )

    def per_read(folder: object, picks: list[int]) -> float:
        t = time.perf_counter()
        for k in picks:
            read_item(folder, folder.items[k])  # type: ignore[attr-defined]
        return (time.perf_counter() - t) / len(picks)

    picks = [int(x) for x in np.random.default_rng(0).choice(n, 50, replace=False)]
    f = per_read(file_item, [k % 64 for k in picks])
    w = per_read(wds, picks)
    p = per_read(hf, picks)
    sequential = per_read(hf, list(range(n)))  # the dataset pass's order
    total = sum(x.stat().st_size for x in shards.iterdir()) / 1e6
    print(f"scan: 4 shards ({total:.0f} MB, {n} samples) {scan_wds:.2f} s; Parquet {scan_pq:.2f} s")
    print(
        f"one random re-read: file {f * 1e3:.2f} ms, tar member {w * 1e3:.2f} ms "
        f"({w / f:.1f}× the file), Parquet row {p * 1e3:.2f} ms ({p / f:.1f}× the file; "
        "one row group decoded per read, the last 4 cached)"
    )
    print(
        f"Parquet rows in order (the dataset pass): {sequential * 1e3:.3f} ms per image "
        f"({sequential / f:.1f}× a file)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = a.out or Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        bench_manifest(tmp, a.rows)
        bench_rereads(tmp)


if __name__ == "__main__":
    main()
