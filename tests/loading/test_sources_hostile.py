"""Manifests, WebDataset shards and Hugging Face datasets from the real world: byte-order marks,
CRLF, quoting, NUL bytes, huge cells, paths and links out of the root, compressed or truncated
shards, tar members that try to escape, dataset dicts with several splits, rows without bytes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reportgen.config import ColumnsConfig, DataConfig
from reportgen.errors import ConfigError, DataError, ReportgenError
from reportgen.loading.containers import expand_braces, read_member, scan_hf, scan_shards
from reportgen.loading.folders import DataFolder, DecodeFailure
from reportgen.loading.manifest import scan_manifest
from reportgen.loading.sources import item_header_size, open_source, read_item, source_kind
from reportgen.report.predictions import format_predictions, prediction_set, read_predictions

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 30), (160, 40, 200)]


def png_bytes(i: int = 0, size: int = 8) -> bytes:
    """An 8×8 PNG, different for every ``i``."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[:] = COLOURS[i % len(COLOURS)]
    arr[i % size, (i // size) % size] = (i * 7) % 256  # one pixel that tells them apart
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, i: int = 0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(i)
    path.write_bytes(data)
    return data


def manifest_cfg(manifest: Path, **kwargs: Any) -> DataConfig:
    return DataConfig(manifest=str(manifest), **kwargs)


def input_error(exc: pytest.ExceptionInfo[ReportgenError], file_name: str) -> str:
    """The message of a user-facing input error: exit status 2, one line, naming the file."""
    assert isinstance(exc.value, ReportgenError)
    assert exc.value.exit_code == 2
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert file_name in message
    return message


def write_rows(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def labels_of(folder: DataFolder) -> list[int]:
    return [it.label for it in folder.items]


def relpaths(folder: DataFolder) -> list[str]:
    return [it.relpath for it in folder.items]


def metadata_rows(folder: DataFolder) -> list[dict[str, str]]:
    return [folder.metadata_of(it) for it in folder.items]


# --------------------------------------------------------------------------- manifest formats

PLAIN_CSV = (
    "path,label,site,note\n"
    "img/a.png,dog,A,plain\n"
    'img/b.png,cat,B,"comma, ""quoted"""\n'
    "img/c.png,dog,C,ünïcode ✓\n"
    "img/d.png,,A,\n"
)
EXPECTED_PATHS = ["img/a.png", "img/b.png", "img/c.png", "img/d.png"]
EXPECTED_LABELS = [1, 0, 1, -1]  # cat=0, dog=1 (sorted), the empty cell unlabelled
EXPECTED_META = [
    {"site": "A", "note": "plain"},
    {"site": "B", "note": 'comma, "quoted"'},
    {"site": "C", "note": "ünïcode ✓"},
    {"site": "A", "note": ""},
]


@pytest.fixture
def four_images(tmp_path: Path) -> Path:
    for i, name in enumerate("abcd"):
        write_png(tmp_path / "img" / f"{name}.png", i)
    return tmp_path


def test_plain_csv_gives_rows_labels_and_metadata(four_images: Path) -> None:
    (four_images / "m.csv").write_text(PLAIN_CSV, encoding="utf-8")
    folder = scan_manifest(manifest_cfg(four_images / "m.csv"))
    assert folder.source == "manifest"
    assert relpaths(folder) == EXPECTED_PATHS
    assert labels_of(folder) == EXPECTED_LABELS
    assert folder.class_names == ["cat", "dog"]
    assert folder.metadata_columns == ["site", "note"]
    assert metadata_rows(folder) == EXPECTED_META
    assert folder.labelled


def test_csv_with_byte_order_mark_and_crlf_reads_like_a_plain_one(four_images: Path) -> None:
    (four_images / "plain.csv").write_text(PLAIN_CSV, encoding="utf-8")
    windows = b"\xef\xbb\xbf" + PLAIN_CSV.replace("\n", "\r\n").encode("utf-8")
    (four_images / "windows.csv").write_bytes(windows)
    plain = scan_manifest(manifest_cfg(four_images / "plain.csv"))
    excel = scan_manifest(manifest_cfg(four_images / "windows.csv"))
    assert relpaths(excel) == relpaths(plain) == EXPECTED_PATHS
    assert labels_of(excel) == labels_of(plain) == EXPECTED_LABELS
    assert excel.class_names == plain.class_names == ["cat", "dog"]
    # The mark is not part of the first column's name, and no cell keeps a stray CR.
    assert excel.metadata_columns == ["site", "note"]
    assert metadata_rows(excel) == metadata_rows(plain) == EXPECTED_META


def test_tsv_manifest_splits_on_tabs_only(four_images: Path) -> None:
    rows = [["path", "label", "site", "note"]]
    for rel, label, meta in zip(
        EXPECTED_PATHS, ["dog", "cat", "dog", ""], EXPECTED_META, strict=True
    ):
        rows.append([rel, label, meta["site"], meta["note"]])
    write_rows(four_images / "m.tsv", rows, delimiter="\t")
    assert "\t" in (four_images / "m.tsv").read_text(encoding="utf-8")
    folder = scan_manifest(manifest_cfg(four_images / "m.tsv"))
    assert relpaths(folder) == EXPECTED_PATHS
    assert labels_of(folder) == EXPECTED_LABELS
    assert metadata_rows(folder) == EXPECTED_META  # 'comma, "quoted"' kept whole


def test_jsonl_numbers_nulls_and_nested_values_become_text(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", 0)
    write_png(tmp_path / "y.png", 1)
    lines = [
        '{"path": "x.png", "label": 1, "score": 0.25, "count": 3, "ok": true, '
        '"gone": null, "nested": {"b": [1, 2], "a": "\\u00e9"}}',
        "",  # a blank line is skipped
        '{"path": "y.png", "label": 0, "score": -1.5e-07, "count": 0, "ok": false}',
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    folder = scan_manifest(manifest_cfg(tmp_path / "m.jsonl"))
    assert relpaths(folder) == ["x.png", "y.png"]
    assert labels_of(folder) == [1, 0]  # integers: output indices
    assert "output indices" in (folder.label_note or "")
    assert metadata_rows(folder) == [
        {
            "score": "0.25",
            "count": "3",
            "ok": "true",
            "gone": "",
            "nested": '{"a": "é", "b": [1, 2]}',
        },
        # keys a row lacks are empty, as a null is
        {"score": "-1.5e-07", "count": "0", "ok": "false", "gone": "", "nested": ""},
    ]


def test_parquet_manifest_via_pyarrow(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "p" / f"{i}.png", i)
    table = pa.table(
        {
            "path": ["p/0.png", "p/1.png", "p/2.png"],
            "label": pa.array([2, None, 0], pa.int64()),
            "site": ["Zürich", None, "B, C"],
            "score": [0.5, 1.0, 2.25],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    assert source_kind(manifest_cfg(tmp_path / "m.parquet")) == "manifest"
    folder = open_source(manifest_cfg(tmp_path / "m.parquet"))
    assert relpaths(folder) == ["p/0.png", "p/1.png", "p/2.png"]
    assert labels_of(folder) == [2, -1, 0]
    assert folder.class_names == ["0", "1", "2"]
    assert metadata_rows(folder) == [
        {"site": "Zürich", "score": "0.5"},
        {"site": "", "score": "1.0"},
        {"site": "B, C", "score": "2.25"},
    ]
    assert read_item(folder, folder.items[1]) == (tmp_path / "p" / "1.png").read_bytes()


# --------------------------------------------------------------------------- metadata round trip

HOSTILE_VALUES = [
    "ünïcode ✓ 日本語 🙂",
    "comma, inside",
    'double "quotes" here',
    "line one\nline two",
    "windows\r\nbreak",
    "bare\rreturn",
    "",
    "nul\x00byte",
    "  padded  ",
    "\ttab",
    '",\n"',
]
HOSTILE_COLUMN = "région, note"


def _hostile_manifest(tmp_path: Path, kind: str) -> Path:
    n = len(HOSTILE_VALUES)
    paths = [f"i/{k:02d}.png" for k in range(n)]
    for k, rel in enumerate(paths):
        write_png(tmp_path / rel, k)
    labels = [k % 3 for k in range(n)]
    seconds = list(reversed(HOSTILE_VALUES))
    if kind in ("csv", "tsv"):
        rows = [["path", "label", HOSTILE_COLUMN, "other"]]
        rows += [
            [p, str(y), v, w]
            for p, y, v, w in zip(paths, labels, HOSTILE_VALUES, seconds, strict=True)
        ]
        return write_rows(tmp_path / f"m.{kind}", rows, "," if kind == "csv" else "\t")
    if kind == "jsonl":
        out = tmp_path / "m.jsonl"
        with out.open("w", encoding="utf-8", newline="\n") as f:
            for p, y, v, w in zip(paths, labels, HOSTILE_VALUES, seconds, strict=True):
                f.write(json.dumps({"path": p, "label": y, HOSTILE_COLUMN: v, "other": w}) + "\n")
        return out
    out = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {"path": paths, "label": labels, HOSTILE_COLUMN: HOSTILE_VALUES, "other": seconds}
        ),
        out,
    )
    return out


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_hostile_metadata_survives_the_manifest_and_predictions_csv(
    tmp_path: Path, kind: str
) -> None:
    manifest = _hostile_manifest(tmp_path, kind)
    folder = scan_manifest(manifest_cfg(manifest))
    n = len(HOSTILE_VALUES)
    assert relpaths(folder) == [f"i/{k:02d}.png" for k in range(n)]
    assert labels_of(folder) == [k % 3 for k in range(n)]
    expected = [
        {HOSTILE_COLUMN: v, "other": w}
        for v, w in zip(HOSTILE_VALUES, reversed(HOSTILE_VALUES), strict=True)
    ]
    assert metadata_rows(folder) == expected

    columns = folder.metadata_columns
    meta = {c: [folder.metadata_of(it)[c] for it in folder.items] for c in columns}
    logits = np.eye(3)[[(k + 1) % 3 for k in range(n)]] * 4.0
    ps = prediction_set(
        [it.relpath for it in folder.items],
        [f"{k:064x}" for k in range(n)],
        labels_of(folder),
        folder.class_names,
        logits,
        metadata=meta,
    )
    out = tmp_path / "predictions.csv"
    out.write_bytes(format_predictions(ps).encode("utf-8"))
    back = read_predictions(out)
    assert back.paths == [f"i/{k:02d}.png" for k in range(n)]
    assert back.labels.tolist() == [k % 3 for k in range(n)]
    assert back.predictions.tolist() == [(k + 1) % 3 for k in range(n)]
    assert back.metadata == {
        HOSTILE_COLUMN: HOSTILE_VALUES,
        "other": list(reversed(HOSTILE_VALUES)),
    }


# --------------------------------------------------------------------------- input errors


def test_missing_path_column_lists_the_columns(tmp_path: Path) -> None:
    write_rows(tmp_path / "m.csv", [["file", "label", "site"], ["x.png", "0", "A"]])
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    message = input_error(exc, "m.csv")
    assert "'path'" in message
    assert "columns: file, label, site" in message


def test_a_label_column_that_does_not_exist(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    write_rows(tmp_path / "m.csv", [["path", "label"], ["x.png", "0"]])
    cfg = manifest_cfg(tmp_path / "m.csv", columns=ColumnsConfig(label="klass"))
    with pytest.raises(DataError) as exc:
        scan_manifest(cfg)
    message = input_error(exc, "m.csv")
    assert "'klass'" in message and "data.columns.label" in message
    assert "columns: path, label" in message


def test_a_path_listed_twice_after_normalisation_names_both_lines(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "x.png")
    write_png(tmp_path / "a" / "y.png", 1)
    rows = [["path", "note"], ["a/x.png", "1"], ["a/y.png", "2"], ["a/./x.png", "3"]]
    write_rows(tmp_path / "m.csv", rows)
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    message = input_error(exc, "m.csv")
    assert "'a/x.png'" in message and "twice" in message
    assert "line 4" in message and "line 2" in message


def test_an_unknown_label_name_suggests_the_nearest(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / f"{i}.png", i)
    rows = [["path", "label"], ["0.png", "cat"], ["1.png", "dog"], ["2.png", "dgo"]]
    write_rows(tmp_path / "m.csv", rows)
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv", labels=["cat", "dog", "bird"]))
    message = input_error(exc, "m.csv")
    assert "line 4" in message and "'dgo'" in message
    assert "did you mean 'dog'?" in message


def test_a_label_index_beyond_the_class_names(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / f"{i}.png", i)
    rows = [["path", "label"], ["0.png", "0"], ["1.png", "2"], ["2.png", "1"]]
    write_rows(tmp_path / "m.csv", rows)
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv", labels=["cat", "dog"]))
    message = input_error(exc, "m.csv")
    assert "line 3" in message and "label 2" in message and "2 outputs" in message


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_a_ten_megabyte_cell_is_an_error_found_quickly(tmp_path: Path, kind: str) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "y.png", 1)
    huge = "z" * 10_000_000
    if kind == "jsonl":
        text = json.dumps({"path": "x.png", "note": "ok"}) + "\n"
        text += json.dumps({"path": "y.png", "note": huge}) + "\n"
    else:
        sep = "," if kind == "csv" else "\t"
        text = f"path{sep}note\nx.png{sep}ok\ny.png{sep}{huge}\n"
    (tmp_path / f"m.{kind}").write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / f"m.{kind}"))
    assert time.perf_counter() - start < 5.0
    message = input_error(exc, f"m.{kind}")
    assert ("line 2" if kind == "jsonl" else "line 3") in message  # JSONL has no header line
    assert "1,048,576" in message
    assert len(message) < 1000  # the cell itself is not echoed


def test_a_row_with_too_many_fields(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    text = "path,label,site\nx.png,0,A\ny.png,1,B,extra\n"
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    message = input_error(exc, "m.csv")
    assert "line 3" in message and "4 fields" in message and "3" in message


def test_a_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    data = "path,note\nx.png,café\n".encode("latin-1")
    (tmp_path / "m.csv").write_bytes(data)
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    message = input_error(exc, "m.csv")
    assert "UTF-8" in message
    bad = data.index("é".encode("latin-1"))
    assert f"offset {bad}" in message


def test_an_unsupported_suffix_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "images.xlsx").write_bytes(b"PK\x03\x04 not a table reportgen reads")
    with pytest.raises(ConfigError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "images.xlsx"))
    message = input_error(exc, "images.xlsx")
    assert ".csv" in message and ".parquet" in message


def test_a_label_set_column_is_read_as_label_sets(tmp_path: Path) -> None:
    for i, name in enumerate(["x", "y", "z", "w"]):
        write_png(tmp_path / f"{name}.png", i)
    rows = [["path", "labels"], ["x.png", "cat|dog"], ["y.png", " dog "], ["z.png", ""]]
    rows.append(["w.png", '["dog", "cat", "dog"]'])
    folder = scan_manifest(manifest_cfg(write_rows(tmp_path / "m.csv", rows)))
    assert folder.label_sets and folder.labelled
    assert folder.class_names == ["cat", "dog"]  # sorted, as class folders are
    # every image labelled (an empty cell: none of the labels), ``label`` unused
    assert [it.labels for it in folder.items] == [(0, 1), (1,), (), (0, 1)]
    assert labels_of(folder) == [-1, -1, -1, -1]
    assert folder.label_note is not None and "label sets" in folder.label_note


def test_label_sets_follow_the_model_names_and_refuse_unknown_ones(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "y.png", 1)
    manifest = write_rows(
        tmp_path / "m.jsonl.csv", [["path", "labels"], ["x.png", "b|c"], ["y.png", "a"]]
    )
    folder = scan_manifest(manifest_cfg(manifest, labels=["c", "b", "a"]))
    assert [it.labels for it in folder.items] == [(0, 1), (2,)]
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(manifest, labels=["c", "b", "d"]))
    message = input_error(exc, "m.jsonl.csv")
    assert "'a'" in message and "line 3" in message


def test_label_sets_with_another_separator_name_the_one_to_use(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "y.png", 1)
    rows = [["path", "labels"], ["x.png", "cat"], ["y.png", "cat; dog"]]
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(write_rows(tmp_path / "m.csv", rows), labels=["cat", "dog"]))
    message = input_error(exc, "m.csv")
    assert "line 3" in message and "'cat; dog' looks like several labels" in message
    assert "'|' (cat|dog)" in message
    # a name that is simply wrong gets no separator hint
    rows[2] = ["y.png", "cat; mouse"]
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(write_rows(tmp_path / "m.csv", rows), labels=["cat", "dog"]))
    assert "several labels" not in input_error(exc, "m.csv")


