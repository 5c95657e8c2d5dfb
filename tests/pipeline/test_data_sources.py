"""Issue 18's correctness bar: the 1,797 demo digits as an image folder, a CSV manifest, a
JSONL manifest, a Parquet file with image bytes, a ``save_to_disk`` dataset and 4 WebDataset
shards give identical predictions.csv rows and identical arrays (logits, features).

The sources are written by pandas-free stdlib code, pyarrow and the ``datasets`` library
(:mod:`data_sources`), never by reportgen.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from data_sources import (
    metadata,
    write_csv,
    write_jsonl,
    write_parquet_with_bytes,
    write_save_to_disk,
    write_shards,
)

from reportgen.api import load_config, run_report
from reportgen.demo import prepare_demo

NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    prepare_demo(out, epochs=1)
    src = out / "sources"
    src.mkdir()
    data = out / "data"
    write_csv(data, src / "val.csv")
    write_jsonl(data, src / "val.jsonl")
    write_parquet_with_bytes(data, src / "val.parquet", NAMES)
    write_save_to_disk(data, src / "saved", NAMES)
    write_shards(data, src / "shards", shards=4)
    return out


def _run(demo: Path, name: str, overrides: dict[str, object]) -> Path:
    out = demo / f"out-{name}"
    cfg = load_config(
        demo / "config.yaml",
        {"output.dir": str(out), "output.formats": ["html"], "run.quiet": True, **overrides},
        analyses=["neighbors"],
    )
    result = run_report(cfg)
    assert result.exit_code == 0, name
    return out


def _rows(out: Path) -> list[list[str]]:
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


SOURCES = {
    "csv": lambda d: {"data.manifest": str(d / "sources/val.csv"), "data.root": str(d / "data")},
    "jsonl": lambda d: {
        "data.manifest": str(d / "sources/val.jsonl"),
        "data.root": str(d / "data"),
    },
    "parquet": lambda d: {"data.root": str(d / "sources/val.parquet")},
    "save_to_disk": lambda d: {"data.root": str(d / "sources/saved")},
    "shards": lambda d: {"data.root": str(d / "sources/shards/val-{000000..000003}.tar")},
}


def test_every_source_gives_the_folder_s_predictions_and_arrays(demo: Path) -> None:
    ref = _run(demo, "folder", {})
    ref_rows = _rows(ref)
    ref_arrays = np.load(ref / "arrays.npz")
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert len(ref_rows) == 1798 and ref_summary["data"]["source"] == "folder"
    for name, overrides in SOURCES.items():
        out = _run(demo, name, overrides(demo))
        rows = _rows(out)
        summary = json.loads((out / "summary.json").read_text())
        assert len(rows) == len(ref_rows), name
        # Every column but the image id: sha256, label, names, prediction, probabilities.
        assert [r[1:9] for r in rows] == [r[1:9] for r in ref_rows], name
        arrays = np.load(out / "arrays.npz")
        for key in ("logits", "features", "labels"):
            np.testing.assert_array_equal(arrays[key], ref_arrays[key], err_msg=f"{name}: {key}")
        assert summary["metrics"] == ref_summary["metrics"], name
        assert summary["data"]["source"] == {"csv": "manifest", "jsonl": "manifest"}.get(
            name, "hf" if name in ("parquet", "save_to_disk") else "webdataset"
        )
        # Metadata columns round-trip exactly (commas, quotes, unicode, empty cells).
        header = rows[0]
        assert header[:9] == ref_rows[0]
        site = header.index("meta:site")
        assert [r[site] for r in rows[1:]] == [metadata(i)["site"] for i in range(1797)], name
        if "meta:note" in header:
            note = header.index("meta:note")
            assert [r[note] for r in rows[1:]] == [metadata(i)["note"] for i in range(1797)]
        assert "site" in summary["data"]["metadata_columns"]
    # A manifest names images as the folder does: the manifest hash is the folder's.
    csv_summary = json.loads((demo / "out-csv" / "summary.json").read_text())
    assert csv_summary["data"]["manifest_sha256"] == ref_summary["data"]["manifest_sha256"]
    shard_rows = _rows(demo / "out-shards")
    assert shard_rows[1][0] == "val-000000.tar:0/0_0000"
