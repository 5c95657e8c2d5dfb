"""predictions.csv: exact bytes, quoting, non-UTF-8 names, round trips, and every reader error."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from reportgen.errors import ReportgenError
from reportgen.report.predictions import (
    COLUMNS,
    csv_path,
    format_predictions,
    prediction_set,
    predictions_csv,
    read_predictions,
)

HEADER = "path,sha256,label,label_name,prediction,prediction_name,confidence,p_label,correct"


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_hand_written_file_matches_byte_for_byte() -> None:
    # Probabilities given directly, so the expected text can be written by hand.
    probs = np.array([[0.75, 0.25], [0.125, 0.875], [0.5, 0.5]])
    text = predictions_csv(
        ["cat/a.png", "dog/b.png", "x.png"],
        [sha(0), sha(1), sha(2)],
        [0, 0, -1],
        ["cat", "dog"],
        probs,
        probabilities=True,
    )
    assert text == (
        HEADER + "\n"
        f"cat/a.png,{sha(0)},0,cat,0,cat,0.75,0.75,1\n"
        f"dog/b.png,{sha(1)},0,cat,1,dog,0.875,0.125,0\n"
        f"x.png,{sha(2)},-1,,0,cat,0.5,,\n"
    )


def test_logits_give_float64_softmax_argmax_and_scoring() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32) * 5
    logits[5] = [1000.0, -1000.0, 0.0, 3.0]  # would overflow a naive exp
    labels = [0, 1, 2, 3, -1, 7]  # 7: a class folder the model has no output for
    ps = prediction_set(
        [f"{i}.png" for i in range(6)], [sha(i) for i in range(6)], labels, [], logits
    )
    expected = scipy_softmax(logits.astype(np.float64), axis=1)
    preds = logits.argmax(axis=1)
    np.testing.assert_array_equal(ps.predictions, preds)
    np.testing.assert_allclose(ps.confidence, expected[np.arange(6), preds], rtol=1e-12)
    np.testing.assert_allclose(ps.p_label[:4], expected[np.arange(4), labels[:4]], rtol=1e-12)
    assert np.isnan(ps.p_label[4]) and np.isnan(ps.p_label[5])
    assert ps.correct.tolist() == [int(preds[i] == labels[i]) for i in range(4)] + [-1, -1]
    assert ps.class_name(2) == "2"  # no names known: the index, as in the report
    lines = format_predictions(ps).splitlines()
    p4 = int(preds[4])
    assert lines[5].split(",")[2:] == [
        "-1",
        "",
        str(p4),
        str(p4),
        repr(float(ps.confidence[4])),
        "",
        "",
    ]
    # Labelled with a class the model has no output for: not scored, p_label/correct empty.
    assert lines[6].split(",")[2:] == ["7", "7", "0", "0", "1.0", "", ""]


def test_quoting_unicode_and_non_utf8_names_survive(tmp_path: Path) -> None:
    names = ["a,b", 'say "hi"', "two\nlines", "cr\rhere", "naïve ☃", "=cmd", " lead"]
    paths = [f"{n}/img{i}.png" for i, n in enumerate(names)] + ["caf\udce9.png", "back\\slash.png"]
    n = len(paths)
    logits = np.random.default_rng(1).normal(size=(n, len(names)))
    labels = [i % len(names) for i in range(n)]
    text = predictions_csv(paths, [sha(i) for i in range(n)], labels, names, logits)
    data = text.encode("utf-8")  # would raise on a lone surrogate
    assert b"\r\n" not in data and data.endswith(b"\n")
    assert b'"cr\rhere' in data  # a bare CR is quoted, not left for a reader to split on
    assert "caf\\xe9.png" in text
    file = tmp_path / "predictions.csv"
    file.write_bytes(data)

    back = read_predictions(file)
    assert back.paths == [csv_path(p) for p in paths]
    assert back.paths[-2] == "caf\\xe9.png" and back.paths[-1] == "back\\slash.png"
    assert back.class_names == names

    # The csv module, with the documented options, reads the same cells back.
    with file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == n + 1
    assert [r[0] for r in rows[1:]] == back.paths
    assert [r[3] for r in rows[1:]] == [names[y] for y in labels]


def test_round_trip_is_exact_and_pandas_agrees(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, k = 40, 5
    logits = rng.normal(size=(n, k)).astype(np.float32) * 3
    labels = rng.integers(-1, k, n)
    names = ["alpha", "NA", "null", "3", "e,psilon"]  # names pandas would love to reinterpret
    ps = prediction_set(
        [f"d/{i}.jpg" for i in range(n)], [sha(i) for i in range(n)], labels, names, logits
    )
    text = format_predictions(ps)
    assert text == format_predictions(ps)  # deterministic
    file = tmp_path / "predictions.csv"
    file.write_text(text, encoding="utf-8", newline="")
    back = read_predictions(file)
    # repr() round-trips float64 exactly: the reader gets the very numbers the run used.
    assert back.confidence.tobytes() == ps.confidence.tobytes()
    np.testing.assert_array_equal(back.p_label, ps.p_label)  # NaN == NaN here
    np.testing.assert_array_equal(back.predictions, ps.predictions)
    np.testing.assert_array_equal(back.labels, ps.labels)
    np.testing.assert_array_equal(back.correct, ps.correct)
    assert back.paths == ps.paths and back.sha256 == ps.sha256

    try:
        import pandas as pd
    except ImportError:  # pandas is optional: the csv module is the reference then
        with file.open(newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
        cols = {c: [row[c] for row in table] for c in COLUMNS}
    else:
        df = pd.read_csv(file, dtype=str, keep_default_na=False)
        assert tuple(df.columns) == COLUMNS
        cols = {c: df[c].tolist() for c in COLUMNS}
    assert [float(x) for x in cols["confidence"]] == ps.confidence.tolist()
    assert cols["label_name"] == [names[y] if y >= 0 else "" for y in labels]
    assert [int(x) for x in cols["prediction"]] == ps.predictions.tolist()
    assert cols["correct"] == [str(c) if c >= 0 else "" for c in ps.correct]


def test_csv_path() -> None:
    assert csv_path("a/b c.png") == "a/b c.png"
    assert csv_path("caf\udce9/\udcff.png") == "caf\\xe9/\\xff.png"
    assert csv_path("x\ud800.png") == "x\\ud800.png"  # not from a file system; still valid UTF-8
    csv_path("x\ud800.png").encode("utf-8")


def test_prediction_set_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="N×K"):
        prediction_set(["a"], [sha(0)], [0], [], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="differ in length"):
        prediction_set(["a", "b"], [sha(0)], [0, 0], [], np.zeros((2, 3)))


def _good_rows() -> list[str]:
    return [
        HEADER,
        f"a.png,{sha(0)},0,cat,0,cat,0.9,0.9,1",
        f"b.png,{sha(1)},1,dog,0,cat,0.6,0.4,0",
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (f"c.png,{sha(2)},0,cat,0,cat,0.9,0.9", "8 fields, expected 9"),
        (f",{sha(2)},0,cat,0,cat,0.9,0.9,1", "empty path"),
        (f"a.png,{sha(2)},0,cat,0,cat,0.9,0.9,1", "'a.png' is listed twice .first on line 2"),
        ("c.png,ABC,0,cat,0,cat,0.9,0.9,1", "sha256 'ABC' is not 64 lowercase hex digits"),
        (f"c.png,{sha(2)},x,cat,0,cat,0.9,0.9,1", "label 'x' is not a whole number"),
        (f"c.png,{sha(2)},-2,,0,cat,0.9,,", "label -2 is below -1"),
        (f"c.png,{sha(2)},0,cat,-1,cat,0.9,0.9,1", "prediction -1 is below 0"),
        (f"c.png,{sha(2)},0,cat,0,cat,1.5,0.9,1", r"confidence 1.5 is not a probability"),
        (f"c.png,{sha(2)},0,cat,0,cat,high,0.9,1", "confidence 'high' is not a number"),
        (f"c.png,{sha(2)},0,cat,0,cat,0.9,0.9,0", "correct is 0 but label 0 vs prediction 0"),
        (f"c.png,{sha(2)},0,cat,0,cat,0.9,,1", "both empty, or a probability and 0/1"),
        (f"c.png,{sha(2)},-1,cat,0,cat,0.9,,", "unlabelled row .label -1. has label_name"),
        (
            f"c.png,{sha(2)},0,kitten,0,cat,0.9,0.9,1",
            "label_name 'kitten' for class 0, which earlier rows call 'cat'",
        ),
        (f'c.png,{sha(2)},0,"cat"x,0,cat,0.9,0.9,1', "malformed CSV"),
    ],
)
def test_reader_names_file_line_and_problem(tmp_path: Path, row: str, message: str) -> None:
    file = tmp_path / "predictions.csv"
    file.write_text("\n".join([*_good_rows(), row]) + "\n", encoding="utf-8")
    with pytest.raises(ReportgenError, match=rf"predictions\.csv, line 4: .*{message}"):
        read_predictions(file)


def test_reader_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportgenError, match=r"nothere\.csv: no such file"):
        read_predictions(tmp_path / "nothere.csv")
    with pytest.raises(ReportgenError, match="is a folder"):
        read_predictions(tmp_path)
    file = tmp_path / "p.csv"
    file.write_bytes(b"")
    with pytest.raises(ReportgenError, match=r"p\.csv: empty file"):
        read_predictions(file)
    file.write_text("path,sha256,label\n", encoding="utf-8")
    with pytest.raises(ReportgenError, match=r"p\.csv: header is 'path,sha256,label'; expected"):
        read_predictions(file)
    file.write_bytes(HEADER.encode() + b"\n\xff\xfe.png\n")
    with pytest.raises(ReportgenError, match=r"p\.csv: not UTF-8 text \(bad byte at offset"):
        read_predictions(file)
    file.write_text(HEADER + "\n" + f'"a.png,{sha(0)},0,cat,0,cat,0.9,0.9,1\n', encoding="utf-8")
    with pytest.raises(ReportgenError, match=r"p\.csv, line \d+: malformed CSV"):
        read_predictions(file)


def test_reader_accepts_crlf_and_bom_from_a_spreadsheet(tmp_path: Path) -> None:
    file = tmp_path / "p.csv"
    file.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(_good_rows()).encode() + b"\r\n")
    back = read_predictions(file)
    assert back.paths == ["a.png", "b.png"] and back.correct.tolist() == [1, 0]
    assert back.accuracy() == 0.5 and back.class_names == ["cat", "dog"]


def test_unlabelled_file_round_trip(tmp_path: Path) -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    text = predictions_csv(["a", "b"], [sha(0), sha(1)], [-1, -1], [], logits)
    file = tmp_path / "p.csv"
    file.write_text(text, encoding="utf-8", newline="")
    back = read_predictions(file)
    assert not back.labelled and back.accuracy() is None
    assert back.class_names == ["0", "1", "2"]  # names by index; class 1 never seen
    # An empty file body (header only) is a valid, empty set.
    file.write_text(HEADER + "\n", encoding="utf-8")
    assert len(read_predictions(file)) == 0
    assert io.StringIO(text).readline().rstrip("\n") == HEADER