def test_a_null_label_set_is_unlabelled_and_both_columns_are_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "y.png", 1)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"path": "x.png", "labels": ["a", "b"]}\n{"path": "y.png", "labels": null}\n',
        encoding="utf-8",
    )
    folder = scan_manifest(manifest_cfg(jsonl))
    assert [it.labels for it in folder.items] == [(0, 1), None]
    both = write_rows(tmp_path / "m.csv", [["path", "label", "labels"], ["x.png", "a", "a|b"]])
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(both))
    assert "'label' column" in input_error(exc, "m.csv")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("path,a,a\nx.png,1,2\n", ["column 'a' appears twice"]),
        ("path,a,b\nx.png,1\n", ["line 2", "2 fields", "3"]),
        ('path,a\nx.png,"never closed\n', ["line 2", "malformed"]),
        ("", ["empty manifest"]),
    ],
    ids=["duplicate-column", "too-few-fields", "unclosed-quote", "empty"],
)
def test_malformed_csv_manifests(tmp_path: Path, text: str, fragments: list[str]) -> None:
    write_png(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    message = input_error(exc, "m.csv")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("[1, 2]", "a JSON object per line"), ('{"path": "x.png"', "not JSON")],
)
def test_malformed_jsonl_lines_name_their_line(tmp_path: Path, line: str, fragment: str) -> None:
    write_png(tmp_path / "x.png")
    text = '{"path": "x.png"}\n\n' + line + "\n"
    (tmp_path / "m.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "m.jsonl"))
    message = input_error(exc, "m.jsonl")
    assert "line 3" in message and fragment in message


def test_a_damaged_or_oversized_parquet_manifest(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "bad.parquet"))
    assert "cannot read the Parquet manifest" in input_error(exc, "bad.parquet")
    big = pa.table({"path": ["x.png", "x2.png"], "note": ["ok", "q" * (2 << 20)]})
    pq.write_table(big, tmp_path / "big.parquet")
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "big.parquet"))
    message = input_error(exc, "big.parquet")
    assert "row 2" in message and "'note'" in message and "1,048,576" in message


def test_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(tmp_path / "nope.csv"))
    assert "not found" in input_error(exc, "nope.csv")


# --------------------------------------------------------------------------- paths out of the root


def test_paths_out_of_the_root_are_listed_not_read(tmp_path: Path) -> None:
    root = tmp_path / "data"
    inside = write_png(root / "in.png", 0)
    abs_inside = write_png(root / "sub" / "abs.png", 1)
    write_png(tmp_path / "outside.png", 2)
    outside_abs = str(tmp_path / "outside.png")
    rows = [
        ["path", "note"],
        ["in.png", "a"],
        ["../outside.png", "b"],
        [outside_abs, "c"],
        [str(root / "sub" / "abs.png"), "d"],
        ["sub/../../outside.png", "e"],
    ]
    write_rows(root / "m.csv", rows)
    folder = scan_manifest(manifest_cfg(root / "m.csv"))
    assert relpaths(folder) == ["in.png", "sub/abs.png"]
    assert metadata_rows(folder) == [{"note": "a"}, {"note": "d"}]
    ignored = dict(folder.ignored)
    assert set(ignored) == {"../outside.png", outside_abs, "sub/../../outside.png"}
    assert "leads out of data.root" in ignored["../outside.png"]
    assert "leads out of data.root" in ignored["sub/../../outside.png"]
    assert "absolute path outside data.root" in ignored[outside_abs]
    assert read_item(folder, folder.items[0]) == inside
    assert read_item(folder, folder.items[1]) == abs_inside


def test_a_link_inside_the_root_to_a_file_outside_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "ok.png", 0)
    secret = write_png(tmp_path / "secret.png", 1)
    os.symlink(tmp_path / "secret.png", root / "link.png")
    os.symlink(root / "ok.png", root / "link_in.png")
    write_rows(root / "m.csv", [["path"], ["ok.png"], ["link.png"], ["link_in.png"]])
    folder = scan_manifest(manifest_cfg(root / "m.csv"))
    assert relpaths(folder) == ["ok.png", "link.png", "link_in.png"]
    out_item = folder.items[1]
    with pytest.raises(DecodeFailure) as exc:
        read_item(folder, out_item)
    assert "outside the data folder" in str(exc.value)
    assert "secret.png" in str(exc.value)
    assert item_header_size(folder, out_item) is None  # never read through the link either
    assert read_item(folder, folder.items[2]) == read_item(folder, folder.items[0]) != secret


def test_a_missing_file_is_kept_and_fails_when_read(tmp_path: Path) -> None:
    write_png(tmp_path / "here.png")
    write_rows(tmp_path / "m.csv", [["path", "label"], ["here.png", "0"], ["gone.png", "1"]])
    folder = scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    assert relpaths(folder) == ["here.png", "gone.png"]
    assert folder.ignored == []
    with pytest.raises(DecodeFailure) as exc:
        read_item(folder, folder.items[1])
    assert "cannot read file" in str(exc.value)
    assert item_header_size(folder, folder.items[1]) is None
    assert item_header_size(folder, folder.items[0]) == (8, 8)


def test_a_nul_byte_or_the_root_itself_as_a_path_is_listed_not_read(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png")
    write_rows(tmp_path / "m.csv", [["path"], ["x.png"], ["a\x00.png"], ["."], ["sub/.."]])
    folder = scan_manifest(manifest_cfg(tmp_path / "m.csv"))
    assert relpaths(folder) == ["x.png"]
    assert folder.ignored == [
        ("a\\x00.png", "the path holds a NUL byte"),
        (".", "the path names data.root itself, not an image file"),
        ("sub/..", "the path names data.root itself, not an image file"),
    ]


def test_nothing_readable_is_an_error_naming_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_rows(root / "m.csv", [["path"], ["../x.png"]])
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(root / "m.csv"))
    message = input_error(exc, "m.csv")
    assert "../x.png" in message and "leads out of data.root" in message


def test_max_images_keeps_each_row_with_its_own_label_and_metadata(tmp_path: Path) -> None:
    rows = [["path", "label", "k"]]
    for k in range(10):
        write_png(tmp_path / f"i{k}.png", k)
        rows.append([f"i{k}.png", str(k % 3), f"value {k}"])
    write_rows(tmp_path / "m.csv", rows)
    folder = scan_manifest(manifest_cfg(tmp_path / "m.csv", max_images=4))
    assert len(folder.items) == 4
    for it in folder.items:
        k = int(it.relpath[1:-4])
        assert it.label == k % 3
        assert folder.metadata_of(it) == {"k": f"value {k}"}
        assert read_item(folder, it) == png_bytes(k)


# --------------------------------------------------------------------------- labels


def _labelled_manifest(tmp_path: Path, labels: list[str]) -> Path:
    rows = [["path", "label"]]
    for k, label in enumerate(labels):
        write_png(tmp_path / f"{k}.png", k)
        rows.append([f"{k}.png", label])
    return write_rows(tmp_path / "m.csv", rows)


def test_integer_labels_are_output_indices(tmp_path: Path) -> None:
    folder = scan_manifest(manifest_cfg(_labelled_manifest(tmp_path, ["0", "3", "1", ""])))
    assert labels_of(folder) == [0, 3, 1, -1]
    assert folder.class_names == ["0", "1", "2", "3"]
    assert "output indices" in (folder.label_note or "")
    assert folder.class_folders == []


def test_integer_labels_with_class_names_given(tmp_path: Path) -> None:
    cfg = manifest_cfg(_labelled_manifest(tmp_path, ["2", "0", "1"]), labels=["a", "b", "c"])
    folder = scan_manifest(cfg)
    assert labels_of(folder) == [2, 0, 1]
    assert folder.class_names == ["a", "b", "c"]
    assert "output indices" in (folder.label_note or "")


def test_label_names_map_to_the_given_class_names(tmp_path: Path) -> None:
    manifest = _labelled_manifest(tmp_path, ["cat", "ant", "zebra", "", "cat"])
    folder = scan_manifest(manifest_cfg(manifest, labels=["zebra", "ant", "cat", "dog"]))
    assert labels_of(folder) == [2, 1, 0, -1, 2]
    assert folder.class_names == ["zebra", "ant", "cat", "dog"]
    assert "class names" in (folder.label_note or "")


def test_label_names_without_class_names_take_sorted_positions(tmp_path: Path) -> None:
    folder = scan_manifest(
        manifest_cfg(_labelled_manifest(tmp_path, ["zebra", "ant", "cat", "ant"]))
    )
    assert labels_of(folder) == [2, 0, 1, 0]
    assert folder.class_names == ["ant", "cat", "zebra"]
    assert "sorted" in (folder.label_note or "")


def test_all_empty_labels_are_unlabelled(tmp_path: Path) -> None:
    folder = scan_manifest(manifest_cfg(_labelled_manifest(tmp_path, ["", " ", ""])))
    assert labels_of(folder) == [-1, -1, -1]
    assert not folder.labelled
    assert folder.label_note is None


# --------------------------------------------------------------------------- WebDataset


def test_brace_patterns_expand_as_webdataset_does() -> None:
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("s/{x,y}.tar") == ["s/x.tar", "s/y.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == [
        "a-8.tar",
        "a-9.tar",
        "a-10.tar",
        "b-8.tar",
        "b-9.tar",
        "b-10.tar",
    ]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ConfigError):
        expand_braces("a-{5..3}.tar")
    with pytest.raises(ConfigError):
        expand_braces("a-{abc}.tar")


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_a_gzip_compressed_shard_asks_for_an_uncompressed_one(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add_member(tar, "s0.png", png_bytes(0))
    shard = tmp_path / "val-000000.tar"
    shard.write_bytes(gzip.compress(buf.getvalue()))
    cfg = DataConfig(root=str(shard))
    assert source_kind(cfg) == "webdataset"
    with pytest.raises(DataError) as exc:
        scan_shards(cfg)
    message = input_error(exc, "val-000000.tar")
    assert "gzip" in message and "uncompressed" in message


def test_links_and_samples_without_an_image_are_listed(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes(3))
    shard = tmp_path / "shards" / "val-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "s0.png", png_bytes(0))
        add_member(tar, "s0.cls", b"1")
        add_member(tar, "s1.json", b'{"label": 0}')  # no image
        link = tarfile.TarInfo("s2.png")
        link.type = tarfile.SYMTYPE
        link.linkname = str(tmp_path / "secret.png")
        tar.addfile(link)
        hard = tarfile.TarInfo("s3.png")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "s0.png"
        tar.addfile(hard)
        add_member(tar, "s4.png", png_bytes(4))
    folder = scan_shards(DataConfig(root=str(shard.parent)))
    assert folder.source == "webdataset"
    assert relpaths(folder) == ["val-000000.tar:s0", "val-000000.tar:s4"]
    assert labels_of(folder) == [1, -1]
    assert read_item(folder, folder.items[0]) == png_bytes(0)
    ignored = dict(folder.ignored)
    assert "not a regular file" in ignored["val-000000.tar:s2.png"]
    assert "not a regular file" in ignored["val-000000.tar:s3.png"]
    assert "no image member" in ignored["val-000000.tar:s1"]


def test_member_names_that_climb_out_extract_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    shard = tmp_path / "work" / "evil.tar"
    evil = png_bytes(1)
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "ok.png", png_bytes(0))
        add_member(tar, "../../escaped.png", evil)
        add_member(tar, "../../escaped.cls", b"2")
        add_member(tar, str(tmp_path / "abs.png"), png_bytes(2))
    before = sorted(tmp_path.rglob("*"))
    outside_before = sorted(os.listdir(tmp_path.parent))
    folder = scan_shards(DataConfig(root=str(shard)))
    data = [read_item(folder, it) for it in folder.items]
    assert sorted(data) == sorted([png_bytes(0), evil, png_bytes(2)])
    by_name = dict(zip(relpaths(folder), data, strict=True))
    assert by_name["evil.tar:../../escaped"] == evil  # just a name: its bytes, nowhere on disk
    assert labels_of(folder)[relpaths(folder).index("evil.tar:../../escaped")] == 2
    assert sorted(tmp_path.rglob("*")) == before
    assert sorted(os.listdir(tmp_path.parent)) == outside_before
    assert not (tmp_path / "escaped.png").exists()
    assert not (tmp_path / "abs.png").exists()
    assert os.listdir(work) == []


def test_json_sidecars_give_labels_and_metadata(tmp_path: Path) -> None:
    shard = tmp_path / "val-000000.tar"
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "a/s0.png", png_bytes(0))
        add_member(tar, "a/s0.json", json.dumps({"label": "dog", "site": "A", "w": 0.5}).encode())
        add_member(tar, "a/s1.png", png_bytes(1))
        add_member(tar, "a/s1.cls", b"cat\n")
        add_member(tar, "a/s1.json", json.dumps({"site": "B, ü", "deep": {"k": [1]}}).encode())
        add_member(tar, "a/s2.png", png_bytes(2))
        add_member(tar, "a/s2.json", b"{not json")
    folder = scan_shards(DataConfig(root=str(shard)))
    assert relpaths(folder) == ["val-000000.tar:a/s0", "val-000000.tar:a/s1", "val-000000.tar:a/s2"]
    assert labels_of(folder) == [1, 0, -1]  # cat=0, dog=1: sorted names
    assert folder.class_names == ["cat", "dog"]
    assert metadata_rows(folder) == [
        {"site": "A", "w": "0.5", "deep": ""},
        {"site": "B, ü", "w": "", "deep": '{"k": [1]}'},
        {"site": "", "w": "", "deep": ""},
    ]
    assert "not JSON" in dict(folder.ignored)["val-000000.tar:a/s2.json"]


def _sample_shard(path: Path, n: int) -> list[bytes]:
    images = [png_bytes(k) for k in range(n)]
    with tarfile.open(path, "w") as tar:
        for k, data in enumerate(images):
            add_member(tar, f"s{k:03d}.png", data)
            add_member(tar, f"s{k:03d}.cls", str(k % 2).encode())
    return images


def test_a_shard_truncated_after_the_scan_fails_as_a_decode_failure(tmp_path: Path) -> None:
    shard = tmp_path / "val-000000.tar"
    images = _sample_shard(shard, 6)
    folder = scan_shards(DataConfig(root=str(shard)))
    assert [read_item(folder, it) for it in folder.items] == images
    with tarfile.open(shard) as tar:
        last = tar.getmember("s005.png").offset_data
    with open(shard, "r+b") as f:
        f.truncate(last + 10)
    with pytest.raises(DecodeFailure) as exc:
        read_item(folder, folder.items[5])
    assert "shorter" in str(exc.value)
    assert read_item(folder, folder.items[0]) == images[0]
    shard.write_bytes(b"")
    for it in folder.items:
        with pytest.raises(DecodeFailure):
            read_item(folder, it)
    shard.unlink()
    with pytest.raises(DecodeFailure):
        read_item(folder, folder.items[0])


def test_reading_one_member_reads_only_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = tmp_path / "val-000000.tar"
    images = _sample_shard(shard, 40)
    folder = scan_shards(DataConfig(root=str(shard)))
    k = 17
    # Offsets found independently of reportgen: garble every other member's data in place.
    with tarfile.open(shard) as tar:
        spans = [(m.name, m.offset_data, m.size) for m in tar.getmembers()]
    with open(shard, "r+b") as f:
        for name, offset, size in spans:
            if name != f"s{k:03d}.png":
                f.seek(offset)
                f.write(b"\xff" * size)
    assert os.path.getsize(shard) > 20 * len(images[k])

    read: list[int] = []
    real_fdopen = os.fdopen

    class Counting:
        def __init__(self, f: Any) -> None:
            self._f = f

        def read(self, *args: Any) -> bytes:
            data: bytes = self._f.read(*args)
            read.append(len(data))
            return data

        def readinto(self, buf: Any) -> int:
            n: int = self._f.readinto(buf)
            read.append(n)
            return n

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        return Counting(real_fdopen(fd, *args, **kwargs))

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert read_item(folder, folder.items[k]) == images[k]
    assert read_member(folder.items[k]) == images[k]
    assert sum(read) == 2 * len(images[k])
    monkeypatch.undo()
    assert read_item(folder, folder.items[k - 1]) != images[k - 1]  # garbled: really in place


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def class_index_folder(tmp_path: Path) -> Path:
    """ImageFolder layout with class folders named after their index (data_sources' input)."""
    root = tmp_path / "images"
    for k, cls in enumerate([0, 0, 1, 2, 2, 2]):
        write_png(root / str(cls) / f"img_{k}.png", k)
    return root


NAMES = ["cat", "dog", "eel"]
FOLDER_LABELS = [0, 0, 1, 2, 2, 2]


def _folder_bytes(root: Path) -> list[bytes]:
    return [
        p.read_bytes() for p in sorted(root.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    ]


def test_save_to_disk_dataset_reads_with_classlabel_names(
    tmp_path: Path, class_index_folder: Path
) -> None:
    from data_sources import SITES, write_save_to_disk

    out = write_save_to_disk(class_index_folder, tmp_path / "ds", NAMES)
    cfg = DataConfig(root=str(out))
    assert source_kind(cfg) == "hf"
    assert source_kind(DataConfig(root=f"hf:{out}")) == "hf"
    folder = open_source(cfg)
    assert folder.source == "hf"
    assert labels_of(folder) == FOLDER_LABELS
    assert folder.class_names == NAMES
    assert "ClassLabel" in (folder.label_note or "")
    assert metadata_rows(folder) == [{"site": SITES[i % 3]} for i in range(6)]
    assert [read_item(folder, it) for it in folder.items] == _folder_bytes(class_index_folder)


def test_parquet_dataset_file_and_folder_are_detected(
    tmp_path: Path, class_index_folder: Path
) -> None:
    from data_sources import write_parquet_with_bytes

    (tmp_path / "pq").mkdir()
    out = write_parquet_with_bytes(class_index_folder, tmp_path / "pq" / "val.parquet", NAMES)
    notes = ["plain", 'comma, "quoted"', "ünïcode ✓", ""]
    for root in (out, out.parent):
        cfg = DataConfig(root=str(root))
        assert source_kind(cfg) == "hf"
        folder = scan_hf(cfg)
        assert labels_of(folder) == FOLDER_LABELS
        assert folder.class_names == NAMES
        assert metadata_rows(folder) == [
            {"site": "ABC"[i % 3], "note": notes[i % 4]} for i in range(6)
        ]
        assert [read_item(folder, it) for it in folder.items] == _folder_bytes(class_index_folder)


def _dataset(images: list[bytes | None], labels: list[int], paths: list[str]) -> Any:
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": p} for b, p in zip(images, paths, strict=True)],
            "label": labels,
        },
        features=features,
    )


def test_a_dataset_dict_with_two_splits_needs_a_split(tmp_path: Path) -> None:
    import datasets

    train = _dataset([png_bytes(k) for k in range(3)], [0, 1, 2], ["t0.png", "t1.png", "t2.png"])
    val = _dataset([png_bytes(10), png_bytes(11)], [2, 0], ["v0.png", "v1.png"])
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(tmp_path / "dd"))
    root = str(tmp_path / "dd")
    assert source_kind(DataConfig(root=root)) == "hf"
    with pytest.raises(ConfigError) as exc:
        open_source(DataConfig(root=root))
    message = input_error(exc, "dd")
    assert "train" in message and "validation" in message and "data.split" in message
    with pytest.raises(ConfigError) as exc:
        open_source(DataConfig(root=root, split="vaildation"))
    assert "did you mean 'validation'?" in input_error(exc, "dd")
    folder = open_source(DataConfig(root=root, split="validation"))
    assert labels_of(folder) == [2, 0]
    assert folder.class_names == NAMES
    assert [read_item(folder, it) for it in folder.items] == [png_bytes(10), png_bytes(11)]
    train_folder = open_source(DataConfig(root=root, split="train"))
    assert labels_of(train_folder) == [0, 1, 2]


def test_a_row_without_image_bytes_fails_when_read(tmp_path: Path) -> None:
    # A Hub-style Parquet file whose second Image cell holds only a path (datasets itself embeds
    # or refuses a missing file on save, so the table it built is written with pyarrow).
    ds = _dataset([png_bytes(0), None], [0, 1], ["kept.png", "/nowhere/not-here.png"])
    table = ds.data.table
    assert table.column("image").to_pylist()[1] == {"bytes": None, "path": "/nowhere/not-here.png"}
    pq.write_table(table, tmp_path / "val.parquet")
    cfg = DataConfig(root=str(tmp_path / "val.parquet"))
    assert source_kind(cfg) == "hf"
    folder = open_source(cfg)
    assert labels_of(folder) == [0, 1]
    assert folder.class_names == NAMES
    assert read_item(folder, folder.items[0]) == png_bytes(0)
    with pytest.raises(DecodeFailure) as exc:
        read_item(folder, folder.items[1])
    assert "no image bytes" in str(exc.value)
    assert "not-here.png" in str(exc.value)
    assert item_header_size(folder, folder.items[1]) is None


def test_parquet_row_groups_and_a_file_truncated_after_the_scan(tmp_path: Path) -> None:
    images = [png_bytes(k) for k in range(7)]
    ds = _dataset(images, [k % 3 for k in range(7)], [f"{k}.png" for k in range(7)])
    pq.write_table(ds.data.table, tmp_path / "grouped.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "grouped.parquet").metadata.num_row_groups == 4
    folder = open_source(DataConfig(root=str(tmp_path / "grouped.parquet")))
    assert labels_of(folder) == [k % 3 for k in range(7)]
    assert [read_item(folder, it) for it in reversed(folder.items)] == images[::-1]

    pq.write_table(ds.data.table, tmp_path / "cut.parquet", row_group_size=2)
    cut = open_source(DataConfig(root=str(tmp_path / "cut.parquet")))
    size = os.path.getsize(tmp_path / "cut.parquet")
    with open(tmp_path / "cut.parquet", "r+b") as f:
        f.truncate(size // 2)
    for it in cut.items:
        with pytest.raises(DecodeFailure) as exc:
            read_item(cut, it)
        assert "cannot read the row" in str(exc.value)


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("label", ["²", "①", "١"])
def test_a_digit_that_is_not_ascii_is_a_class_name_not_an_index(tmp_path: Path, label: str) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "y.png", 1)
    m = write_rows(tmp_path / "m.csv", [["path", "label"], ["x.png", label], ["y.png", "0"]])
    folder = scan_manifest(manifest_cfg(m))
    # Not every cell is an ASCII index, so the cells are names, sorted: "0" < the other one.
    assert folder.class_names == sorted(["0", label])
    assert labels_of(folder) == [1, 0]
    with pytest.raises(DataError) as exc:
        scan_manifest(manifest_cfg(m, labels=["a", "b"]))
    assert "not one of the model's 2 class names" in input_error(exc, "m.csv")


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_values_with_unicode_line_separators(tmp_path: Path, char: str) -> None:
    write_png(tmp_path / "x.png")
    m = tmp_path / "m.jsonl"
    m.write_text(
        json.dumps({"path": "x.png", "note": f"a{char}b"}, ensure_ascii=False) + "\r\n",
        encoding="utf-8",
    )
    assert char in m.read_text(encoding="utf-8")  # written raw, as JSON allows
    folder = scan_manifest(manifest_cfg(m))
    assert metadata_rows(folder) == [{"note": f"a{char}b"}]


def test_an_arrow_file_truncated_after_a_read_is_a_decode_failure(
    tmp_path: Path, class_index_folder: Path
) -> None:
    from data_sources import write_save_to_disk

    out = write_save_to_disk(class_index_folder, tmp_path / "ds", NAMES)
    folder = open_source(DataConfig(root=str(out)))
    first = read_item(folder, folder.items[0])  # opens (memory-maps) the table
    assert first == _folder_bytes(class_index_folder)[0]
    arrow = next(out.glob("*.arrow"))
    size = arrow.stat().st_size
    with arrow.open("r+b") as f:
        f.truncate(size // 2)  # the last rows' bytes are gone
    with pytest.raises(DecodeFailure):
        read_item(folder, folder.items[-1])


def test_an_absolute_path_through_a_link_to_the_root_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real"
    data = write_png(real / "x.png")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    for root, cell in ((link, real / "x.png"), (real, link / "x.png")):
        m = write_rows(tmp_path / "m.csv", [["path"], [str(cell)]])
        folder = scan_manifest(manifest_cfg(m, root=str(root)))
        assert relpaths(folder) == ["x.png"] and folder.ignored == []
        assert read_item(folder, folder.items[0]) == data
